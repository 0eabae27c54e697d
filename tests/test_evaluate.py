"""Evaluation runs and paired comparisons with a scripted learner."""

import json

import pytest
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner
from saie_lite.cli import app
from saie_lite.errors import UserError
from saie_lite.evaluate.evaluation import compare, evaluate
from saie_lite.store import Store
from saie_lite.tasks import gsm8k

runner = CliRunner()


def cfg_with(**over):
    return config.build(overrides={"learner.backend": "scripted", "eval.batch_size": 2, **over})


def test_summary_figures_and_items_in_sqlite(tmp_path):
    exs = gsm8k.load("bundled")[0][:4]
    agent = ScriptedLearner()
    agent.enqueue(
        f"#### {exs[0].answer}", "The answer is 3.", "nothing here", f"so {exs[3].answer}"
    )
    store = Store(tmp_path / "saie.sqlite")
    s = evaluate(cfg_with(), gsm8k, exs, [agent], store, "e", tmp_path)
    assert s["n"] == 4
    assert s["strict"]["correct"] == 1 and s["flexible"]["correct"] == 2
    assert s["parse_failure_rate"] == {"strict": 0.5, "flexible": 0.25}
    lo, hi = s["strict"]["ci95"]
    assert 0 < lo < 0.25 < hi < 1
    rows = store.eval_items("e")
    assert [r["example_id"] for r in rows] == [e.id for e in exs]
    assert json.loads(rows[0]["turns"])[0]["text"] == f"#### {exs[0].answer}"
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == 4
    store.close()


def test_eval_resumes_and_refuses_other_settings(tmp_path):
    exs = gsm8k.load("bundled")[0][:6]
    store = Store(tmp_path / "saie.sqlite")
    checks = {"n": 0}

    def stop():
        checks["n"] += 1
        return checks["n"] > 1  # stop after the first batch

    s1 = evaluate(cfg_with(), gsm8k, exs, [ScriptedLearner()], store, "e", tmp_path, stop=stop)
    assert s1["status"] == "stopped" and s1["n"] == 2
    agent = ScriptedLearner()
    s2 = evaluate(cfg_with(), gsm8k, exs, [agent], store, "e", tmp_path)
    assert s2["status"] == "finished" and s2["n"] == 6
    asked = [h for h in agent.history if h["call"] == "generate"]
    assert sum(len(h["chats"]) for h in asked) == 4  # only the missing items
    # each batch reseeds from its first item's position: 2 batches, positions 2 and 4
    assert [h["seed"] for h in agent.history if h["call"] == "reseed"] == [2, 4]
    with pytest.raises(UserError, match=r"holds an evaluation with other settings \(k, strategy"):
        evaluate(
            cfg_with(**{"eval.strategy": "self-consistency"}),
            gsm8k,
            exs,
            [ScriptedLearner()],
            store,
            "e",
            tmp_path,
        )
    store.close()


def test_compare_refuses_different_items():
    a = {"items": [{"id": "1", "strict_correct": True, "flexible_correct": True}]}
    b = {"items": [{"id": "2", "strict_correct": True, "flexible_correct": True}]}
    with pytest.raises(
        UserError, match=r"different items \(n=1 vs n=1; 1 only in A, 1 only in B\)"
    ):
        compare(a, b)


def test_cli_eval_twice_then_compare(tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    base = ["eval", "--backend", "scripted", "--data", "bundled", "--limit", "6"]
    r = runner.invoke(app, [*base, "--out", str(out_a)])
    assert r.exit_code == 0, r.output
    assert "strict   accuracy 0.0%  95% CI [0.0%, 39.0%]" in r.output
    r = runner.invoke(
        app, [*base, "--strategy", "self-consistency", "--k", "3", "--out", str(out_b)]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compare", str(out_a), str(out_b)])
    assert r.exit_code == 0 and "paired over n=6 items" in r.output
    assert "no significant difference (p=1)" in r.output
    r = runner.invoke(
        app,
        [
            "eval",
            "--backend",
            "scripted",
            "--data",
            "bundled",
            "--limit",
            "4",
            "--out",
            str(tmp_path / "c"),
        ],
    )
    r = runner.invoke(app, ["compare", str(out_a), str(tmp_path / "c")])
    assert r.exit_code == 2 and "the evaluations cover different items (n=6 vs n=4" in r.output


def test_cli_loglik_needs_multiple_choice():
    r = runner.invoke(app, ["eval", "--backend", "scripted", "--scoring", "loglik"])
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: config: eval.scoring 'loglik' scores choice letters: use it with commonsense_qa or mmlu"
    )
