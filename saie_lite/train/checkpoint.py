"""Checkpoints: learner state + loop position, published atomically.

Layout: ``RUN/checkpoints/step-000008/`` holds what the learner writes (adapter,
optimizer, step) plus ``state.json`` (step, batches done). No RNG state is stored: the
loop reseeds every batch from (seed, position), which a resume reproduces exactly. The directory
is written under a temporary name and renamed into place; ``RUN/checkpoints/latest``
names the newest complete one. A kill at any moment leaves the last good one readable.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.fsutil import atomic_publish_dir, atomic_write_text


@dataclass
class LoopState:
    step: int = 0  # optimizer updates done
    batches_done: int = 0  # position in the schedule


def _ckpt_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save(run_dir: Path, learner, state: LoopState, keep: int) -> Path:
    root = _ckpt_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    learner.save(tmp)
    payload = {"step": state.step, "batches_done": state.batches_done}
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


def load(run_dir: Path, learner) -> LoopState:
    path = latest(run_dir)
    if path is None:
        return LoopState()
    try:
        data = json.loads((path / "state.json").read_text())
        learner.load(path)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(
            f"checkpoint {path} is unreadable ({e}); delete it to resume from the one before"
        ) from None
    return LoopState(step=data["step"], batches_done=data["batches_done"])
