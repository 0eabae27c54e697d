"""Real saie-lite processes slow enough for a test to meet them mid-run: the scripted
learner with an OpenAI-style partner on a loopback server (``fault_server``) whose every
remark takes a while. For the one-writer and signal tests."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

# 8 examples in batches of 2: one warm-up update (no remarks, at once), then three
# discussion updates, each waiting on the slow partner.
TRAIN_SETS = [
    "--limit", "8", "--live", "plain",
    "--set", "train.batch_size=2", "--set", "method.warmup_fraction=0.25",
    "--set", "partner.backoff=0.01", "--set", "partner.retries=1",
    "--set", "partner.model=test-model",
]  # fmt: skip


def train_args(url: str, run_dir: Path, *extra) -> list[str]:
    return [
        "train", "--backend", "scripted", "--partner", "openai", "--partner-url", url,
        "--run-dir", str(run_dir), *TRAIN_SETS, *extra,
    ]  # fmt: skip


def ablate_args(url: str, out: Path, *extra) -> list[str]:
    sets = {
        "learner.backend": "scripted",
        "partner.backend": "openai",
        "partner.url": url,
        "partner.model": "test-model",
        "partner.backoff": 0.01,
        "partner.retries": 1,
        "data.limit": 8,
        "data.split": "nodev",
        "ablate.eval_limit": 2,
        "ablate.systems": "saie",
        "ablate.base": False,  # one row: the stop and resume of one system is the point
        "train.batch_size": 2,
        "method.warmup_fraction": 0.25,
    }
    args = ["ablate", "--out", str(out), "--live", "plain"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return [*args, *extra]


class Proc:
    """``python -m saie_lite.cli ARGS`` in a process of its own, its output collected line
    by line as it comes (stdout and stderr together)."""

    def __init__(self, args: list[str]):
        self.p = subprocess.Popen(
            [sys.executable, "-m", "saie_lite.cli", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ),
        )
        self.pid = self.p.pid
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.p.poll() is not None:
                self._reader.join(5)
                if any(text in line for line in self.lines):
                    return
                raise AssertionError(
                    f"exited ({self.p.returncode}) before {text!r}:\n{self.output}"
                )
            if time.monotonic() > end:
                raise AssertionError(f"no {text!r} after {timeout} s:\n{self.output}")
            time.sleep(0.02)

    def finish(self, timeout: float = 120.0) -> int:
        rc = self.p.wait(timeout)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(30)
        self._reader.join(5)


def rows(db: Path) -> dict[str, list]:
    """What a run's database holds that must not depend on stops and resumes."""
    con = sqlite3.connect(db)
    try:
        return {
            "turns": con.execute(
                "SELECT step, phase, round, example_id, turn, role, stance, text FROM turns "
                "ORDER BY step, example_id, turn, role, stance, id"
            ).fetchall(),
            "steps": con.execute(
                "SELECT step, phase, round, loss, n_sequences, n_target_tokens FROM steps "
                "ORDER BY step"
            ).fetchall(),
        }
    finally:
        con.close()
