"""Where runs, evaluations and ablations were made, so that ``logs list`` shows them
wherever they are: under ``SAIE_LITE_HOME`` (found by looking) and anywhere else a
``--run-dir`` or ``--out`` put them (noted in the logs database when they start)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.paths import home, writable_dir

KINDS = ("runs", "evals", "ablations")


def logs_db() -> Path:
    return writable_dir(home(), "the logs database's directory (SAIE_LITE_HOME)") / "logs.sqlite"


def remember(kind: str, path: Path) -> None:
    """Note ``path`` in the logs database. Best effort: a home that cannot be written (a
    read-only one, a damaged database) must not stop a run or an evaluation that can."""
    from saie_lite.store import Store

    assert kind in KINDS
    path = Path(path).resolve()
    if path.parent == (home() / kind).resolve():
        return  # found by looking
    if kind == "evals" and _in_a_run(path):
        return  # listed under its run (RUN/NAME, RUN/evals/NAME)
    try:
        store = Store(logs_db())
        try:
            store.remember_place(kind, path)
        finally:
            store.close()
    except (UserError, OSError, sqlite3.Error):
        pass


def _in_a_run(path: Path) -> bool:
    runs = (path.parent, path.parent.parent) if path.parent.name == "evals" else (path.parent,)
    return any((r / "saie.sqlite").is_file() and (r / "config.yaml").is_file() for r in runs)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # unreadable now (no permission, a lost network mount): not listed
        return False


def found(kind: str, store) -> list[Path]:
    """The folders of ``kind``: those under ``SAIE_LITE_HOME/kind`` and those noted
    elsewhere that still exist (a deleted one drops out), sorted, each once."""
    assert kind in KINDS
    here = [p for p in (home() / kind).glob("*") if _is_dir(p)]
    elsewhere = [p for p in store.places(kind) if _is_dir(p)]
    seen, out = set(), []
    for p in sorted(here) + sorted(elsewhere):
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
