"""Answer checks (``data.check``): how a model's answer is read and marked right or wrong.

One check serves the live view's RIGHT/WRONG mark, the ``reference_or_revision``
target, the vote key of inference strategies and ``eval`` accuracy. Each reads an
answer two ways, *strict* (the format the learner is taught) and *flexible* (more
forgiving), reported side by side. ``none`` reads nothing: free-form data trains and
evaluates without a mark.
"""

from __future__ import annotations

import re
import string

from saie_lite.config import check_pattern
from saie_lite.errors import UserError
from saie_lite.tasks import multiple_choice as mc
from saie_lite.tasks import numbers
from saie_lite.tasks.common import Score


class Check:
    """The base: text answers after 'The answer is'; subclasses override the reading."""

    name = "exact"
    checked = True  # False only for ``none``: no right/wrong mark anywhere
    answer_format = "'The answer is <answer>'"
    system = (
        "You are a careful assistant. Think briefly, then end with "
        "'The answer is <answer>' on its own line."
    )

    def gold(self, final: str) -> str | None:
        """The reference's final answer in comparable form; None when it has none."""
        g = normalize_text(final)
        return g or None

    def extract_strict(self, output: str) -> str | None:
        return _after_answer_is(output)

    def extract_flexible(self, output: str) -> str | None:
        return self.extract_strict(output) or _last_line(output)

    def same(self, extracted: str | None, gold: str) -> bool:
        return extracted is not None and normalize_text(extracted) == gold

    def score(self, output: str, gold: str) -> Score:
        s, f = self.extract_strict(output), self.extract_flexible(output)
        return Score(s, f, self.same(s, gold), self.same(f, gold))

    def is_correct(self, output: str, gold: str) -> bool | None:
        """The training loop's mark: strict reading (the format we teach)."""
        return self.score(output, gold).strict_correct

    def answer_key(self, output: str) -> str | None:
        """What a vote counts: the strict answer, else the flexible one."""
        found = self.extract_strict(output) or self.extract_flexible(output)
        return normalize_text(found) if found is not None else None

    def answer_line(self, final: str, gold: str) -> str | None:
        """The line that states ``final`` the way the strict reading looks for, which a
        training target that lacks it ends with; None when the check has no such form."""
        f = final.strip()
        return f"The answer is {f}" if f and "\n" not in f else None

    def answer_end(self, text: str) -> int | None:
        """Early stop: never for text answers ('The answer is simple: ...' may open the
        reasoning), so a reply runs to its end; number and choice answers stop early."""
        return None


NOT_PLAIN = re.compile(r"(?:\d\s*[/:^]\s*[-+]?\d[\d.,]*|\d[eE][-+]?\d+)\W*$")


class NumberCheck(Check):
    name = "number"
    answer_format = "'#### <number>'"
    system = (
        "You are a careful math tutor. Solve the problem step by step, "
        "then give the final answer on its own line as '#### <number>'."
    )

    def gold(self, final: str) -> str | None:
        # A bare number, else the strict reading ('#### 18'), else the last number, unless
        # the text ends in a fraction, ratio, power or exponent ('1/2', '3:30', '2^10',
        # '1e-3'), whose last number is not the answer: no gold, the row is skipped.
        bare = numbers.normalize(final.strip())
        if bare is None and NOT_PLAIN.search(final.strip()):
            return None
        return bare or numbers.extract_strict(final) or numbers.extract_flexible(final)

    def extract_strict(self, output: str) -> str | None:
        return numbers.extract_strict(output)

    def extract_flexible(self, output: str) -> str | None:
        return numbers.extract_flexible(output)

    def same(self, extracted: str | None, gold: str) -> bool:
        return extracted is not None and extracted == gold

    def answer_key(self, output: str) -> str | None:
        return self.extract_strict(output) or self.extract_flexible(output)

    def answer_line(self, final: str, gold: str) -> str | None:
        return f"#### {gold}"

    def answer_end(self, text: str) -> int | None:
        return numbers.answer_end(text)


class ChoiceCheck(Check):
    name = "choice"
    answer_format = mc.ANSWER_FORMAT
    system = mc.SYSTEM

    def gold(self, final: str) -> str | None:
        return final.strip().upper() or None

    def extract_strict(self, output: str) -> str | None:
        return mc.extract_strict(output)

    def extract_flexible(self, output: str) -> str | None:
        return mc.extract_flexible(output)

    def same(self, extracted: str | None, gold: str) -> bool:
        return extracted == gold

    def answer_key(self, output: str) -> str | None:
        return mc.answer_key(output)

    def answer_line(self, final: str, gold: str) -> str | None:
        return f"The answer is ({gold})."

    def answer_end(self, text: str) -> int | None:
        return mc.answer_end(text)


class ContainsCheck(Check):
    """Right when the normalised reference appears, as whole words, in the answer:
    strict looks in the 'The answer is' line, flexible in the whole reply."""

    name = "contains"

    def extract_flexible(self, output: str) -> str | None:
        return output if output.strip() else None

    def same(self, extracted: str | None, gold: str) -> bool:
        return extracted is not None and f" {gold} " in f" {normalize_text(extracted)} "

    def answer_key(self, output: str) -> str | None:
        found = self.extract_strict(output)
        return normalize_text(found) if found is not None else None


class RegexCheck(Check):
    """The pattern's first group is the answer (last match in the reply); compared as
    normalised text. The reference's answer is the group where the pattern matches the
    reference, else the whole (final) reference."""

    name = "regex"

    def __init__(self, pattern: str):
        self.pattern_text = pattern
        self.pattern = check_pattern(pattern)
        self.name = f"regex:{pattern}"

    def gold(self, final: str) -> str | None:
        found = self._last(final)
        return normalize_text(found if found is not None else final) or None

    def _last(self, text: str) -> str | None:
        last = numbers.last_match(self.pattern, text)
        return last.group(1) if last is not None else None

    def extract_strict(self, output: str) -> str | None:
        return self._last(output)

    def extract_flexible(self, output: str) -> str | None:
        return self._last(output)

    def answer_end(self, text: str) -> int | None:
        return None  # a pattern may keep matching longer text: never stop early on it

    def answer_line(self, final: str, gold: str) -> str | None:
        return None  # the pattern is the user's: no line can be written for it


class NoCheck(Check):
    """Free-form data: nothing is read, nothing is marked (``is_correct`` is None)."""

    name = "none"
    checked = False
    answer_format = "your final answer"
    system = "You are a helpful assistant. Answer the user's question."

    def gold(self, final: str) -> str | None:
        return final.strip() or None

    def extract_strict(self, output: str) -> str | None:
        return None

    def extract_flexible(self, output: str) -> str | None:
        return None

    def score(self, output: str, gold: str) -> Score:
        return Score(None, None, False, False)

    def is_correct(self, output: str, gold: str) -> bool | None:
        return None

    def answer_key(self, output: str) -> str | None:
        # The vote of inference strategies counts whole replies, normalised.
        return normalize_text(output) or None

    def answer_line(self, final: str, gold: str) -> str | None:
        return None  # free-form: nothing is read, so nothing to state

    def answer_end(self, text: str) -> int | None:
        return None


def make_check(spec: str) -> Check:
    """``data.check`` -> a Check; the one place check names are known."""
    if spec.startswith("regex:"):
        return RegexCheck(spec[len("regex:") :])
    known = {
        "number": NumberCheck,
        "choice": ChoiceCheck,
        "exact": Check,
        "contains": ContainsCheck,
        "none": NoCheck,
    }
    if spec not in known:
        raise UserError(f"data.check {spec!r} unknown; known: {', '.join(known)}, regex:PATTERN")
    return known[spec]()


# -- text normalisation (SQuAD style) -------------------------------------------------
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_ANSWER_IS = re.compile(r"answer is[:\s*]*([^\n]*)", re.IGNORECASE)


def normalize_text(text: str) -> str:
    """Lower case, punctuation and articles (a, an, the) removed, spaces collapsed."""
    t = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(t.split())


def _after_answer_is(output: str) -> str | None:
    last = numbers.last_match(_ANSWER_IS, output)
    if last is None:
        return None
    found = last.group(1).strip().strip("*").strip()
    return found or None


def _last_line(output: str) -> str | None:
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None
