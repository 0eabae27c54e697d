"""The report of a training run: what it was, the loss curve, the time split of every
update, the remark diagnostics over updates, and every discussion, filterable.

Everything is read from ``RUN/saie.sqlite`` (turns, updates, notes) and
``RUN/config.yaml``; nothing in the run is written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.report.charts import line_chart, stacked_bars
from saie_lite.report.page import block, esc, facts, filters, mark_badge, mark_of, page

STANCE_ORDER = {"rationale": 0, "supportive": 1, "adversarial": 2}
ROLE_ORDER = {"partner": 0, "learner": 1, "target": 2}


def _read(run_dir: Path) -> dict:
    from saie_lite.store import Store

    store = Store(run_dir / "saie.sqlite", reader=True)
    try:
        steps = store.steps()
        # Only a discussion's opening chat is needed (for its question): the partner's and
        # the later prompts repeat it, and a long run holds many of them.
        cur = store.db.execute(
            "SELECT id, step, phase, round, example_id, turn, role, stance, text, correct,"
            " cached, missing, diagnostics,"
            " CASE WHEN turn = 0 AND role IN ('learner', 'target') THEN prompt END AS opening"
            " FROM turns ORDER BY id"
        )
        cols = [c[0] for c in cur.description]
        turns = [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        store.close()
    return {"steps": steps, "turns": turns}


def question_of(opening: str | None) -> str:
    """The question of a discussion: the last user message of its opening chat."""
    try:
        chat = json.loads(opening) if opening else []
        users = [m.get("content", "") for m in chat if m.get("role") == "user"]
    except (ValueError, AttributeError, TypeError):
        return ""
    return users[-1] if users else ""


def discussions(turns: list[dict]) -> list[dict]:
    """The turns grouped into discussions: one per (update, example), in the order they
    were written."""
    groups: dict[tuple, list[dict]] = {}
    for t in turns:
        groups.setdefault((t["step"], t["example_id"]), []).append(t)
    out = []
    for (step, example_id), rows in groups.items():
        first = next((r for r in rows if r["turn"] == 0 and r["role"] == "learner"), None)
        opening = next((r["opening"] for r in rows if r["opening"]), None)
        branches: dict[str, list[dict]] = defaultdict(list)
        plain = []
        for r in rows:
            if r["stance"] is None and r is not first:
                plain.append(r)  # a warm-up (or sft) target
            elif r["stance"] is not None:
                branches[r["stance"]].append(r)
        out.append(
            {
                "step": step,
                "phase": rows[0]["phase"],
                "round": rows[0]["round"],
                "example_id": example_id,
                "question": question_of(opening),
                "answer": first,
                "plain": plain,
                "branches": sorted(branches.items(), key=lambda b: STANCE_ORDER.get(b[0], 9)),
            }
        )
    return out


def _diag_line(d: dict) -> str:
    if not d:
        return ""
    bits = [f"echo ROUGE-L {d.get('echo_rouge', 0):.2f}" + (" (echo)" if d.get("echo") else "")]
    bits.append("on stance" if d.get("on_stance") else "off stance")
    if d.get("degenerate"):
        bits.append("degenerate")
    return f'<div class="diag">{esc(", ".join(bits))}</div>'


def _turn_html(r: dict) -> str:
    role, turn = r["role"], r["turn"]
    if role == "partner":
        stance = r["stance"] or ""
        label = "rationale" if stance == "rationale" else f"remark {turn} ({stance})"
        if r["cached"]:
            label += ", cached"
        if r["missing"]:
            return (
                f'<div class="remark {esc(stance)}"><span class="label">{esc(label)}</span>'
                f' <span class="missing">missing: {esc(r["missing"])}</span></div>'
            )
        diag = _diag_line(json.loads(r["diagnostics"])) if r["diagnostics"] else ""
        return (
            f'<div class="remark {esc(stance)}"><span class="label">{esc(label)}</span>'
            f"<pre>{esc(r['text'])}</pre>{diag}</div>"
        )
    if role == "learner":
        return (
            f'<div class="revision"><span class="label">revision {turn}</span> '
            f"{mark_badge(mark_of(r['correct']))}<pre>{esc(r['text'])}</pre></div>"
        )
    return block("target", r["text"])


def discussion_html(d: dict) -> str:
    first = d["answer"]
    mark = mark_of(first["correct"]) if first else "no answer"
    stances = " ".join(s for s, _ in d["branches"])
    head = f"update {d['step']} · {d['phase']} · round {d['round']} · {d['example_id']}"
    body = [f"<header>{esc(head)}</header>"]
    body.append(block("question", d["question"]))
    if first:
        body.append(
            f'<div class="answer"><span class="label">learner\'s answer</span> '
            f"{mark_badge(mark)}<pre>{esc(first['text'])}</pre></div>"
        )
    body += [_turn_html(r) for r in d["plain"]]
    for stance, rows in d["branches"]:
        rows = sorted(rows, key=lambda r: (r["turn"], ROLE_ORDER.get(r["role"], 9)))
        inner = "".join(_turn_html(r) for r in rows)
        body.append(f'<div class="branch {esc(stance)}" data-stance="{esc(stance)}">{inner}</div>')
    return (
        f'<article class="item" data-step="{int(d["step"])}" data-mark="{esc(mark)}" '
        f'data-stances="{esc(stances)}">{"".join(body)}</article>'
    )


def remark_series(turns: list[dict]) -> list[tuple[str, list[tuple[float, float]]]]:
    """Per update, the share of its partner remarks that echo the answer, keep their
    stance, are degenerate."""
    per: dict[int, list[dict]] = defaultdict(list)
    for t in turns:
        if t["role"] == "partner" and t["diagnostics"]:
            per[t["step"]].append(json.loads(t["diagnostics"]))
    series = []
    for key, name in (("echo", "echo"), ("on_stance", "on stance"), ("degenerate", "degenerate")):
        pts = [(s, sum(bool(d.get(key)) for d in ds) / len(ds)) for s, ds in sorted(per.items())]
        series.append((name, pts))
    return series if per else []


def _config_rows(run_dir: Path) -> list[tuple[str, object]]:
    from saie_lite import config as config_mod

    try:
        c = config_mod.load_yaml(run_dir / "config.yaml")
    except UserError as e:  # a damaged config must not hide the run's own record
        return [("config", str(e))]
    rows = []
    for section, key in (("method", "mode"), ("learner", "model"), ("learner", "backend"),
                         ("partner", "model"), ("partner", "backend"), ("data", "task"),
                         ("data", "path"), ("method", "rounds")):  # fmt: skip
        value = (c.get(section) or {}).get(key) if isinstance(c, dict) else None
        if value is not None:
            rows.append((f"{section}.{key}", value))
    return rows


def run_report(run_dir: Path) -> str:
    from saie_lite.evaluate.logs import run_state
    from saie_lite.remarks import rates, rates_line, weak_partner

    run_dir = Path(run_dir)
    if not (run_dir / "saie.sqlite").is_file():
        raise UserError(f"{run_dir} is not a saie-lite run directory (no saie.sqlite)")
    data = _read(run_dir)
    steps, turns = data["steps"], data["turns"]
    talks = discussions(turns)
    seconds = {k: sum(s[f"t_{k}"] for s in steps) for k in ("generate", "remark", "update")}
    state = run_state(run_dir)
    rows = [("run", run_dir.resolve()), ("state", state[0] if state else "(not recorded)")]
    rows += _config_rows(run_dir)
    rows += [
        ("updates", len(steps)),
        ("discussions", len(talks)),
        ("time", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())),
    ]
    if steps:
        rows.append(("last loss", f"{steps[-1]['loss']:.4g}"))
    missing = sum(1 for t in turns if t["role"] == "partner" and t["missing"])
    if missing:
        rows.append(("missing remarks", missing))
    r = rates([(t["stance"], json.loads(t["diagnostics"])) for t in turns if t["diagnostics"]])
    if r:
        rows.append(("remarks", rates_line(r)))
    body = [f'<section class="card">{facts(rows)}</section>']
    warn = weak_partner(r) if r else None
    if warn:
        body.append(f'<section class="card warn">warning: {esc(warn)}</section>')
    by_phase: dict[str, list] = defaultdict(list)
    for s in steps:
        by_phase[s["phase"]].append((s["step"], s["loss"]))
    xs = [s["step"] for s in steps]
    split = [(k, [s[f"t_{k}"] for s in steps]) for k in ("generate", "remark", "update")]
    body.append(
        '<h2>Training</h2><div class="charts">'
        + line_chart(list(by_phase.items()), "loss per update", "update", "loss")
        + stacked_bars(xs, split, "time per update", "update", "seconds")
        + line_chart(
            remark_series(turns),
            "partner remarks per update",
            "update",
            "share of remarks",
            (0.0, 1.0),
            percent=True,
        )
        + "</div>"
    )
    stances = sorted(
        {s for d in talks for s, _ in d["branches"]}, key=lambda s: STANCE_ORDER.get(s, 9)
    )
    marks = ["right", "wrong", "unmarked", "no answer"]
    body.append(f"<h2>Discussions ({len(talks)})</h2>")
    body.append(filters(len(talks), stances, steps=True, marks=marks))
    body += [discussion_html(d) for d in talks]
    return page(f"saie-lite run {run_dir.name}", "training run report", "\n".join(body), True)
