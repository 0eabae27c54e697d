"""Progress as plain events for the Python API: each view calls ``callback(event)`` with a
dict, so that a notebook or a script decides what to show (no Rich Live, which a Jupyter
cell does not redraw). One class per view protocol: training's loop callbacks, an
evaluation's, an ablation's.

Every event is ``{"event": KIND, ...}``; the kinds and their keys are listed in
docs/python-api.md. Text in an event is as it came (questions, answers, remarks): a
callback that prints it to a terminal goes through :mod:`saie_lite.safe_text`, as
``print_event`` does.
"""

from __future__ import annotations

from collections.abc import Callable

from saie_lite.protocols import Callbacks
from saie_lite.safe_text import one_line

Event = dict


def print_event(event: Event) -> None:
    """The default callback: one plain line per event, readable in a notebook cell."""
    kind = event["event"]
    if kind == "note":
        line = f"note: {event['message']}"
    elif kind == "step":
        row = event["row"]
        line = f"update {row['step']} ({row['batches_done']}/{row['total']}) loss {row['loss']:.4f}"
    elif kind == "progress":
        line = f"{event['what']} {event['done']}/{event['total']}"
    elif kind in ("end", "summary", "finish"):
        line = f"{kind}: {event.get('status') or event.get('message', '')}"
    else:
        return  # begin, exchange, start: nothing a line needs to say
    print(one_line(line), flush=True)


class TrainEvents(Callbacks):
    """Training: begin, exchange, step, note, end."""

    def __init__(self, callback: Callable[[Event], None]):
        self.callback = callback

    def on_begin(self, info: dict) -> None:
        self.callback({"event": "begin", "info": info})

    def on_exchange(self, ex: dict) -> None:
        self.callback({"event": "exchange", "exchange": ex})

    def on_step(self, row: dict) -> None:
        self.callback({"event": "step", "row": row})

    def on_event(self, message: str) -> None:
        self.callback({"event": "note", "message": message})

    def on_end(self, summary: dict) -> None:
        self.callback({"event": "end", "status": summary.get("status"), "summary": summary})


class EvalEvents:
    """An evaluation: note, progress (items done of total, the new rows), summary."""

    def __init__(self, callback: Callable[[Event], None]):
        self.callback = callback
        self.checked = True  # start_eval sets False for data without an answer check

    def note(self, message: str) -> None:
        self.callback({"event": "note", "message": message})

    def progress(self, done: int, total: int, rows: list[dict]) -> None:
        self.callback(
            {"event": "progress", "what": "eval", "done": done, "total": total, "rows": rows}
        )

    def summary(self, s: dict, out_dir) -> None:
        self.callback(
            {"event": "summary", "status": s.get("status"), "summary": s, "dir": str(out_dir)}
        )


class AblateEvents:
    """An ablation: start (units in all), progress (units done, what the last one was),
    note, finish."""

    def __init__(self, callback: Callable[[Event], None]):
        self.callback = callback
        self.done = self.total = 0

    def start(self, kinds: list[str], done: int) -> None:
        self.total, self.done = len(kinds), done
        self.callback({"event": "start", "total": self.total, "done": done})

    def advance(self, n: int, what: str) -> None:
        self.done += n
        self.callback({"event": "progress", "what": what, "done": self.done, "total": self.total})

    def note(self, message: str) -> None:
        self.callback({"event": "note", "message": message})

    def finish(self, message: str) -> None:
        self.callback({"event": "finish", "message": message})
