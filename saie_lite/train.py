"""The SAIE training loop: warm-up, then rounds of generate -> remark -> update.

``train`` is one function whose parts (learner, partner, examples, store, callbacks,
stop flag) are passed in, so tests run it with scripted backends or tiny real models.
Every batch is exactly one optimizer update in every mode, so ``sft`` and the SAIE
variants compare at the same number of updates on the same data.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saie_lite import checkpoint
from saie_lite.config import Config
from saie_lite.discussion import (
    Branch,
    choose_target,
    clip_text,
    discussion_chat,
    mix_plain_sequences,
    partner_chat,
    plain_sequence,
    rationale_chat,
)
from saie_lite.errors import PartnerError
from saie_lite.protocols import Chat, Example, Learner, Partner, TrainSequence
from saie_lite.store import Store, remark_key
from saie_lite.tasks import get_task


@dataclass
class Batch:
    phase: str  # warmup | discussion
    round: int  # 0 for warm-up, 1.. for discussion rounds
    indices: list[int]


def schedule(n: int, cfg: Config) -> list[Batch]:
    """The whole run's batches, fixed by the seed, so a position is just an index."""
    order = list(range(n))
    random.Random(cfg.data.seed).shuffle(order)
    n_warm = round(cfg.method.warmup_fraction * n)
    warm, rest = order[:n_warm], order[n_warm:]
    bs = cfg.train.batch_size
    out = [Batch("warmup", 0, warm[i : i + bs]) for i in range(0, len(warm), bs)]
    for r in range(1, cfg.method.rounds + 1):
        this = list(rest)
        random.Random(cfg.data.seed * 1000 + r).shuffle(this)
        out += [Batch("discussion", r, this[i : i + bs]) for i in range(0, len(this), bs)]
    if cfg.train.max_steps:
        out = out[: cfg.train.max_steps]
    return out


class Callbacks:
    """Live-view hooks; the UI overrides what it shows. All no-ops here."""

    def on_begin(self, info: dict) -> None: ...
    def on_exchange(self, ex: dict) -> None: ...
    def on_step(self, row: dict) -> None: ...
    def on_event(self, message: str) -> None: ...
    def on_end(self, summary: dict) -> None: ...


class Timer:
    def __init__(self) -> None:
        self.t = {"generate": 0.0, "remark": 0.0, "update": 0.0}

    def add(self, key: str, since: float) -> float:
        dt = time.perf_counter() - since
        self.t[key] += dt
        return dt


def get_remarks(
    partner: Partner, store: Store, chats: list[Chat], max_tokens: int
) -> tuple[list[str], list[bool]]:
    """Remarks through the cache: a (partner, prompt) pair is never asked twice."""
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
            store.cache_remark(keys[i], partner.name, chats[i], text)
            found[i] = text
    fetched = set(missing)
    # Degenerate remarks (empty, no words, one word repeated) are asked for once more;
    # a second degenerate one is kept in the cache as is, and the caller skips it.
    again = [i for i in missing if is_degenerate(found[i] or "")]
    if again:
        retried = partner.remark([chats[i] for i in again], max_tokens)
        for i, text in zip(again, retried):
            if not is_degenerate(text):
                store.cache_remark(keys[i], partner.name, chats[i], text)
                found[i] = text
    return [f or "" for f in found], [i not in fetched for i in range(len(chats))]


def is_degenerate(text: str) -> bool:
    words = text.split()
    if not any(ch.isalpha() for ch in text):
        return True
    return len(words) >= 8 and max(words.count(w) for w in set(words)) >= 0.9 * len(words)


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


def train(
    cfg: Config,
    learner: Learner,
    partner: Partner | None,
    examples: list[Example],
    store: Store,
    run_dir: Path,
    callbacks: Callbacks | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> dict:
    """Run (or resume) training in ``run_dir``. Returns a summary dict.

    Stops cleanly (checkpoint first) when ``stop()`` turns true between batches.
    """
    cb = callbacks or Callbacks()
    task = get_task(cfg.data.task)
    m = cfg.method
    state = checkpoint.load(run_dir, learner)
    store.truncate_after(state.step)  # rows past the checkpoint are redone below
    batches = schedule(len(examples), cfg)
    bases = [task.learner_chat(e.question) for e in examples]
    timer = Timer()
    cb.on_begin(
        {
            "total": len(batches),
            "done": state.batches_done,
            "examples": len(examples),
            "mode": m.mode,
            "learner": learner.name,
            "partner": partner.name if partner else "-",
            "run_dir": str(run_dir),
        }
    )
    if state.batches_done:
        cb.on_event(f"resumed at update {state.step} ({state.batches_done}/{len(batches)} batches)")

    def note(kind: str, message: str) -> None:
        store.event(kind, message)
        cb.on_event(message)

    status = "finished"
    last_saved = state.step
    try:
        for b_index in range(state.batches_done, len(batches)):
            if stop():
                status = "stopped"
                break
            batch = batches[b_index]
            # Every batch reseeds from (seed, position): sampling, dropout and mix_plain draw
            # the same numbers whether or not the run was stopped and resumed in between.
            batch_seed = cfg.train.seed * 1_000_003 + b_index
            learner.reseed(batch_seed)
            rng = random.Random(batch_seed)
            step = state.step + 1
            t_before = dict(timer.t)
            rows: list[dict] = []
            exs = [examples[i] for i in batch.indices]
            exs_bases = [bases[i] for i in batch.indices]

            meta = {"step": step, "phase": batch.phase, "round": batch.round}
            if batch.phase == "warmup" or not m.stances:
                sequences = [plain_sequence(b, e) for b, e in zip(exs_bases, exs)]
                for ex, seq in zip(exs, sequences):
                    rows.append(
                        turn_row(
                            meta, ex, turn=0, role="target", prompt=seq.context, text=seq.target
                        )
                    )
                    cb.on_exchange({"phase": batch.phase, "example": ex, "target": seq.target})
            else:
                sequences = discussion_batch(
                    cfg, learner, partner, store, exs, exs_bases, timer, rows, meta, note, cb
                )
                sequences += mix_plain_sequences(examples, bases, m.mix_plain, len(sequences), rng)
            if not sequences:
                note(
                    "skip", f"batch {b_index + 1}: every example was skipped by the context policy"
                )
                state.batches_done += 1
                continue
            if stop():  # asked to stop while generating: redo this batch on resume
                status = "stopped"
                break
            t0 = time.perf_counter()
            stats = learner.train_step(sequences)
            timer.add("update", t0)
            state.step, state.batches_done = step, b_index + 1
            store.add_turns(rows)
            spent = {k: timer.t[k] - t_before[k] for k in timer.t}
            step_row = {
                "step": step,
                "phase": batch.phase,
                "round": batch.round,
                "loss": stats.loss,
                "n_sequences": stats.n_sequences,
                "n_target_tokens": stats.n_target_tokens,
                "t_generate": spent["generate"],
                "t_remark": spent["remark"],
                "t_update": spent["update"],
            }
            store.add_step(step_row)
            cb.on_step({**step_row, "batches_done": state.batches_done, "total": len(batches)})
            if step % cfg.train.save_every == 0:
                checkpoint.save(run_dir, learner, state, cfg.train.keep_checkpoints)
                last_saved = step
    except PartnerError as e:
        # Nothing of the failed batch was applied: the state is the last finished update.
        if state.step != last_saved or checkpoint.latest(run_dir) is None:
            checkpoint.save(run_dir, learner, state, cfg.train.keep_checkpoints)
        store.event("partner", str(e))
        raise PartnerError(
            f"{e}; checkpoint saved at update {state.step}, once it is back: "
            f"saie-lite train --resume {run_dir}"
        ) from None
    if state.step != last_saved or checkpoint.latest(run_dir) is None:
        checkpoint.save(run_dir, learner, state, cfg.train.keep_checkpoints)
    summary = {
        "status": status,
        "step": state.step,
        "batches_done": state.batches_done,
        "total": len(batches),
        "seconds": dict(timer.t),
        "run_dir": str(run_dir),
    }
    cb.on_end(summary)
    return summary


def gold_targets(cfg, task, partner, store, exs, timer, rows, meta) -> dict[str, str]:
    """Each example's training target: the reference, or (``target: rationalized``) the
    partner's rationale for the gold choice when it ends in that choice (cached)."""
    gold = {ex.id: ex.reference for ex in exs}
    if cfg.method.target != "rationalized":
        return gold
    chats = [rationale_chat(ex) for ex in exs]
    t0 = time.perf_counter()
    texts, cached = get_remarks(partner, store, chats, cfg.partner.max_tokens)
    timer.add("remark", t0)
    for ex, chat, text, hit in zip(exs, chats, texts, cached):
        usable = task.is_correct(text, ex.answer)
        if usable:
            gold[ex.id] = text
        rows.append(
            turn_row(
                meta,
                ex,
                turn=0,
                role="partner",
                stance="rationale",
                prompt=chat,
                text=text,
                correct=int(usable),
                cached=int(hit),
            )
        )
    return gold


def turn_row(meta: dict, ex: Example, **kw) -> dict:
    """A ``turns`` table row: the batch's step/phase/round plus this turn's fields."""
    return {**meta, "example_id": ex.id, **kw}


def discussion_batch(
    cfg, learner, partner, store, exs, bases, timer, rows, meta, note, cb
) -> list[TrainSequence]:
    """One discussion batch: on-policy answers, remarks per stance, training sequences.

    Appends every turn to ``rows`` (written to the store once the update succeeds).
    """
    task = get_task(cfg.data.task)
    m, lc = cfg.method, cfg.learner
    limit = lc.max_seq_len

    # 1. The learner answers with its current adapter (on-policy), batched.
    t0 = time.perf_counter()
    a0 = learner.generate(bases, lc.max_new_tokens, lc.temperature)
    per = timer.add("generate", t0) / max(1, len(exs))
    ok0 = [task.is_correct(a, e.answer) for a, e in zip(a0, exs)]
    for ex, base, a, ok in zip(exs, bases, a0, ok0):
        rows.append(
            turn_row(
                meta, ex, turn=0, role="learner", prompt=base, text=a, correct=int(ok), seconds=per
            )
        )
    gold = gold_targets(cfg, task, partner, store, exs, timer, rows, meta)
    branches = [
        Branch(ex, stance, base, [a]) for ex, base, a in zip(exs, bases, a0) for stance in m.stances
    ]
    sequences: list[TrainSequence] = []
    for turn in range(1, m.turns + 1):
        # 2. The partner remarks on each branch's latest learner answer (cached).
        chats = [
            partner_chat(b.example, b.history, b.stance, m.partner_sees_reference) for b in branches
        ]
        t0 = time.perf_counter()
        remarks, cached = get_remarks(partner, store, chats, cfg.partner.max_tokens)
        per = timer.add("remark", t0) / max(1, len(chats))
        for b, chat, text, hit in zip(branches, chats, remarks, cached):
            b.history.append(text)
            rows.append(
                turn_row(
                    meta,
                    b.example,
                    turn=turn,
                    role="partner",
                    stance=b.stance,
                    prompt=chat,
                    text=text,
                    cached=int(hit),
                    seconds=0.0 if hit else per,
                )
            )
        # 3. Context check before any generation or update: clip or skip, and say so.
        kept = []
        for b in branches:
            if is_degenerate(b.history[-1]):
                note(
                    "remark",
                    f"{b.example.id} turn {turn} ({b.stance}): degenerate remark "
                    "(asked twice), discussion skipped",
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
                note(
                    "context",
                    f"{b.example.id} turn {turn} ({b.stance}): over max_seq_len={limit}, skipped",
                )
                continue
            if clipped:
                note(
                    "context",
                    f"{b.example.id} turn {turn} ({b.stance}): turns clipped to fit max_seq_len={limit}",
                )
            b.history = hist
            kept.append(b)
        branches = kept
        if not branches:
            break
        contexts = [discussion_chat(b.base, b.history, task.ANSWER_FORMAT) for b in branches]
        # 4. A revision is needed for a later turn, or as a candidate target.
        revisions: list[str | None] = [None] * len(branches)
        if turn < m.turns or m.target == "reference_or_revision":
            t0 = time.perf_counter()
            revisions = learner.generate(contexts, lc.max_new_tokens, lc.temperature)
            per = timer.add("generate", t0) / len(branches)
            for b, ctx, rev in zip(branches, contexts, revisions):
                ok = task.is_correct(rev, b.example.answer)
                rows.append(
                    turn_row(
                        meta,
                        b.example,
                        turn=turn,
                        role="learner",
                        stance=b.stance,
                        prompt=ctx,
                        text=rev,
                        correct=int(ok),
                        seconds=per,
                    )
                )
        for b, ctx, rev in zip(branches, contexts, revisions):
            ok = rev is not None and task.is_correct(rev, b.example.answer)
            target = choose_target(gold[b.example.id], rev, ok, m.target)
            sequences.append(TrainSequence(context=ctx, target=target, kind=b.stance))
            rows.append(
                turn_row(
                    meta,
                    b.example,
                    turn=turn,
                    role="target",
                    stance=b.stance,
                    prompt=ctx,
                    text=target,
                )
            )
        if turn < m.turns:
            for b, rev in zip(branches, revisions):
                b.history.append(rev or "")
    # One live-view card per example: its answer, every stance's remark, the target.
    for ex, a, ok in zip(exs, a0, ok0):
        mine = [r for r in rows if r["example_id"] == ex.id and r["role"] == "partner"]
        cb.on_exchange(
            {
                "phase": "discussion",
                "example": ex,
                "answer": a,
                "correct": ok,
                "remarks": [(r["stance"], r["text"], bool(r["cached"])) for r in mine],
                "target": gold[ex.id],
            }
        )
    return sequences
