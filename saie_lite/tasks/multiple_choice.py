"""Shared logic of multiple-choice tasks (CommonsenseQA, MMLU).

The question shown to a model lists the choices as "(A) text"; the reference target is
a short statement of the gold choice ("The answer is (B) bookstore."), since these
datasets have no reference rationales. Letter extraction, per docs/protocol.md section 4:
*strict* reads "(B)" or "answer is B"; *flexible* also accepts a lone letter.
"""

from __future__ import annotations

import re

from saie_lite.protocols import Example
from saie_lite.tasks.common import Score

ANSWER_FORMAT = "'The answer is (<letter>)'"
SYSTEM = (
    "You are a careful assistant answering multiple-choice questions. Think briefly, "
    "then end with 'The answer is (X)' where X is the letter of one choice."
)


def format_question(question: str, labels: list[str], texts: list[str]) -> str:
    options = "\n".join(f"({lab}) {txt}" for lab, txt in zip(labels, texts))
    return f"{question.strip()}\n\n{options}"


def make_example(
    rid: str, question: str, labels: list[str], texts: list[str], gold: str
) -> Example:
    text = texts[labels.index(gold)]
    return Example(
        id=rid,
        question=format_question(question, labels, texts),
        reference=f"The answer is ({gold}) {text}.",
        answer=gold,
        choices=list(labels),
    )


def _letters(labels: str) -> str:
    return "".join(sorted(set(labels)))


def extract_strict(output: str, labels: str = "ABCDEFGHIJ") -> str | None:
    cls = f"[{_letters(labels)}]"
    low = f"[{_letters(labels).lower()}]"
    # One class between "answer is" and the letter (': ', '**'): nothing to backtrack over.
    # A small letter counts in parentheses or at the end of the sentence ("answer is b."),
    # not before a word: "the answer is a mile" names no option.
    found = re.findall(
        rf"(?i:answer is)[\s:*]*(?:\(({cls}|{low})\)|({cls})\b|({low})(?=\s*(?:$|[.,;!?)])))",
        output,
    )
    if found:
        return "".join(found[-1]).upper()
    found = re.findall(rf"\(({cls})\)", output)
    return found[-1] if found else None


def extract_flexible(output: str, labels: str = "ABCDEFGHIJ") -> str | None:
    strict = extract_strict(output, labels)
    if strict:
        return strict
    found = re.findall(rf"\b([{_letters(labels)}])\b", output)
    return found[-1] if found else None


def score(output: str, gold: str, labels: str = "ABCDEFGHIJ") -> Score:
    s, f = extract_strict(output, labels), extract_flexible(output, labels)
    return Score(s, f, s == gold, f == gold)


def is_correct(output: str, gold: str) -> bool:
    return score(output, gold).strict_correct


def learner_chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


_END = re.compile(r"answer is[\s:*]*\(([A-J])\)", re.IGNORECASE)


def answer_end(text: str) -> int | None:
    """Where 'The answer is (B)' ends, for early stop."""
    m = _END.search(text)
    return m.end() if m else None


def answer_key(output: str) -> str | None:
    """What a vote counts: the strict letter, else the flexible one."""
    return extract_flexible(output)
