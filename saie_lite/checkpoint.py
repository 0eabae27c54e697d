"""Checkpoints: learner state + loop position + RNG, published atomically.

Layout: ``RUN/checkpoints/step-000008/`` holds what the learner writes (adapter,
optimizer, its RNG) plus ``state.json`` (step, batches done, Python RNG). The directory
is written under a temporary name and renamed into place; ``RUN/checkpoints/latest``
names the newest complete one. A kill at any moment leaves the last good one readable.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.fsutil import atomic_publish_dir, atomic_write_text


@dataclass
class LoopState:
    step: int = 0  # optimizer updates done
    batches_done: int = 0  # position in the schedule
    py_rng: list | None = None


def _ckpt_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save(run_dir: Path, learner, state: LoopState, rng: random.Random, keep: int) -> Path:
    root = _ckpt_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    learner.save(tmp)
    py_state = rng.getstate()
    payload = {
        "step": state.step,
        "batches_done": state.batches_done,
        "py_rng": [py_state[0], list(py_state[1]), py_state[2]],
    }
    atomic_write_text(tmp / "state.json", json.dumps(payload))
    atomic_publish_dir(tmp, final)
    atomic_write_text(root / "latest", final.name + "\n")
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    root = _ckpt_root(run_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load(run_dir: Path, learner, rng: random.Random) -> LoopState:
    path = latest(run_dir)
    if path is None:
        return LoopState()
    try:
        data = json.loads((path / "state.json").read_text())
        learner.load(path)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint {path} is unreadable ({e}); delete it to resume from the one before") from None
    v, internal, gauss = data["py_rng"]
    rng.setstate((v, tuple(internal), gauss))
    return LoopState(step=data["step"], batches_done=data["batches_done"], py_rng=data["py_rng"])
