"""Your own data (``data.task: custom``): question/answer fields or chat ``messages``,
read through ``datasets``, checked by the ``data.check`` the user picks.

A row becomes an ``Example``: the question, the reference (the training target), the
gold final answer in the check's comparable form, and for chat rows the turns before
the answer (``Example.context``, system turn kept). What a row lacks is counted by
reason and the row skipped; what a whole file lacks (no question field at all) is one
line naming the fields the file has and the key to set.

Data is read as it is written: a turn's ``content`` may be the OpenAI/TRL list of text
parts; a file may mix chat rows and question/answer rows (each row is read by its own
shape); of two answer fields, the worked text is the reference and the short one the
final answer; and the reference ends with the final answer in the form the strict
reading looks for (``#### N``, 'The answer is X'), so a trained model learns to state it.
"""

from __future__ import annotations

import math

from saie_lite.config import DataConfig
from saie_lite.errors import UserError
from saie_lite.protocols import Example
from saie_lite.safe_text import one_line
from saie_lite.tasks import multiple_choice as mc
from saie_lite.tasks import numbers
from saie_lite.tasks.checks import Check, make_check
from saie_lite.tasks.common import load_rows, parse_all

QUESTION_FIELDS = ("question", "prompt", "instruction", "input", "query", "problem")
ANSWER_FIELDS = ("answer", "completion", "output", "response", "solution", "target")
FINAL_FIELDS = ("final", "label", "final_answer")
# Content part types that carry text: chat completions' 'text', the Responses API's
# 'input_text' / 'output_text'.
TEXT_PARTS = ("text", "input_text", "output_text")
NOT_TEXT = "messages hold parts that are not text (images, audio): the learner reads text only"
# 'auto' picks ``exact`` when every final answer is at most this many words, else none.
SHORT_ANSWER_WORDS = 5
SNIFF_ROWS = 200  # rows looked at to find fields and choose a check


def _text(value) -> str | None:
    """A cell as text: numbers from CSV/parquet become their digits, NaN and None nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float, str)):
        return str(value)
    return None


def _content(value) -> str | None:
    """A chat turn's content as text: a string, or a list of text parts
    (``[{"type": "text", "text": "..."}]``, the OpenAI and TRL layout) joined by newlines
    as OpenAI-compatible servers join them. None for anything else, a non-text part
    (an image) included."""
    if not isinstance(value, list):
        return _text(value)
    if not all(
        isinstance(p, dict) and p.get("type") in TEXT_PARTS and isinstance(p.get("text"), str)
        for p in value
    ):
        return None
    return "\n".join(p["text"] for p in value)


def _has_other_parts(value) -> bool:
    """A list content holding a part that is not text: the row is skipped as such, not
    read without its image."""
    return isinstance(value, list) and _content(value) is None


def describe(data: DataConfig) -> str:
    """One line saying how the data was read (what 'auto' chose), for the views."""
    fields = f"fields {data.question_field}/{data.answer_field}"
    if data.format == "chat":
        how = "chat messages (last assistant turn = reference)"
        if data.question_field:
            how += f" and {fields} (the file mixes both layouts; each row is read by its own)"
    else:
        how = fields
    final = f", final answer from {data.final_field}" if data.final_field else ""
    if data.final_field in ANSWER_FIELDS and data.format != "chat":
        # Either field could be the reference: say which one is trained on, and why.
        final += (
            f" ({data.answer_field} is the worked solution and the training target, "
            f"{data.final_field} only the short final answer)"
        )
    return one_line(f"data: {how}{final}, check {data.check}")


class CustomTask:
    """The task interface (see ``saie_lite.tasks``) for a user's own data."""

    HUB_CONFIG = None
    BUNDLED = None

    def __init__(self, data: DataConfig):
        self.data = data
        # 'auto' is settled by ``load`` (and written back into the config, so every
        # later get_task sees the concrete check); before that, read text answers.
        self.check: Check = make_check(data.check if data.check != "auto" else "exact")

    # -- the answer check ---------------------------------------------------------
    @property
    def ANSWER_FORMAT(self) -> str:  # noqa: N802  (the task interface's name)
        return self.data.answer_format or self.check.answer_format

    @property
    def checked(self) -> bool:
        return self.check.checked

    def learner_chat(self, question: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system()}, {"role": "user", "content": question}]

    def system(self) -> str:
        if self.data.system:
            return self.data.system
        if self.data.answer_format and self.check.checked:
            fmt = self.data.answer_format
            return f"You are a careful assistant. Think briefly, then end with {fmt}."
        return self.check.system

    def score(self, output, gold):
        return self.check.score(output, gold)

    def is_correct(self, output, gold):
        return self.check.is_correct(output, gold)

    def answer_key(self, output):
        return self.check.answer_key(output)

    def answer_end(self, text):
        return self.check.answer_end(text)

    def extract_strict(self, output):
        return self.check.extract_strict(output)

    def extract_flexible(self, output):
        return self.check.extract_flexible(output)

    # -- rows -----------------------------------------------------------------------
    def load(self, path: str, split: str = "train") -> tuple[list[Example], dict[str, int]]:
        rows = load_rows(path, split, self.data.hub_config or None, None)
        if not rows:
            raise UserError(f"no rows in {path!r}")
        dicts = [r for r in rows if isinstance(r, dict)][:SNIFF_ROWS]
        if dicts:  # with none (every row broken), parse_all's line counts them by reason
            self.resolve(dicts, path)
        what = "chat" if self.data.format == "chat" else "question/answer"
        if self.data.format == "chat" and self.data.question_field:
            what = "chat or question/answer"
        return parse_all(rows, self.parse_row, what, path)

    def resolve(self, rows: list[dict], path: str) -> None:
        """Settle format, fields and an 'auto' check from the first rows; written back
        into ``self.data`` so the saved config.yaml says what was used."""
        d = self.data
        keys = _keys(rows)
        has = ", ".join(keys) or "none"
        if d.format == "auto":
            d.format = "chat" if "messages" in keys and not d.question_field else "fields"
        fields_rows = rows
        if d.format == "chat":
            if "messages" not in keys:
                raise UserError(
                    f"no 'messages' field in {path!r} (fields: {has}): use --set data.format=fields"
                )
            # A file that mixes layouts (chat rows and question/answer rows): the other
            # rows are read by their own fields, not all skipped as broken chat rows.
            # Rows without a question and an answer field stay chat rows, skipped as such.
            fields_rows = [r for r in rows if "messages" not in r]
            fkeys = _keys(fields_rows)
            if not d.question_field and not (
                set(fkeys) & set(QUESTION_FIELDS) and set(fkeys) & set(ANSWER_FIELDS)
            ):
                fields_rows = []
        if fields_rows:
            fkeys = _keys(fields_rows)
            given = d.answer_field
            d.question_field = self._field(
                d.question_field, QUESTION_FIELDS, fkeys, "question", path
            )
            d.answer_field = self._field(d.answer_field, ANSWER_FIELDS, fkeys, "answer", path)
            if not given:
                self._worked_reference(fields_rows, fkeys)
        if d.final_field and d.final_field not in keys:
            raise UserError(
                f"data.final_field {d.final_field!r} is not a field of {path!r} (fields: {has})"
            )
        if not d.final_field:
            d.final_field = next((k for k in FINAL_FIELDS if k in keys), "")
        if d.check == "auto":
            d.check = self._choose_check(rows, keys)
            self.check = make_check(d.check)

    def _worked_reference(self, rows: list[dict], keys: list[str]) -> None:
        """Of several answer fields, the worked text is the reference and a short one the
        final answer: ``prompt``, ``completion`` (the solution) and ``answer`` ('18')
        trains on the solution, checked against 18. By name order alone the bare number
        won and the solution was ignored."""
        d = self.data
        found = [k for k in ANSWER_FIELDS if k in keys and k != d.question_field]
        if len(found) < 2 or not _short(rows, d.answer_field):
            return
        worked = next((k for k in found if k != d.answer_field and not _short(rows, k)), None)
        if worked is None:
            return
        short, d.answer_field = d.answer_field, worked
        if not d.final_field and not any(k in keys for k in FINAL_FIELDS):
            d.final_field = short

    def _field(self, given: str, candidates, keys: list[str], what: str, path: str) -> str:
        if given:
            if given not in keys:
                raise UserError(
                    f"data.{what}_field {given!r} is not a field of {path!r} "
                    f"(fields: {', '.join(keys)}): set --set data.{what}_field=NAME"
                )
            return given
        found = next((k for k in candidates if k in keys and k != self.data.question_field), None)
        if found is None:
            raise UserError(
                f"no {what} field in {path!r} (fields: {', '.join(keys) or 'none'}): "
                f"set --set data.{what}_field=NAME"
            )
        return found

    def _choose_check(self, rows: list[dict], keys: list[str]) -> str:
        if self.data.choices_field in keys:
            return "choice"
        finals = [f for f in (self._final(r) for r in rows) if f]
        if not finals:
            return "none"
        if all(numbers.normalize(f.strip()) or numbers.extract_strict(f) for f in finals):
            return "number"
        if all(len(f.split()) <= SHORT_ANSWER_WORDS for f in finals):
            return "exact"
        return "none"

    def _final(self, row: dict) -> str | None:
        """The text the gold answer is read from: the final field, else the reference."""
        if self.data.final_field:
            f = _text(row.get(self.data.final_field))
            if f is not None and f.strip():
                return f
        if self._is_chat(row):
            turns = row.get("messages")
            if isinstance(turns, list):
                for t in reversed(turns):
                    if isinstance(t, dict) and t.get("role") == "assistant":
                        return _content(t.get("content"))
            return None
        return _text(row.get(self.data.answer_field))

    def _is_chat(self, row: dict) -> bool:
        """Read as a chat row: in a chat file, a row with messages, or any row when the
        file has no question/answer rows besides."""
        return self.data.format == "chat" and ("messages" in row or not self.data.question_field)

    def parse_row(self, row: dict, index: int) -> Example | str:
        """An Example, or the reason the row is unusable (counted by ``parse_all``)."""
        rid = _text(row.get(self.data.id_field)) if self.data.id_field else None
        rid = rid or f"row-{index}"
        if self._is_chat(row):
            parsed = self._chat_row(row)
        else:
            parsed = self._fields_row(row)
        if isinstance(parsed, str):
            return parsed
        question, reference, context = parsed
        final = reference
        if self.data.final_field:
            f = _text(row.get(self.data.final_field))
            if f is not None and f.strip():
                final = f
        choices = None
        if self.check.name == "choice":
            got = self._choice(row, question, final, reference)
            if isinstance(got, str):
                return got
            question, reference, gold, choices = got
        else:
            gold = self.check.gold(final)
            if gold is None:
                if self.check.name == "number":
                    # a fraction or ratio is no number to compare: --check exact reads it
                    return "answer has no plain number (fractions, ratios: use check exact)"
                return "empty answer"
        return Example(
            id=rid,
            question=question,
            reference=self._stated(reference, final, gold),
            answer=gold,
            choices=choices,
            context=context,
        )

    def _stated(self, reference: str, final: str, gold: str) -> str:
        """The training target, ending the way the strict reading looks for: a reference
        that does not ('...so 20 x 60 = 1200 minutes.', with the final answer 1200)
        gets the check's answer line ('#### 1200'); a reference that is the bare final
        answer ('1200') becomes that line. Trained on the data as written, a model never
        states its answer in the checked form, and strict accuracy reads parse failures.
        Left as written when the user set their own answer_format (its form is theirs)
        or the check has no line to write (regex, none)."""
        line = None if self.data.answer_format else self.check.answer_line(final, gold)
        if line is None or self.check.score(reference, gold).strict_correct:
            return reference
        target = line if reference.strip() == final.strip() else f"{reference}\n{line}"
        return target if self.check.score(target, gold).strict_correct else reference

    def _fields_row(self, row: dict):
        d = self.data
        q, a = _text(row.get(d.question_field)), _text(row.get(d.answer_field))
        for name, value in ((d.question_field, q), (d.answer_field, a)):
            if value is None and isinstance(row.get(name), (list, dict)):
                return f"{name} is not text (a list or an object)"
        if q is None:
            return f"missing {d.question_field}"
        if d.question_field == "instruction":
            extra = _text(row.get("input"))
            if extra and extra.strip():
                q = f"{q.strip()}\n\n{extra.strip()}"
        if not q.strip():
            return "empty question"
        if a is None:
            return f"missing {d.answer_field}"
        if not a.strip():
            return "empty answer"
        return q.strip(), a.strip(), None

    def _chat_row(self, row: dict):
        turns = row.get("messages")
        if not isinstance(turns, list) or not all(
            isinstance(t, dict) and isinstance(t.get("role"), str) for t in turns
        ):
            return "messages is not a list of {role, content}"
        last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
        if last is None:
            return "messages without an assistant turn"
        if any(_has_other_parts(t.get("content")) for t in turns[: last + 1]):
            return NOT_TEXT
        reference = _content(turns[last].get("content"))
        if reference is None or not reference.strip():
            return "empty answer"
        context = [
            {"role": t["role"], "content": _content(t.get("content")) or ""} for t in turns[:last]
        ]
        users = [t["content"] for t in context if t["role"] == "user"]
        if not users or not users[-1].strip():
            return "messages without a user turn before the answer"
        if not any(t["role"] == "system" for t in context):
            context.insert(0, {"role": "system", "content": self.system()})
        return users[-1].strip(), reference.strip(), context

    def _choice(self, row: dict, question: str, final: str, reference: str):
        """Options from the choices field; the gold is a label, an index or an option's text."""
        raw = row.get(self.data.choices_field)
        if isinstance(raw, dict):
            labels = [str(x) for x in raw.get("label") or []]
            texts = [str(x) for x in raw.get("text") or []]
        elif isinstance(raw, list):
            texts = [str(x) for x in raw]
            labels = list("ABCDEFGHIJ"[: len(texts)])
        else:
            return "missing choices"
        if not 2 <= len(texts) <= 10 or len(labels) != len(texts):
            return "choices must be a list of 2-10 options"
        f = final.strip()
        # An option's own text first: with options "2", "0", "1", the answer "1" is the
        # third option, not the option at index 1.
        if f in labels:
            gold = f
        elif f in texts:
            gold = labels[texts.index(f)]
        elif f.upper() in labels:
            gold = f.upper()
        elif f.isdecimal() and int(f) < len(texts):  # '²' is a digit to isdigit, not to int
            gold = labels[int(f)]
        else:
            return "answer is not one of the choices (label, index or text)"
        ex = mc.make_example("", question, labels, texts, gold)
        # A long reference (an explanation) stays the target; a bare label becomes a sentence.
        target = reference if reference.strip() not in (f, final) else ex.reference
        return ex.question, target, gold, labels


def _keys(rows: list[dict]) -> list[str]:
    """Every field the rows have, in the order first seen."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return keys


def _short(rows: list[dict], field: str) -> bool:
    """Every value of the field in these rows is a short final answer (at most
    SHORT_ANSWER_WORDS words), and there is at least one."""
    values = [v for v in (_text(r.get(field)) for r in rows) if v is not None and v.strip()]
    return bool(values) and all(len(v.split()) <= SHORT_ANSWER_WORDS for v in values)
