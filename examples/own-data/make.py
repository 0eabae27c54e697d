"""Writes the own-data examples: generated unit-conversion problems (no copied data).

    python examples/own-data/make.py

Four files, one per layout, all from one seeded generator:
units.jsonl (question / worked answer / short final number), units-freeform.jsonl
(prompt / completion explanations, nothing to check), units-chat.jsonl (``messages``,
some with a follow-up turn) and units.csv (question, short text answer).
"""

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
# (from, to, factor, thing measured)
UNITS = [
    ("metres", "centimetres", 100, "the length of a rope"),
    ("kilometres", "metres", 1000, "the length of a walk"),
    ("kilograms", "grams", 1000, "the weight of a bag of flour"),
    ("litres", "millilitres", 1000, "the volume of a water tank"),
    ("hours", "minutes", 60, "the length of a train journey"),
    ("minutes", "seconds", 60, "the length of a song"),
    ("feet", "inches", 12, "the width of a shelf"),
    ("days", "hours", 24, "the length of a trip"),
]
ONE = {
    "metres": "metre",
    "kilometres": "kilometre",
    "kilograms": "kilogram",
    "litres": "litre",
    "hours": "hour",
    "minutes": "minute",
    "feet": "foot",
    "days": "day",
}
BIGGER = [
    ("a mile", "a kilometre"),
    ("a kilogram", "a pound"),
    ("a litre", "a pint"),
    ("a metre", "a yard"),
    ("an hour", "a minute"),
    ("a foot", "an inch"),
]


def fmt(x: float) -> str:
    return f"{x:g}"


def problems(rng: random.Random, n: int):
    for _ in range(n):
        src, dst, k, thing = rng.choice(UNITS)
        amount = rng.choice([rng.randint(2, 40), rng.randint(2, 40) + 0.5])
        yield src, dst, k, thing, amount, amount * k


def main() -> None:
    rng = random.Random(13)
    rows = []
    for src, dst, k, thing, a, b in problems(rng, 24):
        rows.append(
            {
                "question": f"{thing.capitalize()}: {fmt(a)} {src}. How many {dst} is that?",
                "answer": f"1 {ONE[src]} is {k} {dst}, so {fmt(a)} x {k} = {fmt(b)} {dst}.",
                "final": fmt(b),
            }
        )
    (HERE / "units.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    rows = []
    for src, dst, k, _, a, b in problems(rng, 16):
        rows.append(
            {
                "prompt": f"Explain how to turn {fmt(a)} {src} into {dst}.",
                "completion": (
                    f"Each {ONE[src]} holds {k} {dst}, so multiply by {k}: "
                    f"{fmt(a)} {src} is {fmt(b)} {dst}. Going back, divide by {k}."
                ),
            }
        )
    (HERE / "units-freeform.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    rows = []
    for i, (src, dst, k, _, a, b) in enumerate(problems(rng, 16)):
        turns = [
            {"role": "system", "content": "You convert units. End with 'The answer is N'."},
            {"role": "user", "content": f"How many {dst} are in {fmt(a)} {src}?"},
        ]
        if i % 2:  # a follow-up: the earlier turns are the question's context
            turns += [
                {
                    "role": "assistant",
                    "content": f"{fmt(a)} x {k} = {fmt(b)}. The answer is {fmt(b)}",
                },
                {"role": "user", "content": f"And twice as many {src}?"},
            ]
            a, b = 2 * a, 2 * b
        turns.append(
            {"role": "assistant", "content": f"{fmt(a)} x {k} = {fmt(b)}. The answer is {fmt(b)}"}
        )
        rows.append({"messages": turns})
    (HERE / "units-chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    with (HERE / "units.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer"])
        for big, small in BIGGER:
            pair = [big, small]
            rng.shuffle(pair)
            w.writerow([f"Which is bigger, {pair[0]} or {pair[1]}?", big])


if __name__ == "__main__":
    main()
