"""The Python API (saie_lite.api, reached from ``saie_lite``) and the flags every command
shares: the same config, checks and core calls as the CLI, summaries back, progress to a
plain callback."""

import json

import pytest
from typer.testing import CliRunner

import saie_lite
from saie_lite.cli import app
from saie_lite.errors import UserError

runner = CliRunner()
SCRIPTED = {"learner": {"backend": "scripted"}, "partner": {"backend": "scripted"}}


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_configure_checks_like_the_cli_and_bad_keys_give_its_line():
    cfg = saie_lite.configure(overrides={"train.lr": 1e-4}, data={"limit": 6})
    assert isinstance(cfg, saie_lite.Config)
    assert (cfg.train.lr, cfg.data.limit) == (1e-4, 6)
    for overrides, sets in [
        ({"train": {"lrr": 1}}, "train.lrr=1"),
        ({"data.limit": "many"}, "data.limit=many"),
        ({"method.mode": "both"}, "method.mode=both"),
    ]:
        with pytest.raises(UserError) as e:
            saie_lite.configure(overrides=overrides)
        r = cli("train", "--dry-run", "--set", sets)
        assert r.exit_code == 2 and r.output.strip() == f"error: {e.value}"
    with pytest.raises(UserError, match="section 'train' .* must be a mapping"):
        saie_lite.configure(train=3)


def test_train_a_dry_run_evaluate_it_and_resume_by_the_rule(tmp_path):
    events = []
    run = tmp_path / "run"
    summary = saie_lite.run_train(
        run_dir=run, dry_run=True, data={"limit": 6}, train={"batch_size": 2},
        callback=events.append,
    )  # fmt: skip
    assert summary["status"] == "finished" and summary["step"] == 4
    kinds = [e["event"] for e in events]
    assert "begin" in kinds
    assert kinds.count("step") == 4 and kinds[-1] == "end"
    assert [e["row"]["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000004"

    got = []
    s = saie_lite.run_eval(
        run=run, out=tmp_path / "ev", data={"limit": 4}, eval={"batch_size": 2},
        callback=got.append,
    )  # fmt: skip
    assert s["status"] == "finished" and s["n"] == 4 and "accuracy" in s["metrics"]
    progress = [e for e in got if e["event"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 4
    assert got[-1]["event"] == "summary" and got[-1]["dir"] == str(tmp_path / "ev")
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n"] == 4

    # a resume changes what the rule lets it change, and refuses the rest with train's line
    with pytest.raises(UserError, match="--resume cannot change train.lr"):
        saie_lite.run_train(resume=run, dry_run=True, train={"lr": 0.1})
    s = saie_lite.run_train(
        resume=run, dry_run=True, train={"max_steps": 4}, callback=events.append
    )
    assert s["status"] == "finished"


def test_a_tiny_ablation_with_scripted_backends_keeps_the_base_row(tmp_path):
    events = []
    res = saie_lite.run_ablate(
        out=tmp_path / "exp", callback=events.append,
        data={"limit": 6}, ablate={"systems": "sft", "eval_limit": 3},
        train={"batch_size": 2}, eval={"batch_size": 3}, **SCRIPTED,
    )  # fmt: skip
    assert res["status"] == "finished"
    assert [r["system"] for r in res["rows"]] == ["base", "sft"]
    assert res["settings"]["train_split"] == "nodev"  # held-out rows picked for the user
    start = next(e for e in events if e["event"] == "start")
    last = [e for e in events if e["event"] == "progress"][-1]
    assert last["done"] == start["total"] and events[-1]["event"] == "finish"
    assert (tmp_path / "exp" / "table.md").is_file()


def test_print_event_writes_plain_lines(capsys):
    from saie_lite.ui.callback_view import print_event

    print_event({"event": "note", "message": "hi\x1b[2J"})
    print_event({"event": "progress", "what": "eval", "done": 2, "total": 4})
    print_event({"event": "begin", "info": {}})
    assert capsys.readouterr().out.splitlines() == ["note: hi\\x1b[2J", "eval 2/4"]


# -- the data flags: one language on every command --------------------------------------
def test_the_data_flags_are_the_same_on_every_command():
    import typer

    root = typer.main.get_command(app)
    seen = {}
    for name in ("train", "eval", "ablate", "debate"):
        params = {o: p for p in root.commands[name].params for o in getattr(p, "opts", [])}
        for flag in ("--task", "--data", "--split", "--limit", "--check"):
            assert flag in params, (name, flag)
            seen.setdefault(flag, set()).add(params[flag].name)
    assert all(len(names) == 1 for names in seen.values())  # the same parameter, same keys


def test_ablate_takes_the_data_flags_and_a_users_file(tmp_path):
    rows = "".join(
        json.dumps({"q": f"What is {i} + 1?", "a": str(i + 1)}) + "\n" for i in range(12)
    )
    data = tmp_path / "mine.jsonl"
    data.write_text(rows)
    r = cli(
        "ablate", "--data", data, "--task", "custom", "--check", "exact", "--limit", 8,
        "--set", "data.question_field=q", "--set", "data.answer_field=a",
        "--set", "ablate.systems=sft", "--set", "ablate.eval_limit=2",
        "--set", "learner.backend=scripted", "--set", "partner.backend=scripted",
        "--set", "train.batch_size=4", "--out", tmp_path / "exp", "--live", "plain",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "note: training on data.split=nodev, evaluating on the held-out dev rows" in r.output
    assert "| base |" in r.output and "| sft |" in r.output
    saved = json.loads((tmp_path / "exp" / "results.json").read_text())["settings"]
    assert saved["data"] == str(data) and saved["train_split"] == "nodev"
    assert saved["train_limit"] == 8


def test_eval_of_a_run_reads_the_data_the_way_the_run_did(tmp_path):
    rows = "".join(json.dumps({"q": f"Capital {i}?", "a": f"City{i}"}) + "\n" for i in range(10))
    data = tmp_path / "mine.jsonl"
    data.write_text(rows)
    run = tmp_path / "run"
    r = cli(
        "train", "--dry-run", "--data", data, "--task", "custom", "--check", "exact",
        "--split", "nodev", "--set", "data.question_field=q", "--set", "data.answer_field=a",
        "--live", "quiet", "--run-dir", run,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    # --data given, nothing else: the run's task, fields and check, not the gsm8k preset
    r = cli("eval", "--run", run, "--data", data, "--limit", 3, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "ev" / "summary.json").read_text())["settings"]
    assert (settings["task"], settings["check"]) == ("custom", "exact")
    assert settings["fields"] == ["q", "a"] and settings["split"] == "train"
    # no --data: the run's own file, on its held-out rows (it trained on nodev)
    r = cli("eval", "--run", run, "--limit", 2, "--out", tmp_path / "ev2")
    assert r.exit_code == 0, r.output
    assert "note: evaluating on the run's held-out dev rows" in r.output
    settings = json.loads((tmp_path / "ev2" / "summary.json").read_text())["settings"]
    assert (settings["data"], settings["split"]) == (str(data), "dev")
    # another task named: the run's reading of its own data is not carried into a preset
    r = cli("eval", "--run", run, "--task", "gsm8k", "--limit", 2, "--out", tmp_path / "ev3")
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "ev3" / "summary.json").read_text())["settings"]
    assert (settings["task"], settings["data"]) == ("gsm8k", "bundled")


def test_debate_builds_from_the_schema_and_reads_data_questions(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+{i}?", "answer": "x"}) + "\n"
                            for i in range(5)))  # fmt: skip
    r = cli("debate", "--data", data, "--limit", 2, "--agents", "scripted:a,scripted:b",
            "--live", "plain", "--rounds", 0)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.count("reference answer:") == 2
    r = cli("debate", "-q", "x", "--agents", "scripted:a", "--set", "eval.rounds=11")
    assert r.exit_code == 2 and r.output.strip() == "error: config: eval.rounds must be in [0, 10]"
    r = cli("debate", "--file", data, "--data", data, "--agents", "scripted:a")
    assert r.exit_code == 2 and "--file and --data both name the questions" in r.output


def test_the_notebook_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "notebook.py"
    out = subprocess.run(
        [sys.executable, str(example), str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("refused: config: unknown key train.lrr")
    assert "trained: finished, 4 updates, losses [1.0, 0.5, 0.333, 0.25]" in lines
    assert "rows: ['base', 'sft']" in lines
    assert (tmp_path / "work" / "ablation" / "ablation.png").is_file()
