"""``saie-lite ablate`` with discussion at inference (``ablate.strategies``) and several
training seeds (``ablate.seeds``), end to end on scripted models, with a stop and resume
mid-experiment; the seed statistics against scipy on fixed data."""

import io
import json
import statistics

import pytest
from scipy import stats as sp
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.cli import app
from saie_lite.errors import UserError
from saie_lite.evaluate import ablation
from saie_lite.evaluate.ablation import run_ablation
from saie_lite.evaluate.stats import over_seeds, spread
from saie_lite.ui.ablate_view import PlainAblateView

SETS = {
    "learner.backend": "scripted",
    "partner.backend": "scripted",
    "data.limit": 10,
    "data.split": "nodev",
    "ablate.eval_limit": 6,
    "ablate.systems": "sft,saie",
    "train.batch_size": 2,
    "train.save_every": 1,
    "method.warmup_fraction": 0.2,
    "eval.batch_size": 3,
}
PNG = b"\x89PNG\r\n\x1a\n"
# base + sft and saie with 2 seeds each: 5 updates per run, 6 items per evaluation
TRAIN_UNITS = 2 * 2 * 5
EVALS_PER_STRATEGY = 1 + 2 * 2


def cfg(**over):
    return config.build(overrides={**SETS, **over})


class StopView(PlainAblateView):
    """The plain view, whose ``stop`` asks to stop once N units of the whole experiment
    (counted as the progress bar counts them, finished parts included) are done."""

    def __init__(self, after: int | None = None):
        super().__init__(io.StringIO())
        self.after = after

    def stop(self) -> bool:
        return self.after is not None and self.done >= self.after

    @property
    def text(self) -> str:
        return self.out.getvalue()


def run(c, out, after=None):
    view = StopView(after)
    return run_ablation(c, out, view, view.stop), view.text


def comparable(res: dict) -> list:
    """What a run's results say, less its timings."""
    return [
        (name, [(r["system"], r["metrics"], r["p"], r["updates"], r["seeds"]) for r in rows])
        for name, rows in ablation.blocks(res)
    ]


def test_strategies_and_seeds_end_to_end_stop_and_resume_match_one_go(tmp_path):
    c = cfg(**{"ablate.seeds": 2})
    evals = 3 * EVALS_PER_STRATEGY * 6
    # one go, for reference
    whole, text = run(c, tmp_path / "one")
    assert whole["status"] == "finished"
    counts = [line.split("]")[0][1:] for line in text.splitlines() if line.startswith("[")]
    assert counts[-1] == f"{TRAIN_UNITS + evals}/{TRAIN_UNITS + evals}"

    out = tmp_path / "exp"
    # stop inside sft's second seed (units 10-14)
    res, _ = run(c, out, after=12)
    assert res["status"] == "stopped"
    runs = out / "runs"
    assert all((runs / s / "finished.json").is_file() for s in ("sft", "saie"))
    assert not (runs / "sft-seed1" / "finished.json").is_file()
    assert not (out / "evals").exists()
    kept = {s: (runs / s / "finished.json").stat().st_mtime_ns for s in ("sft", "saie")}
    # then stop in the second strategy's evaluations
    res, text = run(c, out, after=TRAIN_UNITS + 5 * 6 + 9)
    assert res["status"] == "stopped"
    assert "note: sft-seed1: resuming its run" in text
    assert "train sft " not in text and "train saie " not in text  # seed 0 reused
    assert (out / "evals" / "saie-seed1" / "summary.json").is_file()
    half = json.loads((out / "evals" / "self-discussion" / "sft" / "summary.json").read_text())
    assert (half["status"], half["n"]) == ("stopped", 3)  # one batch of its two
    res, text = run(c, out)
    assert res["status"] == "finished"
    assert "] train " not in text and "eval base 3/6" not in text
    assert "eval base self-discussion" not in text  # finished evaluations are reused
    assert {s: (runs / s / "finished.json").stat().st_mtime_ns for s in kept} == kept
    assert comparable(res) == comparable(whole)  # stopping twice changed nothing

    # every trained system, every seed: its own run with train.seed = base seed + i
    seeds = {d.name: config.load_yaml(d / "config.yaml")["train"]["seed"] for d in runs.iterdir()}
    assert seeds == {"sft": 0, "sft-seed1": 1, "saie": 0, "saie-seed1": 1}
    # every system, the base included, under every strategy on the same items
    for st in ("self-discussion", "debate"):
        names = sorted(p.name for p in (out / "evals" / st).iterdir())
        assert names == ["base", "saie", "saie-seed1", "sft", "sft-seed1"]
    ids = {
        json.dumps([i["id"] for i in json.loads((d / "summary.json").read_text())["items"]])
        for d in [out / "evals" / "sft", out / "evals" / "debate" / "saie-seed1"]
    }
    assert len(ids) == 1
    debate = json.loads((out / "evals" / "debate" / "saie" / "summary.json").read_text())
    assert debate["settings"]["strategy"] == "debate"
    assert len(debate["settings"]["agents"]) == 2  # the learner with the run's partner
    assert debate["settings"]["agents"][0].startswith("scripted+saie@")

    assert res["strategy"] == "single" and list(res["strategies"]) == ["self-discussion", "debate"]
    assert res["seeds"] == 2
    rows = {r["system"]: r for r in res["rows"]}
    assert rows["base"]["seeds"] == 1 and rows["saie"]["seeds"] == 2
    acc = rows["saie"]["metrics"]["accuracy"]
    assert acc["seeds"] == [0.0, 0.0] and acc["sd"] == 0.0 and acc["n"] == 6
    assert rows["base"]["metrics"]["nll"]["sd"] is None  # one run: no spread
    p = rows["saie"]["p"]
    assert set(p) == {"vs sft"}  # no single-stance rows asked for
    assert p["vs sft"]["nll"]["seeds_test"] == "welch"
    assert rows["base"]["p"]["vs sft"]["nll"]["seeds_test"] == "one-sample"
    # the untrained stand-in's nll is worse: over items and over sft's seeds
    assert rows["base"]["p"]["vs sft"]["nll"]["diff"] > 0
    assert rows["base"]["p"]["vs sft"]["nll"]["seeds_p"] == 0.0  # no spread, a shift

    table = (out / "table.md").read_text()
    assert "### self-discussion: the system revises its own answer for 2 round(s)" in table
    assert "### debate: the system and the partner (scripted:" in table
    assert sum(line.startswith("| saie |") for line in table.splitlines()) == 3
    assert "accuracy % (mean ± sd over 2 seeds, min–max)" in table
    assert "| base | 0.0 (1 run) |" in table and "Welch" in table
    png = (out / "ablation.png").read_bytes()
    assert png[:8] == PNG and len(png) > 5000
    saved = json.loads((out / "results.json").read_text())
    assert [r["system"] for r in saved["rows"]] == ["base", "sft", "saie"]
    assert [r["system"] for r in saved["strategies"]["debate"]["rows"]] == ["base", "sft", "saie"]

    # a strategy added later evaluates only itself; nothing trains
    res, text = run(cfg(**{"ablate.seeds": 2, "ablate.strategies": "single,self-consistency"}), out)
    assert res["status"] == "finished" and "] train " not in text
    assert {line.split()[3] for line in text.splitlines() if "] eval " in line} == {
        "self-consistency"
    }
    assert [name for name, _ in ablation.blocks(res)] == ["single", "self-consistency"]


def test_self_consistency_generates_what_self_discussion_does(tmp_path):
    """The budget: k = 1 + eval.rounds samples, as many answers (and, from one scripted
    learner, as many tokens) as self-discussion generates."""
    over = {"ablate.systems": "sft", "ablate.strategies": "self-discussion,self-consistency"}
    res, _ = run(cfg(**over, **{"eval.rounds": 3}), tmp_path / "e")
    assert res["status"] == "finished" and res["strategy"] == "self-discussion"
    assert res["settings"]["self_consistency_k"] == 4
    sums = {
        st: json.loads((tmp_path / "e" / "evals" / st / "sft" / "summary.json").read_text())
        for st in ("self-discussion", "self-consistency")
    }
    assert sums["self-consistency"]["settings"]["k"] == 4
    assert sums["self-discussion"]["settings"]["rounds"] == 3
    tokens = {st: s["tokens_generated"] for st, s in sums.items()}
    assert tokens["self-consistency"] == tokens["self-discussion"] > 0
    # one seed: the tests of before seeds (McNemar for accuracy), no seed test
    sft = {r["system"]: r for r in res["rows"]}["base"]["p"]["vs sft"]
    assert "mcnemar_p" in sft["accuracy"] and "seeds_p" not in sft["nll"]


def test_train_seed_orders_the_data_and_seed_zero_keeps_the_old_order():
    import random

    from saie_lite.train.loop import schedule

    c = cfg()
    old = list(range(10))
    random.Random(c.data.seed).shuffle(old)  # the order before train.seed joined in
    b0 = schedule(10, c)
    assert [i for b in b0 if b.phase == "warmup" for i in b.indices] == old[:2]
    c1 = cfg(**{"train.seed": 1})
    assert [b.indices for b in schedule(10, c1)] != [b.indices for b in b0]


def test_strategies_and_seeds_are_checked_in_one_line():
    with pytest.raises(UserError, match="ablate.strategies: distinct names among single"):
        cfg(**{"ablate.strategies": "single,bogus"})
    with pytest.raises(UserError, match="ablate.strategies"):
        cfg(**{"ablate.strategies": "debate,debate"})
    with pytest.raises(UserError, match=r"ablate.seeds must be in \[1, 100\]"):
        cfg(**{"ablate.seeds": 0})
    r = CliRunner().invoke(app, ["ablate", "--set", "ablate.strategies=vote"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "ablate.strategies" in r.output


def test_over_seeds_matches_scipy_on_fixed_data():
    a, b = [0.41, 0.38, 0.45, 0.40], [0.47, 0.52, 0.44]
    w = over_seeds(a, b)
    ref = sp.ttest_ind(b, a, equal_var=False)
    assert w["test"] == "welch" and w["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert w["diff"] == pytest.approx(sum(b) / 3 - sum(a) / 4)
    one = over_seeds([0.9], b)  # the base: one run
    assert one["test"] == "one-sample"
    assert one["p"] == pytest.approx(sp.ttest_1samp(b, 0.9).pvalue, rel=1e-12)
    assert over_seeds(b, [0.9])["p"] == pytest.approx(one["p"], rel=1e-12)
    assert over_seeds([0.5], [0.6])["p"] is None  # nothing varies by seed
    assert over_seeds([0.5, 0.5], [0.6, 0.6])["p"] == 0.0  # no spread, a shift
    assert over_seeds([0.5, 0.5], [0.5, 0.5])["p"] == 1.0
    s = spread([0.41, 0.38, 0.45])
    assert s["sd"] == pytest.approx(statistics.stdev([0.41, 0.38, 0.45]))
    assert (s["min"], s["max"]) == (0.38, 0.45) and spread([0.4])["sd"] is None


def _summary(correct: list[int], nll: list[float]) -> dict:
    n = len(correct)
    return {
        "metrics": {
            "accuracy": {"mean": sum(correct) / n},
            "nll": {"mean": sum(nll) / n},
        },
        "items": [
            {"id": f"i{k}", "strict_correct": bool(c), "metrics": {"nll": v}}
            for k, (c, v) in enumerate(zip(correct, nll))
        ],
    }


def test_seed_tests_pair_items_on_seed_averaged_scores_like_scipy():
    sft = [
        _summary([1, 0, 0, 1, 0, 1], [1.2, 2.0, 1.7, 0.9, 2.2, 1.1]),
        _summary([1, 1, 0, 1, 0, 1], [1.1, 1.8, 1.9, 1.0, 2.4, 1.0]),
    ]
    saie = [
        _summary([1, 1, 0, 1, 1, 1], [1.0, 1.6, 1.5, 0.8, 2.1, 1.0]),
        _summary([1, 1, 1, 1, 0, 1], [0.9, 1.7, 1.4, 0.9, 1.9, 0.8]),
        _summary([1, 0, 1, 1, 1, 0], [1.1, 1.5, 1.6, 0.7, 2.0, 0.9]),
    ]
    p = ablation._pvals_seeds(sft, saie, ["accuracy", "nll"])
    for m, key in (("accuracy", "strict_correct"), ("nll", None)):

        def per_item(runs, m=m, key=key):
            vals = [[float(i[key]) if key else i["metrics"][m] for i in r["items"]] for r in runs]
            return [sum(col) / len(col) for col in zip(*vals)]

        a, b = per_item(sft), per_item(saie)
        assert p[m]["t_p"] == pytest.approx(sp.ttest_rel(b, a).pvalue, rel=1e-12)
        assert p[m]["wilcoxon_p"] == pytest.approx(sp.wilcoxon(b, a).pvalue, rel=1e-12)
        assert p[m]["diff"] == pytest.approx(sum(b) / 6 - sum(a) / 6)
        means_a = [r["metrics"][m]["mean"] for r in sft]
        means_b = [r["metrics"][m]["mean"] for r in saie]
        welch = sp.ttest_ind(means_b, means_a, equal_var=False).pvalue
        assert p[m]["seeds_test"] == "welch"
        assert p[m]["seeds_p"] == pytest.approx(welch, rel=1e-12)
    row = ablation._seed_metric(saie, "nll")
    assert row["mean"] == pytest.approx(statistics.mean(r["metrics"]["nll"]["mean"] for r in saie))
    assert row["sd"] == pytest.approx(statistics.stdev(r["metrics"]["nll"]["mean"] for r in saie))


def test_results_from_before_strategies_still_read_and_report():
    from saie_lite.report.ablation_page import table_html

    old = {"rows": [{"system": "base"}], "metrics": []}
    assert ablation.blocks(old) == [("single", old["rows"])]
    html = table_html("### single: one\n\n| a |\n|---|\n| 1 |\n\n### debate: two\n\n| a |\n|---|\n")
    assert html == (
        "<h3>single: one</h3><table><tr><th>a</th></tr><tr><td>1</td></tr></table>"
        "<h3>debate: two</h3><table><tr><th>a</th></tr></table>"
    )
