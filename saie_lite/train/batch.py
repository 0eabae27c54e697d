"""One discussion batch (docs/protocol.md section 2, steps 1-4): on-policy learner answers,
partner remarks per stance through the cache, the context check, revisions, and the
training sequences. Every turn is appended to the rows the loop stores after the update.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saie_lite.config import Config
from saie_lite.errors import PartnerError
from saie_lite.protocols import (
    Callbacks,
    Chat,
    Example,
    Learner,
    MissingRemark,
    Partner,
    TrainSequence,
)
from saie_lite.remarks import diagnose
from saie_lite.store import Store, remark_key
from saie_lite.tasks import get_task, is_checked
from saie_lite.tasks.checks import normalize_text
from saie_lite.train.context import fit_history
from saie_lite.train.prompts import (
    Branch,
    choose_target,
    critique_sequences,
    discussion_chat,
    partner_chat,
    rationale_chat,
)


def get_remarks(
    partner: Partner, store: Store, chats: list[Chat], max_tokens: int
) -> tuple[list[str], list[bool]]:
    """Remarks through the cache: a (partner, prompt) pair is never asked twice.

    A remark the partner did not give comes back as its ``MissingRemark`` and is not
    cached, so a resumed run asks for it again."""
    keys = [remark_key(partner.name, c, max_tokens) for c in chats]
    found = [store.cached_remark(k) for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        try:
            fresh = partner.remark([chats[i] for i in missing], max_tokens)
        except PartnerError as e:
            # Keep the replies that did arrive: a resumed run will not ask for them again.
            for j, text in e.partial.items():
                store.cache_remark(keys[missing[j]], partner.name, chats[missing[j]], text)
            raise
        for i, text in zip(missing, fresh):
            found[i] = text
            if not isinstance(text, MissingRemark):
                store.cache_remark(keys[i], partner.name, chats[i], text)
    fetched = set(missing)
    # Degenerate remarks (empty, no words, one word repeated) are asked for once more;
    # a second degenerate one is kept in the cache as is, and the caller skips it.
    again = [
        i
        for i in missing
        if not isinstance(found[i], MissingRemark) and is_degenerate(found[i] or "")
    ]
    if again:
        retried = partner.remark([chats[i] for i in again], max_tokens)
        for i, text in zip(again, retried):
            if not isinstance(text, MissingRemark) and not is_degenerate(text):
                store.cache_remark(keys[i], partner.name, chats[i], text)
                found[i] = text
    return [f if f is not None else "" for f in found], [
        i not in fetched for i in range(len(chats))
    ]


def account_missing(ctx: RunContext, remarks: list[str]) -> None:
    """Count this call's missing remarks; stop the run (``PartnerError``: the loop keeps
    a checkpoint) when more than ``partner.max_missing_share`` of them is missing, and
    always when every one is."""
    lost = [r for r in remarks if isinstance(r, MissingRemark)]
    if not lost:
        return
    ctx.missing_remarks += len(lost)
    share = ctx.cfg.partner.max_missing_share
    attempts = f"after {ctx.cfg.partner.retries + 1} attempts each"
    if len(lost) == len(remarks):
        raise PartnerError(
            f"{lost[0].reason} for all {len(remarks)} remarks of this batch ({attempts})"
        )
    if len(lost) > share * len(remarks):
        raise PartnerError(
            f"{lost[0].reason} for {len(lost)} of {len(remarks)} remarks of this batch, "
            f"more than partner.max_missing_share={share:g} ({attempts})"
        )


def is_degenerate(text: str) -> bool:
    words = text.split()
    if not any(ch.isalpha() for ch in text):
        return True
    return len(words) >= 8 and max(words.count(w) for w in set(words)) >= 0.9 * len(words)


def remark_diagnostics(task, remark, answer: str, stance: str) -> dict | None:
    """Diagnostics of one remark on one learner answer (``saie_lite.remarks``): the
    final answers are read with the task's check where the data has one."""
    if isinstance(remark, MissingRemark):
        return None
    stated = getattr(task, "extract_strict", task.answer_key)  # what the remark *states*
    finals = (stated(remark), task.answer_key(answer)) if is_checked(task) else (None, None)
    return diagnose(remark, answer, stance, is_degenerate(remark), *finals)


def gold_targets(ctx: RunContext, task, exs, rows, meta) -> dict[str, str]:
    """Each example's training target: the reference, or (``target: rationalized``) the
    partner's rationale for the gold choice when it ends in that choice (cached)."""
    gold = {ex.id: ex.reference for ex in exs}
    if ctx.cfg.method.target != "rationalized":
        return gold
    chats = [rationale_chat(ex) for ex in exs]
    t0 = time.perf_counter()
    texts, cached = ctx.remarks(ctx.partner, ctx.store, chats, ctx.cfg.partner.max_tokens)
    ctx.timer.add("remark", t0)
    account_missing(ctx, texts)
    for ex, chat, text, hit in zip(exs, chats, texts, cached):
        usable = task.is_correct(text, ex.answer)
        if usable:
            gold[ex.id] = text
        if isinstance(text, MissingRemark):
            ctx.note("missing", f"{ex.id} rationale: no remark ({text.reason}), reference kept")
        rows.append(
            turn_row(
                meta,
                ex,
                turn=0,
                role="partner",
                stance="rationale",
                prompt=chat,
                text=text,
                correct=mark(usable),
                cached=int(hit),
                missing=getattr(text, "reason", None),
            )
        )
    return gold


def partner_final(task, ex: Example) -> str | None:
    """The final answer the partner is told, for own data whose check reads one that the
    reference does not end with (a long solution plus a 'final' field); presets and
    ``check: none`` add nothing, so their prompts (and cached remarks) stay as they were."""
    check = getattr(task, "check", None)
    if check is None or not check.checked:
        return None
    said = normalize_text(ex.reference).endswith(normalize_text(ex.answer))
    return None if said else ex.answer


def mark(ok: bool | None) -> int | None:
    """A turn's stored mark: 1/0, or NULL where the data has no check (``check: none``)."""
    return None if ok is None else int(ok)


def turn_row(meta: dict, ex: Example, **kw) -> dict:
    """A ``turns`` table row: the batch's step/phase/round plus this turn's fields."""
    return {**meta, "example_id": ex.id, **kw}


@dataclass
class RunContext:
    """What stays the same for every batch of a run; the loop builds it once."""

    cfg: Config
    learner: Learner
    partner: Partner | None
    store: Store
    timer: Any  # the loop's Timer: ``add(key, since)`` returns the seconds spent
    note: Callable[[str, str], None]  # (kind, message): store event + live view line
    cb: Callbacks
    missing_remarks: int = 0  # remarks the partner never gave, this run (live view, summary)
    # How remarks are fetched: through the cache here; under data parallelism, on the
    # main process only, then handed to the others (``distributed.remarks_from_main``).
    remarks: Callable = get_remarks
    # Answers and remarks of this batch decoded ahead with the next ones
    # (``lookahead.Lookahead``, ``train.lookahead``); None when each batch decodes its own.
    ahead: Any = None


def critique_batch(ctx: RunContext, b: Branch, remark: str, diag, when: str) -> list:
    """``method.critique_target``: the sequences that teach the learner this remark
    (``prompts.critique_sequences``); one that does not fit ``max_seq_len`` is left out,
    and said, rather than trained on a cut-off remark."""
    seqs = critique_sequences(
        b.example,
        b.history[-1],
        b.stance,
        remark,
        diag,
        ctx.cfg.method.critique_weight,
        key=f"{b.example.id}/{b.stance}/{when}",
    )
    limit = ctx.cfg.learner.max_seq_len
    if seqs and ctx.learner.count_tokens(seqs[0].context, remark) > limit:
        ctx.note(
            "context", f"{b.example.id} ({b.stance}): critique over max_seq_len={limit}, left out"
        )
        return []
    return seqs


class BatchRecord:
    """The bookkeeping of one discussion batch, so that :func:`discussion_batch` shows
    only the discussion: every turn as a store row (``rows``, written by the loop once
    the update succeeds), the notes of discussions left out, and one live-view card per
    example at the end."""

    def __init__(self, ctx: RunContext, meta: dict, rows: list[dict]):
        self.ctx, self.meta, self.rows = ctx, meta, rows

    def _row(self, ex: Example, **kw) -> None:
        self.rows.append(turn_row(self.meta, ex, **kw))

    def answer(self, ex: Example, prompt: Chat, text: str, ok, seconds: float) -> None:
        self._row(ex, turn=0, role="learner", prompt=prompt, text=text, correct=mark(ok),
                  seconds=seconds)  # fmt: skip

    def remark(self, b: Branch, turn: int, chat: Chat, text, hit: bool, seconds: float,
               diag) -> None:  # fmt: skip
        self._row(
            b.example,
            turn=turn,
            role="partner",
            stance=b.stance,
            prompt=chat,
            text=text,
            cached=int(hit),
            seconds=0.0 if hit else seconds,
            missing=getattr(text, "reason", None),
            diagnostics=diag,
        )

    def revision(self, b: Branch, turn: int, context: Chat, text: str, ok, seconds: float):
        self._row(b.example, turn=turn, role="learner", stance=b.stance, prompt=context,
                  text=text, correct=mark(ok), seconds=seconds)  # fmt: skip

    def target(self, b: Branch, turn: int, context: Chat, text: str) -> None:
        self._row(b.example, turn=turn, role="target", stance=b.stance, prompt=context,
                  text=text)  # fmt: skip

    def left_out(self, kind: str, b: Branch, turn: int, why: str) -> None:
        """A note (store event and live-view line) for a discussion turn not trained on."""
        self.ctx.note(kind, f"{b.example.id} turn {turn} ({b.stance}): {why}")

    def cards(self, exs: list[Example], answers: list[str], marks: list, gold: dict) -> None:
        """One live-view card per example: its answer, every stance's remark, the target."""
        for ex, a, ok in zip(exs, answers, marks):
            mine = [r for r in self.rows if r["example_id"] == ex.id and r["role"] == "partner"]
            self.ctx.cb.on_exchange(
                {
                    "phase": "discussion",
                    "example": ex,
                    "answer": a,
                    "correct": ok,
                    "remarks": [(r["stance"], r["text"], bool(r["cached"])) for r in mine],
                    "diagnostics": [(r["stance"], r.get("diagnostics")) for r in mine],
                    "target": gold[ex.id],
                }
            )


def remark_chats(task, m, branches: list[Branch]) -> list[Chat]:
    """The partner's prompt for each branch's latest learner answer (``method`` ``m``)."""
    return [
        partner_chat(
            b.example, b.history, b.stance, m.partner_sees_reference, partner_final(task, b.example)
        )
        for b in branches
    ]


def discussion_batch(
    ctx: RunContext, exs: list[Example], bases: list[Chat], rows: list[dict], meta: dict
) -> list[TrainSequence]:
    """One discussion batch: on-policy answers, remarks per stance, training sequences.

    Every turn goes to ``rows`` through the batch's :class:`BatchRecord` (written to the
    store once the update succeeds).
    """
    cfg, learner, partner, store, timer = ctx.cfg, ctx.learner, ctx.partner, ctx.store, ctx.timer
    task = get_task(cfg.data)
    m, lc = cfg.method, cfg.learner
    limit = lc.max_seq_len
    record = BatchRecord(ctx, meta, rows)

    # 1. The learner answers with its current adapter (on-policy), batched; answers
    # decoded ahead with other batches' (``lookahead.py``) are handed out instead.
    t0 = time.perf_counter()
    a0 = ctx.ahead.answers(bases) if ctx.ahead else None
    if a0 is None:
        a0 = learner.generate(bases, lc.max_new_tokens, lc.temperature)
    per = timer.add("generate", t0) / max(1, len(exs))
    ok0 = [task.is_correct(a, e.answer) for a, e in zip(a0, exs)]
    for ex, base, a, ok in zip(exs, bases, a0, ok0):
        record.answer(ex, base, a, ok, per)
    gold = gold_targets(ctx, task, exs, rows, meta)
    branches = [
        Branch(ex, stance, base, [a]) for ex, base, a in zip(exs, bases, a0) for stance in m.stances
    ]
    sequences: list[TrainSequence] = []
    for turn in range(1, m.turns + 1):
        # 2. The partner remarks on each branch's latest learner answer (cached).
        chats = remark_chats(task, m, branches)
        t0 = time.perf_counter()
        asked = ctx.ahead.asking(partner) if ctx.ahead else partner
        remarks, cached = ctx.remarks(asked, store, chats, cfg.partner.max_tokens)
        per = timer.add("remark", t0) / max(1, len(chats))
        account_missing(ctx, remarks)
        for b, chat, text, hit in zip(branches, chats, remarks, cached):
            diag = remark_diagnostics(task, text, b.history[-1], b.stance)
            if m.critique_target:
                sequences += critique_batch(ctx, b, text, diag, f"{meta.get('round')}/{turn}")
            b.history.append(text)
            record.remark(b, turn, chat, text, hit, per, diag)
        # 3. Context check before any generation or update: clip or skip, and say so.
        kept = []
        for b in branches:
            last = b.history[-1]
            if isinstance(last, MissingRemark):
                record.left_out(
                    "missing", b, turn, f"no remark ({last.reason}), discussion skipped"
                )
                continue
            if is_degenerate(last):
                record.left_out(
                    "remark", b, turn, "degenerate remark (asked twice), discussion skipped"
                )
                continue
            hist, clipped = fit_history(
                learner,
                b.base,
                b.history,
                gold[b.example.id],
                lc.max_new_tokens,
                limit,
                m.context_policy,
                task.ANSWER_FORMAT,
            )
            if hist is None:
                record.left_out("context", b, turn, f"over max_seq_len={limit}, skipped")
                continue
            if clipped:
                record.left_out("context", b, turn, f"turns clipped to fit max_seq_len={limit}")
            b.history = hist
            kept.append(b)
        branches = kept
        if not branches:
            break
        contexts = [discussion_chat(b.base, b.history, task.ANSWER_FORMAT) for b in branches]
        # 4. A revision is needed for a later turn, or as a candidate target.
        revisions: list[str | None] = [None] * len(branches)
        correct = [False] * len(branches)
        if turn < m.turns or m.target == "reference_or_revision":
            t0 = time.perf_counter()
            revisions = learner.generate(contexts, lc.max_new_tokens, lc.temperature)
            per = timer.add("generate", t0) / len(branches)
            correct = [task.is_correct(r, b.example.answer) for b, r in zip(branches, revisions)]
            for b, context, rev, ok in zip(branches, contexts, revisions, correct):
                record.revision(b, turn, context, rev, ok, per)
        for b, context, rev, ok in zip(branches, contexts, revisions, correct):
            target = choose_target(gold[b.example.id], rev, ok, m.target)
            sequences.append(
                TrainSequence(context=context, target=target, kind=b.stance, group=b.example.id)
            )
            record.target(b, turn, context, target)
        if turn < m.turns:
            for b, rev in zip(branches, revisions):
                b.history.append(rev or "")
    record.cards(exs, a0, ok0, gold)
    return sequences
