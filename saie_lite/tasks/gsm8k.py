"""GSM8K: grade-school math with worked solutions ending in ``#### N``.

Scoring follows SAIE.md section 4: the reference number is the text after ``####`` with
commas removed; a model answer is read two ways, *strict* (``#### N`` or "The answer is
N") and *flexible* (the last number anywhere). No number means wrong.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from saie_lite.protocols import Example
from saie_lite.tasks.common import Score, load_rows, parse_all

SYSTEM = (
    "You are a careful math tutor. Solve the problem step by step, "
    "then give the final answer on its own line as '#### <number>'."
)
BUNDLED = "gsm8k_sample.jsonl"
HUB_CONFIG = "main"
ANSWER_FORMAT = "'#### <number>'"

_NUM = r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+"
_STRICT = [
    re.compile(r"####\s*(" + _NUM + ")"),
    re.compile(r"answer is[:\s]*\**\s*(" + _NUM + ")", re.IGNORECASE),
]
_ANY = re.compile(_NUM)


def normalize(text: str) -> str | None:
    """'$1,234.50' -> '1234.5'; '18.00' -> '18'; None if not a number."""
    t = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        d = Decimal(t)
    except InvalidOperation:
        return None
    if d == d.to_integral_value():
        return str(d.quantize(Decimal(1)))
    return format(d.normalize(), "f")


def extract_strict(output: str) -> str | None:
    for pattern in _STRICT:
        found = pattern.findall(output)
        if found:
            return normalize(found[-1])
    return None


def extract_flexible(output: str) -> str | None:
    found = _ANY.findall(output)
    return normalize(found[-1]) if found else None


def score(output: str, gold: str) -> Score:
    s, f = extract_strict(output), extract_flexible(output)
    return Score(s, f, s is not None and s == gold, f is not None and f == gold)


def is_correct(output: str, gold: str) -> bool:
    """The training loop's right/wrong mark: strict extraction (the format we teach)."""
    return score(output, gold).strict_correct


def answer_key(output: str) -> str | None:
    """What a vote counts: the strict answer, else the flexible one."""
    return extract_strict(output) or extract_flexible(output)


_END = re.compile(r"####\s*(?:" + _NUM + r")(?=\s)")


def answer_end(text: str) -> int | None:
    """Where a finished final answer ends ('#### 18' then whitespace), for early stop:
    what a model writes after its final answer is never scored."""
    m = _END.search(text)
    return m.end() if m else None


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
    return parse_all(rows, parse_row, "GSM8K", path)
