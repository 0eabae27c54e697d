"""Checkpoints: learner state + loop position, published atomically.

Layout: ``RUN/checkpoints/step-000008/`` holds what the learner writes (adapter,
optimizer, step) plus ``state.json`` (step, batches done, and the size of every file).
No RNG state is stored: the loop reseeds every batch from (seed, position), which a
resume reproduces exactly. The directory is written under a temporary name, every file
and the directory are fsynced, and only then is it renamed into place; ``latest`` names
the newest complete one. A kill or a power cut at any moment leaves the last good one.

On resume a checkpoint that cannot be read (a truncated or empty file, a directory
deleted by hand) is passed over for the newest one that can, with a one-line note;
when none is left the run refuses rather than silently starting again from update 0.
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.fsutil import atomic_publish_dir, atomic_write_text, fsync_tree, tree_bytes

STATE = "state.json"


@dataclass
class LoopState:
    step: int = 0  # optimizer updates done
    batches_done: int = 0  # position in the schedule


def _ckpt_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Half-written checkpoint directories left by a crash or a full disk."""
    root = _ckpt_root(run_dir)
    stale = sorted(root.glob(".tmp-step-*")) if root.is_dir() else []
    for tmp in stale:
        shutil.rmtree(tmp, ignore_errors=True)
    return stale


def _mb(n: int) -> str:
    return f"{max(1, round(n / 2**20))} MB"


def save(run_dir: Path, learner, state: LoopState, keep: int) -> Path:
    root = _ckpt_root(run_dir)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-step-{state.step:06d}"
    previous = latest(run_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        tmp.mkdir()
        learner.save(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        payload = {"step": state.step, "batches_done": state.batches_done, "files": files}
        atomic_write_text(tmp / STATE, json.dumps(payload))
        # Everything on disk before the rename publishes it: after a power cut a published
        # checkpoint never has empty files.
        fsync_tree(tmp)
        atomic_publish_dir(tmp, final)
        atomic_write_text(root / "latest", final.name + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not stay full
        raise UserError(_save_failure(run_dir, final.name, previous, e)) from None
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _save_failure(run_dir: Path, name: str, previous: Path | None, e: OSError) -> str:
    kept = f"{previous.name} is kept" if previous else "no earlier checkpoint exists"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        need = f"about {_mb(tree_bytes(previous))} free" if previous else "more free space"
        return (
            f"disk full while writing checkpoint {name} in {_ckpt_root(run_dir)}: it needs "
            f"{need}; the partial files were removed and {kept}. Free space, then: "
            f"saie-lite train --resume {run_dir}"
        )
    reason = e.strerror or type(e).__name__
    return (
        f"cannot write checkpoint {name} in {_ckpt_root(run_dir)} ({reason}); {kept}. "
        f"Fix the directory, then: saie-lite train --resume {run_dir}"
    )


def _complete(path: Path) -> bool:
    return (path / STATE).is_file()


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoints to try on resume: the one ``latest`` names, then the others, newest
    first."""
    root = _ckpt_root(run_dir)
    if not root.is_dir():
        return []
    found = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    name = _pointer(root)
    named = root / name if name else None
    if named in found:
        found.remove(named)
        found.insert(0, named)
    return found


def _pointer(root: Path) -> str | None:
    """The checkpoint ``latest`` names; None when it is missing or damaged (then the
    newest by name goes first)."""
    try:
        return (root / "latest").read_text().strip() or None
    except (OSError, ValueError):  # missing, unreadable, not text
        return None


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (the one ``latest`` names when it is still there)."""
    return next((p for p in candidates(run_dir) if _complete(p)), None)


def saved_step(run_dir: Path) -> int | None:
    """The update a resume would go on from: that of the newest checkpoint whose files
    are whole (``usable``), or None when there is none (for `logs list`)."""
    try:
        path = usable(run_dir)
        return check_files(path)["step"] if path else None
    except (UserError, ValueError, OSError):
        return None


def usable(run_dir: Path, note: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint whose files are all there at their recorded sizes, for the
    commands that only read a run (export, eval --run, debate run:); ``note`` hears about
    newer ones passed over. ``load`` (resume) goes further and loads each in turn."""
    tried: list[str] = []
    named = _pointer(_ckpt_root(run_dir))
    if named and not (_ckpt_root(run_dir) / named).is_dir():
        tried.append(f"{named} was deleted")  # else an older update would go unmentioned
    for path in candidates(run_dir):
        try:
            check_files(path)
        except ValueError as e:
            tried.append(f"{path.name}: {e}")
            continue
        if tried and note is not None:
            note(f"checkpoint {'; '.join(tried)}: using {path.name} instead")
        return path
    if tried:
        raise UserError(
            f"no usable checkpoint in {_ckpt_root(run_dir)} ({'; '.join(tried)}): restore "
            "the files, or resume the run to train again"
        )
    return None


def check_files(path: Path) -> dict:
    """state.json, and every file it lists at its recorded size. Raises ValueError naming
    the broken file."""
    try:
        data = json.loads((path / STATE).read_text())
        step, done = int(data["step"]), int(data["batches_done"])
    except FileNotFoundError:
        raise ValueError(f"{STATE} is missing") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{STATE} is unreadable") from None
    for name, size in (data.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{name} is missing")
        have = f.stat().st_size
        if have != size:
            what = "empty" if have == 0 else f"truncated ({have} of {size} bytes)"
            raise ValueError(f"{name} is {what}")
    return {"step": step, "batches_done": done}


def load(
    run_dir: Path,
    learner,
    note: Callable[[str], None] = print,
    recorded_steps: int = 0,
    saved_before: bool = False,
) -> LoopState:
    """Load the newest checkpoint that reads back whole.

    ``recorded_steps`` is how many updates the run's database says were done: when it is
    above zero and the checkpoints the run wrote are gone, resuming would silently start
    over, so this refuses instead. When none was ever written (``saved_before`` false, no
    ``latest`` pointer: a run killed before its first), there is nothing to lose: it
    starts again from update 0, saying so (the loop removes the rows past it).
    """
    removed = remove_stale_temporaries(run_dir)
    if removed:
        note(f"removed {len(removed)} half-written checkpoint directory(ies) left by a crash")
    root = _ckpt_root(run_dir)
    named = _pointer(root)
    tried: list[str] = []
    if named is None and (root / "latest").is_file():
        tried.append("'latest' is unreadable")
    if named and not (root / named).is_dir():
        tried.append(f"{named} was deleted")
    for path in candidates(run_dir):
        try:
            data = check_files(path)
            learner.load(path)
        except Exception as e:  # noqa: BLE001  (torch/safetensors raise many kinds, EOFError too)
            reason = str(e) if isinstance(e, ValueError) and " is " in str(e) else _why(e)
            tried.append(f"{path.name}: {reason}")
            continue
        if tried:
            note(f"checkpoint {'; '.join(tried)}: resuming from {path.name} instead")
        return LoopState(step=data["step"], batches_done=data["batches_done"])
    if candidates(run_dir):
        raise UserError(
            f"no usable checkpoint in {root} ({'; '.join(tried)}); "
            f"start a new run, or restore the files and resume again"
        )
    if recorded_steps and not (saved_before or (root / "latest").exists()):
        note(
            f"the run recorded {recorded_steps} update(s) but stopped before its first "
            "checkpoint: starting again from update 0 (cached remarks are reused)"
        )
        return LoopState()
    if recorded_steps:
        raise UserError(
            f"{run_dir} recorded {recorded_steps} updates but has no checkpoint left in {root}; "
            "resuming would start over from update 0: start a new run instead"
        )
    return LoopState()


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"unreadable ({text[:120]})"
