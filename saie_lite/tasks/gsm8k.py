"""GSM8K: grade-school math with worked solutions ending in ``#### N``.

Scoring follows docs/protocol.md section 4: the reference number is the text after ``####`` with
commas removed; a model answer is read two ways, *strict* (``#### N`` or "The answer is
N") and *flexible* (the last number anywhere). No number means wrong.
"""

from __future__ import annotations

import re

from saie_lite.protocols import Example
from saie_lite.tasks import numbers
from saie_lite.tasks.checks import NumberCheck
from saie_lite.tasks.common import PRESET_HINT, load_rows, parse_all

SYSTEM = (
    "You are a careful math tutor. Solve the problem step by step, "
    "then give the final answer on its own line as '#### <number>'."
)
BUNDLED = "gsm8k_sample.jsonl"
HUB_CONFIG = "main"
ANSWER_FORMAT = "'#### <number>'"

# The number check: one reading for GSM8K and every numeric dataset.
normalize, extract_strict, extract_flexible = (
    numbers.normalize,
    numbers.extract_strict,
    numbers.extract_flexible,
)
answer_end = numbers.answer_end
# GSM8K is the 'question'/'answer' field map plus the ``number`` check.
CHECK = NumberCheck()
score, is_correct, answer_key = CHECK.score, CHECK.is_correct, CHECK.answer_key


def learner_chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def parse_row(row: dict, index: int) -> Example | str:
    """An Example, or the reason the row is unusable."""
    q, a = row.get("question"), row.get("answer")
    if not isinstance(q, str) or not q.strip():
        return "missing question"
    if not isinstance(a, str) or not a.strip():
        return "missing answer"
    if "####" not in a:
        return "answer has no '#### N'"
    gold = normalize(a.rsplit("####", 1)[1].strip())
    if gold is None:
        return "text after '####' is not a number"
    reference = a.rsplit("####", 1)[0].rstrip() + f"\n#### {gold}"
    # Calculator annotations like <<48/2=24>> are GSM8K markup, not prose to imitate.
    reference = re.sub(r"<<[^>]*>>", "", reference)
    rid = str(row.get("id") or f"row-{index}")
    return Example(id=rid, question=q.strip(), reference=reference, answer=gold)


def load(path: str, split: str = "train") -> tuple[list[Example], dict[str, int]]:
    rows = load_rows(path, split, HUB_CONFIG, BUNDLED)
    return parse_all(rows, parse_row, "GSM8K", path, PRESET_HINT)
