"""``method.critique_target``: each discussion also teaches the learner the partner's
remark (context: question, answer, stance; target: the remark), weighted by copies."""

import io

import pytest

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner, ScriptedPartner
from saie_lite.errors import UserError
from saie_lite.evaluate.ablation import run_ablation
from saie_lite.protocols import Example
from saie_lite.store import Store
from saie_lite.tasks import gsm8k
from saie_lite.train.loop import train
from saie_lite.train.prompts import critique_copies, critique_sequences
from saie_lite.ui.ablate_view import PlainAblateView

EX = Example(id="q1", question="Tom has 3 apples and buys 4. How many?", reference="", answer="7")
ANSWER = "3 + 4 = 7\n#### 7"
CLEAN = {"echo": False, "degenerate": False, "echo_rouge": 0.1, "on_stance": True}


def make_cfg(**over):
    base = {"train.batch_size": 2, "train.save_every": 1, "method.warmup_fraction": 0.2}
    return config.build(overrides={**base, **over})


def run(cfg, tmp_path, partner=None):
    learner, partner = ScriptedLearner(), partner or ScriptedPartner()
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = Store(tmp_path / "saie.sqlite")
    try:
        train(cfg, learner, partner, gsm8k.load("bundled")[0][:10], store, tmp_path)
    finally:
        store.close()
    return [h["sequences"] for h in learner.history if h["call"] == "train_step"]


def test_critique_sequence_holds_question_answer_stance_and_targets_the_remark():
    (seq,) = critique_sequences(EX, ANSWER, "adversarial", "Recheck the sum.", CLEAN, 1.0)
    assert seq.target == "Recheck the sum." and seq.kind == "critique-adversarial"
    assert [m["role"] for m in seq.context] == ["system", "user"]
    user = seq.context[1]["content"]
    assert EX.question in user and ANSWER in user and "critic" in user
    (sup,) = critique_sequences(EX, ANSWER, "supportive", "You are right.", CLEAN, 1.0)
    assert "supporter" in sup.context[1]["content"]


def test_only_the_remark_tokens_carry_loss(tiny_model_dir):
    transformers = pytest.importorskip("transformers")
    from saie_lite.chat_tokens import IGNORE, ChatTokens

    tokens = ChatTokens(transformers.AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    remark = "I think this is wrong: recheck the sum of 3 and 4."
    (seq,) = critique_sequences(EX, ANSWER, "adversarial", remark, CLEAN, 1.0)
    ids, labels = tokens.encode(seq)
    trained = [t for t in labels if t != IGNORE]
    first = labels.index(trained[0])
    assert all(t == IGNORE for t in labels[:first])  # question, answer, stance: masked
    assert all(t != IGNORE for t in labels[first:])  # then the remark and the turn's end
    assert tokens.tok.decode(trained, skip_special_tokens=True).strip() == remark


@pytest.mark.parametrize("flag", ["echo", "degenerate"])
def test_degenerate_and_echo_remarks_are_never_targets(flag):
    assert critique_sequences(EX, ANSWER, "supportive", "x", {**CLEAN, flag: True}, 1.0) == []
    assert critique_sequences(EX, ANSWER, "supportive", "", None, 1.0) == []  # no remark


def test_weight_is_applied_as_copies():
    seqs = critique_sequences(EX, ANSWER, "supportive", "Good.", CLEAN, 3.0)
    assert len(seqs) == 3 and len({id(s) for s in seqs}) == 3
    keys = [f"ex{i}/supportive" for i in range(2000)]
    # a fractional weight: the fraction is a fixed draw per key, so its mean is the weight
    copies = [critique_copies(1.5, k) for k in keys]
    assert set(copies) == {1, 2} and abs(sum(copies) / len(copies) - 1.5) < 0.05
    assert copies == [critique_copies(1.5, k) for k in keys]  # the same on a resumed run
    assert [critique_copies(0.25, k) for k in keys].count(0) > 1000


def test_weight_out_of_range_is_refused():
    with pytest.raises(UserError, match="critique_weight"):
        make_cfg(**{"method.critique_weight": 0})


def test_discussion_batches_add_critique_sequences_only_when_asked(tmp_path):
    off = run(make_cfg(), tmp_path / "off")
    assert not any(s.kind.startswith("critique") for step in off for s in step)
    on = run(make_cfg(**{"method.critique_target": True}), tmp_path / "on")
    # warm-up batch first, then discussion batches of 2 examples x 2 stances
    for step in on[1:]:
        crit = [s for s in step if s.kind.startswith("critique")]
        assert len(crit) == 4 and len(step) == 8
        assert {s.target for s in crit} == {
            "Are you sure? Check each step.",
            "Well done, that is right.",
        }
    doubled = run(
        make_cfg(**{"method.critique_target": True, "method.critique_weight": 2}), tmp_path / "x2"
    )
    assert all(sum(s.kind.startswith("critique") for s in step) == 8 for step in doubled[1:])


def test_a_degenerate_remark_in_the_loop_is_not_a_critique_target(tmp_path):
    partner = ScriptedPartner()
    # the first discussion batch's four remarks: two degenerate (asked twice each), so
    # their discussions are skipped and no critique is built from them either
    partner.enqueue("!!!", "Well said, right.", "???", "Recheck step two.", "...", "---")
    steps = run(make_cfg(**{"method.critique_target": True}), tmp_path, partner)
    crit = [s.target for s in steps[1] if s.kind.startswith("critique")]
    assert sorted(crit) == ["Recheck step two.", "Well said, right."]


def test_dry_run_ablation_with_saie_critique_finishes(tmp_path):
    sets = {
        "learner.backend": "scripted",
        "partner.backend": "scripted",
        "data.limit": 10,
        "data.split": "nodev",
        "ablate.eval_limit": 4,
        "train.batch_size": 2,
        "method.warmup_fraction": 0.2,
        "ablate.strategies": "single",
        "ablate.systems": "base,saie,saie-critique",
    }
    out = tmp_path / "exp"
    res = run_ablation(config.build(overrides=sets), out, PlainAblateView(io.StringIO()))
    assert res["status"] == "finished"
    assert [r["system"] for r in res["rows"]] == ["base", "saie", "saie-critique"]
    saved = config.load_yaml(out / "runs" / "saie-critique" / "config.yaml")["method"]
    assert saved["mode"] == "saie" and saved["critique_target"] is True
    rows = {r["system"]: r for r in res["rows"]}
    # same updates; the critique row trains the remarks too: more target tokens
    assert rows["saie"]["updates"] == rows["saie-critique"]["updates"]
    assert rows["saie-critique"]["target_tokens"] > rows["saie"]["target_tokens"]
