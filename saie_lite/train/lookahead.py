"""Decoding ahead (``train.lookahead``): the answers of every batch one snapshot serves,
and the partner's first remarks on them, decoded in one call each.

On the fast path a snapshot gives the answers of ``learner.snapshot_every`` updates in a
row, so those batches' answers do not depend on the updates between them, and their
first remarks depend only on the answers. On a CPU most of a decode step is reading the
weights once for every sequence decoded together, so 16 answers and 32 remarks in one
call cost far less than four calls of 4 and 8 (``bench --only saie``). When the loop
reaches the first batch a snapshot serves, it decodes the whole group here; each batch
then takes its own answers and remarks from the stash, in order, and runs the rest of
its discussion (context checks, later turns, revisions, the update) as before. What a
batch finds nowhere in the stash (a question the context policy clipped since, a
degenerate remark asked again, later turns) is decoded for it alone, as without
lookahead.

Greedy only (learner and partner temperature 0): sampled answers and remarks are
seeded per call, so decoding them in other calls would change them. A group is decoded
together, so a greedy reply may differ from a batch-by-batch run's in float rounding,
as it may between any two batch sizes; a resumed run decodes its first group from the
batch it resumes at.
"""

from __future__ import annotations

import json
import time

from saie_lite.errors import PartnerError
from saie_lite.protocols import Chat, MissingRemark, PreparesAhead, SharesLearner, supports
from saie_lite.store import remark_key
from saie_lite.tasks import get_task
from saie_lite.train.batch import remark_chats
from saie_lite.train.prompts import Branch


def _key(chat: Chat) -> str:
    return json.dumps(chat, sort_keys=True)


class _StashedPartner:
    """The partner as ``get_remarks`` sees it for one batch: remarks decoded ahead are
    handed out once each (a degenerate one asked again reaches the real partner), the
    rest are asked for in one call."""

    def __init__(self, partner, stash: dict[str, object], max_tokens: int) -> None:
        self.inner, self.stash, self.max_tokens = partner, stash, max_tokens
        self.name = partner.name

    def remark(self, chats: list[Chat], max_tokens: int) -> list:
        found = [
            self.stash.pop(_key(c), None) if max_tokens == self.max_tokens else None for c in chats
        ]
        rest = [i for i, f in enumerate(found) if f is None]
        if rest:
            try:
                fresh = self.inner.remark([chats[i] for i in rest], max_tokens)
            except PartnerError as e:
                # get_remarks keeps the replies that arrived: the stashed ones count too
                e.partial = {
                    **{i: f for i, f in enumerate(found) if f is not None},
                    **{rest[j]: t for j, t in e.partial.items()},
                }
                raise
            for i, text in zip(rest, fresh):
                found[i] = text
        return found


class Lookahead:
    """Decodes a snapshot's batches together and hands each batch its share.

    ``before(b_index, step)`` is called by the loop before it prepares batch
    ``b_index`` with ``step`` updates done; the batch's discussion then reads its
    answers through ``answers`` and its remarks through ``asking`` (``RunContext.ahead``).
    """

    def __init__(self, cfg, learner, partner, plan, group=None) -> None:
        lc, m = cfg.learner, cfg.method
        self.on = (
            cfg.train.lookahead
            and supports(learner, PreparesAhead)
            and partner is not None
            and not supports(partner, SharesLearner)  # the learner's own model: it changes
            and group is None  # data parallel: remarks come from the main process only
            and lc.temperature == 0
            and bool(m.stances)
        )
        self.remarks_too = self.on and cfg.partner.temperature == 0
        self.cfg, self.learner, self.partner, self.plan = cfg, learner, partner, plan
        self.until = -1  # the last batch index the current stash was decoded for
        self.answer_stash: dict[str, list[str]] = {}
        self.remark_stash: dict[str, object] = {}
        self.groups = 0  # groups decoded together (tests, bench)

    # -- what a batch reads ---------------------------------------------------------
    def answers(self, bases: list[Chat]) -> list[str] | None:
        """This batch's answers, when every one was decoded ahead; None otherwise (the
        batch then decodes its own, all together)."""
        keys = [_key(b) for b in bases]
        # a question asked twice in this batch needs two stashed answers
        if any(len(self.answer_stash.get(k, ())) < keys.count(k) for k in keys):
            return None
        return [self.answer_stash[k].pop(0) for k in keys]

    def asking(self, partner):
        if not self.remark_stash:
            return partner
        return _StashedPartner(partner, self.remark_stash, self.cfg.partner.max_tokens)

    # -- decoding ahead -----------------------------------------------------------
    def before(self, ctx, b_index: int, step: int) -> None:
        if not self.on or b_index <= self.until:
            return
        batches = self.plan.batches
        last = self.learner.answers_fixed_through(step)
        group = []
        for j, b in enumerate(batches[b_index:], start=b_index):
            # batch j is answered after step + (j - b_index) updates: while that is at
            # most `last`, the snapshot answering it is the one about to answer b_index
            if b.phase != "discussion" or step + (j - b_index) > last:
                break
            group.append(j)
        self.answer_stash.clear()
        self.remark_stash.clear()
        self.until = b_index + len(group) - 1
        if len(group) < 2:
            return
        self.groups += 1
        fit, cfg = self.plan.fit, self.cfg
        # The prompts each batch will ask with: an example already checked against the
        # context as fitted, one not checked yet as it stands (if the check clips it
        # later, its batch finds no stashed answer and decodes its own).
        exs, bases = [], []
        for j in group:
            for i in batches[j].indices:
                ex = fit.fitted.get(i, fit.examples[i])
                if ex is not None:
                    exs.append(ex)
                    bases.append(fit.bases[i])
        lc = cfg.learner
        t0 = time.perf_counter()
        texts = self.learner.generate(bases, lc.max_new_tokens, lc.temperature)
        ctx.timer.add("generate", t0)
        for base, text in zip(bases, texts):
            self.answer_stash.setdefault(_key(base), []).append(text)
        if not self.remarks_too:
            return
        task = get_task(cfg.data)
        branches = [
            Branch(ex, stance, base, [a])
            for ex, base, a in zip(exs, bases, texts)
            for stance in cfg.method.stances
        ]
        chats = remark_chats(task, cfg.method, branches)
        # Only what the remark cache lacks, once each (the cache answers the rest).
        name, n = self.partner.name, cfg.partner.max_tokens
        wanted = {}
        for c in chats:
            k = _key(c)
            if k not in wanted and ctx.store.cached_remark(remark_key(name, c, n)) is None:
                wanted[k] = c
        if not wanted:
            return
        t0 = time.perf_counter()
        try:
            fresh = self.partner.remark(list(wanted.values()), n)
        except PartnerError as e:
            # Keep what arrived; each batch asks for its missing ones itself, and a fault
            # that lasts stops the run there, as without lookahead.
            fresh = [e.partial.get(i) for i in range(len(wanted))]
        ctx.timer.add("remark", t0)
        for k, text in zip(wanted, fresh):
            # A missing reply (an outage during this one large call) is not handed on:
            # each batch asks for it again itself, as without lookahead.
            if text is not None and not isinstance(text, MissingRemark):
                self.remark_stash[k] = text
