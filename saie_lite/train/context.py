"""Fitting examples and discussions into the learner's context (``learner.max_seq_len``),
by the run's ``method.context_policy``: clip (``truncate``) or skip, and say so.

Three places need it: a question too long for an answer or its reference (checked the
first time a batch holds the example, before anything is generated), a chat row's own
earlier turns (checked once, at the start), and a discussion that grows with each
remark and revision (checked every turn).
"""

from __future__ import annotations

from dataclasses import replace

from saie_lite.config import Config
from saie_lite.errors import UserError
from saie_lite.protocols import Chat, Example, Learner
from saie_lite.tasks import example_chat, get_task
from saie_lite.train.prompts import clip_text, discussion_chat


def fit_history(
    learner: Learner,
    base: Chat,
    history: list[str],
    target: str,
    budget: int,
    limit: int,
    policy: str,
    fmt: str,
) -> tuple[list[str] | None, bool]:
    """Make the discussion fit ``limit`` tokens, both for generating a reply of ``budget``
    tokens and for training on ``target``.

    Returns (history, clipped); history is None when the policy is 'skip' or nothing
    more can be clipped. Clipping shortens the longest turn by a quarter at a time.
    """
    hist, clipped = list(history), False

    def too_long() -> bool:
        chat = discussion_chat(base, hist, fmt)
        return (
            learner.count_tokens(chat) + budget > limit
            or learner.count_tokens(chat, target) > limit
        )

    while too_long():
        if policy == "skip":
            return None, clipped
        i = max(range(len(hist)), key=lambda j: len(hist[j]))
        shorter = clip_text(hist[i], 0.75)
        if shorter == hist[i]:
            return None, clipped
        hist[i], clipped = shorter, True
    return hist, clipped


def too_long(learner: Learner, chat: Chat, target: str, budget: int, limit: int) -> bool:
    """Does the chat leave no room for an answer of ``budget`` tokens, or for the target?"""
    return learner.count_tokens(chat) + budget > limit or learner.count_tokens(chat, target) > limit


def fit_chat_bases(
    learner: Learner, examples: list[Example], bases: list[Chat], cfg: Config
) -> tuple[list[Example], list[Chat], list[str]]:
    """Chat-format rows bring their own earlier turns, which may not fit
    ``learner.max_seq_len`` with an answer and the reference: the context policy clips
    their longest turn (``truncate``) or drops the example (``skip``), and says so.
    Returns the kept examples, their opening chats and the notes."""
    lc, policy = cfg.learner, cfg.method.context_policy
    kept_ex, kept_bases, notes = [], [], []
    for ex, base in zip(examples, bases):
        if not ex.context:
            kept_ex.append(ex)
            kept_bases.append(base)
            continue
        chat, clipped = list(base), False
        while too_long(learner, chat, ex.reference, lc.max_new_tokens, lc.max_seq_len):
            i = max(range(len(chat)), key=lambda j: len(chat[j]["content"]))
            shorter = clip_text(chat[i]["content"], 0.75)
            if policy == "skip" or shorter == chat[i]["content"]:
                chat = None
                break
            chat[i], clipped = {**chat[i], "content": shorter}, True
        if chat is None:
            notes.append(f"{ex.id}: chat turns over max_seq_len={lc.max_seq_len}, skipped")
            continue
        if clipped:
            notes.append(f"{ex.id}: chat turns clipped to fit max_seq_len={lc.max_seq_len}")
        kept_ex.append(ex)
        kept_bases.append(chat)
    if not kept_ex:
        raise UserError(
            f"every example is longer than learner.max_seq_len={lc.max_seq_len} "
            f"(context_policy {policy}): raise learner.max_seq_len"
        )
    return kept_ex, kept_bases, notes


def fit_example(
    learner: Learner, task, ex: Example, budget: int, limit: int, policy: str
) -> tuple[Example | None, str]:
    """Make one example's question fit ``limit`` tokens before anything is generated.

    A question far past the context would otherwise be fed whole to the learner's
    generation (minutes of attention over thousands of tokens, for an answer that
    cannot fit) and to the partner. Returns (example, note): the example as is, with its
    question clipped (policy 'truncate'), or None (policy 'skip', or the reference
    itself does not fit); the note is empty when nothing was changed.
    """

    def need(question: str) -> int:
        chat = example_chat(task, replace(ex, question=question))
        return max(learner.count_tokens(chat) + budget, learner.count_tokens(chat, ex.reference))

    have = need(ex.question)
    if have <= limit:
        return ex, ""
    what = f"{ex.id}: question needs {have} tokens, over max_seq_len={limit}"
    if policy == "skip":
        return None, f"{what}, skipped"
    question = ex.question
    while need(question) > limit:
        # Cut in proportion to the excess (a little more, for the marker), not a quarter
        # at a time: a 50k-token question should not take dozens of tokenizer passes.
        shorter = clip_text(question, min(0.75, 0.95 * limit / need(question)))
        if shorter == question:
            return None, f"{what}, and clipping cannot make it fit: skipped"
        question = shorter
    return replace(ex, question=question), f"{what}, clipped"


class ContextFit:
    """Each example checked against the context once, the first time a batch holds it;
    a clipped example replaces the original (and its learner prompt) from then on."""

    def __init__(self, ctx, examples: list[Example], bases: list[Chat]):
        # ctx: the run's ``batch.RunContext`` (its cfg, learner and note are used)
        self.ctx, self.examples, self.bases = ctx, examples, bases
        self.fitted: dict[int, Example | None] = {}

    def batch(
        self, indices: list[int], note=None, answers: bool = True
    ) -> tuple[list[Example], list[Chat]]:
        """``answers``: the learner will answer these questions (a discussion batch), so
        its answer budget must fit too; plain warm-up targets need only the reference.
        (An example is always in the same kind of batch: warm-up and discussion examples
        are split once.) ``note``: where to say what was clipped (a worker preparing the
        next batch buffers its notes; the default is the run's own)."""
        note = note or self.ctx.note
        cfg = self.ctx.cfg
        task = get_task(cfg.data)
        for i in indices:
            if i in self.fitted:
                continue
            if self.examples[i].context:  # chat rows: fitted turn by turn by fit_chat_bases
                self.fitted[i] = self.examples[i]
                continue
            ex, message = fit_example(
                self.ctx.learner,
                task,
                self.examples[i],
                cfg.learner.max_new_tokens if answers else 0,
                cfg.learner.max_seq_len,
                cfg.method.context_policy,
            )
            if message:
                note("context", message)
            if ex is not None and ex is not self.examples[i]:
                self.bases[i] = example_chat(task, ex)
            self.fitted[i] = ex
        kept = [i for i in indices if self.fitted[i] is not None]
        return [self.fitted[i] for i in kept], [self.bases[i] for i in kept]
