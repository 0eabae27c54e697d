"""``train.lookahead``: the answers (and first remarks) of the batches one snapshot serves
decoded in one call. A run with it stores the same turns, steps and events as one
without (scripted models that answer each question the same whatever it is batched
with, and a tiny llama on the fast path), decodes fewer, larger calls, and falls back to
the batch's own call for whatever was not decoded ahead."""

import pytest

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner, ScriptedPartner
from saie_lite.errors import PartnerError
from saie_lite.protocols import MissingRemark
from saie_lite.store import Store
from saie_lite.tasks import gsm8k
from saie_lite.train.loop import train


class SnapshotLike(ScriptedLearner):
    """Answers that change only at multiples of ``every`` updates, and the size of
    every generate call."""

    def __init__(self, every: int):
        super().__init__()
        self.every, self.seed_step, self.calls = every, None, []
        self.loaded = 0

    def unchanged_by_update(self, step: int) -> bool:
        return self.loaded == (step // self.every) * self.every

    def answers_fixed_through(self, step: int) -> int:
        return (step // self.every) * self.every + self.every - 1

    def generate(self, chats, max_new_tokens, temperature=0.0):
        self.loaded = (self.step // self.every) * self.every
        self.calls.append(len(chats))
        return [f"Snapshot {self.loaded}: {c[-1]['content'][:20]}\n#### {len(c)}" for c in chats]


class Sized(ScriptedPartner):
    """Records every remark call's size; remarks depend only on their prompt."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def remark(self, chats, max_tokens):
        self.sizes.append(len(chats))
        return super().remark(chats, max_tokens)


def table(store, sql):
    return store.db.execute(sql).fetchall()


def run(path, lookahead, learner, partner, over=None, n=10):
    cfg = config.build(
        overrides={
            "train.batch_size": 2,
            "method.warmup_fraction": 0.2,
            "method.turns": 2,
            "train.lookahead": lookahead,
            **(over or {}),
        }
    )
    path.mkdir(parents=True, exist_ok=True)
    store = Store(path / "saie.sqlite")
    try:
        summary = train(cfg, learner, partner, gsm8k.load("bundled")[0][:n], store, path)
    finally:
        rows = (
            table(
                store,
                "SELECT step, phase, round, example_id, turn, role, stance, prompt, text,"
                " correct, cached, missing FROM turns ORDER BY id",
            ),
            table(store, "SELECT step, phase, round, loss, n_sequences FROM steps"),
            table(store, "SELECT kind, message FROM events ORDER BY id"),
        )
        store.close()
    return summary, rows


def test_lookahead_stores_the_same_run_in_fewer_calls(tmp_path):
    out = {}
    for on in (False, True):
        learner, partner = SnapshotLike(every=3), Sized()
        out[on] = (*run(tmp_path / str(on), on, learner, partner), learner, partner)
    (s_off, rows_off, l_off, p_off), (s_on, rows_on, l_on, p_on) = out[False], out[True]
    assert rows_on == rows_off  # turns (cached marks too), steps, events
    assert s_on["step"] == s_off["step"] == 5
    # 1 warm-up batch, then 4 discussion batches of 2 answered after 1, 2 (snapshot 0)
    # and 3, 4 updates (snapshot 3): 2 groups, each group's answers in one call, then
    # each batch's revisions (turn 2) in its own.
    assert s_off["lookahead_groups"] == 0 and s_on["lookahead_groups"] == 2
    assert l_off.calls == [2, 4] * 4  # per batch: 2 answers, then 4 revisions (2 stances)
    assert l_on.calls == [4] * 6  # a group's 4 answers, then each batch's revisions
    assert max(p_on.sizes) == 2 * 2 * 2 > max(p_off.sizes) == 2 * 2  # 2 batches x 2 stances
    assert sum(p_on.sizes) == sum(p_off.sizes)  # each remark asked for once


def test_lookahead_is_off_where_answers_depend_on_each_update(tmp_path):
    on_policy, partner = ScriptedLearner(), Sized()  # no snapshot
    s, _ = run(tmp_path / "a", True, on_policy, partner)
    assert s["lookahead_groups"] == 0 and max(partner.sizes) == 4
    sampled = SnapshotLike(every=3)  # sampled answers are seeded per call
    s, _ = run(tmp_path / "b", True, sampled, Sized(), {"learner.temperature": 0.7})
    assert s["lookahead_groups"] == 0 and sampled.calls == [2, 4] * 4


def test_sampled_partner_keeps_its_remarks_per_batch(tmp_path):
    learner, partner = SnapshotLike(every=3), Sized()
    s, _ = run(tmp_path, True, learner, partner, {"partner.temperature": 0.7})
    assert s["lookahead_groups"] == 2 and max(partner.sizes) == 4  # answers ahead only


class Degenerate(Sized):
    """The first remark on each prompt is degenerate; asked again, a real one."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def remark(self, chats, max_tokens):
        out = super().remark(chats, max_tokens)
        for i, c in enumerate(chats):
            key = c[-1]["content"]
            if key not in self.seen:
                self.seen.add(key)
                out[i] = "..."
        return out


def test_a_degenerate_remark_decoded_ahead_is_asked_again(tmp_path):
    out = {}
    for on in (False, True):
        out[on] = run(tmp_path / str(on), on, SnapshotLike(every=3), Degenerate())
    (_, rows_off), (s_on, rows_on) = out[False], out[True]
    assert rows_on == rows_off
    assert s_on["lookahead_groups"] == 2
    texts = [r[8] for r in rows_on[0] if r[5] == "partner"]
    assert texts and "..." not in texts  # every stored remark is the second, real one


def about_hamburgers(chat) -> bool:
    return "hamburgers" in chat[-1]["content"]


class DownFor(Sized):
    """Fails for good on one example's prompts (the server gives up on it)."""

    def remark(self, chats, max_tokens):
        if any(map(about_hamburgers, chats)):
            e = PartnerError("server down")
            e.partial = {
                i: t
                for i, (c, t) in enumerate(zip(chats, super().remark(chats, max_tokens)))
                if not about_hamburgers(c)
            }
            raise e
        return super().remark(chats, max_tokens)


def test_a_partner_fault_stops_the_run_at_the_same_batch(tmp_path):
    results = {}
    for on in (False, True):
        partner = DownFor()
        with pytest.raises(PartnerError, match="server down; checkpoint saved at update"):
            run(tmp_path / str(on), on, SnapshotLike(every=3), partner, n=16)
        store = Store(tmp_path / str(on) / "saie.sqlite")
        results[on] = (
            table(store, "SELECT step, role, text FROM turns ORDER BY id"),
            table(store, "SELECT step FROM steps"),
            # the remarks that did arrive are cached for the resume, with or without
            store.db.execute("SELECT COUNT(*) FROM remark_cache").fetchone(),
        )
        store.close()
    assert results[True][:2] == results[False][:2]
    assert results[True][2] >= results[False][2]


class Silent(Sized):
    """No text for one example's adversarial prompts (null content, as over HTTP)."""

    def remark(self, chats, max_tokens):
        out = super().remark(chats, max_tokens)
        for i, c in enumerate(chats):
            if about_hamburgers(c) and "critic" in c[-1]["content"]:
                out[i] = MissingRemark("null content")
        return out


def test_missing_remarks_count_as_without(tmp_path):
    out = {}
    for on in (False, True):
        s, rows = run(
            tmp_path / str(on), on, SnapshotLike(every=3), Silent(),
            {"partner.max_missing_share": 0.9, "method.turns": 1}, n=16,
        )  # fmt: skip
        out[on] = s["missing_remarks"], rows
    assert out[True] == out[False] and out[True][0] > 0


def test_fast_path_lookahead_stores_the_same_turns(tiny_model_dir, tmp_path):
    """A tiny llama on the real fast path (merged f32 snapshot every 2 updates): the
    same greedy answers and remarks, one generate call per snapshot."""
    pytest.importorskip("torch")
    pytest.importorskip("llama_cpp")
    from saie_lite.backends import torch_peft
    from saie_lite.train.fast_generation import SnapshotAnswers

    over = {
        "learner.model": str(tiny_model_dir),
        "learner.backend": "torch",
        "learner.device": "cpu",
        "learner.max_new_tokens": 6,
        "learner.snapshot_every": 2,
        "learner.snapshot_quant": "f32",
        "method.turns": 1,
        "partner.max_tokens": 8,
        "train.lr": 0.02,
    }
    stored, calls = {}, {}
    for on in (False, True):
        cfg = config.build(overrides=over)
        learner = SnapshotAnswers(torch_peft.TorchLearner(cfg), cfg, tmp_path / str(on) / "s")
        sizes = []
        generate = learner.generate

        def counted(chats, *a, generate=generate, sizes=sizes, **kw):
            sizes.append(len(chats))
            return generate(chats, *a, **kw)

        learner.generate = counted
        summary, stored[on] = run(tmp_path / str(on), on, learner, ScriptedPartner(), over, n=8)
        assert summary["step"] == 4
        calls[on] = sizes
        learner._close()
    assert stored[True] == stored[False]
    assert calls[False] == [2, 2, 2] and calls[True] == [2, 4]  # after 1 update; 2 and 3


def test_a_question_asked_twice_needs_two_stashed_answers():
    from saie_lite.train.lookahead import Lookahead, _key

    ahead = object.__new__(Lookahead)
    chat = [{"role": "user", "content": "q"}]
    ahead.answer_stash = {_key(chat): ["a1"]}
    assert ahead.answers([chat, chat]) is None  # one stashed answer for two asks
    assert ahead.answer_stash[_key(chat)] == ["a1"]  # nothing taken
    ahead.answer_stash[_key(chat)].append("a2")
    assert ahead.answers([chat, chat]) == ["a1", "a2"]
