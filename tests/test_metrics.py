"""Eval metrics beside accuracy (nll, rouge), their intervals, and compare's paired tests
for continuous metrics (issue 14)."""

import json
import math

import pytest
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner
from saie_lite.cli import app
from saie_lite.errors import UserError
from saie_lite.evaluate.evaluation import evaluate
from saie_lite.evaluate.metrics import mean_ci, resolve
from saie_lite.evaluate.pairing import compare
from saie_lite.evaluate.stats import paired_continuous
from saie_lite.remarks import rouge_l
from saie_lite.store import Store
from saie_lite.tasks import gsm8k

runner = CliRunner()


def test_rouge_l_known_values():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("completely different words", "the cat sat") == 0.0
    # LCS 'the cat was under the bed' = 6 tokens: P = 6/7, R = 1, F = 12/13
    assert rouge_l("the cat was found under the bed", "the cat was under the bed") == (
        pytest.approx(12 / 13)
    )
    # LCS 'police killed the gunman' = 3 of 4 ('the' order), P = R = 3/4
    assert rouge_l("police kill the gunman", "police killed the gunman") == pytest.approx(0.75)
    assert rouge_l("", "anything") == 0.0


def test_mean_ci_is_a_student_t_interval():
    from scipy import stats

    vals = [0.2, 0.4, 0.9, 0.5, 0.3]
    m = mean_ci(vals)
    lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=0.46, scale=stats.sem(vals))
    assert m["mean"] == pytest.approx(0.46)
    assert m["ci95"] == pytest.approx([lo, hi])
    assert mean_ci([1.0])["ci95"] == [None, None]


def test_intervals_stay_within_what_a_metric_can_be():
    # ROUGE near 0 with a wide spread: the t-interval's lower end would be below 0
    vals = [0.0, 0.0, 0.0, 0.9]
    assert mean_ci(vals)["ci95"][0] < 0
    lo, hi = mean_ci(vals, bounds=(0.0, 1.0))["ci95"]
    assert lo == 0.0 and hi == pytest.approx(mean_ci(vals)["ci95"][1])
    lo, hi = mean_ci([1.0, 1.0, 1.0, 0.1], bounds=(0.0, 1.0))["ci95"]
    assert hi == 1.0 and 0 < lo < 1
    # a paired difference of ROUGE values cannot pass +-1; of accuracies neither
    p = paired_continuous([0.0, 0.0, 0.0], [1.0, 1.0, 0.0], bounds=(0.0, 1.0))
    assert p["diff_ci"][1] == 1.0 and p["diff_ci"][0] < p["diff"]
    from saie_lite.evaluate.stats import paired

    lo, hi = paired([False] * 3, [True, True, False]).diff_ci  # Wald's upper end: 1.2
    assert lo < 2 / 3 < hi <= 1.0


def test_paired_continuous_matches_scipy():
    from scipy import stats

    a = [2.1, 1.9, 2.5, 2.2, 1.7, 2.8, 2.0, 2.4]
    b = [1.8, 1.9, 2.1, 2.0, 1.9, 2.2, 1.6, 2.3]
    p = paired_continuous(a, b)
    assert p["t_p"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert p["wilcoxon_p"] == pytest.approx(stats.wilcoxon(b, a).pvalue)
    d = [y - x for x, y in zip(a, b)]
    assert p["diff"] == pytest.approx(sum(d) / len(d))
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=p["diff"], scale=stats.sem(d))
    assert p["diff_ci"] == pytest.approx([lo, hi])
    same = paired_continuous(a, a)
    assert same["t_p"] == 1.0 and same["wilcoxon_p"] == 1.0 and same["diff_ci"] == [0, 0]


def cfg_with(**over):
    return config.build(overrides={"learner.backend": "scripted", "eval.batch_size": 2, **over})


def test_eval_stores_metrics_per_item_with_intervals(tmp_path):
    exs = gsm8k.load("bundled")[0][:4]
    nlls = {ex.reference: v for ex, v in zip(exs, (0.7, 1.3, 2.9, 0.4))}

    class KnownNLL(ScriptedLearner):
        def nll(self, chats, targets):  # each reference's own value, whatever the order
            return [nlls[t] for t in targets]

    agent = KnownNLL()
    agent.enqueue(exs[0].reference, "nothing here", "The answer is 3.", exs[3].reference)
    store = Store(tmp_path / "saie.sqlite")
    s = evaluate(cfg_with(), gsm8k, exs, [agent], store, "e", tmp_path)
    assert set(s["metrics"]) == {"accuracy", "nll", "rouge"}
    rows = store.eval_items("e")
    assert [r["metrics"]["rouge"] for r in rows][0] == 1.0  # the reference itself
    assert rows[1]["metrics"]["rouge"] == 0.0
    assert [r["metrics"]["nll"] for r in rows] == [0.7, 1.3, 2.9, 0.4]  # each item its own
    assert s["metrics"]["nll"]["mean"] == pytest.approx(1.325)
    r = s["metrics"]["rouge"]
    assert r["n"] == 4 and r["ci95"][0] < r["mean"] < r["ci95"][1]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["items"][0]["metrics"]["rouge"] == 1.0
    assert saved["metrics"]["accuracy"]["mean"] == s["strict"]["accuracy"]
    store.close()


def test_metrics_option_is_checked(tmp_path):
    with pytest.raises(UserError, match="eval.metrics"):
        cfg_with(**{"eval.metrics": "bleu"})
    agent = ScriptedLearner()
    assert resolve("all", gsm8k, "generate", agent) == ["accuracy", "nll", "rouge"]
    assert resolve("all", gsm8k, "loglik", agent) == ["accuracy", "nll"]
    with pytest.raises(UserError, match="rouge does not apply"):
        resolve("rouge", gsm8k, "loglik", agent)
    assert resolve("nll", gsm8k, "generate", agent) == ["nll"]


def test_compare_gives_paired_tests_for_continuous_metrics(tmp_path):
    from scipy import stats

    exs = gsm8k.load("bundled")[0][:6]
    sums = []
    for name, replies in (
        ("a", ["x"] * 6),
        ("b", [e.reference if i % 2 else "#### 1 " + e.question for i, e in enumerate(exs)]),
    ):
        agent = ScriptedLearner()
        agent.enqueue(*replies)
        store = Store(tmp_path / f"{name}.sqlite")
        sums.append(evaluate(cfg_with(), gsm8k, exs, [agent], store, name, tmp_path / name))
        store.close()
    c = compare(*sums)
    ra = [i["metrics"]["rouge"] for i in sums[0]["items"]]
    rb = [i["metrics"]["rouge"] for i in sums[1]["items"]]
    order = sorted(range(6), key=lambda k: sums[0]["items"][k]["id"])
    a_, b_ = [ra[k] for k in order], [rb[k] for k in order]
    assert c["metrics"]["rouge"]["t_p"] == pytest.approx(stats.ttest_rel(b_, a_).pvalue)
    assert c["metrics"]["rouge"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon(b_, a_).pvalue)
    assert c["metrics"]["rouge"]["diff"] > 0
    # same scripted learner, same step: nll identical on both sides
    assert c["metrics"]["nll"]["diff"] == 0 and c["metrics"]["nll"]["t_p"] == 1.0


def test_cli_eval_and_compare_show_metrics(tmp_path):
    base = ["eval", "--backend", "scripted", "--data", "bundled", "--limit", "4"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "  rouge    mean " in r.output and "  nll      mean " in r.output
    r = runner.invoke(app, [*base, "--metrics", "nll", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "rouge" not in r.output
    r = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "paired t p=" in r.output and "Wilcoxon p=" in r.output and "rouge" not in r.output
    r = runner.invoke(app, [*base, "--metrics", "bleu", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output


def test_nll_against_a_hand_computation(tiny_model_dir):
    torch = pytest.importorskip("torch")
    from saie_lite.backends import torch_peft
    from saie_lite.protocols import TrainSequence

    cfg = config.build(overrides={"learner.model": str(tiny_model_dir), "learner.max_seq_len": 512})
    learner = torch_peft.TorchLearner(cfg)
    chats = [
        [{"role": "user", "content": "What is 2 + 3?"}],
        [{"role": "system", "content": "Solve."}, {"role": "user", "content": "Tom has 4 apples."}],
    ]
    targets = ["2 + 3 = 5\n#### 5", "He eats one, so 4 - 1 = 3 apples are left.\n#### 3"]
    got = learner.nll(chats, targets)
    for chat, target, value in zip(chats, targets, got):
        ids, labels = learner.encode(TrainSequence(chat, target))
        with torch.no_grad():
            logits = learner.model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        terms = [
            -float(logp[t - 1, labels[t]])
            for t in range(1, len(ids))
            if labels[t] != torch_peft.IGNORE
        ]
        assert value == pytest.approx(sum(terms) / len(terms), rel=1e-4)
        assert not math.isnan(value)
    # batching (and its padding) does not change an item's value
    assert learner.nll(chats[:1], targets[:1])[0] == pytest.approx(got[0], rel=1e-4)
