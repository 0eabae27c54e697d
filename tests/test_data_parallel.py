"""Data-parallel training on two CPU processes (gloo), launched the way accelerate and
torchrun launch it: the adapter equals a single-process run on the same batches, and a
run started on two processes resumes on two with the same result."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from saie_lite.store import Store  # noqa: E402
from saie_lite.train import checkpoint  # noqa: E402
from saie_lite.train.distributed import shard  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(model: Path, run: Path, *extra) -> list[str]:
    return [
        "train", "--backend", "torch", "--model", str(model), "--partner", "scripted",
        "--limit", "8", "--live", "plain", "--run-dir", str(run),
        "--set", "train.batch_size=4", "--set", "train.save_every=1",
        "--set", "learner.max_new_tokens=12", "--set", "train.lr=0.02",
        "--set", "learner.device=cpu", *extra,
    ]  # fmt: skip


def launch(args: list[str], procs: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, "-m", "saie_lite.cli", *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}",
            "--master-addr=127.0.0.1", f"--master-port={_port()}",
            "-m", "saie_lite.cli", *args,
        ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def adapter(run: Path) -> dict:
    return load_file(str(checkpoint.latest(run) / "adapter_model.safetensors"))


def test_shards_cover_the_batch_in_order():
    for n in range(0, 9):
        for size in (1, 2, 3):
            parts = [shard(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(e - s for s, e in parts) - min(e - s for s, e in parts) <= 1


def test_two_processes_match_one(tiny_model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = launch(train_args(tiny_model_dir, one, "--max-steps", "3"), 1)
    assert r.returncode == 0, r.stderr[-3000:]
    r = launch(train_args(tiny_model_dir, two, "--max-steps", "3"), 2)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    wa, wb = adapter(one), adapter(two)
    assert wa.keys() == wb.keys() and len(wa) > 0
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    # one writer: the main process's rows only, the same turns as the single process
    rows = []
    for run in (one, two):
        with contextlib.closing(Store(run / "saie.sqlite")) as s:
            rows.append(
                s.db.execute("SELECT step, role, stance, text FROM turns ORDER BY id").fetchall()
            )
    assert rows[0] == rows[1]
    # ... and resumed on two processes, the same as without the stop
    r = launch(train_args(tiny_model_dir, tmp_path / "part", "--max-steps", "2"), 2)
    assert r.returncode == 0, r.stderr[-3000:]
    r = launch(
        ["train", "--resume", str(tmp_path / "part"), "--live", "plain", "--max-steps", "3"], 2
    )
    assert r.returncode == 0, r.stderr[-3000:]
    wc = adapter(tmp_path / "part")
    for k in wb:
        assert torch.equal(wb[k], wc[k]), k
