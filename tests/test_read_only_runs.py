"""A finished run on a read-only disk (a copied archive, another user's folder) can still
be read: its remark figures, where it stands, its dataset export. Evaluating it, which
writes into its database, is refused in one line that says what to do."""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saie_lite.cli import app
from saie_lite.places import remember
from saie_lite.store import MIGRATIONS, connect_read_only

runner = CliRunner()


def _mount(*args: str) -> bool:
    try:
        return subprocess.run(["mount", *args], capture_output=True).returncode == 0
    except OSError:  # no mount command here
        return False


@contextlib.contextmanager
def finished_run_on_a_read_only_disk(tmp_path: Path, monkeypatch):
    """A real tmpfs remounted read-only where this machine lets us, else the refusals a
    read-only disk gives: SQLite cannot open the database for writing (nor read it in
    its read-only mode, which needs to make the log's index file), and no file can be
    made in the folder. Either way the code under test sees the same errors."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk))
    try:  # from here on the mount is always undone
        run = disk / "r1"
        r = runner.invoke(
            app, ["train", "--dry-run", "--limit", "4", "--live", "quiet", "--run-dir", str(run)]
        )
        assert r.exit_code == 0, r.output
        # and a run written by an older saie-lite (its database two migrations behind)
        old = disk / "old"
        old.mkdir()
        (old / "config.yaml").write_text("{}\n")
        db = sqlite3.connect(old / "saie.sqlite")
        for script in MIGRATIONS[:3]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 3")
        db.close()
        remember("runs", old)
        if not (mounted and _mount("-o", "remount,ro", str(disk))):
            real_connect, real_tf = sqlite3.connect, tempfile.TemporaryFile

            def connect(target, *a, **k):
                if str(disk) in str(target) and "immutable=1" not in str(target):
                    raise sqlite3.OperationalError("unable to open database file")
                return real_connect(target, *a, **k)

            def temporary_file(*a, dir=None, **k):
                if dir is not None and str(dir).startswith(str(disk)):
                    raise OSError(errno.EROFS, "Read-only file system", str(dir))
                return real_tf(*a, dir=dir, **k)

            monkeypatch.setattr(sqlite3, "connect", connect)
            monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
        yield run
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_run_on_a_read_only_disk_can_be_read(tmp_path, monkeypatch):
    with finished_run_on_a_read_only_disk(tmp_path, monkeypatch) as run:
        r = runner.invoke(app, ["logs", "remarks", str(run)])
        assert r.exit_code == 0, r.output
        assert r.output.startswith("remarks: supportive n=3 ")
        r = runner.invoke(app, ["logs", "list"])
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        i = lines.index(f"  {run}")
        assert lines[i + 1] == "      finished: 2 updates (2 batches)"
        # the older run cannot be brought up to date there: it says so, and hides nothing
        j = lines.index(f"  {run.parent / 'old'}")
        assert lines[j + 1] == (
            f"      (the database {run.parent / 'old' / 'saie.sqlite'} was written by an older "
            f"saie-lite and {run.parent / 'old'} is read-only: copy the run to a writable "
            "directory "
            "and read it there (it is updated when opened there))"
        )
        out = tmp_path / "dataset"
        r = runner.invoke(
            app, ["logs", "export", str(run), "--format", "dataset", "--out", str(out)]
        )
        assert r.exit_code == 0, r.output
        assert (out / "data" / "train-00000-of-00001.parquet").is_file()
        r = runner.invoke(
            app, ["eval", "--run", str(run), "--limit", "2", "--out", str(tmp_path / "ev")]
        )
        assert r.exit_code == 2
        assert r.output.strip() == (
            f"error: run directory {run} is not writable (it is on a read-only file system); "
            "an evaluation of a run is kept in the run's saie.sqlite: copy the run to a "
            "writable directory and evaluate it there"
        )


def test_a_damaged_run_database_is_one_line_when_read(tmp_path):
    run = tmp_path / "r1"
    r = runner.invoke(
        app, ["train", "--dry-run", "--limit", "4", "--live", "quiet", "--run-dir", str(run)]
    )
    assert r.exit_code == 0, r.output
    (run / "saie.sqlite").write_bytes(b"not a database, but a user's file" * 100)
    r = runner.invoke(app, ["logs", "remarks", str(run)])
    assert r.exit_code == 2
    assert r.output.strip() == (
        f"error: cannot read the database {run / 'saie.sqlite'} (file is not a database): "
        "is it a saie-lite run?"
    )


def test_a_pending_log_is_never_read_past(tmp_path, monkeypatch):
    """A database whose write-ahead log still holds rows (a killed run) is not opened as
    immutable, which would read the database file alone and miss them."""
    path = tmp_path / "saie.sqlite"
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("INSERT INTO t VALUES (1)")
    writer.commit()
    assert Path(f"{path}-wal").is_file()
    real_connect = sqlite3.connect

    def connect(target, *a, **k):  # read-only mode fails, as on a read-only disk
        if "mode=ro" in str(target):
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(target, *a, **k)

    monkeypatch.setattr(sqlite3, "connect", connect)
    with pytest.raises(sqlite3.OperationalError):
        connect_read_only(path)
    writer.close()
