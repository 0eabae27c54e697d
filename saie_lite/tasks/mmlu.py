"""MMLU (4 choices). Rows in the `cais/mmlu` layout: question, subject, choices[4], answer (0-3)."""

from __future__ import annotations

from saie_lite.protocols import Example
from saie_lite.tasks.common import PRESET_HINT, load_rows, parse_all
from saie_lite.tasks.multiple_choice import (  # noqa: F401  (the task interface)
    ANSWER_FORMAT,
    answer_end,
    answer_key,
    extract_flexible,
    extract_strict,
    is_correct,
    learner_chat,
    make_example,
    score,
)

HUB_CONFIG = "all"
BUNDLED = None
LABELS = "ABCDEFGHIJ"


def parse_row(row: dict, index: int) -> Example | str:
    q, choices, gold = row.get("question"), row.get("choices"), row.get("answer")
    if not isinstance(q, str) or not q.strip():
        return "missing question"
    if not isinstance(choices, list) or len(choices) < 2 or len(choices) > len(LABELS):
        return "choices must be a list of 2-10 options"
    labels = list(LABELS[: len(choices)])
    if isinstance(gold, str) and gold in labels:
        gold_letter = gold
    elif isinstance(gold, int) and 0 <= gold < len(choices):
        gold_letter = labels[gold]
    else:
        return "answer is not a valid choice index or letter"
    rid = str(row.get("id") or f"{row.get('subject', 'mmlu')}-{index}")
    return make_example(rid, q, labels, [str(c) for c in choices], gold_letter)


def load(path: str, split: str = "test") -> tuple[list[Example], dict[str, int]]:
    rows = load_rows(path, split, HUB_CONFIG, BUNDLED)
    return parse_all(rows, parse_row, "MMLU", path, PRESET_HINT)
