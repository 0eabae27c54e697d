"""Pure functions: the prompts of a discussion and the training sequences it yields.

No model is called here, so every prompt and every sequence can be unit-tested.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field

from saie_lite.protocols import Chat, Example, TrainSequence

# The stance goes last in the partner's prompt and everything before it is shared, so
# the two stances' prompts on one answer differ only in their final sentence: llama.cpp
# keeps the shared prefix in its KV cache and evaluates it once per answer, not per
# stance (bench: remark time per discussion step, see the README).
# Wording measured with the remark diagnostics (examples/remark-diagnostics/measure.py,
# README): a small partner copies the student's solution unless told plainly not to, and
# keeps to a stance best when told how its reply begins.
PARTNER_SYSTEM = (
    "You are a study partner in a discussion about a student's solution. Never copy or "
    "repeat the student's solution: reply in your own words, in one or two short sentences."
)
STANCE_INSTRUCTION = {
    "supportive": (
        "Your role: supporter. Reply in one or two sentences that begin with 'You are "
        "right' and say which step of the student's solution is correct."
    ),
    "adversarial": (
        "Your role: critic. Give a critical reply in one or two sentences that begin with "
        "'I think this is wrong' and name the step the student should recheck."
    ),
}

# How the learner sees the partner's remark: as another user turn, so any chat template
# renders the discussion without special tokens.
REMARK_WRAPPER = (
    "A discussion partner replied:\n{remark}\n\n"
    "Take the remark into account and give your final solution, ending with {fmt}."
)
GSM8K_FORMAT = "'#### <number>'"

RATIONALE_SYSTEM = (
    "You are a teacher. Given a question and its correct answer, explain in two or three "
    "sentences why that answer is right, and end with exactly: {final}"
)


def partner_chat(
    example: Example,
    history: list[str],
    stance: str,
    sees_reference: bool,
    final: str | None = None,
) -> Chat:
    """The partner's prompt: the question, the learner's latest answer, and its stance.

    ``history`` alternates learner answers and earlier remarks (a0, m1, a1, ...); the
    partner remarks on the last learner answer. ``final`` is the checked final answer
    when it is not already the reference's last words (own data with a final field).
    """
    lines = [f"Problem:\n{example.question}"]
    if sees_reference:
        # A small partner cannot check arithmetic reliably; grounding it in the reference
        # keeps its remarks about the real error (docs/protocol.md: partner_sees_reference).
        lines.append(f"Reference solution (do not quote it verbatim):\n{example.reference}")
        if final:
            lines.append(f"Correct final answer: {final}")
    for i, text in enumerate(history[:-1]):
        who = "Student" if i % 2 == 0 else "You"
        lines.append(f"{who} earlier:\n{text}")
    lines.append(f"Student's answer:\n{history[-1]}")
    lines.append(STANCE_INSTRUCTION[stance])
    return [
        {"role": "system", "content": PARTNER_SYSTEM},
        {"role": "user", "content": "\n\n".join(lines)},
    ]


def discussion_chat(base: Chat, history: list[str], fmt: str = GSM8K_FORMAT) -> Chat:
    """Learner context: question, then alternating learner answers and partner remarks.

    ``history`` is (a0, m1, a1, m2, ...) and must end with a remark; ``fmt`` is the task's
    answer format, repeated so the revision stays parseable.
    """
    chat = list(base)
    for i, text in enumerate(history):
        if i % 2 == 0:
            chat.append({"role": "assistant", "content": text})
        else:
            chat.append({"role": "user", "content": REMARK_WRAPPER.format(remark=text, fmt=fmt)})
    return chat


def rationale_chat(example: Example) -> Chat:
    """``target: rationalized``: the partner, shown the gold choice, explains it."""
    final = example.reference
    return [
        {"role": "system", "content": RATIONALE_SYSTEM.format(final=final)},
        {"role": "user", "content": f"Question:\n{example.question}\n\nCorrect answer: {final}"},
    ]


# ``method.critique_target``: the learner also learns to write the partner's remark. It
# sees what the partner would see at inference, minus the reference (a learner critiquing
# its own or another's answer has none): the question, the answer, the stance.
CRITIQUE_SYSTEM = (
    "You are a study partner in a discussion about a student's solution. Reply in your "
    "own words, in one or two short sentences."
)


def critique_chat(example: Example, answer: str, stance: str) -> Chat:
    """The critique sequence's context: the question, the answer remarked on, the stance."""
    user = (
        f"Problem:\n{example.question}\n\nStudent's answer:\n{answer}\n\n"
        f"{STANCE_INSTRUCTION[stance]}"
    )
    return [{"role": "system", "content": CRITIQUE_SYSTEM}, {"role": "user", "content": user}]


def critique_copies(weight: float, key: str) -> int:
    """How many times a critique sequence goes into the batch: the weight, as copies.

    No backend loss takes a per-sequence weight, and every one sums target-token losses,
    so ``k`` copies weigh a sequence ``k`` times. A fractional part is a deterministic
    draw on ``key`` (crc32, no RNG state): weight 1.5 trains half of the critiques (the
    same half on a resumed run) twice, so the expected weight is 1.5."""
    whole, part = int(math.floor(weight)), weight - math.floor(weight)
    return whole + int(zlib.crc32(key.encode()) / 2**32 < part)


def critique_sequences(
    example: Example,
    answer: str,
    stance: str,
    remark: str,
    diagnostics: dict | None,
    weight: float,
    key: str = "",
) -> list[TrainSequence]:
    """The critique sequences of one remark: the remark is the target, ``weight`` copies.

    None for a remark the partner did not give (no ``diagnostics``) or one the remark
    diagnostics flag as degenerate or as an echo of the answer: teaching the learner to
    repeat the answer back, or to babble, is not teaching it to critique."""
    if not diagnostics or diagnostics["degenerate"] or diagnostics["echo"]:
        return []
    n = critique_copies(weight, key or f"{example.id}/{stance}")
    chat = critique_chat(example, answer, stance)
    return [
        TrainSequence(context=list(chat), target=remark, kind=f"critique-{stance}")
        for _ in range(n)
    ]


def plain_sequence(base: Chat, example: Example) -> TrainSequence:
    return TrainSequence(context=list(base), target=example.reference, kind="plain")


@dataclass
class Branch:
    """One discussion thread: an example, one stance, and the turns so far."""

    example: Example
    stance: str
    base: Chat
    history: list[str] = field(default_factory=list)  # a0, m1, a1, m2, ...


def choose_target(reference: str, revision: str | None, correct: bool, policy: str) -> str:
    """docs/protocol.md target policy: the reference, or a correct revision in its place."""
    if policy == "reference_or_revision" and revision is not None and correct:
        return revision
    return reference


def mix_plain_sequences(
    examples: list[Example],
    bases: list[Chat],
    fraction: float,
    n_discussion: int,
    rng: random.Random,
) -> list[TrainSequence]:
    """Plain question->reference samples added to a discussion batch (``mix_plain``)."""
    n = round(fraction * n_discussion)
    if n <= 0:
        return []
    picks = [rng.randrange(len(examples)) for _ in range(n)]
    return [plain_sequence(bases[i], examples[i]) for i in picks]


def clip_text(text: str, keep_fraction: float) -> str:
    """Shorten a turn for the 'truncate' context policy, marking the cut."""
    n = max(16, int(len(text) * keep_fraction))
    return text if n >= len(text) else text[:n].rstrip() + " [...]"
