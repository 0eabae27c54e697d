"""The live view: Rich on a terminal, plain log lines otherwise. Fed by loop callbacks.

Questions, answers, remarks, targets, example ids, model names and notes are text from
outside: both views print them through :mod:`saie_lite.safe_text` (never as Rich
markup, never with their control characters)."""

from __future__ import annotations

import sys
import time

from saie_lite.protocols import Callbacks
from saie_lite.remarks import rates, rates_line, weak_partner
from saie_lite.safe_text import markup, one_line, visible

STANCE_STYLE = {"supportive": "green", "adversarial": "red"}


def _short(text: str, n: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n - 3] + "..."


def _split(row: dict) -> str:
    g, r, u = row["t_generate"], row["t_remark"], row["t_update"]
    return f"gen {g:.1f}s | remark {r:.1f}s | update {u:.1f}s"


def next_lines(summary: dict) -> list[str]:
    steps = summary.get("next") or []
    if not steps:
        return []
    width = max(len(what) for what, _ in steps) + 1
    return ["next:"] + [f"  {what + ':':{width}} {cmd}" for what, cmd in steps]


def _missing(info: dict) -> str:
    """' | N missing remarks' once the partner has failed to give any, else ''."""
    n = info.get("missing_remarks") or 0
    return f" | {n} missing remark{'s' if n != 1 else ''}" if n else ""


class RemarkTally:
    """Running remark diagnostics per stance (live view) and the weak-partner line,
    said once per run."""

    def __init__(self) -> None:
        self.diags: list[tuple[str, dict]] = []
        self.warned = False

    def add(self, ex: dict) -> str | None:
        """Count an exchange's remarks; returns the warning line the first time it holds."""
        self.diags += [(st, d) for st, d in ex.get("diagnostics") or [] if d]
        if self.warned:
            return None
        line = weak_partner(rates(self.diags))
        self.warned = line is not None
        return line

    def line(self) -> str:
        return rates_line(rates(self.diags)) if self.diags else ""


def remark_lines(summary: dict, tally: RemarkTally) -> list[str]:
    """The end-of-run remark figures: the whole run's (from the store) when the summary
    has them, else what this view saw; plus the warning if it was not said yet."""
    r = summary.get("remarks") or (rates(tally.diags) if tally.diags else None)
    if not r:
        return []
    out = [f"remarks: {rates_line(r)}"]
    warn = weak_partner(r)
    if warn and not tally.warned:
        out.append(f"warning: {warn}")
    return out


class PlainView(Callbacks):
    """One line per event: for logs, pipes and CI."""

    def __init__(self, stream=None, show_exchanges: bool = True):
        self.out = stream or sys.stdout
        self.show = show_exchanges
        self.t0 = time.perf_counter()
        self.first_done = 0
        self.tally = RemarkTally()

    def _p(self, line: str) -> None:
        # every line may hold outside text (ids, names, notes): made visible as a whole
        print(visible(line), file=self.out, flush=True)

    def on_begin(self, info: dict) -> None:
        self.first_done = info["done"]
        self._p(
            f"saie-lite train: mode={info['mode']} learner={info['learner']} "
            f"partner={info['partner']} examples={info['examples']} updates={info['total']} "
            f"run={info['run_dir']}"
        )

    def on_exchange(self, ex: dict) -> None:
        warn = self.tally.add(ex)
        if warn:
            self._p(f"warning: {warn}")
        if not self.show:
            return
        e = ex["example"]
        if "answer" in ex:
            mark = {None: "", True: " (RIGHT)", False: " (WRONG)"}[ex["correct"]]
            self._p(f"[{e.id}] learner{mark}: {_short(ex['answer'], 160)!r}")
            for stance, text, cached in ex["remarks"]:
                self._p(
                    f"[{e.id}] partner {stance}{' (cached)' if cached else ''}: {_short(text, 160)!r}"
                )
        else:
            self._p(f"[{e.id}] {ex['phase']} target: {_short(ex['target'], 100)!r}")

    def on_step(self, row: dict) -> None:
        done, total = row["batches_done"], row["total"]
        elapsed = time.perf_counter() - self.t0
        rate = elapsed / max(1, done - self.first_done)
        eta = rate * (total - done)
        self._p(
            f"step {row['step']} [{done}/{total}] {row['phase']} loss={row['loss']:.4f} "
            f"{_split(row)}{_missing(row)} eta {eta:.0f}s"
        )
        if self.tally.diags:
            self._p(f"  remarks: {self.tally.line()}")

    def on_event(self, message: str) -> None:
        self._p(f"note: {message}")

    def on_end(self, summary: dict) -> None:
        s = summary["seconds"]
        for line in remark_lines(summary, self.tally):
            self._p(line)
        if summary.get("missing_remarks"):
            self._p(
                f"missing remarks: {summary['missing_remarks']} (partner gave no text; "
                "those discussions were skipped)"
            )
        self._p(
            f"{summary['status']}: {summary['step']} updates, {summary['batches_done']}/"
            f"{summary['total']} batches; time gen {s['generate']:.1f}s remark {s['remark']:.1f}s "
            f"update {s['update']:.1f}s; resume with: saie-lite train --resume {summary['run_dir']}"
            if summary["status"] != "finished"
            else f"finished: {summary['step']} updates; time gen {s['generate']:.1f}s "
            f"remark {s['remark']:.1f}s update {s['update']:.1f}s; run: {summary['run_dir']}"
        )
        for line in next_lines(summary):
            self._p(line)


class RichView(Callbacks):
    """Exchange cards scroll above a progress bar that shows loss, ETA and the time split."""

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

        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            # A step takes tens of seconds on a CPU; Rich's default 30 s window would
            # leave too few samples to estimate the remaining time.
            speed_estimate_period=3600,
        )
        self.task = None
        self.loss_avg: float | None = None
        self.tally = RemarkTally()

    def on_begin(self, info: dict) -> None:
        from rich.panel import Panel

        learner, partner, run_dir = (markup(info[k]) for k in ("learner", "partner", "run_dir"))
        self.console.print(
            Panel.fit(
                f"mode [bold]{markup(info['mode'])}[/]   learner {learner}   partner {partner}\n"
                f"{info['examples']} examples, {info['total']} updates   run {run_dir}",
                title="saie-lite train",
            )
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "training", total=info["total"], completed=info["done"], stats=""
        )

    def on_exchange(self, ex: dict) -> None:
        from rich.panel import Panel
        from rich.text import Text

        warn = self.tally.add(ex)
        if warn:
            self.console.print(f"[bold yellow]warning:[/] {markup(warn)}")
        e = ex["example"]
        body = Text()
        body.append("Q  ", style="bold")
        body.append(visible(_short(e.question, 300)) + "\n")
        if "answer" in ex:
            ok = ex["correct"]
            body.append("learner  ", style="bold")
            if ok is not None:  # free-form data (check: none) has no mark
                body.append("RIGHT " if ok else "WRONG ", style="bold green" if ok else "bold red")
            body.append(visible(_short(ex["answer"])) + "\n")
            for stance, text, cached in ex["remarks"]:
                style = STANCE_STYLE.get(stance, "yellow")
                body.append(
                    f"partner {stance}{' (cached)' if cached else ''}  ", style=f"bold {style}"
                )
                body.append(visible(_short(text, 300)) + "\n", style=style)
        body.append("target  ", style="bold cyan")
        body.append(visible(_short(ex["target"], 200)), style="cyan")
        title = f"{markup(one_line(e.id))} - {markup(ex['phase'])}"
        self.console.print(Panel(body, title=title, title_align="left"))

    def on_step(self, row: dict) -> None:
        loss = row["loss"]
        self.loss_avg = loss if self.loss_avg is None else 0.8 * self.loss_avg + 0.2 * loss
        stats = f"loss {loss:.3f} (avg {self.loss_avg:.3f})  {_split(row)}{_missing(row)}"
        if self.tally.diags:
            stats += f"\n  remarks: {self.tally.line()}"
        self.progress.update(
            self.task,
            completed=row["batches_done"],
            # both columns are read as markup
            stats=markup(stats),
            description=markup(f"{row['phase']} r{row['round']}"),
        )

    def on_event(self, message: str) -> None:
        self.console.print(f"[yellow]note:[/] {markup(message)}")

    def on_end(self, summary: dict) -> None:
        self.progress.stop()
        s = summary["seconds"]
        total = sum(s.values()) or 1.0
        split = "  ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in s.items())
        for line in remark_lines(summary, self.tally):
            self.console.print(visible(line), markup=False, highlight=False)
        if summary.get("missing_remarks"):
            self.console.print(
                f"[yellow]missing remarks:[/] {summary['missing_remarks']} (partner gave no "
                "text; those discussions were skipped)"
            )
        if summary["status"] == "finished":
            self.console.print(f"[bold green]finished[/]: {summary['step']} updates.  {split}")
            self.console.print(f"run directory: {markup(summary['run_dir'])}")
            for line in next_lines(summary):
                self.console.print(visible(line), markup=False, highlight=False)
        else:
            self.console.print(
                f"[bold yellow]stopped[/] after {summary['step']} updates (checkpoint saved).  {split}"
            )
            self.console.print(
                f"resume with: saie-lite train --resume {markup(summary['run_dir'])}"
            )


def make_view(kind: str) -> Callbacks:
    if kind == "quiet":
        return PlainView(show_exchanges=False)
    if kind == "rich" or (kind == "auto" and sys.stdout.isatty()):
        return RichView()
    return PlainView()
