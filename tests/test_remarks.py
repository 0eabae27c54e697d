"""Remark diagnostics (issue 14): echo, stance keeping and degenerate remarks, recorded
per remark, shown live, at the end of a run and by ``saie-lite logs``."""

import io

import pytest
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner, ScriptedPartner
from saie_lite.cli import app
from saie_lite.remarks import rates, weak_partner
from saie_lite.store import Store
from saie_lite.tasks import get_task, gsm8k
from saie_lite.train.batch import remark_diagnostics
from saie_lite.train.loop import train
from saie_lite.ui.train_view import PlainView

ANSWER = "Tom has 4 apples. He eats 1, so 4 - 1 = 3 apples are left.\n#### 3"


def diag(remark, stance, task=gsm8k):
    return remark_diagnostics(task, remark, ANSWER, stance)


def test_echo():
    d = diag("Tom has 4 apples. He eats 1, so 4 - 1 = 3 apples are left. #### 3", "supportive")
    assert d["echo"] and d["echo_rouge"] == 1.0
    d = diag("Right, subtracting the eaten apple is the key step; the answer is 3.", "supportive")
    assert not d["echo"] and d["echo_rouge"] < 0.5


def test_on_and_off_stance_by_the_stated_answer():
    assert diag("Correct: 4 - 1 = 3, so the answer is 3.", "supportive")["on_stance"]
    off = diag("That is wrong, the answer is 5.", "supportive")
    assert not off["on_stance"] and off["stance_by"] == "answer"
    assert diag("He ate two apples, so the answer is 2.", "adversarial")["on_stance"]
    agrees = diag("Great work, the answer is 3.", "adversarial")
    assert not agrees["on_stance"] and agrees["stance_by"] == "words"
    # restating the learner's answer while calling it wrong still disputes it
    assert diag("You say the answer is 3, but that is wrong.", "adversarial")["on_stance"]
    # a number inside the reasoning is not a stated final answer
    d = diag("Yes: 4 apples minus 1 eaten leaves 3, nicely done.", "supportive")
    assert d["on_stance"] and d["stance_by"] == "words"


def test_on_and_off_stance_by_words_when_no_answer_is_stated():
    d = diag("Are you sure about the subtraction? It looks like a mistake.", "adversarial")
    assert d["on_stance"] and d["stance_by"] == "words"
    assert not diag("Nice and clear, well done.", "adversarial")["on_stance"]
    assert diag("Nice and clear, well done.", "supportive")["on_stance"]
    assert not diag("There is an error in your reasoning.", "supportive")["on_stance"]
    # free-form data (check: none) has no final answers: words decide
    free = get_task(config.build(overrides={"data.task": "custom", "data.check": "none"}).data)
    assert not diag("Great work, the answer is 3.", "adversarial", free)["on_stance"]
    assert diag("Is it really 3? Recheck it.", "adversarial", free)["on_stance"]


def test_degenerate_is_never_on_stance():
    d = diag("ok ok ok ok ok ok ok ok ok ok", "supportive")
    assert d["degenerate"] and not d["on_stance"] and d["stance_by"] == "degenerate"
    assert diag("....", "adversarial")["degenerate"]


def test_rates_and_the_weak_partner_line():
    good = [("supportive", diag("Correct: the answer is 3.", "supportive"))] * 5 + [
        ("adversarial", diag("No, the answer is 2.", "adversarial"))
    ] * 5
    r = rates(good)
    assert r["supportive"]["on_stance"] == 1.0 and r["all"]["n"] == 10
    assert r["all"]["echo"] == 0.0
    assert weak_partner(r) is None
    echo = [
        ("supportive", diag(ANSWER, "supportive")),
        ("adversarial", diag(ANSWER, "adversarial")),
    ]
    line = weak_partner(rates(echo * 5))
    assert line and "\n" not in line and "100% of its remarks echo" in line
    assert "--partner-model" in line
    assert weak_partner(rates(echo * 3)) is None  # too few remarks to tell


def run(tmp_path, partner, view):
    cfg = config.build(
        overrides={"train.batch_size": 2, "train.save_every": 1, "method.warmup_fraction": 0.2}
    )
    exs = gsm8k.load("bundled")[0][:10]
    store = Store(tmp_path / "saie.sqlite")
    try:
        from saie_lite.train.runs import WithRemarkFigures

        return train(
            cfg, ScriptedLearner(), partner, exs, store, tmp_path, WithRemarkFigures(view, store)
        )
    finally:
        store.close()


def test_a_run_records_diagnostics_and_warns_once(tmp_path):
    partner = ScriptedPartner()
    partner.enqueue(*["Let me think.\n#### 0"] * 16)  # every remark echoes the answer
    out = io.StringIO()
    summary = run(tmp_path, partner, PlainView(out))
    text = out.getvalue()
    assert text.count("warning: the partner looks too weak") == 1
    assert "remarks: supportive n=" in text
    assert summary["remarks"]["all"]["n"] == 16 and summary["remarks"]["all"]["echo"] == 1.0
    store = Store(tmp_path / "saie.sqlite")
    assert len(store.remark_diagnostics()) == 16
    store.close()
    r = CliRunner().invoke(app, ["logs", "remarks", str(tmp_path)])
    assert r.exit_code == 0 and "echo 100%" in r.output and "warning:" in r.output


def test_a_usable_partner_gets_no_warning(tmp_path):
    out = io.StringIO()
    summary = run(tmp_path, ScriptedPartner(), PlainView(out))
    assert "warning" not in out.getvalue()
    r = summary["remarks"]
    assert r["supportive"]["on_stance"] == 1.0 and r["adversarial"]["on_stance"] == 1.0
    assert "adversarial n=8 echo 0% on-stance 100% degenerate 0%" in out.getvalue()


def test_logs_remarks_refuses_a_non_run(tmp_path):
    r = CliRunner().invoke(app, ["logs", "remarks", str(tmp_path)])
    assert r.exit_code == 2 and r.output.count("\n") == 1


@pytest.mark.parametrize("kind", ["plain", "rich"])
def test_views_accept_exchanges_without_diagnostics(kind):
    """A discussion exchange from a run stored before remark diagnostics existed (no
    ``diagnostics`` key) is shown in full, with no warning and nothing tallied."""
    from rich.console import Console

    from saie_lite.ui.train_view import PlainView, RichView

    out = io.StringIO()
    v = PlainView(out) if kind == "plain" else RichView(Console(file=out, width=200))
    ex = gsm8k.load("bundled")[0][0]
    v.on_exchange(
        {
            "phase": "discussion",
            "example": ex,
            "answer": "so it is 7\n#### 7",
            "correct": False,
            "remarks": [("supportive", "Nice work, 7 it is.", False),
                        ("adversarial", "Check the sum again.", True)],
            "target": ex.reference,
        }
    )  # fmt: skip
    text = out.getvalue()
    assert "so it is 7" in text and "WRONG" in text
    assert "Nice work, 7 it is." in text and "Check the sum again." in text
    assert "warning" not in text and v.tally.diags == []
