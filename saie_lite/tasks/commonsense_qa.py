"""CommonsenseQA (5 choices). Rows in the `datasets` layout: question, choices{label,text}, answerKey."""

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

HUB_CONFIG = None
BUNDLED = None


def parse_row(row: dict, index: int) -> Example | str:
    q, choices, gold = row.get("question"), row.get("choices"), row.get("answerKey")
    if not isinstance(q, str) or not q.strip():
        return "missing question"
    if not isinstance(choices, dict) or not choices.get("label") or not choices.get("text"):
        return "missing choices"
    labels, texts = list(choices["label"]), list(choices["text"])
    if len(labels) != len(texts):
        return "choice labels and texts differ in number"
    if gold not in labels:
        return "answerKey is not one of the choice labels"
    return make_example(str(row.get("id") or f"row-{index}"), q, labels, texts, gold)


def load(path: str, split: str = "validation") -> tuple[list[Example], dict[str, int]]:
    rows = load_rows(path, split, HUB_CONFIG, BUNDLED)
    return parse_all(rows, parse_row, "CommonsenseQA", path, PRESET_HINT)
