"""Reading numbers out of model text: the ``number`` check (GSM8K and any numeric task).

Rules (the README's "Reading answers" lists them with examples):

- a number is digits with optional thousands commas and an optional decimal part
  (``1,234.5``, ``.5``), optionally after ``$`` (``$ 5`` too);
- a minus sign is a sign only when it touches the digits and does not follow a word
  character or a closing bracket: ``-5`` and ``x=-5`` are negative, the bullet ``- 5``
  and the subtraction ``12 - 5`` or ``12-5`` are not;
- *strict* reads the last ``#### N`` (else the last "answer is N"); *flexible* reads
  the last number anywhere;
- a number that is one term of a fraction, ratio, power or mixed number (``1/2``,
  ``3 / 4``, ``3:30``, ``2^10``, ``2**10``, ``1 1/2``) is no plain answer: strict reads
  nothing from ``#### 1/2``, flexible passes over it;
- numbers compare by exact value, at any length, as canonical decimal text: ``18.00`` =
  ``18``, ``1,024`` = ``1024``, ``-0`` = ``0``, and
  ``0.99999999999999999999999999999999`` != ``1``. Canonical text, not ``int`` or
  ``Decimal``, so a 40-digit or a 100,000-digit answer never raises and never rounds;
- any script's decimal digits are digits (full-width ``１２``, Arabic-Indic ``١٢``,
  Devanagari ``१२``...), with the full-width and Arabic separators (``，．`` and
  ``٬٫``): the canonical text is in ASCII digits, so ``#### ١٢`` equals ``12``.

Every pattern below is linear: no two adjacent repeated parts can match the same
characters, so no input makes reading slow (tested on 100k-character inputs).
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque

# ``\d`` is any script's decimal digit (Unicode category Nd, as ``str.isdecimal``), so
# the separators that go with those scripts are read too: a full-width comma and full
# stop, and the Arabic thousands and decimal separators. The two sets share no
# character, so the number pattern stays linear.
_COMMAS = ",\uff0c\u066c"
_POINTS = ".\uff0e\u066b"
_MINUSES = "-\u2212\uff0d"  # hyphen-minus, minus sign, full-width hyphen-minus
_TO_ASCII = str.maketrans(
    {**dict.fromkeys(_COMMAS, ","), **dict.fromkeys(_POINTS, "."), **dict.fromkeys(_MINUSES, "-")}
)
# A sign is only a sign when attached: not after a word character or ')' / ']'.
_SIGN = r"(?:(?<![\w)\]])[" + _MINUSES + "])?"
_POINT = "[" + _POINTS + "]"
_WHOLE = r"\d[\d" + _COMMAS + "]*"
# A bare decimal ('.5') does not start inside an ellipsis: '...42' is 42, not 0.42.
NUM = _SIGN + r"(?:\$\s?)?(?:" + _WHOLE + f"(?:{_POINT}\\d+)?|(?<!{_POINT}){_POINT}\\d+)"
_STRICT = [
    re.compile(r"####\s*(" + NUM + ")"),
    # One character class between "answer is" and the number (': ', '**'), so nothing
    # can backtrack between two repeated parts.
    re.compile(r"answer is[:\s*]*(" + NUM + ")", re.IGNORECASE),
]
_ANY = re.compile(NUM)
# A number that is one term of a fraction, ratio, power or mixed number ('1/2', '3 / 4',
# '3:30', '2^10', '2**10', '10^-3', '1 1/2') is no plain answer: strict reads nothing
# from such a final answer (it would read the numerator: "#### 1/2" as 1), flexible
# passes over it. Checked on a few characters either side of a match, on one line.
_OP = r"(?:[/:^]|\*\*)"
# after a digit: markdown bold before a number (answer is **7) is no power
_TERM_BEFORE = re.compile(r"\d\**[ \t]*" + _OP + r"[ \t]*$")
_TERM_AFTER = re.compile(
    r"\**[ \t]*" + _OP + r"[ \t]*[" + _MINUSES + r"]?\$?" + _POINT + r"?\d"  # '/2', '^-3'
    r"|[ \t]+\d+[ \t]*/[ \t]*\d"  # a mixed number's fraction: ' 1/2'
)
_END = re.compile(r"####\s*(?:" + NUM + r")(?=\s)")
_CANON = re.compile(r"(-?)(\d*)(?:\.(\d*))?")


def normalize(text: str) -> str | None:
    """Canonical decimal text of a number: '$1,234.50' -> '1234.5'; '18.00' -> '18';
    '-0' -> '0'; '١٢' -> '12'; None when it is not a number. Exact at any length."""
    t = _ascii(text).replace(",", "").replace("$", "").replace(" ", "")
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


def _ascii(text: str) -> str:
    """Any script's digits and separators as ASCII ('１２．５' -> '12.5'), so numbers
    compare by value whatever digits they are written in."""
    if text.isascii():
        return text
    t = text.translate(_TO_ASCII)
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in t)


def last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    """The last match, in one linear scan (no list of every match kept)."""
    tail = deque(pattern.finditer(text), maxlen=1)
    return tail[0] if tail else None


def _a_term(text: str, start: int, end: int) -> bool:
    """Whether the number at text[start:end] is one term of a fraction, ratio or power."""
    return bool(
        _TERM_BEFORE.search(text, max(0, start - 12), start)
        or _TERM_AFTER.match(text, end, end + 64)
    )


def extract_strict(output: str) -> str | None:
    for pattern in _STRICT:
        last = last_match(pattern, output)
        if last is not None:
            if _a_term(output, *last.span(1)):
                return None
            return normalize(last.group(1))
    return None


def extract_flexible(output: str) -> str | None:
    # The last number that is not a term; every match is kept, each checked in O(1).
    for m in reversed(list(_ANY.finditer(output))):
        if not _a_term(output, *m.span()):
            return normalize(m.group(0))
    return None


def answer_end(text: str) -> int | None:
    """Where a finished final answer ends ('#### 18' then whitespace), for early stop:
    what a model writes after its final answer is never scored."""
    m = _END.search(text)
    return m.end() if m else None
