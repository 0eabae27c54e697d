"""A database another process holds: the wait is said at once and bounded, what was
computed is kept, and the line says "busy", not "damaged" or "free disk space".

The holder is a real second process inside a transaction; the commands run in their own
processes, as from a terminal, so stderr is what a user would see."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, contextmanager

import pytest

from saie_lite.store import Store

HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "readers":  # a rollback journal: an EXCLUSIVE lock keeps readers out too
    db.execute("PRAGMA journal_mode=DELETE")
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(float(sys.argv[3]))
db.execute("COMMIT")
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SAIE_LITE_HOME", str(tmp_path))
    Store(tmp_path / "logs.sqlite").close()  # the logs database as saie-lite makes it (WAL)
    return tmp_path


@contextmanager
def held(db, keeps_out: str, seconds: float = 60.0):
    """Another process holding ``db`` in a transaction for ``seconds``: against writers
    ("writers", the database stays in WAL) or against everyone ("readers")."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), keeps_out, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "held"
        yield p
    finally:
        p.kill()
        p.wait()


def saie(home, *args, wait: float) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "SAIE_LITE_HOME": str(home), "SAIE_LITE_DB_WAIT": str(wait)}
    start = time.monotonic()
    # the timeout fails a command that waits on without end (minutes, before)
    r = subprocess.run(
        [sys.executable, "-m", "saie_lite.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return r, time.monotonic() - start


DEBATE = ["debate", "-q", "What is 2+2?", "--agents", "scripted:a,scripted:b", "--rounds", "1"]


def test_a_debate_behind_a_writer_keeps_its_transcript(home):
    db = home / "logs.sqlite"
    with held(db, "writers"):
        r, took = saie(home, *DEBATE, "--live", "plain", wait=1)
    assert r.returncode == 2, r.stderr
    assert "Round 2" in r.stdout  # the answers were computed before the save
    waiting, error = r.stderr.splitlines()
    assert waiting == f"waiting for {db}, held by another process (up to 1 s)..."
    kept = sorted(home.glob("debate-unsaved-*.json"))
    assert len(kept) == 1
    assert error == (
        f"error: {db} is busy (held by another process) and stayed so for 1 s, so this "
        f"debate is not in 'logs list': its transcript is kept in {kept[0]}; let that process "
        "finish before the next debate"
    )
    assert took < 20
    debate = json.loads(kept[0].read_text())
    assert debate["question"] == "What is 2+2?" and debate["rounds"] == 1
    assert debate["agents"] == ["scripted:a", "scripted:b"]
    assert [(t["round"], t["agent"]) for t in debate["turns"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(t["text"] for t in debate["turns"]) and debate["final"] == "0"
    with closing(Store(db)) as s:
        assert s.count("debates") == 0  # it is in the file, and only there


def test_a_debate_waits_for_a_writer_that_finishes(home):
    db = home / "logs.sqlite"
    with held(db, "writers", seconds=1.5):
        r, _ = saie(home, *DEBATE, "--live", "plain", wait=30)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"waiting for {db}, held by another process (up to 30 s)...\n"
    assert "Saved as debate 1 (saie-lite logs show 1)" in r.stdout
    assert not list(home.glob("debate-unsaved-*.json"))
    with closing(Store(db)) as s:
        assert s.count("debates") == 1


def test_logs_list_behind_a_lock_on_readers_gives_up_in_one_line(home):
    db = home / "logs.sqlite"
    with held(db, "readers"):
        r, took = saie(home, "logs", "list", wait=1)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"waiting for {db}, held by another process (up to 1 s)...",
        f"error: {db} is busy (held by another process) and stayed so for 1 s: let that "
        "process finish (or close it), then run the command again (SAIE_LITE_DB_WAIT sets "
        "the wait, in seconds)",
    ]
    assert took < 20


def test_logs_list_waits_for_a_lock_on_readers_that_ends(home):
    db = home / "logs.sqlite"
    with held(db, "readers", seconds=1.5):
        r, took = saie(home, "logs", "list", wait=30)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"waiting for {db}, held by another process (up to 30 s)...\n"
    assert r.stdout.startswith("debates (0):\n")
    assert took < 20


def test_a_busy_database_is_not_called_damaged(home):
    """A busy answer that reaches the command unwaited for (a read behind a lock) is named
    for what it is: the disk is not full and the file is not damaged."""
    from saie_lite.commands.guard import storage_failure

    db = home / "logs.sqlite"
    with held(db, "readers"), closing(sqlite3.connect(db, timeout=0)) as c:
        with pytest.raises(sqlite3.OperationalError) as e:
            c.execute("SELECT COUNT(*) FROM debates").fetchone()
    line = storage_failure(e.value, "run the command again")
    assert line == (
        "a database is busy (held by another process) (database is locked): let that process "
        "finish (or close it), then run the command again"
    )
    # a database error that is no lock still points at the disk and the file
    other = storage_failure(sqlite3.DatabaseError("database disk image is malformed"), "go on")
    assert other.endswith("free disk space (or restore the damaged file), then go on")


def test_the_wait_must_be_a_number_of_seconds(home):
    db = home / "logs.sqlite"
    with held(db, "readers"):
        r, _ = saie(home, "logs", "list", wait="soon")  # type: ignore[arg-type]
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        "error: SAIE_LITE_DB_WAIT must be a number of seconds (>= 0), got 'soon'"
    )


def test_a_run_s_writes_wait_for_a_holder_too(tmp_path, capsys, monkeypatch):
    """Every write waits the same way (a training run's turns and updates): nothing is
    lost to a reader that holds the run's database for a moment."""
    monkeypatch.delenv("SAIE_LITE_DB_WAIT", raising=False)  # the default wait
    db = tmp_path / "saie.sqlite"
    with closing(Store(db)) as store:
        with held(db, "writers", seconds=1.5):
            store.event("note", "written while another process held the file")
        assert store.count_events("note") == 1
    assert capsys.readouterr().err == (
        f"waiting for {db}, held by another process (up to 30 s)...\n"
    )
