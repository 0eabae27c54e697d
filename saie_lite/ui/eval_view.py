"""The evaluation view (progress, then the figures) and the printed comparison.

Evaluation names, model names, notes and paths are text from outside (a summary.json
is read back): every line goes out through :func:`_p`, which makes it visible."""

from __future__ import annotations

import sys

from saie_lite.safe_text import visible


def _p(line: str = "") -> None:
    print(visible(line), flush=True)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def right_line(rows: list[dict]) -> str:
    """How many of these items were right under each reading the summary reports: the
    strict reading (the answer in the task's format) and the flexible one (the last
    answer-like text). One figure alone beside the summary's other one looked like a
    contradiction ('0 right' beside 'flexible accuracy 12.5%')."""
    strict = sum(r["strict_correct"] for r in rows)
    flexible = sum(r["flexible_correct"] for r in rows)
    return f"{strict} strict right, {flexible} flexible right"


def summary_lines(s: dict) -> list[str]:
    """The figures of an evaluation, as plain lines (shared by both views)."""
    st, fl = s["strict"], s["flexible"]
    pf = s["parse_failure_rate"]
    if s.get("settings", {}).get("check") == "none":
        return [
            f"{s['name']}: n={s['n']} ({s['status']})",
            *metric_lines(s),
            "  no answer check (data.check: none): accuracy not measured; replies are in the store",
            f"  tokens generated {s['tokens_generated']}  wall time {s['seconds']:.1f}s",
        ]
    close = s.get("loglik")
    extra = (
        [
            f"  log-likelihood: {close['ties']} exact ties (first choice taken), "
            f"{close['within_0.1']} calls within 0.1 nats, median margin "
            f"{close['median_margin']:.3f} nats"
        ]
        if close
        else []
    )
    return [
        f"{s['name']}: n={s['n']} ({s['status']})",
        *extra,
        *metric_lines(s),
        f"  strict   accuracy {_pct(st['accuracy'])}  95% CI [{_pct(st['ci95'][0])}, "
        f"{_pct(st['ci95'][1])}]  parse failures {_pct(pf['strict'])}",
        f"  flexible accuracy {_pct(fl['accuracy'])}  95% CI [{_pct(fl['ci95'][0])}, "
        f"{_pct(fl['ci95'][1])}]  parse failures {_pct(pf['flexible'])}",
        f"  tokens generated {s['tokens_generated']}  wall time {s['seconds']:.1f}s",
    ]


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def metric_lines(s: dict) -> list[str]:
    """nll and rouge with their 95% intervals (accuracy has its own lines)."""
    out = []
    for name, m in (s.get("metrics") or {}).items():
        if name == "accuracy" or not isinstance(m, dict):
            continue
        lo, hi = m["ci95"]
        what = "lower is better" if name == "nll" else "higher is better"
        out.append(
            f"  {name:8} mean {_num(m['mean'])}  95% CI [{_num(lo)}, {_num(hi)}]  n={m['n']}"
            f"  ({what})"
        )
    return out


class EvalView:
    """Progress lines (or a Rich bar on a terminal) and the final figures."""

    def __init__(self, rich: bool):
        self.rich = rich
        self.checked = True  # start_eval sets False for data without an answer check
        self.bar = None
        if rich:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                "[bold]eval",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                "eta",
                TimeRemainingColumn(),
                speed_estimate_period=3600,
            )
            self.task = None

    def note(self, message: str) -> None:
        _p(f"note: {message}")

    def progress(self, done: int, total: int, rows: list[dict]) -> None:
        if self.bar is None:
            if rows:
                # data.check: none marks nothing, so there is no count of right answers
                marks = f", {right_line(rows)}" if self.checked else ""
                _p(f"items {done}/{total} (+{len(rows)}{marks})")
            elif done:
                _p(f"resuming: {done}/{total} items already done")
            return
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("eval", total=total, completed=done)
        self.bar.update(self.task, completed=done)

    def summary(self, s: dict, out_dir) -> None:
        if self.bar is not None:
            self.bar.stop()
        for line in summary_lines(s):
            _p(line)
        if s.get("status") == "stopped":
            _p("  stopped: the same eval command continues it, finished items kept")
        _p(f"  summary: {out_dir}/summary.json")


def make_eval_view(kind: str = "auto") -> EvalView:
    return EvalView(rich=kind == "rich" or (kind == "auto" and sys.stdout.isatty()))


def print_compare(name_a: str, name_b: str, a: dict, b: dict, c: dict) -> None:
    left = c.get("left_out") or {}
    if left.get("A") or left.get("B"):
        _p(
            f"A = {name_a}\nB = {name_b}\npaired over the n={c['n']} shared items "
            f"(left out: {left['A']} only in A, {left['B']} only in B)"
        )
    else:
        _p(f"A = {name_a}\nB = {name_b}\npaired over n={c['n']} items")
    if "strict" not in c:
        _p("  accuracy not compared: the data has no answer check (data.check: none)")
    for kind in ("strict", "flexible") if "strict" in c else ():
        p = c[kind]
        lo, hi = p["diff_ci"]
        _p(
            f"  {kind:8} A {_pct(p['a_correct'] / p['n'])}  B {_pct(p['b_correct'] / p['n'])}  "
            f"B-A {100 * p['diff']:+.1f} pts [95% CI {100 * lo:+.1f}, {100 * hi:+.1f}]  "
            f"only A right {p['only_a']}, only B right {p['only_b']}  McNemar p={p['p_value']:.3g}"
            f"  -> {p['verdict']}"
        )
    for name, p in (c.get("metrics") or {}).items():
        lo, hi = p["diff_ci"]
        ci = "-, -" if lo is None else f"{lo:+.4f}, {hi:+.4f}"  # no interval from one item
        _p(
            f"  {name:8} A {p['mean_a']:.4f}  B {p['mean_b']:.4f}  B-A {p['diff']:+.4f} "
            f"[95% CI {ci}]  paired t p={p['t_p']:.3g}  "
            f"Wilcoxon p={p['wilcoxon_p']:.3g}"
        )
