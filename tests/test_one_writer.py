"""One writer per folder: a run, an evaluation and an ablation are held by one process at
a time; a lock left by a killed process is taken over with a note; a run killed before
its first checkpoint goes on; a folder that is not a run is not written into; an export
says which update it holds when it is not the run's last."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fault_server import FaultServer
from slow_runs import Proc, ablate_args, rows, train_args
from typer.testing import CliRunner

from saie_lite.cli import app
from saie_lite.locks import LOCK_NAME, holder
from saie_lite.train import checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock locks (POSIX)")

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def slow_server():
    # every remark takes 1 s: a run's three discussion updates take some seconds
    server = FaultServer(default="slow:1.0")
    yield server
    server.close()


class Holder:
    """Another process holding a folder's lock through saie_lite.locks, until killed."""

    def __init__(self, folder: Path, what: str = "evaluation"):
        code = textwrap.dedent(f"""
            import sys, time
            from saie_lite.locks import hold
            hold({str(folder)!r}, {what!r})
            print("held", flush=True)
            time.sleep(120)
        """)
        self.p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "held"
        self.pid = self.p.pid

    def kill(self) -> None:  # as kill -9: the lock file stays behind, with the pid in it
        self.p.kill()
        self.p.wait(30)


def test_second_train_of_a_running_run_is_refused_naming_the_holder(slow_server, tmp_path):
    run = tmp_path / "run"
    first = Proc(train_args(slow_server.url, run, "--set", "train.save_every=1"))
    try:
        first.wait_for("step 1 ")
        assert holder(run) == first.pid  # readers see who holds it, without taking it
        second = Proc(["train", "--resume", run, "--live", "plain"])
        assert second.finish() == 2, second.output
        assert second.lines == [
            f"error: {run} is in use: saie-lite process {first.pid} is writing this run; "
            f"wait for it to end (or stop it: kill {first.pid}), then run the command again"
        ]
        r = invoke("logs", "list")
        assert r.exit_code == 0, r.output
        assert f"running now (pid {first.pid})" in r.output  # `logs list` is not blocked
        assert first.finish() == 0, first.output
    finally:
        first.kill()
    # every turn once: the second process trained nothing
    got = rows(run / "saie.sqlite")
    assert [s[0] for s in got["steps"]] == [1, 2, 3, 4]
    assert len(got["turns"]) == len(set(got["turns"]))
    assert not (run / LOCK_NAME).exists()  # released: nothing of it is left in the run


def test_run_killed_before_its_first_checkpoint_resumes_from_update_0(slow_server, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = invoke(*train_args(slow_server.url, full))
    assert r.exit_code == 0, r.output
    # no checkpoint until the end (save_every 100): killed after two updates, it has none
    p = Proc(train_args(slow_server.url, killed, "--set", "train.save_every=100"))
    try:
        p.wait_for("step 2 ")
    finally:
        p.kill()
    assert checkpoint.latest(killed) is None and rows(killed / "saie.sqlite")["steps"]
    assert (killed / LOCK_NAME).read_text().strip() == str(p.pid)  # left by the dead process

    r = invoke("train", "--resume", killed, "--live", "plain")
    assert r.exit_code == 0, r.output
    assert f"took over the lock of pid {p.pid}, which is no longer running" in r.output
    assert "but stopped before its first checkpoint: starting again from update 0" in r.output
    assert "finished: 4 updates" in r.output
    # the rows of the killed part were removed and redone: as if it had never stopped
    assert rows(killed / "saie.sqlite") == rows(full / "saie.sqlite")
    assert not (killed / LOCK_NAME).exists()


def test_checkpoints_that_existed_and_are_gone_are_still_refused(tmp_path):
    run = tmp_path / "run"
    r = invoke(
        "train", "--dry-run", "--limit", "6", "--live", "plain", "--run-dir", run,
        "--set", "train.batch_size=2", "--set", "train.save_every=1", "--max-steps", "2",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    shutil.rmtree(run / "checkpoints")  # pointer and all: only the run's records remain
    r = invoke("train", "--dry-run", "--resume", run, "--live", "plain")
    assert r.exit_code == 2
    assert r.output.strip().endswith(
        "resuming would start over from update 0: start a new run instead"
    )


def test_ablation_killed_before_a_first_checkpoint_continues(slow_server, tmp_path):
    out = tmp_path / "exp"
    args = ablate_args(slow_server.url, out, "--set", "train.save_every=100")
    p = Proc(args)
    try:
        p.wait_for("train saie 2/")
    finally:
        p.kill()
    assert checkpoint.latest(out / "runs" / "saie") is None
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert f"took over the lock of pid {p.pid}" in r.output  # the ablation's, and its run's
    assert "saie: the run recorded" in r.output and "starting again from update 0" in r.output
    assert (out / "table.md").is_file()
    assert not list(out.rglob(LOCK_NAME))


def test_eval_and_ablate_of_a_held_folder_are_refused_then_taken_over(tmp_path):
    ev = tmp_path / "eval"
    ev.mkdir()
    held = Holder(ev)
    try:
        r = invoke("eval", "--backend", "scripted", "--limit", "2", "--out", ev)
        assert r.exit_code == 2
        assert r.output.strip() == (
            f"error: {ev} is in use: saie-lite process {held.pid} is writing this "
            f"evaluation; wait for it to end (or stop it: kill {held.pid}), then run the "
            "command again"
        )
        assert not (ev / "summary.json").exists()
    finally:
        held.kill()
    r = invoke("eval", "--backend", "scripted", "--limit", "2", "--out", ev)
    assert r.exit_code == 0, r.output
    assert f"took over the lock of pid {held.pid}, which is no longer running" in r.output

    exp = tmp_path / "exp"
    exp.mkdir()
    held = Holder(exp, "ablation")
    try:
        r = invoke(
            "ablate", "--out", exp, "--live", "plain", "--set", "learner.backend=scripted",
            "--set", "partner.backend=scripted", "--set", "data.split=nodev",
            "--set", "data.limit=4", "--set", "ablate.eval_limit=2",
        )  # fmt: skip
        assert r.exit_code == 2
        assert f"error: {exp} is in use: saie-lite process {held.pid}" in r.output
        assert len(r.output.strip().splitlines()) == 1
        assert not (exp / "runs").exists()
    finally:
        held.kill()


# -- folders that are not saie-lite's -------------------------------------------------
def test_train_refuses_a_folder_of_the_users(tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.yaml").write_text("server:\n  port: 8080\n")
    (mine / "notes.txt").write_text("my notes\n")
    r = invoke("train", "--dry-run", "--limit", "4", "--live", "plain", "--run-dir", mine)
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: {mine} is not empty and is not a saie-lite run (no saie.sqlite, and no "
        "config.yaml of saie-lite's): pick a new or empty --run-dir; nothing was written there"
    )
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "notes.txt"]
    assert (mine / "config.yaml").read_text() == "server:\n  port: 8080\n"
    # an empty folder, and one a run was started in, are a run's to use
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke("train", "--dry-run", "--limit", "4", "--live", "plain", "--run-dir", empty)
    assert r.exit_code == 0, r.output


# -- export says which update it holds --------------------------------------------------
@pytest.fixture
def finished_run(tmp_path):
    run = tmp_path / "run"
    r = invoke(
        "train", "--dry-run", "--limit", "8", "--live", "plain", "--run-dir", run,
        "--set", "train.batch_size=2", "--set", "train.save_every=1",
        "--set", "train.keep_checkpoints=3",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return run


def test_export_says_it_exports_an_older_update_when_the_newest_is_gone(finished_run):
    shutil.rmtree(finished_run / "checkpoints" / "step-000004")
    r = invoke("export", finished_run, "--to", "hf")
    assert "note: checkpoint step-000004 was deleted: using step-000003 instead" in r.output
    assert (
        "note: the run recorded 4 updates, but its checkpoints past update 3 are gone: "
        "exporting update 3 (step-000003)"
    ) in r.output
    # (a dry run's scripted weights are not exported: that is said after the notes)
    assert r.exit_code == 2 and "error: export needs a run trained with" in r.output


def test_export_of_a_run_in_training_says_so(finished_run):
    held = Holder(finished_run, "run")
    try:
        r = invoke("export", finished_run, "--to", "hf")
    finally:
        held.kill()
    assert (
        f"note: the run is still training (pid {held.pid}): exporting update 4 (step-000004), "
        "the newest checkpoint so far; export again once it ends for its last update"
    ) in r.output
    # a finished run's own last checkpoint needs no note
    r = invoke("export", finished_run, "--to", "hf")
    assert "note:" not in r.output
