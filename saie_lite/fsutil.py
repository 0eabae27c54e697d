"""Atomic file writes: a kill at any moment leaves either the old file or the new one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written directory into place (rename is atomic on one filesystem)."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)


def fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` and the directories themselves to disk.
    Libraries that write checkpoints (torch.save, safetensors) do not fsync."""
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for path in sorted((p for p in Path(directory).rglob("*") if p.is_dir()), reverse=True):
        _fsync_dir(path)
    _fsync_dir(Path(directory))


def tree_bytes(directory: Path | None) -> int:
    if directory is None or not Path(directory).is_dir():
        return 0
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
