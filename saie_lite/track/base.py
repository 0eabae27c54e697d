"""What every tracker does, and the fan-out that keeps a failing one from stopping a run.

A tracker mirrors what the run's own store keeps (saie.sqlite, summary.json, table.md):
not logged in, no network, a full disk under its files is one line, and that tracker is
left out for the rest of the run; the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from saie_lite.safe_text import one_line


@dataclass
class RunInfo:
    name: str  # the run's name in the tracker (its folder's name)
    kind: str  # train | eval | ablation
    folder: Path  # where local tracker files go: FOLDER/tb, FOLDER/wandb
    config: dict[str, Any] = field(default_factory=dict)  # hyper-parameters, dotted keys
    group: str = ""  # the systems of one ablation share a group


class Tracker(Protocol):
    name: str

    def start(self, info: RunInfo, note: Callable[[str], None]) -> None: ...

    def log(self, values: dict[str, float], step: int) -> None:
        """Scalars of one update (or of one evaluation, at its step)."""
        ...

    def summary(self, values: dict[str, float]) -> None:
        """The run's closing figures."""
        ...

    def table(self, key: str, columns: list[str], rows: list[list]) -> None: ...

    def finish(self, status: str) -> None:
        """``status``: finished | stopped | failed."""
        ...


class Trackers:
    """Every tracker asked for, each call guarded: one that raises is said once (its name,
    what failed, why) and dropped; the others and the run go on."""

    def __init__(self, note: Callable[[str], None]):
        self.note = note
        self.live: list = []

    def __bool__(self) -> bool:
        return bool(self.live)

    def _guard(self, tracker, what: str, call: Callable[[], None]) -> bool:
        try:
            call()
            return True
        except Exception as e:  # noqa: BLE001 - any tracker fault: one line, the run goes on
            why = one_line(f"{type(e).__name__}: {e}")
            why = why if len(why) <= 200 else why[:197] + "..."
            self.note(
                f"tracking: {tracker.name} failed to {what} ({why}); it is off for the rest "
                "of this run (the run's own files keep everything)"
            )
            if tracker in self.live:
                self.live.remove(tracker)
            return False

    def start(self, tracker, info: RunInfo) -> None:
        if self._guard(tracker, "start", lambda: tracker.start(info, self.note)):
            self.live.append(tracker)

    def _each(self, what: str, method: str, *args) -> None:
        for t in list(self.live):
            self._guard(t, what, lambda t=t: getattr(t, method)(*args))

    def log(self, values: dict[str, float], step: int) -> None:
        self._each("log", "log", values, step)

    def summary(self, values: dict[str, float]) -> None:
        self._each("log the summary", "summary", values)

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        self._each(f"log the {key} table", "table", key, columns, rows)

    def finish(self, status: str) -> None:
        self._each("close its run", "finish", status)
        self.live.clear()
