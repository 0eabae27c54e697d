"""The loop with scripted learner and partner: what is sent, trained, stored, resumed."""

import pytest

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner, ScriptedPartner
from saie_lite.store import Store
from saie_lite.tasks import gsm8k
from saie_lite.train import checkpoint
from saie_lite.train.loop import schedule, train


@pytest.fixture
def examples():
    return gsm8k.load("bundled")[0][:10]


def make_cfg(**over):
    base = {"train.batch_size": 2, "train.save_every": 1, "method.warmup_fraction": 0.2}
    return config.build(overrides={**base, **over})


def run(cfg, examples, tmp_path, learner=None, partner=None, stop=lambda: False):
    learner = learner or ScriptedLearner()
    partner = partner or ScriptedPartner()
    store = Store(tmp_path / "saie.sqlite")
    try:
        summary = train(cfg, learner, partner, examples, store, tmp_path, stop=stop)
    finally:
        store.close()
    return summary, learner, partner


@pytest.mark.parametrize(
    "mode,per_example", [("sft", 1), ("saie", 2), ("saie-support", 1), ("saie-adversarial", 1)]
)
def test_modes_same_updates_different_sequences(mode, per_example, examples, tmp_path):
    summary, learner, partner = run(make_cfg(**{"method.mode": mode}), examples, tmp_path)
    steps = [h for h in learner.history if h["call"] == "train_step"]
    assert summary["step"] == len(steps) == 5  # 1 warm-up batch + 4 discussion batches
    disc = steps[1:]
    assert all(len(s["sequences"]) == 2 * per_example for s in disc)
    kinds = {seq.kind for s in disc for seq in s["sequences"]}
    assert kinds == (
        {"plain"} if mode == "sft" else set(make_cfg(**{"method.mode": mode}).method.stances)
    )
    asked = sum(len(h["chats"]) for h in partner.history)
    assert asked == (0 if mode == "sft" else 8 * per_example)


def test_discussion_sequence_masks_context_and_targets_reference(examples, tmp_path):
    learner = ScriptedLearner(default="I think 1.\n#### 1")
    partner = ScriptedPartner()
    run(make_cfg(), examples, tmp_path, learner, partner)
    seq = [h for h in learner.history if h["call"] == "train_step"][1]["sequences"][0]
    roles = [m["role"] for m in seq.context]
    assert roles == ["system", "user", "assistant", "user"]
    assert seq.context[2]["content"] == "I think 1.\n#### 1"
    want = {"supportive": "Well done", "adversarial": "Are you sure"}[seq.kind]
    assert want in seq.context[3]["content"]  # the remark of the sequence's own stance
    assert seq.target.endswith(
        "#### " + next(e.answer for e in examples if e.question == seq.context[1]["content"])
    )


def test_store_holds_every_turn(examples, tmp_path):
    run(make_cfg(), examples, tmp_path)
    store = Store(tmp_path / "saie.sqlite")
    rows = store.db.execute("SELECT phase, role, stance, correct FROM turns").fetchall()
    disc = [r for r in rows if r[0] == "discussion"]
    # 8 discussion examples: 8 learner answers, 16 remarks, 16 targets
    assert sum(r[1] == "learner" for r in disc) == 8
    assert sum(r[1] == "partner" for r in disc) == 16
    assert sum(r[1] == "target" for r in disc) == 16
    assert {r[2] for r in disc if r[1] == "partner"} == {"supportive", "adversarial"}
    assert all(r[3] in (0, 1) for r in disc if r[1] == "learner")
    assert store.count("steps") == 5 and store.count("remark_cache") == 16
    store.close()


def test_stop_then_resume_matches_and_reuses_remarks(examples, tmp_path):
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full_dir.mkdir(), part_dir.mkdir()
    cfg = make_cfg()
    _, full_learner, _ = run(cfg, examples, full_dir)

    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 7  # two checks per batch: stop just before the 4th update

    s1, _, p1 = run(cfg, examples, part_dir, stop=stop_after_three)
    assert s1["status"] == "stopped" and s1["step"] == 3
    asked_before = [c for h in p1.history for c in h["chats"]]
    assert len(asked_before) == 12  # batch 4's remarks were fetched before the stop
    s2, learner2, p2 = run(cfg, examples, part_dir)
    assert s2["status"] == "finished" and s2["step"] == 5 and learner2.step == full_learner.step
    asked_after = [c for h in p2.history for c in h["chats"]]
    # The interrupted batch's 2 examples x 2 stances come from the cache.
    assert len(asked_after) == 16 - 12 and not any(c in asked_before for c in asked_after)
    store = Store(part_dir / "saie.sqlite")
    assert store.count("steps") == 5
    assert store.db.execute("SELECT COUNT(*) FROM turns WHERE cached = 1").fetchone()[0] == 4
    store.close()


def test_skipped_batch_turns_survive_a_stop_right_after_it(examples, tmp_path):
    # batch 2's remark is degenerate twice, so it trains nothing; its turns are kept, and
    # a run stopped right after it stores the same turns as one that never stopped
    cfg = make_cfg(**{"method.mode": "saie-support", "train.batch_size": 1,
                      "method.warmup_fraction": 0.0, "train.save_every": 100})  # fmt: skip
    exs = examples[:3]

    def partner_rows(
        run_dir, stop=lambda: False, replies=("Good one.", "???", "!!!", "Fine work.")
    ):
        partner = ScriptedPartner()
        partner.enqueue(*replies)
        summary, _, _ = run(cfg, exs, run_dir, partner=partner, stop=stop)
        store = Store(run_dir / "saie.sqlite")
        rows = [
            t
            for (t,) in store.db.execute("SELECT text FROM turns WHERE role='partner' ORDER BY id")
        ]
        store.close()
        return summary, rows

    (tmp_path / "full").mkdir(), (tmp_path / "part").mkdir()
    full, rows_full = partner_rows(tmp_path / "full")
    assert full["step"] == 2 and rows_full == ["Good one.", "???", "Fine work."]
    calls = {"n": 0}

    def stop_after_the_skip():
        calls["n"] += 1
        return calls["n"] > 3  # batch 1: two checks; batch 2 (skipped): one; then stop

    part, _ = partner_rows(tmp_path / "part", stop_after_the_skip)
    assert part["status"] == "stopped" and part["step"] == 1 and part["batches_done"] == 2
    # the checkpoint says where training stood: batch 2 is redone on resume, from the cache
    assert checkpoint.load(tmp_path / "part", ScriptedLearner()).batches_done == 1
    resumed, rows = partner_rows(tmp_path / "part", replies=("Fine work.",))
    assert resumed["status"] == "finished" and resumed["step"] == 2
    assert rows == rows_full


def test_checkpoint_pruned_and_latest_readable(examples, tmp_path):
    run(make_cfg(**{"train.keep_checkpoints": 2}), examples, tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert names == ["step-000004", "step-000005"]
    assert checkpoint.latest(tmp_path).name == "step-000005"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_context_policy_skip_and_truncate(examples, tmp_path):
    long_answer = "word " * 400 + "\n#### 1"
    for policy, expect_seq in (("skip", 0), ("truncate", 2)):
        d = tmp_path / policy
        d.mkdir()
        learner = ScriptedLearner(default=long_answer)
        cfg = make_cfg(
            **{
                "method.context_policy": policy,
                "learner.max_seq_len": 400,
                "learner.max_new_tokens": 50,
                "train.max_steps": 2,
                "method.mode": "saie-support",
            }
        )
        run(cfg, examples, d, learner)
        steps = [h for h in learner.history if h["call"] == "train_step"]
        assert len(steps[1:]) == (0 if policy == "skip" else 1)
        if expect_seq:
            ctx = steps[1]["sequences"][0].context
            assert "[...]" in ctx[2]["content"]
        store = Store(d / "saie.sqlite")
        msgs = [r[0] for r in store.db.execute("SELECT message FROM events WHERE kind='context'")]
        store.close()
        assert msgs and all(("skipped" if policy == "skip" else "clipped") in m for m in msgs)


def test_schedule_is_deterministic_and_respects_max_steps():
    cfg = make_cfg(**{"method.rounds": 2})
    a, b = schedule(10, cfg), schedule(10, cfg)
    assert [x.indices for x in a] == [x.indices for x in b]
    assert [x.phase for x in a] == ["warmup"] + ["discussion"] * 8
    warm = set(a[0].indices)
    assert all(not warm & set(x.indices) for x in a[1:])
    assert len(schedule(10, make_cfg(**{"train.max_steps": 3}))) == 3


def test_turns_two_chains_revision_and_remark(examples, tmp_path):
    learner = ScriptedLearner()
    cfg = make_cfg(**{"method.turns": 2, "method.mode": "saie-adversarial", "train.max_steps": 2})
    run(cfg, examples, tmp_path, learner)
    seqs = [h for h in learner.history if h["call"] == "train_step"][1]["sequences"]
    # per example: one sequence after remark 1, one after remark 2 (context a0 m1 a1 m2)
    assert len(seqs) == 4
    assert sorted(len(s.context) for s in seqs) == [4, 4, 6, 6]
