"""`logs export RUN --format dataset`: every training target of a run, as a Hugging Face
dataset that `datasets` loads (the layout TRL's self-distillation trainers read)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from saie_lite.cli import app
from saie_lite.store import Store

datasets = pytest.importorskip("datasets")
runner = CliRunner()


def test_run_exports_every_target_and_loads_in_datasets(tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        ["train", "--dry-run", "--limit", "6", "--live", "quiet", "--run-dir", str(run),
         "--set", "train.batch_size=2"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["logs", "export", str(run), "--format", "dataset"])
    assert r.exit_code == 0, r.output
    out = run / "export" / "dataset"
    assert r.output.strip() == f"wrote {out}"
    ds = datasets.load_dataset(str(out), split="train")
    with contextlib.closing(Store(run / "saie.sqlite")) as s:
        targets = s.db.execute("SELECT COUNT(*) FROM turns WHERE role = 'target'").fetchone()[0]
        remarks = {
            (step, ex, stance): text
            for step, ex, stance, text in s.db.execute(
                "SELECT step, example_id, stance, text FROM turns WHERE role = 'partner'"
            )
        }
        answers = {
            (step, ex): (text, bool(c))
            for step, ex, text, c in s.db.execute(
                "SELECT step, example_id, text, correct FROM turns "
                "WHERE role = 'learner' AND turn = 0"
            )
        }
    assert len(ds) == targets == 1 + 2 * 5  # one warm-up example, then 5 examples x 2 stances
    for col in (
        "prompt",
        "completion",
        "privileged_context",
        "stance",
        "learner_answer",
        "correct",
    ):
        assert col in ds.column_names
    stances = sorted(set(ds["stance"]))
    assert stances == ["adversarial", "plain", "supportive"]
    for row in ds:
        assert row["prompt"][-1]["role"] == "user" and row["completion"]
        if row["stance"] == "plain":
            assert row["privileged_context"] == "" and row["learner_answer"] == ""
            continue
        key = (row["step"], row["example_id"])
        assert row["privileged_context"] == remarks[(*key, row["stance"])]
        assert (row["learner_answer"], row["correct"]) == answers[key]
        # the discussion is the prompt, the answer, then the remark
        assert row["discussion"][: len(row["prompt"])] == row["prompt"]
    assert "privileged_context" in (out / "README.md").read_text()
    # a second export does not overwrite the first
    r = runner.invoke(app, ["logs", "export", str(run), "--format", "dataset"])
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: {out} exists and is not empty: pick another --out or remove it"
    )
    assert json.loads(json.dumps(ds[0]["prompt"]))  # plain JSON-able chat


def test_dataset_export_of_a_directory_that_is_no_run(tmp_path):
    r = runner.invoke(app, ["logs", "export", str(tmp_path), "--format", "dataset"])
    assert r.exit_code == 2
    assert (
        r.output.strip() == f"error: {tmp_path} has no saie.sqlite: give a training run directory"
    )
    r = runner.invoke(app, ["logs", "export", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: '{tmp_path}' is not a debate number: see 'saie-lite logs list' "
        "(a run directory needs --format dataset)"
    )


def _export(tmp_path, *flags) -> tuple:
    """A real dry run, exported by the installed command in its own process (so its stderr
    is what a terminal would show), loaded back with `datasets`."""
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        ["train", "--dry-run", "--limit", "4", "--live", "quiet", "--run-dir", str(run),
         "--set", "train.batch_size=2"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = tmp_path / "dataset"
    p = subprocess.run(
        [sys.executable, "-m", "saie_lite.cli", "logs", "export", str(run), "--format",
         "dataset", "--out", str(out), *flags],
        capture_output=True, text=True, env={**os.environ, "SAIE_LITE_HOME": str(tmp_path)},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"wrote {out}\n"
    assert p.stderr == ""  # no progress bar drawn over the terminal
    return datasets.load_dataset(str(out), split="train"), out


def _train_one_step(ds, model_dir, tmp_path) -> float:
    """TRL's SFTTrainer, one update on the CPU: the export must be usable as it is."""
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=1,
        per_device_train_batch_size=2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        max_length=256,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1
    return result.training_loss


def test_sft_trainer_trains_on_the_conversational_export(tmp_path, tiny_model_dir):
    ds, out = _export(tmp_path)
    row = ds[0]
    assert row["prompt"][-1]["role"] == "user"
    assert row["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}]
    # TRL's self-distillation trainers read the remark as a string (empty for warm-up rows)
    assert all(isinstance(r["privileged_context"], str) for r in ds)
    assert any(r["privileged_context"] for r in ds)
    assert "as one assistant message" in (out / "README.md").read_text()
    assert math.isfinite(_train_one_step(ds, tiny_model_dir, tmp_path))


def test_sft_trainer_trains_on_the_text_export(tmp_path, tiny_model_dir):
    ds, out = _export(tmp_path, "--text")
    for row in ds:
        assert isinstance(row["prompt"], str) and isinstance(row["completion"], str)
        # the question is in the text prompt, and a blank line sets off the completion
        assert row["prompt"].endswith("\n\n") and row["discussion"][1]["content"] in row["prompt"]
    assert "--format dataset --text" in (out / "README.md").read_text()
    assert math.isfinite(_train_one_step(ds, tiny_model_dir, tmp_path))


def test_text_goes_with_the_dataset_format():
    r = runner.invoke(app, ["logs", "export", "1", "--text"])
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: --text goes with --format dataset (md and json are text already)"
    )
