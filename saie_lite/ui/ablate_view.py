"""The ablation's one progress bar (training updates and evaluated items of every system
together, with an ETA), Rich on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time

from saie_lite.errors import UserError
from saie_lite.safe_text import markup, visible

# What one unit of each kind costs relative to the others, used only until a kind has
# been timed: a plain (SFT or warm-up) update, a discussion update (answers, two
# remarks per answer, the longer two-stance update) and one evaluated item. From the
# ablate-quick run on 2 CPU cores (see README); any measured kind corrects the others.
# An item under a discussion strategy (self-discussion, debate, self-consistency) generates
# 1 + eval.rounds answers (a debate's partner as many again): about four single items.
PRIOR_COST = {"plain": 1.0, "discussion": 15.0, "eval": 2.0, "eval-discussion": 8.0}


class Eta:
    """Remaining time of an experiment whose units differ in cost by kind: each kind is
    timed on its own units, and a kind not yet timed is estimated from the timed ones."""

    def __init__(self, kinds: list[str], done: int):
        self.kinds, self.done = kinds, done
        self.spent = dict.fromkeys(PRIOR_COST, 0.0)
        self.count = dict.fromkeys(PRIOR_COST, 0)

    def record(self, n: int, seconds: float) -> None:
        units = self.kinds[self.done : self.done + n]
        for k in units:  # a batch of units shares its time evenly
            self.spent[k] += seconds / max(1, len(units))
            self.count[k] += 1
        self.done += n

    def rate(self, kind: str) -> float | None:
        if self.count[kind]:
            return self.spent[kind] / self.count[kind]
        known = [k for k in PRIOR_COST if self.count[k]]
        if not known:
            return None
        per_cost = sum(self.spent[k] / self.count[k] / PRIOR_COST[k] for k in known) / len(known)
        return per_cost * PRIOR_COST[kind]

    def seconds(self) -> float | None:
        left = self.kinds[self.done :]
        rates = {k: self.rate(k) for k in set(left)}
        if any(r is None for r in rates.values()):
            return None
        return sum(rates[k] for k in left)


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "eta -"
    m, sec = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"eta {h}:{m:02d}:{sec:02d}" if h else f"eta {m}:{sec:02d}"


class PlainAblateView:
    def __init__(self, stream=None):
        self.out = stream or sys.stdout
        self.total = 0
        self.eta = Eta([], 0)
        self.t = time.perf_counter()
        self.warm = False

    @property
    def done(self) -> int:
        return self.eta.done

    def _p(self, line: str) -> None:
        # what a unit is, notes and the final message name systems, paths and models
        print(visible(line), file=self.out, flush=True)

    def start(self, kinds: list[str], done: int) -> None:
        """``kinds``: every unit of the experiment in the order it runs ("plain",
        "discussion", "eval" or "eval-discussion"); the first ``done`` are finished already."""
        self.total = len(kinds)
        self.eta = Eta(kinds, done)
        self.t = time.perf_counter()
        if done:
            self._p(f"resuming: {done}/{self.total} units already done (finished parts are reused)")

    def _advance(self, n: int) -> float | None:
        now = time.perf_counter()
        if self.warm:
            self.eta.record(n, now - self.t)
        else:  # loading models makes the first unit slow: time the rest
            self.eta.done += n
            self.warm = True
        self.t = now
        return self.eta.seconds()

    def advance(self, n: int, what: str) -> None:
        eta = self._advance(n)
        self._p(f"[{self.done}/{self.total}] {what}  {fmt_eta(eta)}")

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
        )

        super().__init__()
        self.console = console or Console()
        self.bar = Progress(
            TextColumn("[bold]ablate"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),  # by kind of unit (Eta), not Rich's average
            TextColumn("{task.description}"),
            console=self.console,
        )
        self.task = None

    def start(self, kinds: list[str], done: int) -> None:
        super().start(kinds, done)
        self.bar.start()
        self.task = self.bar.add_task("", total=self.total, completed=done, eta=fmt_eta(None))

    def advance(self, n: int, what: str) -> None:
        eta = self._advance(n)
        # the description column is read as markup
        self.bar.update(self.task, completed=self.done, description=markup(what), eta=fmt_eta(eta))

    def note(self, message: str) -> None:
        self.console.print(f"[yellow]note:[/] {markup(message)}")

    def finish(self, message: str) -> None:
        if self.task is not None:
            self.bar.stop()
        self.console.print(visible(message), markup=False, highlight=False)


def make_ablate_view(kind: str = "auto"):
    if kind not in ("auto", "rich", "plain"):
        raise UserError(f"--live: auto | rich | plain, got {kind!r}")
    if kind == "rich" or (kind == "auto" and sys.stdout.isatty()):
        return RichAblateView()
    return PlainAblateView()
