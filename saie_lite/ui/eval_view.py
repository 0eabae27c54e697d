"""The evaluation view (progress, then the figures) and the printed comparison."""

from __future__ import annotations

import sys


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


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
        print(f"note: {message}", flush=True)

    def progress(self, done: int, total: int, rows: list[dict]) -> None:
        right = sum(r["strict_correct"] for r in rows)
        if self.bar is None:
            if rows:
                # data.check: none marks nothing, so there is no count of right answers
                marks = f", {right} right" if self.checked else ""
                print(f"items {done}/{total} (+{len(rows)}{marks})", flush=True)
            elif done:
                print(f"resuming: {done}/{total} items already done", flush=True)
            return
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("eval", total=total, completed=done)
        self.bar.update(self.task, completed=done)

    def summary(self, s: dict, out_dir) -> None:
        if self.bar is not None:
            self.bar.stop()
        for line in summary_lines(s):
            print(line)
        if s.get("status") == "stopped":
            print("  stopped: the same eval command continues it, finished items kept")
        print(f"  summary: {out_dir}/summary.json")


def make_eval_view(kind: str = "auto") -> EvalView:
    return EvalView(rich=kind == "rich" or (kind == "auto" and sys.stdout.isatty()))


def print_compare(name_a: str, name_b: str, a: dict, b: dict, c: dict) -> None:
    left = c.get("left_out") or {}
    if left.get("A") or left.get("B"):
        print(
            f"A = {name_a}\nB = {name_b}\npaired over the n={c['n']} shared items "
            f"(left out: {left['A']} only in A, {left['B']} only in B)"
        )
    else:
        print(f"A = {name_a}\nB = {name_b}\npaired over n={c['n']} items")
    if "strict" not in c:
        print("  accuracy not compared: the data has no answer check (data.check: none)")
    for kind in ("strict", "flexible") if "strict" in c else ():
        p = c[kind]
        lo, hi = p["diff_ci"]
        print(
            f"  {kind:8} A {_pct(p['a_correct'] / p['n'])}  B {_pct(p['b_correct'] / p['n'])}  "
            f"B-A {100 * p['diff']:+.1f} pts [95% CI {100 * lo:+.1f}, {100 * hi:+.1f}]  "
            f"only A right {p['only_a']}, only B right {p['only_b']}  McNemar p={p['p_value']:.3g}"
            f"  -> {p['verdict']}"
        )
    for name, p in (c.get("metrics") or {}).items():
        lo, hi = p["diff_ci"]
        ci = "-, -" if lo is None else f"{lo:+.4f}, {hi:+.4f}"  # no interval from one item
        print(
            f"  {name:8} A {p['mean_a']:.4f}  B {p['mean_b']:.4f}  B-A {p['diff']:+.4f} "
            f"[95% CI {ci}]  paired t p={p['t_p']:.3g}  "
            f"Wilcoxon p={p['wilcoxon_p']:.3g}"
        )
