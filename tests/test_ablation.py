"""``saie-lite ablate`` end to end on scripted models: rows, table, results, plot, and a
stop and resume that reuses finished rows (issue 14)."""

import io
import json

import pytest
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.cli import app
from saie_lite.errors import UserError
from saie_lite.evaluate.ablation import run_ablation
from saie_lite.store import Store
from saie_lite.ui.ablate_view import PlainAblateView

SETS = {
    "learner.backend": "scripted",
    "partner.backend": "scripted",
    "data.limit": 10,
    "data.split": "nodev",
    "ablate.eval_limit": 6,
    "train.batch_size": 2,
    "train.save_every": 1,
    "method.warmup_fraction": 0.2,
    "eval.batch_size": 3,
    # one strategy keeps these fast; tests/test_ablation_strategies.py runs the others
    "ablate.strategies": "single",
}
PNG = b"\x89PNG\r\n\x1a\n"


def cfg(**over):
    return config.build(overrides={**SETS, **over})


class StopAfter:
    def __init__(self, n):
        self.n = n

    def __call__(self):
        self.n -= 1
        return self.n < 0


def test_ablate_end_to_end_then_stop_and_resume_reuses_finished_rows(tmp_path):
    out = tmp_path / "exp"
    buf = io.StringIO()
    # 5 updates per mode, 2 stop checks per update: stop inside the second system
    res = run_ablation(cfg(), out, PlainAblateView(buf), StopAfter(14))
    assert res["status"] == "stopped"
    assert (out / "runs" / "sft" / "finished.json").is_file()
    assert not (out / "runs" / "saie-support" / "finished.json").is_file()
    first_sft = (out / "runs" / "sft" / "finished.json").stat().st_mtime_ns
    store = Store(out / "runs" / "sft" / "saie.sqlite")
    sft_rows = store.db.execute("SELECT step, created FROM steps").fetchall()
    store.close()

    buf = io.StringIO()
    res = run_ablation(cfg(), out, PlainAblateView(buf))
    text = buf.getvalue()
    assert res["status"] == "finished"
    assert "resuming: " in text and "note: saie-support: resuming its run" in text
    assert "train sft" not in text  # the finished row was not trained again
    assert (out / "runs" / "sft" / "finished.json").stat().st_mtime_ns == first_sft
    store = Store(out / "runs" / "sft" / "saie.sqlite")
    assert store.db.execute("SELECT step, created FROM steps").fetchall() == sft_rows
    store.close()
    # one bar: the last line reaches the total
    counts = [line.split("]")[0][1:] for line in text.splitlines() if line.startswith("[")]
    done, total = counts[-1].split("/")
    assert done == total == str(5 * 4 + 6 * 5)

    rows = {r["system"]: r for r in res["rows"]}
    assert list(rows) == ["base", "sft", "saie-support", "saie-adversarial", "saie"]
    assert {r["updates"] for s, r in rows.items() if s != "base"} == {5}
    assert rows["base"]["updates"] == 0
    assert rows["saie"]["target_tokens"] > rows["sft"]["target_tokens"]  # two stances
    assert set(rows["sft"]["metrics"]) == {"accuracy", "nll", "rouge"}
    assert set(rows["saie"]["p"]) == {"vs sft", "vs saie-support", "vs saie-adversarial"}
    assert rows["saie"]["p"]["vs sft"]["accuracy"]["mcnemar_p"] == 1.0
    assert rows["base"]["p"]["vs sft"]["nll"]["diff"] > 0  # the untrained stand-in is worse
    assert rows["saie"]["remarks"]["adversarial"]["on_stance"] == 1.0
    assert rows["sft"]["remarks"] == {}

    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"][0]["system"] == "base" and saved["n_eval"] == 6
    table = (out / "table.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 6  # header + 5
    assert "| saie | 0.0 [0.0, 39.0] |" in table
    assert "McNemar" in table and "Wilcoxon" in table
    png = (out / "ablation.png").read_bytes()
    assert png[:8] == PNG and len(png) > 5000

    # a third run reuses everything and trains or evaluates nothing
    buf = io.StringIO()
    run_ablation(cfg(), out, PlainAblateView(buf))
    assert "train " not in buf.getvalue() and "eval " not in buf.getvalue()


def test_ablate_refuses_changed_settings_and_overlapping_rows(tmp_path):
    out = tmp_path / "exp"
    run_ablation(cfg(**{"ablate.systems": "base,sft"}), out, PlainAblateView(io.StringIO()))
    assert (out / "table.md").is_file()
    with pytest.raises(UserError, match=r"other settings \(train.lr\)"):
        run_ablation(
            cfg(**{"ablate.systems": "base,sft", "train.lr": 0.1}),
            out,
            PlainAblateView(io.StringIO()),
        )
    # rows may be added or dropped: the others are reused; the base row stays unless
    # turned off
    buf = io.StringIO()
    res = run_ablation(cfg(**{"ablate.systems": "sft"}), out, PlainAblateView(buf))
    assert [r["system"] for r in res["rows"]] == ["base", "sft"] and "train " not in buf.getvalue()
    buf = io.StringIO()
    over = {"ablate.systems": "sft", "ablate.base": False}
    res = run_ablation(cfg(**over), out, PlainAblateView(buf))
    assert [r["system"] for r in res["rows"]] == ["sft"] and "eval " not in buf.getvalue()
    with pytest.raises(UserError, match="ablate.base is false but ablate.systems names base"):
        cfg(**{"ablate.systems": "base,sft", "ablate.base": False})
    # dev rows are carved out of the file: a split named that holds them is refused
    for split in ("dev", "all"):
        with pytest.raises(UserError, match="would share rows"):
            run_ablation(
                cfg(**{"data.split": split}), tmp_path / "x", PlainAblateView(io.StringIO())
            )
    assert not (tmp_path / "x").exists()


def test_ablate_trains_on_nodev_when_the_split_is_left_at_train(tmp_path):
    """A local file's (or the bundled rows') 'train' is every row: the ablation picks the
    held-out split for the user instead of refusing, and says so."""
    buf = io.StringIO()
    over = {"data.split": "train", "ablate.systems": "sft", "ablate.base": False}
    res = run_ablation(cfg(**over), tmp_path / "e", PlainAblateView(buf))
    assert res["status"] == "finished"
    assert "note: training on data.split=nodev, evaluating on the held-out dev rows" in (
        buf.getvalue()
    )
    assert res["settings"]["train_split"] == "nodev" and res["settings"]["eval_split"] == "dev"
    saved = config.load_yaml(tmp_path / "e" / "config.yaml")
    assert saved["data"]["split"] == "nodev"  # a resume compares like with like


def test_ablate_resumes_by_the_one_rule(tmp_path):
    """What may change on a resumed ablation is config.resume_changes' rule: a partner's
    server settings may (noted), how far a row trains may not (finished rows would not
    follow)."""
    out = tmp_path / "exp"
    over = {"ablate.systems": "sft", "ablate.base": False}
    run_ablation(cfg(**over), out, PlainAblateView(io.StringIO()))
    buf = io.StringIO()
    run_ablation(cfg(**over, **{"partner.timeout": 5.0}), out, PlainAblateView(buf))
    assert "note: resume: partner.timeout changed to 5.0" in buf.getvalue()
    with pytest.raises(UserError, match=r"other settings \(method.rounds\)"):
        run_ablation(cfg(**over, **{"method.rounds": 3}), out, PlainAblateView(io.StringIO()))


def test_cli_ablate_writes_outputs_and_bad_input_is_one_line(tmp_path):
    sets = [a for k, v in SETS.items() for a in ("--set", f"{k}={v}")]
    sets += ["--set", "ablate.systems=sft,saie"]
    r = CliRunner().invoke(app, ["ablate", *sets, "--out", str(tmp_path / "e"), "--live", "plain"])
    assert r.exit_code == 0, r.output
    assert "| saie |" in r.output
    assert (tmp_path / "e" / "ablation.png").read_bytes()[:8] == PNG
    r = CliRunner().invoke(app, ["ablate", "--set", "ablate.systems=sft,bogus"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "ablate.systems" in r.output


def test_logs_list_shows_ablations(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SAIE_LITE_HOME", str(home))
    sets = [a for k, v in SETS.items() for a in ("--set", f"{k}={v}")]
    sets += ["--set", "ablate.systems=sft"]
    r = CliRunner().invoke(app, ["ablate", *sets, "--live", "plain"])  # default: ablations/ablate
    assert r.exit_code == 0, r.output
    (home / "ablations" / "half-done").mkdir()
    r = CliRunner().invoke(app, ["logs", "list"])
    lines = r.output.splitlines()
    i = lines.index("ablations (2):")
    assert lines[i + 1 :] == [
        f"  {home / 'ablations' / 'ablate'}",
        "      finished: table.md, results.json, ablation.png",
        f"  {home / 'ablations' / 'half-done'}",
        "      not finished: the same ablate command continues it",
    ]


def test_ablate_on_a_tiny_torch_model(tmp_path, tiny_model_dir):
    """The real learner path: LoRA training, adapters loaded for evaluation, nll from
    the torch backend; base and the trained rows differ in nll."""
    pytest.importorskip("peft")
    c = cfg(
        **{
            "learner.backend": "torch",
            "learner.model": str(tiny_model_dir),
            "learner.max_new_tokens": 8,
            "learner.max_seq_len": 512,
            "eval.max_new_tokens": 8,
            "data.limit": 6,
            "ablate.eval_limit": 4,
            "ablate.systems": "base,sft,saie",
            "train.lr": 0.01,
        }
    )
    res = run_ablation(c, tmp_path / "exp", PlainAblateView(io.StringIO()))
    rows = {r["system"]: r for r in res["rows"]}
    assert rows["sft"]["updates"] == rows["saie"]["updates"] > 0
    nll = {s: r["metrics"]["nll"]["mean"] for s, r in rows.items()}
    assert nll["base"] != nll["sft"] and nll["sft"] != nll["saie"]
    assert (tmp_path / "exp" / "ablation.png").read_bytes()[:8] == PNG


def test_eta_times_each_kind_of_unit_on_its_own():
    from saie_lite.ui.ablate_view import Eta, fmt_eta

    eta = Eta(["plain"] * 2 + ["discussion"] * 3 + ["eval"] * 4, 0)
    assert eta.seconds() is None  # nothing timed yet
    eta.record(2, 2.0)  # two plain updates, 1 s each
    # not timed yet: a discussion update costs 15 plain ones, an item 2 (PRIOR_COST)
    assert eta.seconds() == pytest.approx(3 * 15 + 4 * 2)
    eta.record(1, 30.0)  # a discussion update took 30 s, twice the prior
    # discussions at 30 s; an item from both timed kinds: mean(1/1, 30/15) * 2 = 3 s
    assert eta.seconds() == pytest.approx(2 * 30 + 4 * 3)
    eta.record(2, 50.0)
    eta.record(4, 8.0)  # items timed: 2 s each
    assert eta.seconds() == 0 and eta.rate("eval") == 2.0
    assert fmt_eta(None) == "eta -" and fmt_eta(75) == "eta 1:15" and fmt_eta(3725) == "eta 1:02:05"
