"""One writer per folder: a run, an evaluation or an ablation is held by one process.

The lock is the OS's (``flock`` on ``FOLDER/.lock``), not the pid written in the file:
the kernel drops it when its holder ends in any way (kill -9, a crash, a power cut), so
a lock left behind is never mistaken for a live one. The pid is only there to name the
holder in the refusal, and, found in a file whose lock was free, to say that a process
was killed while it held the folder. A clean release removes the file (while still
holding the lock: a process that opened the old file notices it is gone and tries
again), so a finished folder holds nothing of it. Readers (``logs list``, ``export``,
``eval --run``) never take it.

Where there is no ``fcntl`` (Windows) nothing is locked.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from saie_lite.errors import UserError

try:
    import fcntl
except ImportError:  # no flock on this platform: one writer per folder is not enforced
    fcntl = None

LOCK_NAME = ".lock"
# A reader's probe (``holder``) holds the lock for an instant: a writer starting in that
# instant tries again for this long before it calls the folder taken.
_PATIENCE_S = 0.5


class Held:
    """A folder's lock, held by this process until ``release``."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()  # still held: nobody can take the file being removed
        except OSError:  # a folder gone read-only or removed meanwhile: the lock still ends
            pass
        os.close(self.fd)  # the kernel drops the lock with its last descriptor
        self.fd = None

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None


def hold(
    directory: Path,
    what: str,
    note: Callable[[str], None] = lambda line: None,
) -> Held:
    """Take ``directory``'s lock for this process, or refuse in one line naming the
    process that holds it. ``what`` names the folder in that line ("run",
    "evaluation"). The folder must exist and be writable (checked before)."""
    path = Path(directory) / LOCK_NAME
    if fcntl is None:
        return Held(path, None)
    give_up = time.monotonic() + _PATIENCE_S
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            if time.monotonic() < give_up:
                time.sleep(0.05)
                continue
            raise UserError(_busy(Path(directory), what, pid)) from None
        except OSError as e:
            # A file system without locks (some network and FUSE mounts): go on, saying so.
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                note(
                    f"cannot lock {directory} ({e.strerror}): make sure no other saie-lite "
                    "process writes to it at the same time"
                )
                return Held(path, None)
            raise
        if not _same_file(fd, path) and time.monotonic() < give_up:
            os.close(fd)  # its holder removed it as this process opened it: open the new one
            continue
        break
    before = _read_pid(fd)
    if before is not None and before != os.getpid():
        note(
            f"took over the lock of pid {before}, which is no longer running (it was killed "
            f"or the machine went down while it held this {what})"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Held(path, fd)


def _busy(directory: Path, what: str, pid: int | None) -> str:
    who = f"saie-lite process {pid}" if pid else "another saie-lite process"
    stop = f" (or stop it: kill {pid})" if pid else ""
    return (
        f"{directory} is in use: {who} is writing this {what}; wait for it to end{stop}, "
        "then run the command again"
    )


def holder(directory: Path) -> int | None:
    """The pid of the process holding ``directory`` now (0 when it holds it but its pid
    cannot be read), or None when nobody does. Creates nothing, for readers."""
    path = Path(directory) / LOCK_NAME
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: nobody holds it (or it cannot be read: say nobody)
        return None
    try:
        try:
            # shared, for an instant: it fails only while a writer holds the lock
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        except OSError:
            return None
        return None
    finally:
        os.close(fd)
