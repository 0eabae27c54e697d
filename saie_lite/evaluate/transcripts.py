"""Debate transcripts as Markdown or JSON (``saie-lite logs export``).

Everything in a transcript was read back from the store (the question, the agents'
names and turns, the answers): it goes through :mod:`saie_lite.safe_text`, so an
exported file shown with ``cat`` or ``less -R`` cannot drive the terminal either."""

from __future__ import annotations

import json
import time

from saie_lite.safe_text import json_text, one_line, visible


def to_json(d: dict) -> str:
    return json_text(json.dumps(d, indent=2, ensure_ascii=False))


def to_markdown(d: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d["created"]))
    lines = [f"# Debate {d['id']} ({when})", "", f"**Question:** {visible(d['question'])}", ""]
    lines.append(
        "**Agents:** " + ", ".join(f"{i + 1}. {one_line(n)}" for i, n in enumerate(d["agents"]))
    )
    for r in range(d["rounds"] + 1):
        lines += ["", f"## Round {r + 1}"]
        for t in (t for t in d["turns"] if t["round"] == r):
            lines += [
                "",
                f"### Agent {t['agent'] + 1}",
                "",
                visible(t["text"].strip()),
                "",
                f"*answer: {one_line(t['key'])}*",
            ]
    lines += ["", f"**Final answer (majority vote):** {one_line(d['final'])}", ""]
    return "\n".join(lines)
