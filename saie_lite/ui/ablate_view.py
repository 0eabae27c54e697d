"""The ablation's one progress bar (training updates and evaluated items of every system
together, with an ETA), Rich on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time


class PlainAblateView:
    def __init__(self, stream=None):
        self.out = stream or sys.stdout
        self.total = self.done = self.first = 0
        self.t0 = time.perf_counter()
        self.warm = False

    def _p(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def start(self, total: int, done: int) -> None:
        self.total, self.done, self.first = total, done, done
        self.t0 = time.perf_counter()
        if done:
            self._p(f"resuming: {done}/{total} units already done (finished parts are reused)")

    def advance(self, n: int, what: str) -> None:
        self.done += n
        rate = (time.perf_counter() - self.t0) / max(1, self.done - self.first)
        eta = rate * (self.total - self.done)
        self._p(f"[{self.done}/{self.total}] {what}  eta {eta:.0f}s")
        if not self.warm:
            # Loading models makes the first unit slow: time the rest from here.
            self.t0, self.first, self.warm = time.perf_counter(), self.done, True

    def note(self, message: str) -> None:
        self._p(f"note: {message}")

    def finish(self, message: str) -> None:
        self._p(message)


class RichAblateView(PlainAblateView):
    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().__init__()
        self.console = console or Console()
        self.bar = Progress(
            TextColumn("[bold]ablate"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=self.console,
            speed_estimate_period=3600,
        )
        self.task = None

    def start(self, total: int, done: int) -> None:
        super().start(total, done)
        self.bar.start()
        self.task = self.bar.add_task("", total=total, completed=done)

    def advance(self, n: int, what: str) -> None:
        self.done += n
        self.bar.update(self.task, completed=self.done, description=what)

    def note(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]note:[/] {escape(message)}")

    def finish(self, message: str) -> None:
        if self.task is not None:
            self.bar.stop()
        self.console.print(message, markup=False, highlight=False)


def make_ablate_view(kind: str = "auto"):
    if kind == "rich" or (kind == "auto" and sys.stdout.isatty()):
        return RichAblateView()
    return PlainAblateView()
