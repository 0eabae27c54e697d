"""Faults a newcomer meets end in one line (exit code 2) and lose nothing already written:
broken or deleted checkpoints, a full disk, unwritable directories, binary recipes,
config changes on resume, questions far past the context."""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saie_lite import config
from saie_lite.backends.scripted import ScriptedLearner, ScriptedPartner
from saie_lite.cli import app
from saie_lite.errors import UserError
from saie_lite.store import Store
from saie_lite.tasks import gsm8k
from saie_lite.train import checkpoint
from saie_lite.train.loop import train

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def dry_run(run: Path, *extra):
    return invoke(
        "train", "--dry-run", "--limit", "6", "--live", "plain", "--run-dir", run,
        "--set", "train.batch_size=2", "--set", "train.save_every=1",
        "--set", "train.keep_checkpoints=3", *extra,
    )  # fmt: skip


def resume(run: Path, *extra):
    return invoke("train", "--dry-run", "--resume", run, "--live", "plain", *extra)


@pytest.fixture
def stopped_run(tmp_path):
    """A dry run stopped after 3 of its 4 updates, with checkpoints at 1, 2 and 3."""
    run = tmp_path / "run"
    r = dry_run(run, "--max-steps", "3")
    assert r.exit_code == 0, r.output
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000001", "step-000002", "step-000003"]
    return run


# -- checkpoints ----------------------------------------------------------------------
def test_truncated_checkpoint_falls_back_to_the_previous_one(stopped_run):
    (stopped_run / "checkpoints" / "step-000003" / "scripted.json").write_bytes(b"")
    r = resume(stopped_run, "--max-steps", "4")
    assert r.exit_code == 0, r.output
    assert (
        "checkpoint step-000003: scripted.json is empty: resuming from step-000002 instead"
        in r.output
    )
    assert "finished: 4 updates" in r.output
    with contextlib.closing(Store(stopped_run / "saie.sqlite")) as s:
        assert s.recorded_steps() == 4
        assert s.count("steps") == 4  # update 3 redone once, not stored twice


def test_a_damaged_latest_pointer_resumes_from_the_newest(stopped_run):
    (stopped_run / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00bad")
    r = resume(stopped_run, "--max-steps", "4")
    assert r.exit_code == 0, r.output
    assert "checkpoint 'latest' is unreadable: resuming from step-000003 instead" in r.output
    assert "finished: 4 updates" in r.output


def test_every_checkpoint_broken_names_the_files(stopped_run):
    for name in ("step-000001", "step-000002", "step-000003"):
        f = stopped_run / "checkpoints" / name / "scripted.json"
        f.write_bytes(f.read_bytes()[:3])
    r = resume(stopped_run)
    assert r.exit_code == 2
    size = len(json.dumps({"step": 1}))
    root = stopped_run / "checkpoints"
    assert r.output.strip() == (
        f"error: no usable checkpoint in {root} ("
        f"step-000003: scripted.json is truncated (3 of {size} bytes); "
        f"step-000002: scripted.json is truncated (3 of {size} bytes); "
        f"step-000001: scripted.json is truncated (3 of {size} bytes)); "
        "start a new run, or restore the files and resume again"
    )
    # nothing was thrown away: the broken files are still there to be restored
    assert len(list(root.glob("step-*"))) == 3


def test_corrupt_file_of_the_right_size_is_caught_when_loading(stopped_run):
    f = stopped_run / "checkpoints" / "step-000003" / "scripted.json"
    f.write_bytes(b"x" * f.stat().st_size)
    r = resume(stopped_run)
    assert r.exit_code == 0, r.output
    assert "checkpoint step-000003: unreadable (" in r.output
    assert "resuming from step-000002 instead" in r.output


def test_deleted_checkpoint_directory_falls_back_or_refuses(stopped_run):
    import shutil

    root = stopped_run / "checkpoints"
    shutil.rmtree(root / "step-000003")
    r = resume(stopped_run, "--max-steps", "3")
    assert r.exit_code == 0, r.output
    assert "checkpoint step-000003 was deleted: resuming from step-000002 instead" in r.output
    for p in root.glob("step-*"):
        shutil.rmtree(p)
    r = resume(stopped_run)
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: {stopped_run} recorded 3 updates but has no checkpoint left in {root}; "
        "resuming would start over from update 0: start a new run instead"
    )


class FullDiskLearner(ScriptedLearner):
    """Writes half a checkpoint, then finds the disk full (from its ``full_at`` step on)."""

    full_at = 10**9

    def save(self, directory: Path) -> None:
        super().save(directory)
        if self.step >= self.full_at:
            (Path(directory) / "optimizer.bin").write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_checkpointing_keeps_the_previous_one(tmp_path):
    cfg = config.build(overrides={"train.batch_size": 2, "train.save_every": 1})
    examples = gsm8k.load("bundled")[0][:6]
    learner = FullDiskLearner()
    learner.full_at = 2
    store = Store(tmp_path / "saie.sqlite")
    with pytest.raises(UserError) as e:
        train(cfg, learner, ScriptedPartner(), examples, store, tmp_path)
    root = tmp_path / "checkpoints"
    assert str(e.value) == (
        f"disk full while writing checkpoint step-000002 in {root}: it needs about 1 MB free; "
        "the partial files were removed and step-000001 is kept. Free space, then: "
        f"saie-lite train --resume {tmp_path}"
    )
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]
    assert checkpoint.latest(tmp_path).name == "step-000001"
    # A crash (not a clean failure) can still leave a temporary directory: resume clears it.
    (root / ".tmp-step-000002").mkdir()
    (root / ".tmp-step-000002" / "junk").write_bytes(b"\0" * 100)
    learner = FullDiskLearner()
    notes = []
    state = checkpoint.load(tmp_path, learner, notes.append, store.recorded_steps())
    store.close()
    assert state.step == 1 and not (root / ".tmp-step-000002").exists()
    assert notes == ["removed 1 half-written checkpoint directory(ies) left by a crash"]


def test_checkpoint_files_are_fsynced_before_publishing(tmp_path, monkeypatch):
    import os

    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    learner = ScriptedLearner()
    learner.step = 1
    final = checkpoint.save(tmp_path, learner, checkpoint.LoopState(1, 1), keep=2)
    tmp = str(tmp_path / "checkpoints" / ".tmp-step-000001")
    assert f"{tmp}/scripted.json" in synced and f"{tmp}/state.json" in synced
    assert tmp in synced  # the directory itself, before the rename
    assert final.is_dir() and checkpoint.check_files(final) == {"step": 1, "batches_done": 1}


# -- directories ----------------------------------------------------------------------
def test_run_dir_under_a_regular_file(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    r = dry_run(blocker / "run")
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: run directory {blocker / 'run'} cannot be created: {blocker} is a file, not a "
        "directory; choose another --run-dir, or set SAIE_LITE_HOME to a writable directory"
    )
    assert blocker.read_text() == "keep me"


def test_saie_lite_home_under_a_regular_file(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SAIE_LITE_HOME", str(blocker / "home"))
    r = invoke("train", "--dry-run", "--limit", "4", "--live", "quiet")
    assert r.exit_code == 2
    assert r.output.strip().startswith(f"error: run directory {blocker / 'home' / 'runs'}/")
    assert r.output.strip().endswith(
        f"cannot be created: {blocker} is a file, not a directory; choose another "
        "--run-dir, or set SAIE_LITE_HOME to a writable directory"
    )
    r = invoke("logs", "list")
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: the logs database's directory (SAIE_LITE_HOME) {blocker / 'home'} cannot be "
        f"created: {blocker} is a file, not a directory; set SAIE_LITE_HOME to a writable "
        "directory"
    )


@contextlib.contextmanager
def read_only_dir(path: Path, monkeypatch):
    """A read-only file system at ``path``: a real read-only tmpfs where this machine lets
    us mount one, else the same refusal the kernel gives (EROFS) for anything under it.
    Either way the code under test sees the same error, so the verdict is the same."""
    path.mkdir(parents=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    if not mounted:
        import tempfile

        real_mkdir, real_tf = Path.mkdir, tempfile.TemporaryFile

        def refuse(p):
            if str(p).startswith(str(path)):
                raise OSError(errno.EROFS, "Read-only file system", str(p))

        def mkdir(self, *a, **k):
            if not self.exists():
                refuse(self)
            return real_mkdir(self, *a, **k)

        def temporary_file(*a, dir=None, **k):
            refuse(dir)
            return real_tf(*a, dir=dir, **k)

        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], capture_output=True)


def test_run_dir_and_logs_on_a_read_only_file_system(tmp_path, monkeypatch):
    with read_only_dir(tmp_path / "ro", monkeypatch) as ro:
        r = dry_run(ro / "run")
        assert r.exit_code == 2
        assert r.output.strip() == (
            f"error: run directory {ro / 'run'} is not writable (it is on a read-only file "
            "system); choose another --run-dir, or set SAIE_LITE_HOME to a writable directory"
        )
        monkeypatch.setenv("SAIE_LITE_HOME", str(ro))
        r = invoke("logs", "list")
        assert r.exit_code == 2
        assert r.output.strip() == (
            f"error: the logs database's directory (SAIE_LITE_HOME) {ro} is not writable (it "
            "is on a read-only file system); set SAIE_LITE_HOME to a writable directory"
        )


def test_a_logs_database_that_is_not_a_database(tmp_path, monkeypatch):
    monkeypatch.setenv("SAIE_LITE_HOME", str(tmp_path))
    (tmp_path / "logs.sqlite").write_bytes(b"not a database, but a user's file" * 100)
    r = invoke("logs", "list")
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: cannot open the database {tmp_path / 'logs.sqlite'} (file is not a database): "
        "move or delete that file, or point SAIE_LITE_HOME / --run-dir at another directory"
    )


# -- recipes and resume -------------------------------------------------------------
def test_binary_recipe_is_one_line(tmp_path):
    recipe = tmp_path / "model.yaml"
    recipe.write_bytes(b"learner:\n  model: x\n\xff\xfe\x00\x01")
    r = invoke("train", "--dry-run", "--recipe", recipe)
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: recipe {recipe} is not a text file (binary bytes at offset 20): give a YAML "
        "recipe, e.g. recipes/quickstart.yaml"
    )


def test_resume_refuses_config_changes_and_applies_safe_ones(stopped_run):
    r = resume(stopped_run, "--set", "train.lr=0.1", "--mode", "sft")
    assert r.exit_code == 2
    assert r.output.strip() == (
        "error: --resume cannot change method.mode, train.lr: the resumed run would no longer "
        "match its first part. Drop those flags, or start a new run. Keys a resume may "
        "change: train.max_steps, method.rounds, partner.url, partner.timeout, "
        "partner.retries, partner.backoff, partner.concurrency, partner.n_threads, "
        "learner.n_threads, learner.vllm_url, "
        "learner.vllm_concurrency, run.live, run.memory_check, train.micro_batch_size, "
        "learner.gradient_checkpointing, train.report_to"
    )
    assert config.load_yaml(stopped_run / "config.yaml")["train"]["lr"] == 2e-4  # unchanged
    r = resume(stopped_run, "--max-steps", "4")
    assert r.exit_code == 0, r.output
    assert "resume: train.max_steps changed to 4" in r.output
    assert "finished: 4 updates" in r.output
    assert config.load_yaml(stopped_run / "config.yaml")["train"]["max_steps"] == 4


def test_finished_run_says_what_to_do_next(tmp_path):
    run = tmp_path / "run"
    r = dry_run(run)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    # a dry run's scripted models cannot be evaluated or exported
    assert lines[lines.index("next:") + 1 :] == [
        f"  train for real:          the same command without --dry-run, into a new run "
        f"directory ({run} holds this dry run)",
        f"  see it in one HTML page: saie-lite report {run}",
    ]
    from saie_lite.train.next_steps import next_commands

    cfg = config.load_yaml(run / "config.yaml")
    cfg = config.build(None, {"learner.backend": "torch"}, base=cfg)
    rows = "--task gsm8k --data bundled --limit 100"
    step = checkpoint.latest(run).name  # the folder names the checkpoint it evaluates
    assert [c for _, c in next_commands(cfg, run)] == [
        f"saie-lite eval --run {run} {rows} --out {run}/eval-{step}",
        f"saie-lite eval --model embedded --backend torch {rows} --out {run}/eval-base",
        f"saie-lite compare {run}/eval-base {run}/eval-{step}",
        f"saie-lite report {run}",
        f"saie-lite export {run} --to gguf",
        f"saie-lite train --resume {run} --set method.rounds=2",
    ]
    assert "on rows it trained on" in next_commands(cfg, run)[0][0]  # split train


def test_next_commands_read_own_data_the_same_way_and_lift_the_step_cap(tmp_path):
    from saie_lite.train.next_steps import next_commands

    cfg = config.build(
        overrides={
            "learner.backend": "torch", "data.task": "custom", "data.path": "my qa.jsonl",
            "data.split": "nodev", "data.check": "regex:Answer: (\\w+)",
            "data.question_field": "q", "data.answer_field": "a", "train.max_steps": 5,
        }
    )  # fmt: skip
    (what, run_eval), *_, (_, further) = next_commands(cfg, tmp_path)
    assert run_eval == (
        f"saie-lite eval --run {tmp_path} --task custom --data 'my qa.jsonl' "
        "--check 'regex:Answer: (\\w+)' --set data.question_field=q --set data.answer_field=a "
        f"--split dev --limit 100 --out {tmp_path}/eval"
    )
    assert what == "evaluate the trained learner"  # held-out rows: no warning
    assert further.endswith("--set method.rounds=2 --set train.max_steps=0")


# -- context ------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["truncate", "skip"])
def test_question_far_past_the_context_is_clipped_or_skipped_before_generation(policy, tmp_path):
    cfg = config.build(
        overrides={
            "train.batch_size": 2,
            "learner.max_seq_len": 300,
            "learner.max_new_tokens": 32,
            "method.context_policy": policy,
            "method.warmup_fraction": 0.0,
        }
    )
    examples = gsm8k.load("bundled")[0][:4]
    examples[1] = replace(examples[1], question="how many apples " * 20_000)
    learner = ScriptedLearner()
    store = Store(tmp_path / "saie.sqlite")
    summary = train(cfg, learner, ScriptedPartner(), examples, store, tmp_path)
    events = [r[0] for r in store.db.execute("SELECT message FROM events").fetchall()]
    store.close()
    prompts = [c for h in learner.history if h["call"] == "generate" for c in h["chats"]]
    # nothing longer than the context ever reached generation
    assert max(learner.count_tokens(c) for c in prompts) + 32 <= 300
    chat = gsm8k.learner_chat(examples[1].question)
    need = max(learner.count_tokens(chat) + 32, learner.count_tokens(chat, examples[1].reference))
    what = f"{examples[1].id}: question needs {need} tokens, over max_seq_len=300"
    if policy == "skip":
        assert f"{what}, skipped" in events
        assert not any("how many apples" in c[-1]["content"] for c in prompts)
    else:
        assert f"{what}, clipped" in events
        assert any("how many apples" in c[-1]["content"] for c in prompts)
    assert summary["status"] == "finished"


def test_eval_clips_a_question_far_past_the_context_and_keeps_the_item(tmp_path):
    from saie_lite.evaluate.evaluation import evaluate

    cfg = config.build(
        overrides={
            "learner.max_seq_len": 300,
            "eval.max_new_tokens": 32,
            "eval.metrics": "accuracy",
        }
    )
    examples = gsm8k.load("bundled")[0][:3]
    examples[1] = replace(examples[1], question="how many apples " * 20_000)
    learner, notes = ScriptedLearner(), []
    store = Store(tmp_path / "saie.sqlite")
    from saie_lite.tasks import get_task

    task = get_task(cfg.data)
    summary = evaluate(
        cfg, task, examples, [learner], store, "e", tmp_path / "e", note=notes.append
    )
    store.close()
    prompts = [c for h in learner.history if h["call"] == "generate" for c in h["chats"]]
    assert max(learner.count_tokens(c) for c in prompts) + 32 <= 300
    assert any("how many apples" in c[-1]["content"] for c in prompts)  # clipped, not dropped
    assert [n.endswith(", clipped") and n.startswith(examples[1].id) for n in notes] == [True]
    assert summary["n"] == 3


def test_database_full_mid_run_is_one_line_and_keeps_the_updates(tmp_path, monkeypatch):
    """SQLite's 'database or disk is full' (not an OSError) while the second batch's
    remarks are cached: one line, exit 2, and update 1 checkpointed so --resume goes on
    (save_every is 4 here: without the save on failure it would be lost)."""
    import sqlite3

    calls = [0]
    cache = Store.cache_remark

    def full_later(self, *a, **k):
        calls[0] += 1
        if calls[0] > 4:  # the first batch's 4 remarks fit, the next batch's do not
            raise sqlite3.OperationalError("database or disk is full")
        return cache(self, *a, **k)

    monkeypatch.setattr(Store, "cache_remark", full_later)
    run = tmp_path / "run"
    r = invoke(
        "train", "--dry-run", "--limit", "8", "--live", "quiet", "--run-dir", run,
        "--set", "train.batch_size=2", "--set", "train.save_every=4",
        "--set", "method.warmup_fraction=0",
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]  # after the quiet view's header line
    assert "Traceback" not in r.output and last == (
        "error: database error (database or disk is full): free disk space (or restore the "
        f"damaged file), then saie-lite train --resume {run}"
    )
    saved = checkpoint.latest(run)
    assert saved is not None and checkpoint.check_files(saved)["step"] == 1
    monkeypatch.setattr(Store, "cache_remark", cache)
    r = resume(run)
    assert r.exit_code == 0, r.output
    assert "finished: 4 updates" in r.output


def test_learner_directory_with_damaged_weights_is_one_line(tmp_path, tiny_model_dir):
    import shutil

    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    (st,) = bad.glob("*.safetensors")
    st.write_bytes(st.read_bytes()[:4096])  # a download cut short
    r = invoke(
        "train", "--backend", "torch", "--model", bad, "--partner", "scripted", "--limit", "2",
        "--live", "quiet", "--run-dir", tmp_path / "run",
    )  # fmt: skip
    # the memory plan's line comes first (read from config.json, not the weights)
    said = [x for x in r.output.splitlines() if not x.startswith("note: memory: about")]
    assert r.exit_code == 2 and len(said) == 1, r.output
    assert "a weights file is damaged or incomplete" in r.output
    assert not (tmp_path / "run").exists()  # no empty run left behind
    r = invoke(
        "train", "--backend", "torch", "--model", st, "--partner", "scripted", "--live", "quiet",
        "--run-dir", tmp_path / "r2",
    )  # fmt: skip
    assert r.exit_code == 2 and "is a file: give its directory" in r.output


def test_readers_of_a_run_pass_over_a_truncated_checkpoint(stopped_run):
    """export, eval --run and debate run: take the newest checkpoint whose files are
    whole, as resume does, and say so."""
    ckpt = stopped_run / "checkpoints" / "step-000003"
    (ckpt / "scripted.json").write_bytes(b"")
    notes = []
    assert checkpoint.usable(stopped_run, notes.append).name == "step-000002"
    assert notes == ["checkpoint step-000003: scripted.json is empty: using step-000002 instead"]
    for name in ("step-000001", "step-000002"):
        (stopped_run / "checkpoints" / name / "scripted.json").write_bytes(b"")
    with pytest.raises(UserError, match="no usable checkpoint"):
        checkpoint.usable(stopped_run)


def test_resume_refuses_an_emptied_or_partial_saved_config(stopped_run):
    """An emptied config.yaml would otherwise resume on every default (another data set,
    another size) without a word."""
    saved = stopped_run / "config.yaml"
    for text, line in (
        ("", f"{saved} is damaged (no learner, partner, data, method, train, eval, ablate, run "
             "section): restore it from a backup, or start a new run"),
        ("train:\n  lr: 0.1\n", f"{saved} is damaged (no learner, partner, data, method, eval, "
         "ablate, run section): restore it from a backup, or start a new run"),
    ):  # fmt: skip
        saved.write_text(text)
        r = resume(stopped_run)
        assert r.exit_code == 2 and r.output.strip() == f"error: {line}"
    (stopped_run / "config.yaml").unlink()
    r = invoke("export", stopped_run, "--to", "hf")
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: {stopped_run} has no config.yaml: is it a saie-lite run directory?"
    )


def test_missing_partner_file_is_found_before_the_learner_loads(tmp_path):
    pytest.importorskip("llama_cpp")
    not_a_model = tmp_path / "empty"  # would fail too, but only after loading
    not_a_model.mkdir()
    r = invoke(
        "train", "--backend", "torch", "--model", not_a_model, "--partner-model",
        tmp_path / "nope.gguf", "--live", "quiet", "--run-dir", tmp_path / "run",
    )  # fmt: skip
    assert r.exit_code == 2
    assert (
        r.output.strip()
        .splitlines()[-1]
        .startswith(f"error: partner model file not found: {tmp_path / 'nope.gguf'}")
    )
    assert not (tmp_path / "run").exists()
