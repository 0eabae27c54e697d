"""A built-in, generated task: multi-step arithmetic word problems (``data.task:
arithmetic``, ``data.path: generated``).

GSM8K is far beyond the embedded 135M learner (a few percent right, untrained), so no
method can show a difference on it at that size. These problems are made here, from a
fixed seed (no copied data), with a difficulty knob (``data.difficulty`` 1-5: the number
of steps and the size of the numbers) so the base accuracy can sit where training can
move it. References use the GSM8K layout (worked steps, then ``#### N``) and the GSM8K
prompt and ``number`` check, so every metric, check and prompt works as for GSM8K.

Item ``i`` of a difficulty is drawn from its own RNG (seed, difficulty, i): asking for
more items (``data.n_generated``) adds rows without changing the earlier ones, and an
item's id (``arith-d<difficulty>-<i>``) always names the same problem. Every
``DEV_EVERY``-th item is the held-out ``dev`` split; ``train`` (alias ``nodev``) is the rest.
"""

from __future__ import annotations

import random

from saie_lite.errors import UserError
from saie_lite.protocols import Example
from saie_lite.tasks import gsm8k

SEED = 2024
DEV_EVERY = 5  # items 0, 5, 10, ...: a fifth of the rows, the same ones at any n_generated
PATHS = ("generated", "bundled")  # 'bundled' is data.path's default: nothing else named
SPLITS = ("train", "nodev", "dev", "all")

# Per difficulty: (steps, largest number in a step, whether multiplication may appear).
LEVELS = {
    1: (1, 9, False),
    2: (2, 20, False),
    3: (3, 50, True),
    4: (4, 100, True),
    5: (5, 500, True),
}

NAMES = ("Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas")
THINGS = ("apples", "stickers", "marbles", "books", "coins", "pencils", "cards", "shells")

# The GSM8K learner prompt, answer format, reading and check, unchanged.
ANSWER_FORMAT = gsm8k.ANSWER_FORMAT
normalize, extract_strict, extract_flexible = (
    gsm8k.normalize,
    gsm8k.extract_strict,
    gsm8k.extract_flexible,
)
answer_end = gsm8k.answer_end
CHECK = gsm8k.CHECK
score, is_correct, answer_key = gsm8k.score, gsm8k.is_correct, gsm8k.answer_key
learner_chat = gsm8k.learner_chat
parse_row = gsm8k.parse_row


def _step(rng: random.Random, value: int, top: int, multiply: bool, name: str, things: str):
    """One operation on the running count: (sentence, worked line, new value)."""
    kinds = ["add", "sub"] + (["mul"] if multiply and value <= top else [])
    kind = rng.choice(kinds if value > 1 else ["add"])
    if kind == "add":
        n = rng.randint(1, top)
        new = value + n
        said = f"Then {name} gets {n} more {things}."
        work = f"After getting {n} more, {name} has {value} + {n} = {new} {things}."
    elif kind == "sub":
        n = rng.randint(1, min(top, value - 1))
        new = value - n
        said = f"Then {name} gives away {n} {things}."
        work = f"After giving away {n}, {name} has {value} - {n} = {new} {things}."
    else:
        n = rng.randint(2, 5)
        new = value * n
        said = f"Then {name}'s pile of {things} grows to {n} times its size."
        work = f"{n} times as many is {value} * {n} = {new} {things}."
    return said, work, new


def make_problem(difficulty: int, index: int, seed: int = SEED) -> dict:
    """Problem ``index`` of a difficulty, as a GSM8K-layout row (id, question, answer)."""
    steps, top, multiply = LEVELS[difficulty]
    rng = random.Random(f"{seed}-{difficulty}-{index}")
    name, things = rng.choice(NAMES), rng.choice(THINGS)
    value = rng.randint(2, top)
    said = [f"{name} has {value} {things}."]
    work = [f"{name} starts with {value} {things}."]
    for _ in range(steps):
        s, w, value = _step(rng, value, top, multiply, name, things)
        said.append(s)
        work.append(w)
    said.append(f"How many {things} does {name} have now?")
    answer = "\n".join(work) + f"\n#### {value}"
    return {"id": f"arith-d{difficulty}-{index:05d}", "question": " ".join(said), "answer": answer}


def generate(difficulty: int, n: int, seed: int = SEED) -> list[dict]:
    """The first ``n`` distinct problems of a difficulty: an index whose question an
    earlier index already asked is passed over (small numbers repeat at difficulty 1)."""
    rows, seen, index = [], set(), 0
    # Difficulty 1 has a few thousand distinct problems; the cap keeps a too-large
    # n_generated from looping forever.
    while len(rows) < n and index < 50 * n:
        row = make_problem(difficulty, index, seed)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
        index += 1
    return rows


def split_rows(rows: list[dict], split: str) -> list[dict]:
    """``dev``: every ``DEV_EVERY``-th row by problem index; ``train``/``nodev``: the rest."""
    if split not in SPLITS:
        raise UserError(
            f"the generated arithmetic task has no split {split!r}: use train (= nodev) | dev "
            "(held-out rows) | all"
        )
    if split == "all":
        return rows

    def is_dev(row: dict) -> bool:
        return int(row["id"].rsplit("-", 1)[1]) % DEV_EVERY == 0

    return [r for r in rows if is_dev(r) == (split == "dev")]


class ArithmeticTask:
    """The task for one ``DataConfig``: GSM8K's prompt and check, rows made here."""

    ANSWER_FORMAT = ANSWER_FORMAT
    CHECK = CHECK
    normalize = staticmethod(normalize)
    extract_strict = staticmethod(extract_strict)
    extract_flexible = staticmethod(extract_flexible)
    answer_end = staticmethod(answer_end)
    score = staticmethod(score)
    is_correct = staticmethod(is_correct)
    answer_key = staticmethod(answer_key)
    learner_chat = staticmethod(learner_chat)
    parse_row = staticmethod(parse_row)

    def __init__(self, data):
        self.difficulty, self.n_generated = data.difficulty, data.n_generated

    def load(self, path: str, split: str = "train") -> tuple[list[Example], dict[str, int]]:
        if path not in PATHS:
            raise UserError(
                f"the arithmetic task makes its own rows: give --data generated, not {path!r} "
                "(for a file of your own, use --task custom)"
            )
        rows = split_rows(generate(self.difficulty, self.n_generated), split)
        examples = [parse_row(r, i) for i, r in enumerate(rows)]
        return [e for e in examples if isinstance(e, Example)], {}
