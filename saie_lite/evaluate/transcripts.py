"""Debate transcripts as Markdown or JSON (``saie-lite logs export``)."""

from __future__ import annotations

import json
import time


def to_json(d: dict) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False)


def to_markdown(d: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d["created"]))
    lines = [f"# Debate {d['id']} ({when})", "", f"**Question:** {d['question']}", ""]
    lines.append("**Agents:** " + ", ".join(f"{i + 1}. {n}" for i, n in enumerate(d["agents"])))
    for r in range(d["rounds"] + 1):
        lines += ["", f"## Round {r + 1}"]
        for t in (t for t in d["turns"] if t["round"] == r):
            lines += [
                "",
                f"### Agent {t['agent'] + 1}",
                "",
                t["text"].strip(),
                "",
                f"*answer: {t['key']}*",
            ]
    lines += ["", f"**Final answer (majority vote):** {d['final']}", ""]
    return "\n".join(lines)
