"""Reading numbers out of model text: the ``number`` check (GSM8K and any numeric task).

Rules (the README's "Reading answers" lists them with examples):

- a number is digits with optional thousands commas and an optional decimal part
  (``1,234.5``, ``.5``), optionally after ``$`` (``$ 5`` too);
- a minus sign is a sign only when it touches the digits and does not follow a word
  character or a closing bracket: ``-5`` and ``x=-5`` are negative, the bullet ``- 5``
  and the subtraction ``12 - 5`` or ``12-5`` are not;
- *strict* reads the last ``#### N`` (else the last "answer is N"); *flexible* reads
  the last number anywhere;
- a number that is one side of a fraction, ratio or power (``1/2``, ``3:30``,
  ``2^10``) is no plain answer: strict reads nothing from ``#### 1/2``, flexible
  passes over it;
- numbers compare by exact value, at any length, as canonical decimal text: ``18.00`` =
  ``18``, ``1,024`` = ``1024``, ``-0`` = ``0``, and
  ``0.99999999999999999999999999999999`` != ``1``. Canonical text, not ``int`` or
  ``Decimal``, so a 40-digit or a 100,000-digit answer never raises and never rounds.

Every pattern below is linear: no two adjacent repeated parts can match the same
characters, so no input makes reading slow (tested on 100k-character inputs).
"""

from __future__ import annotations

import re
from collections import deque

# A sign is only a sign when attached: not after a word character or ')' / ']'.
_SIGN = r"(?:(?<![\w)\]])[-\u2212])?"
NUM = _SIGN + r"(?:\$\s?)?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
# What makes a number one side of a fraction, ratio or power ('1/2', '3:30', '2^10'):
# no plain answer. Strict reads nothing from such a final answer (its numerator would be
# read as the answer: "#### 1/2" as 1); flexible passes over it.
_PART = r"[/:^]\d"
_STRICT = [
    re.compile(r"####\s*(" + NUM + ")(" + _PART + ")?"),
    # One character class between "answer is" and the number (': ', '**'), so nothing
    # can backtrack between two repeated parts.
    re.compile(r"answer is[:\s*]*(" + NUM + ")(" + _PART + ")?", re.IGNORECASE),
]
# Flexible: a whole number (not begun inside another: the lookbehinds also keep a long
# digit run from being retried at every position, which would be quadratic), and not a
# side of a fraction, ratio or power.
_ANY = re.compile(
    _SIGN + r"(?:\$\s?)?(?<![\d.])(?<!\d,)(?<!\d[/:^])"
    r"(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?!\d|[.,:/^]\d)"
)
_END = re.compile(r"####\s*(?:" + NUM + r")(?=\s)")
_CANON = re.compile(r"(-?)(\d*)(?:\.(\d*))?")


def normalize(text: str) -> str | None:
    """Canonical decimal text of a number: '$1,234.50' -> '1234.5'; '18.00' -> '18';
    '-0' -> '0'; None when it is not a number. Exact at any length."""
    t = text.replace(",", "").replace("$", "").replace(" ", "").replace("\u2212", "-")
    t = t.rstrip(".")
    m = _CANON.fullmatch(t)
    if m is None:
        return None
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if not whole and not frac:
        return None
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = whole + ("." + frac if frac else "")
    return out if out == "0" or not sign else "-" + out


def last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    """The last match, in one linear scan (no list of every match kept)."""
    tail = deque(pattern.finditer(text), maxlen=1)
    return tail[0] if tail else None


def extract_strict(output: str) -> str | None:
    for pattern in _STRICT:
        last = last_match(pattern, output)
        if last is not None:
            return None if last.group(2) else normalize(last.group(1))
    return None


def extract_flexible(output: str) -> str | None:
    last = last_match(_ANY, output)
    return normalize(last.group(0)) if last is not None else None


def answer_end(text: str) -> int | None:
    """Where a finished final answer ends ('#### 18' then whitespace), for early stop:
    what a model writes after its final answer is never scored."""
    m = _END.search(text)
    return m.end() if m else None
