"""The report of an ablation: its table (as ``table.md`` has it), its plot (the
``ablation.png`` inside the page), and a link to each system's run and evaluation
report. Read from ``results.json``, ``table.md`` and ``ablation.png``."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.report.page import esc, facts, page


def table_html(markdown: str) -> str:
    """``table.md`` as HTML: its tables (one per strategy, each under its ``###``
    heading), then its notes as paragraphs and lists."""
    tables, rows, notes, in_list = [], [], [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):  # not the |---| line
                rows.append(cells)
            continue
        if rows:
            tables.append(_table(rows))
            rows = []
        if line.startswith("### "):
            tables.append(f"<h3>{esc(line[4:])}</h3>")
            continue
        if line.startswith("- ") != in_list:
            in_list = not in_list
            notes.append("<ul>" if in_list else "</ul>")
        if in_list:
            notes.append(f"<li>{esc(line[2:])}</li>")
        elif line.strip():
            notes.append(f"<p>{esc(line)}</p>")
    if in_list:
        notes.append("</ul>")
    if rows:
        tables.append(_table(rows))
    return "".join(tables) + "".join(notes)


def _table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def read_results(ablation_dir: Path) -> dict:
    path = Path(ablation_dir) / "results.json"
    if not path.is_file():
        raise UserError(
            f"{ablation_dir} has no results.json: the ablation is not finished (the same "
            "ablate command continues it)"
        )
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
        rows = res["rows"]
        assert isinstance(rows, list) and all(isinstance(r["system"], str) for r in rows)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AssertionError):
        raise UserError(
            f"{path} cannot be read as an ablation's results: run the same ablate command "
            "again to write it anew"
        ) from None
    return res


def ablation_report(ablation_dir: Path, links: dict[str, list[tuple[str, str]]]) -> str:
    """``links``: for each system, (what, relative address) of its reports."""
    d = Path(ablation_dir)
    res = read_results(d)
    s = res.get("settings") or {}
    rows = [("ablation", d.resolve()), ("held-out items", res.get("n_eval"))]
    rows += [(k, v) for k, v in s.items() if v is not None]
    rows.append(("wall time", f"{res.get('seconds') or 0:.0f} s"))
    body = [f'<section class="card">{facts(rows)}</section>']
    table = d / "table.md"
    if table.is_file():
        body.append(
            f'<h2>Table</h2><section class="card">{table_html(table.read_text("utf-8"))}</section>'
        )
    plot = d / "ablation.png"
    if plot.is_file():
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        body.append(
            f'<h2>Plot</h2><img class="plot" alt="metrics per system with 95% intervals, and '
            f'the training loss" src="data:image/png;base64,{data}">'
        )
    items = []
    for r in res["rows"]:
        mine = links.get(r["system"]) or []
        found = ", ".join(f'<a href="{esc(href)}">{esc(what)}</a>' for what, href in mine)
        items.append(f"<li><b>{esc(r['system'])}</b>: {found or 'no run or evaluation found'}</li>")
    body.append(f'<h2>Systems</h2><section class="card"><ul>{"".join(items)}</ul></section>')
    return page(f"saie-lite ablation {d.name}", "ablation report", "\n".join(body))
