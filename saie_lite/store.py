"""SQLite run store: every discussion turn, every update, the remark cache.

Migrations are an ordered list; ``PRAGMA user_version`` records how many have run, so
an older run directory opens with a newer saie-lite.

A database another process holds is waited for, said at once on stderr and for at most
``SAIE_LITE_DB_WAIT`` seconds (30), when it is opened and when it is written; a debate
that still cannot be saved is written to a JSON file beside the database.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sqlite3
import sys
import time
from pathlib import Path

from saie_lite.errors import UserError

# How long a command waits for a database another process holds (a second saie-lite
# writing, a database browser inside a transaction) before it gives up with one line.
WAIT_ENV = "SAIE_LITE_DB_WAIT"
DEFAULT_WAIT_S = 30.0
# While waiting, each try blocks this long in SQLite, so the wait can be announced at once
# (SQLite's own busy timeout would block for its whole length without a word).
_POLL_MS = 250
# "locked" answers that come at once, not after a wait (a new file switching to WAL while
# another process opens it), clear in milliseconds: not worth a line.
_QUIET_S = 0.2
_TIMEOUT_S = 5.0  # sqlite3's default busy timeout, for the reads that do not wait patiently


def db_wait() -> float:
    """Seconds to wait for a busy database: ``SAIE_LITE_DB_WAIT``, else 30."""
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return DEFAULT_WAIT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise UserError(f"{WAIT_ENV} must be a number of seconds (>= 0), got {raw!r}")
    return seconds


def is_busy(e: BaseException) -> bool:
    """Whether SQLite refused because another connection holds a lock (SQLITE_BUSY,
    SQLITE_LOCKED): nothing is wrong with the file or the disk, it is in use."""
    if not isinstance(e, sqlite3.OperationalError):
        return False
    name = getattr(e, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return True
    message = str(e)
    return "database is locked" in message or "database is busy" in message


class DatabaseBusy(UserError):
    """A database stayed busy (held by another process) for the whole wait."""

    def __init__(self, path: Path, waited: float):
        self.path, self.waited = Path(path), waited
        super().__init__(self.line("run the command again"))

    def line(self, again: str) -> str:
        return (
            f"{self.path} is busy (held by another process) and stayed so for {self.waited:g} "
            f"s: let that process finish (or close it), then {again} ({WAIT_ENV} sets the "
            "wait, in seconds)"
        )


def _patient(method):
    """A write that waits for a busy database (see ``Store._patiently``)."""

    @functools.wraps(method)
    def write(self, *args, **kwargs):
        return self._patiently(lambda: method(self, *args, **kwargs))

    return write


MIGRATIONS = [
    """
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY,
        step INTEGER NOT NULL,          -- update this turn fed (1-based)
        phase TEXT NOT NULL,            -- warmup | discussion
        round INTEGER NOT NULL,
        example_id TEXT NOT NULL,
        turn INTEGER NOT NULL,          -- 0 = first answer, 1.. = after remark k
        role TEXT NOT NULL,             -- learner | partner | target
        stance TEXT,                    -- supportive | adversarial | NULL
        prompt TEXT NOT NULL,           -- JSON chat the model was given
        text TEXT NOT NULL,
        correct INTEGER,                -- 1/0 for learner turns, NULL otherwise
        seconds REAL,                   -- share of the batch call's wall time
        cached INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    CREATE INDEX turns_step ON turns(step);
    CREATE TABLE steps (
        step INTEGER PRIMARY KEY,
        phase TEXT NOT NULL,
        round INTEGER NOT NULL,
        loss REAL NOT NULL,
        n_sequences INTEGER NOT NULL,
        n_target_tokens INTEGER NOT NULL,
        t_generate REAL NOT NULL,
        t_remark REAL NOT NULL,
        t_update REAL NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE remark_cache (
        key TEXT PRIMARY KEY,
        partner TEXT NOT NULL,
        prompt TEXT NOT NULL,
        text TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
    """
    CREATE TABLE evals (
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,           -- JSON of the settings that define the item results
        created REAL NOT NULL
    );
    CREATE TABLE eval_items (
        eval TEXT NOT NULL,
        idx INTEGER NOT NULL,           -- position in the evaluated item list
        example_id TEXT NOT NULL,
        question TEXT NOT NULL,
        reference TEXT NOT NULL,
        gold TEXT NOT NULL,
        final TEXT NOT NULL,            -- the final answer text (voted, for vote strategies)
        strict TEXT,
        flexible TEXT,
        strict_correct INTEGER NOT NULL,
        flexible_correct INTEGER NOT NULL,
        turns TEXT NOT NULL,            -- JSON: every turn (round, agent, text, key)
        tokens INTEGER NOT NULL,
        seconds REAL NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (eval, example_id)
    );
    CREATE TABLE debates (
        id INTEGER PRIMARY KEY,
        question TEXT NOT NULL,
        agents TEXT NOT NULL,           -- JSON list of agent names
        rounds INTEGER NOT NULL,
        turns TEXT NOT NULL,            -- JSON: every turn (round, agent, text, key)
        final TEXT,
        created REAL NOT NULL
    );
    """,
    """
    -- Content ids pair evaluations (evaluate/pairing.py); rows written before this
    -- migration have NULL and get theirs computed from question and gold when read.
    ALTER TABLE eval_items ADD COLUMN item_id TEXT;
    -- JSON {label: log-probability} for log-likelihood scoring, else NULL.
    ALTER TABLE eval_items ADD COLUMN choice_scores TEXT;
    -- Why a partner remark is missing (null content, refusal, no choices), else NULL.
    ALTER TABLE turns ADD COLUMN missing TEXT;
    """,
    """
    -- JSON {metric: value} per evaluated item (nll, rouge), else NULL.
    ALTER TABLE eval_items ADD COLUMN metrics TEXT;
    -- JSON remark diagnostics per partner turn (saie_lite/remarks.py), else NULL.
    ALTER TABLE turns ADD COLUMN diagnostics TEXT;
    """,
    """
    -- In the logs database: the runs, evaluations and ablations made anywhere (--run-dir,
    -- --out), so that `logs list` shows those outside SAIE_LITE_HOME too.
    CREATE TABLE places (
        path TEXT PRIMARY KEY,          -- absolute
        kind TEXT NOT NULL,             -- runs | evals | ablations
        created REAL NOT NULL
    );
    """,
]


def remark_key(partner: str, chat: list[dict], max_tokens: int) -> str:
    blob = json.dumps([partner, chat, max_tokens], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _statements(script: str) -> list[str]:
    """A migration script's statements, split where SQLite says one is complete (so a
    ';' inside a comment or a string does not split)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current)
            current = ""
    assert not current.strip() or current.strip().startswith("--"), current
    return out


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing, for reading a run where nothing may be written:
    a read-only disk, another user's folder. SQLite's read-only mode still needs the
    write-ahead log's index file (``-shm``) beside the database; where that cannot be
    made and no log is pending (no ``-wal`` file: nothing is writing, and everything is
    in the database file), the file is opened as immutable."""
    uri = Path(path).resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the file
        return db
    except sqlite3.OperationalError:
        if Path(f"{path}-wal").exists() or not Path(path).is_file():
            raise
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)


class Store:
    def __init__(self, path: Path, reader: bool = False):
        """``reader``: for commands that only read. Where the database cannot be opened
        for writing (a read-only disk, another user's run), it is opened read-only."""
        self.path = Path(path)
        try:
            # The loop may prepare the next batch (remark cache) on a worker thread while
            # the update runs; it never uses the connection from two threads at once.
            self.db = sqlite3.connect(self.path, timeout=_TIMEOUT_S, check_same_thread=False)
            # Opening reads the file: a process holding it (even against readers) is
            # waited for, with a line, rather than for minutes without one.
            self._patiently(self._wal)
            self._patiently(self._migrate)
        except UserError:  # busy for the whole wait (or the wait misspelt)
            self.db.close()
            raise
        except sqlite3.Error as e:
            if reader and self.path.is_file():
                self._open_read_only()
                return
            # The directory was checked for writing before; what is left is a file that
            # is not a database, or one on a file system sqlite cannot lock.
            raise UserError(
                f"cannot open the database {self.path} ({e}): move or delete that file, "
                "or point SAIE_LITE_HOME / --run-dir at another directory"
            ) from None

    def _wal(self) -> None:
        """Write-ahead logging: readers and one writer at once. Switching a new file to it
        needs a moment alone, and SQLite answers "locked" at once, without waiting, when
        another process opens it in the same instant: ``_patiently`` tries again."""
        self.db.execute("PRAGMA journal_mode=WAL")

    def _patiently(self, work):
        """``work()``, tried again while another process holds the database: the wait is
        said at once on stderr (so a command does not hang without a word) and bounded by
        ``db_wait()``, after which ``DatabaseBusy``. A write that fails busy has written
        nothing (its transaction is rolled back), so trying it again is safe."""
        started = time.monotonic()
        limit = None
        said = False
        self.db.execute(f"PRAGMA busy_timeout = {_POLL_MS}")
        try:
            while True:
                try:
                    return work()
                except sqlite3.OperationalError as e:
                    if not is_busy(e):
                        raise
                    if limit is None:
                        limit = db_wait()
                    waited = time.monotonic() - started
                    if waited >= limit:
                        raise DatabaseBusy(self.path, limit) from None
                    if not said and waited >= _QUIET_S:
                        print(
                            f"waiting for {self.path}, held by another process "
                            f"(up to {limit:g} s)...",
                            file=sys.stderr,
                            flush=True,
                        )
                        said = True
                    time.sleep(min(0.05, max(0.0, limit - waited)))
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {int(_TIMEOUT_S * 1000)}")

    def _open_read_only(self) -> None:
        if getattr(self, "db", None) is not None:  # connect may have failed, or a pragma
            self.db.close()
        where = self.path.parent
        copy = f"{where} is read-only: copy the run to a writable directory and read it there"
        try:
            self.db = connect_read_only(self.path)
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as e:
            what = copy if not os.access(where, os.W_OK) else "is it a saie-lite run?"
            raise UserError(f"cannot read the database {self.path} ({e}): {what}") from None
        if version < len(MIGRATIONS):  # it cannot be brought up to date where it is
            self.db.close()
            raise UserError(
                f"the database {self.path} was written by an older saie-lite and {copy} "
                "(it is updated when opened there)"
            )

    def _migrate(self) -> None:
        if self.db.execute("PRAGMA user_version").fetchone()[0] >= len(MIGRATIONS):
            return
        # Several processes may open a new database at once (evaluations started together
        # on a fresh SAIE_LITE_HOME): one migrates under the write lock, each migration in
        # one transaction, and the others find it done (executescript would commit each
        # statement on its own).
        self.db.execute("BEGIN IMMEDIATE")
        try:
            done = self.db.execute("PRAGMA user_version").fetchone()[0]
            for i, script in enumerate(MIGRATIONS[done:], start=done + 1):
                for statement in _statements(script):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {i}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    # -- remark cache -------------------------------------------------------------
    def cached_remark(self, key: str) -> str | None:
        row = self.db.execute("SELECT text FROM remark_cache WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @_patient
    def cache_remark(self, key: str, partner: str, chat: list[dict], text: str) -> None:
        # Committed at once: a remark paid for is never asked again, even after a crash.
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO remark_cache VALUES (?, ?, ?, ?, ?)",
                (key, partner, json.dumps(chat, ensure_ascii=False), text, time.time()),
            )

    # -- turns and steps ----------------------------------------------------------
    @_patient
    def add_turns(self, rows: list[dict]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT INTO turns (step, phase, round, example_id, turn, role, stance, prompt,"
                " text, correct, seconds, cached, created, missing, diagnostics) VALUES"
                " (:step, :phase, :round, :example_id, :turn, :role, :stance, :prompt,"
                " :text, :correct, :seconds, :cached, :created, :missing, :diagnostics)",
                [
                    {
                        "stance": None,
                        "correct": None,
                        "seconds": None,
                        "cached": 0,
                        "missing": None,
                        **r,
                        "diagnostics": json.dumps(r["diagnostics"])
                        if r.get("diagnostics")
                        else None,
                        "prompt": json.dumps(r["prompt"], ensure_ascii=False),
                        "created": now,
                    }
                    for r in rows
                ],
            )

    @_patient
    def add_step(self, row: dict) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO steps VALUES (:step, :phase, :round, :loss, :n_sequences,"
                " :n_target_tokens, :t_generate, :t_remark, :t_update, :created)",
                {**row, "created": time.time()},
            )

    def recorded_steps(self) -> int:
        """The highest update this run's database has a row for (0 for a new run)."""
        row = self.db.execute("SELECT MAX(step) FROM steps").fetchone()
        return int(row[0] or 0)

    @_patient
    def truncate_after(self, step: int) -> None:
        """Drop rows of updates past the checkpoint being resumed (they will be redone)."""
        with self.db:
            self.db.execute("DELETE FROM turns WHERE step > ?", (step,))
            self.db.execute("DELETE FROM steps WHERE step > ?", (step,))

    @_patient
    def event(self, kind: str, message: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO events (kind, message, created) VALUES (?, ?, ?)",
                (kind, message, time.time()),
            )

    # -- evaluations --------------------------------------------------------------
    def eval_config(self, name: str) -> dict | None:
        row = self.db.execute("SELECT config FROM evals WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    @_patient
    def start_eval(self, name: str, settings: dict) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO evals VALUES (?, ?, ?)",
                (name, json.dumps(settings, sort_keys=True), time.time()),
            )

    @_patient
    def add_eval_items(self, name: str, rows: list[dict]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO eval_items (eval, idx, example_id, question, reference,"
                " gold, final, strict, flexible, strict_correct, flexible_correct, turns, tokens,"
                " seconds, created, item_id, choice_scores, metrics) VALUES (:eval, :idx,"
                " :example_id, :question, :reference, :gold, :final, :strict, :flexible,"
                " :strict_correct, :flexible_correct, :turns, :tokens, :seconds, :created,"
                " :item_id, :choice_scores, :metrics)",
                [
                    {
                        "item_id": None,
                        **r,
                        "eval": name,
                        "turns": json.dumps(r["turns"]),
                        "choice_scores": json.dumps(r["choice_scores"])
                        if r.get("choice_scores")
                        else None,
                        "metrics": json.dumps(r["metrics"]) if r.get("metrics") else None,
                        "created": now,
                    }
                    for r in rows
                ],
            )

    def eval_items(self, name: str) -> list[dict]:
        cur = self.db.execute("SELECT * FROM eval_items WHERE eval = ? ORDER BY idx", (name,))
        cols = [c[0] for c in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        for r in rows:
            r["choice_scores"] = json.loads(r["choice_scores"]) if r["choice_scores"] else None
            r["metrics"] = json.loads(r["metrics"]) if r["metrics"] else {}
        return rows

    # -- debates ------------------------------------------------------------------
    def add_debate(self, question: str, agents: list[str], rounds: int, turns: list, final) -> int:
        """The debate's number. A debate is computed before it is saved, so where the
        database stays busy for the whole wait its transcript is written to a JSON file
        instead (the layout of ``logs export --format json``), and the one line says where."""
        created = time.time()

        def insert() -> int:
            with self.db:
                cur = self.db.execute(
                    "INSERT INTO debates (question, agents, rounds, turns, final, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (question, json.dumps(agents), rounds, json.dumps(turns), final, created),
                )
            return int(cur.lastrowid)

        try:
            return self._patiently(insert)
        except DatabaseBusy as e:
            debate = {
                "id": None,
                "question": question,
                "agents": agents,
                "rounds": rounds,
                "turns": turns,
                "final": final,
                "created": created,
            }
            kept = self._keep_aside("debate", debate)
            raise UserError(
                f"{self.path} is busy (held by another process) and stayed so for "
                f"{e.waited:g} s, so this debate is not in 'logs list': its transcript is kept "
                f"in {kept}; let that process finish before the next debate"
            ) from None

    def _keep_aside(self, what: str, record: dict) -> Path:
        """Write ``record`` as JSON to a new file beside the database, else in the working
        directory, else in the temporary one: the first that can be written."""
        import tempfile

        from saie_lite.safe_text import json_text

        body = json_text(json.dumps(record, indent=2, ensure_ascii=False)) + "\n"
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(record.get("created")))
        failure: OSError | None = None
        for where in (self.path.parent, Path.cwd(), Path(tempfile.gettempdir())):
            for n in range(100):
                path = where / f"{what}-unsaved-{stamp}{f'-{n}' if n else ''}.json"
                try:
                    f = open(path, "x", encoding="utf-8")  # never over another one
                except FileExistsError:
                    continue
                except OSError as e:
                    failure = e
                    break
                try:
                    with f:
                        f.write(body)
                        f.flush()
                        os.fsync(f.fileno())
                    return path.resolve()
                except OSError as e:  # a full disk: no half-written file left behind
                    failure = e
                    path.unlink(missing_ok=True)
                    break
        raise UserError(
            f"{self.path} stayed busy and no file could be written for the {what} either "
            f"({failure.strerror if failure else 'no free name'}): free disk space or "
            "make SAIE_LITE_HOME writable"
        )

    def debates(self) -> list[dict]:
        cur = self.db.execute("SELECT * FROM debates ORDER BY id")
        cols = [c[0] for c in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(cols, r))
            d["agents"], d["turns"] = json.loads(d["agents"]), json.loads(d["turns"])
            out.append(d)
        return out

    def remark_diagnostics(self) -> list[tuple[str, dict]]:
        """(stance, diagnostics) of every partner turn recorded with diagnostics."""
        q = (
            "SELECT stance, diagnostics FROM turns WHERE role = 'partner'"
            " AND diagnostics IS NOT NULL ORDER BY id"
        )
        return [(s, json.loads(d)) for s, d in self.db.execute(q).fetchall()]

    def steps(self) -> list[dict]:
        cur = self.db.execute("SELECT * FROM steps ORDER BY step")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def count_missing_remarks(self) -> int:
        q = "SELECT COUNT(*) FROM turns WHERE role = 'partner' AND missing IS NOT NULL"
        return self.db.execute(q).fetchone()[0]

    def last_event(self, *kinds: str) -> tuple[str, str] | None:
        """(kind, message) of the newest event of any of ``kinds``."""
        marks = ",".join("?" * len(kinds))
        return self.db.execute(
            f"SELECT kind, message FROM events WHERE kind IN ({marks}) ORDER BY id DESC LIMIT 1",
            kinds,
        ).fetchone()

    # -- places (the logs database) -------------------------------------------------

    @_patient
    def remember_place(self, kind: str, path: Path) -> None:
        with self.db:
            self.db.execute(
                # a folder made again as another kind (a run deleted, an eval there) is
                # listed as what it is now
                "INSERT INTO places (path, kind, created) VALUES (?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET kind = excluded.kind",
                (str(path), kind, time.time()),
            )

    def places(self, kind: str) -> list[Path]:
        rows = self.db.execute("SELECT path FROM places WHERE kind = ?", (kind,))
        return [Path(p) for (p,) in rows]

    def count_events(self, kind: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0]

    def count(self, table: str) -> int:
        assert table in ("turns", "steps", "remark_cache", "events", "eval_items", "debates")
        return self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
