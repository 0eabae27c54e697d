"""Schedulers and closed terminals stop a run the way Ctrl-C does: SIGTERM and SIGHUP
finish or abandon the batch in flight, checkpoint, print the resume line and exit with
128 + the signal; the resumed run ends as one that never stopped. Same for eval and
ablate."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from fault_server import FaultServer
from slow_runs import Proc, ablate_args, rows, train_args
from typer.testing import CliRunner

from saie_lite.cli import app
from saie_lite.train import checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def slow_server():
    server = FaultServer(default="slow:0.5")  # each discussion update waits on it
    yield server
    server.close()


@pytest.fixture(scope="module")
def uninterrupted(slow_server, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    r = invoke(*train_args(slow_server.url, run))
    assert r.exit_code == 0, r.output
    return run


def final_weights(run: Path) -> str:
    return (checkpoint.latest(run) / "scripted.json").read_text()


@pytest.mark.parametrize(
    "sig, code, says",
    [
        (signal.SIGTERM, 143, "a second SIGTERM aborts"),
        (signal.SIGHUP, 129, "a second SIGHUP aborts"),
        (signal.SIGINT, 130, "Ctrl-C again aborts"),
    ],
)
def test_signal_stops_train_with_a_checkpoint_and_resumes_to_the_same_run(
    sig, code, says, slow_server, uninterrupted, tmp_path
):
    run = tmp_path / "run"
    p = Proc(train_args(slow_server.url, run))
    try:
        p.wait_for("step 1 ")
        p.p.send_signal(sig)
        assert p.finish() == code, p.output
    finally:
        p.kill()
    assert f"note: stopping after this step ({says})" in p.output
    assert f"resume with: saie-lite train --resume {run}" in p.output
    assert checkpoint.latest(run) is not None
    assert "Traceback" not in p.output

    r = invoke("train", "--resume", run, "--live", "plain")
    assert r.exit_code == 0, r.output
    assert "finished: 4 updates" in r.output
    assert final_weights(run) == final_weights(uninterrupted)
    assert rows(run / "saie.sqlite") == rows(uninterrupted / "saie.sqlite")


def test_a_second_signal_aborts_and_the_run_still_resumes(uninterrupted, tmp_path):
    run = tmp_path / "run"
    # remarks slow enough that the second signal surely comes while the first batch waits
    server = FaultServer(default="slow:3.0")
    p = Proc(train_args(server.url, run, "--set", "train.save_every=1"))
    try:
        p.wait_for("step 1 ")
        # The first signal only once a remark is being waited for: sent as soon as the
        # warm-up step is printed, it can land before the loop checks for a stop, and
        # the run then stops cleanly before the second signal arrives.
        deadline = time.monotonic() + 60
        while server.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.in_flight > 0, p.output
        p.p.send_signal(signal.SIGTERM)
        p.wait_for("stopping after this step")
        p.p.send_signal(signal.SIGTERM)
        assert p.finish() == 143, p.output
        assert "aborted; the last checkpoint is intact" in p.output
        server.default = "ok:A slow but fine remark."  # the same remark, at once
        r = invoke("train", "--resume", run, "--live", "plain")
    finally:
        p.kill()
        server.close()
    assert r.exit_code == 0, r.output
    assert rows(run / "saie.sqlite") == rows(uninterrupted / "saie.sqlite")


def _count(db: Path, table: str) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # not made yet
        return 0


def test_sigterm_stops_eval_which_then_resumes(slow_server, tmp_path):
    out = tmp_path / "eval"
    args = [
        "eval", "--backend", "scripted", "--limit", "4", "--strategy", "debate",
        "--agents", "learner,openai:test-model", "--rounds", "1", "--batch-size", "1",
        "--out", out, "--set", f"partner.url={slow_server.url}",
        "--set", "partner.backoff=0.01",
    ]  # fmt: skip
    p = Proc(args)
    try:
        end = time.monotonic() + 60
        while _count(out / "saie.sqlite", "eval_items") < 1 and time.monotonic() < end:
            time.sleep(0.05)
        p.p.send_signal(signal.SIGTERM)
        assert p.finish() == 143, p.output
    finally:
        p.kill()
    assert "stopping after this batch (a second SIGTERM aborts)" in p.output
    stopped = json.loads((out / "summary.json").read_text())
    assert stopped["status"] == "stopped" and stopped["n"] < 4
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    done = json.loads((out / "summary.json").read_text())
    assert done["status"] == "finished" and done["n"] == 4
    assert _count(out / "saie.sqlite", "eval_items") == 4  # each item once


def test_sighup_stops_ablate_which_then_continues(slow_server, tmp_path):
    out = tmp_path / "exp"
    args = ablate_args(slow_server.url, out)
    p = Proc(args)
    try:
        p.wait_for("train saie 2/")
        p.p.send_signal(signal.SIGHUP)
        assert p.finish() == 129, p.output
    finally:
        p.kill()
    assert "stopping after this step (a second SIGHUP aborts)" in p.output
    assert "stopped; run the same command again to continue" in p.output
    assert checkpoint.latest(out / "runs" / "saie") is not None
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert (out / "table.md").is_file()
    results = json.loads((out / "results.json").read_text())
    assert [row["updates"] for row in results["rows"]] == [4]
