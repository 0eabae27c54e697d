"""The report of an evaluation: its settings, every metric with its 95% interval, and
every item (question, the final answer marked right or wrong, the reference, each turn),
filterable. Read from ``summary.json`` and the items' database; nothing is written."""

from __future__ import annotations

from pathlib import Path

from saie_lite.report.page import block, esc, facts, filters, mark_badge, mark_of, page


def _value(name: str, v) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if name in ("accuracy", "strict", "flexible") else f"{v:.4g}"


def metrics_table(summary: dict) -> str:
    rows = []
    for name, m in (summary.get("metrics") or {}).items():
        if not isinstance(m, dict):
            continue
        lo, hi = (m.get("ci95") or [None, None])[:2]
        span = f"[{_value(name, lo)}, {_value(name, hi)}]" if lo is not None else "-"
        rows.append((name, _value(name, m.get("mean")), span, m.get("n", summary.get("n"))))
    for reading in ("strict", "flexible"):
        a = summary.get(reading)
        if isinstance(a, dict):
            lo, hi = (a.get("ci95") or [None, None])[:2]
            span = f"[{_value(reading, lo)}, {_value(reading, hi)}]" if lo is not None else "-"
            rows.append((f"accuracy, {reading} reading", _value(reading, a.get("accuracy")),
                         span, summary.get("n")))  # fmt: skip
    head = "<tr><th>metric</th><th>mean</th><th>95% interval</th><th>n</th></tr>"
    cells = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{cells}</table>"


def item_html(n: int, item: dict) -> str:
    mark = mark_of(item["strict_correct"])
    extra = ""
    if item["flexible_correct"] != item["strict_correct"]:
        extra = f" (flexible reading: {esc(mark_of(item['flexible_correct']))})"
    head = f"item {n} · {item['example_id']}"
    parts = [
        f"<header>{esc(head)}</header>",
        block("question", item["question"]),
        f'<div class="answer"><span class="label">answer</span> {mark_badge(mark)}{extra}'
        f"<pre>{esc(item['final'])}</pre></div>",
        block("reference answer", item["gold"]),
    ]
    if item.get("metrics"):
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in item["metrics"].items() if isinstance(v, float)
        )
        parts.append(f'<div class="diag">{esc(shown)}</div>')
    turns = item.get("turns") or []
    if len(turns) > 1 or (item.get("reference") and item["reference"] != item["gold"]):
        inner = ""
        if item.get("reference") and item["reference"] != item["gold"]:
            inner += block("reference solution", item["reference"])
        for t in turns:
            label = f"round {t.get('round', 0) + 1}, agent {t.get('agent', 0) + 1}"
            inner += block(label, t.get("text", ""))
        parts.append(f"<details><summary>every turn ({len(turns)})</summary>{inner}</details>")
    return f'<article class="item" data-mark="{esc(mark)}">{"".join(parts)}</article>'


def eval_report(eval_dir: Path) -> str:
    from saie_lite.evaluate.readback import read_evaluation

    summary, items = read_evaluation(Path(eval_dir))
    settings = summary.get("settings") or {}
    rows = [("evaluation", Path(eval_dir).resolve()), ("status", summary.get("status", "?"))]
    rows += [
        (k, ", ".join(map(str, v)) if isinstance(v, list) else v)
        for k, v in settings.items()
        if not isinstance(v, (dict, list)) or v
    ]
    rows += [("items", summary.get("n")), ("tokens generated", summary.get("tokens_generated")),
             ("seconds", f"{summary.get('seconds') or 0:.1f}")]  # fmt: skip
    pf = summary.get("parse_failure_rate")
    if isinstance(pf, dict):
        rows.append(("no answer read", ", ".join(f"{k} {100 * v:.1f}%" for k, v in pf.items())))
    body = [
        f'<section class="card">{facts(rows)}</section>',
        f'<h2>Metrics</h2><section class="card">{metrics_table(summary)}</section>',
        f"<h2>Items ({len(items)})</h2>",
        filters(len(items)),
    ]
    body += [item_html(n, item) for n, item in enumerate(items, start=1)]
    title = f"saie-lite evaluation {Path(eval_dir).name}"
    return page(title, "evaluation report", "\n".join(body), True)
