"""What ``saie-lite logs`` reads back: saved debates (``$SAIE_LITE_HOME/logs.sqlite``), and
the runs, evaluations and ablations the places file knows, each with where it stands."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.places import found, logs_db
from saie_lite.safe_text import one_line, visible


def get_debate(debate_id: int) -> dict:
    from saie_lite.store import Store

    store = Store(logs_db())
    try:
        found = [d for d in store.debates() if d["id"] == debate_id]
    finally:
        store.close()
    if not found:
        raise UserError(f"no debate {debate_id}: see 'saie-lite logs list'")
    return found[0]


def list_logs() -> str:
    from saie_lite.store import Store

    lines = []
    store = Store(logs_db())
    try:
        debates = store.debates()
        places = {kind: found(kind, store) for kind in ("runs", "evals", "ablations")}
    finally:
        store.close()
    lines.append(f"debates ({len(debates)}):")
    for d in debates:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d["created"]))
        q = one_line(d["question"])  # made visible before it is cut, so no escape is split
        q = q if len(q) < 60 else q[:57] + "..."
        lines.append(f"  {d['id']:>4}  {when}  final={one_line(d['final'])}  {q}")
    for kind in ("runs", "evals"):
        lines.append(f"{kind} ({len(places[kind])}):")
        for p in places[kind]:
            lines.append(f"  {p}")
            if kind == "evals":
                lines.append(f"      {eval_line(p)}")
                continue
            if (p / "saie.sqlite").is_file():
                try:
                    lines += [f"      {line}" for line in run_state(p) + remark_figures(p)]
                except (UserError, sqlite3.Error, OSError, ValueError) as e:
                    # one damaged run must not hide the others
                    why = str(e) if isinstance(e, UserError) else "its saie.sqlite cannot be read"
                    lines.append(f"      ({why})")
            # evaluations kept inside the run: eval --run's default RUN/evals/*, and the
            # RUN/eval and RUN/eval-base that the end-of-run hints suggest
            inside = [q for q in p.glob("*") if (q / "summary.json").is_file()]
            inside += [q for q in (p / "evals").glob("*") if q.is_dir()]
            for e in sorted(inside):
                lines.append(f"      eval {e.relative_to(p).as_posix()}: {eval_line(e)}")
    # ablations keep their runs and evaluations inside (runs/SYSTEM, evals/SYSTEM)
    lines.append(f"ablations ({len(places['ablations'])}):")
    for p in places["ablations"]:
        done = (p / "table.md").is_file()
        lines.append(
            f"  {p}\n      "
            + (
                "finished: table.md, results.json, ablation.png"
                if done
                else "not finished: the same ablate command continues it"
            )  # fmt: skip
        )
    # Paths, run events and summaries are read back from the stores: made visible as a
    # whole, so none of them can drive the terminal either.
    return visible("\n".join(lines))


def run_state(run_dir: Path) -> list[str]:
    """Where a run stands: finished, stopped (and the command that goes on), failed, or
    begun and never ended (killed, or running now). Empty for a run from before runs
    recorded it."""
    import json

    from saie_lite.store import Store
    from saie_lite.train import checkpoint

    store = Store(Path(run_dir) / "saie.sqlite", reader=True)
    try:
        last = store.last_event("begin", "end")
        steps = store.recorded_steps()
    finally:
        store.close()
    if last is None:
        return []
    kind, message = last
    d = json.loads(message)
    resume = f"saie-lite train --resume {run_dir}"
    if kind == "begin":
        from saie_lite.locks import holder

        pid = holder(run_dir)  # its lock says which, without taking it
        if pid is not None:
            return [f"running now (pid {pid or '?'}) at update {steps}"]
        # killed (or running now): a resume goes on from the last checkpoint
        saved = checkpoint.saved_step(run_dir)
        if saved is None:
            return [
                f"not finished (killed, or running now) at update {steps}, before its "
                "first checkpoint: nothing to resume, start it again"
            ]
        return [
            f"not finished (killed, or running now) at update {steps}: {resume} goes on "
            f"from its checkpoint at update {saved}"
        ]
    where = f"update {d['step']} ({d['batches_done']}/{d['total']} batches)"
    if d["status"] == "finished":
        return [f"finished: {d['step']} updates ({d['total']} batches)"]
    if d["status"] == "stopped":
        return [f"stopped at {where}: {resume} goes on"]
    return [f"failed at {where} (see the error it printed): {resume} goes on once fixed"]


def eval_line(eval_dir: Path) -> str:
    """An evaluation's headline from its summary.json: n, every metric's mean with its
    95% interval, and whether it was stopped before the end."""
    import json

    try:
        s = json.loads((eval_dir / "summary.json").read_text())
        parts = [f"n={s['n']}"]
        for name, m in (s.get("metrics") or {}).items():
            if m.get("mean") is None:
                continue
            lo, hi = m.get("ci95") or (None, None)
            pct = name == "accuracy"
            fmt = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
            span = f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else ""
            parts.append(f"{name} {fmt(m['mean'])}{span}")
        if s.get("status") == "stopped":
            parts.append("stopped: the same eval command continues it")
        return ", ".join(parts)
    except FileNotFoundError:
        return "(no summary.json: not finished, or not an evaluation)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "(its summary.json cannot be read)"


def remark_figures(run_dir: Path) -> list[str]:
    """A run's remark diagnostics per stance, and the weak-partner line when it holds
    (empty for a run without discussion remarks)."""
    from saie_lite.remarks import rates, rates_line, weak_partner
    from saie_lite.store import Store

    store = Store(Path(run_dir) / "saie.sqlite", reader=True)
    try:
        r = rates(store.remark_diagnostics())
    finally:
        store.close()
    if not r:
        return []
    warn = weak_partner(r)
    return [f"remarks: {rates_line(r)}"] + ([f"warning: {warn}"] if warn else [])


def run_remarks(run_dir: Path) -> str:
    """``saie-lite logs remarks RUN_DIR``."""
    if not (Path(run_dir) / "saie.sqlite").is_file():
        raise UserError(f"{run_dir} is not a saie-lite run directory (no saie.sqlite)")
    lines = remark_figures(Path(run_dir))
    if not lines and not (Path(run_dir) / "config.yaml").is_file():  # an evaluation's folder
        raise UserError(f"{run_dir} is not a training run (no config.yaml): give a run directory")
    out = "\n".join(lines) if lines else f"{run_dir}: no partner remarks with diagnostics"
    return visible(out)


def show_eval(eval_dir: Path) -> str:
    """``saie-lite logs show EVAL_DIR``: the headline, then every item's question, final
    answer, mark and reference."""
    from saie_lite.evaluate.readback import read_evaluation

    _, items = read_evaluation(Path(eval_dir))
    lines = [f"evaluation {eval_dir}: {eval_line(Path(eval_dir))}"]
    for n, item in enumerate(items, start=1):
        mark = "RIGHT" if item["strict_correct"] else "WRONG"
        if item["flexible_correct"] != item["strict_correct"]:  # the readings disagree
            mark += f" (flexible: {'RIGHT' if item['flexible_correct'] else 'WRONG'})"
        lines += [
            "",
            f"item {n} ({one_line(item['example_id'])}): {mark}",
            f"question: {item['question'].strip()}",
            f"answer: {item['final'].strip()}",
            f"reference: {one_line(item['gold'])}",
        ]
    return visible("\n".join(lines))  # all of it read back from the store: shown as text
