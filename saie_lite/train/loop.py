"""The SAIE training loop: warm-up, then rounds of generate -> remark -> update.

``train`` is one function whose parts (learner, partner, examples, store, callbacks,
stop flag) are passed in, so tests run it with scripted backends or tiny real models.
Every batch is exactly one optimizer update in every mode, so ``sft`` and the SAIE
variants compare at the same number of updates on the same data.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saie_lite.config import Config
from saie_lite.errors import PartnerError
from saie_lite.protocols import (
    Callbacks,
    Chat,
    Example,
    Learner,
    OnDevice,
    Partner,
    PreparesAhead,
    SharesLearner,
    Summary,
    TrainSequence,
    supports,
)
from saie_lite.store import Store
from saie_lite.tasks import example_chat, get_task
from saie_lite.train import checkpoint
from saie_lite.train.batch import RunContext, discussion_batch, turn_row
from saie_lite.train.context import ContextFit, fit_chat_bases
from saie_lite.train.lookahead import Lookahead
from saie_lite.train.next_steps import next_commands
from saie_lite.train.prompts import mix_plain_sequences, plain_sequence

SAVED = "checkpoint-saved"  # the store's event for every checkpoint written


@dataclass
class Batch:
    phase: str  # warmup | discussion
    round: int  # 0 for warm-up, 1.. for discussion rounds
    indices: list[int]


def schedule(n: int, cfg: Config) -> list[Batch]:
    """The whole run's batches, fixed by the seed, so a position is just an index."""
    order = list(range(n))
    # train.seed orders the data too (an ablation's seeds differ in it); at 0, the order
    # data.seed always gave
    seed = cfg.data.seed + 1_000_003 * cfg.train.seed
    random.Random(seed).shuffle(order)
    n_warm = round(cfg.method.warmup_fraction * n)
    warm, rest = order[:n_warm], order[n_warm:]
    bs = cfg.train.batch_size
    out = [Batch("warmup", 0, warm[i : i + bs]) for i in range(0, len(warm), bs)]
    for r in range(1, cfg.method.rounds + 1):
        this = list(rest)
        random.Random(seed * 1000 + r).shuffle(this)
        out += [Batch("discussion", r, this[i : i + bs]) for i in range(0, len(this), bs)]
    if cfg.train.max_steps:
        out = out[: cfg.train.max_steps]
    return out


class Timer:
    def __init__(self) -> None:
        self.t = {"generate": 0.0, "remark": 0.0, "update": 0.0}

    def add(self, key: str, since: float) -> float:
        dt = time.perf_counter() - since
        self.t[key] += dt
        return dt


def overlap_enabled(setting: str, device: str | None) -> bool:
    """``train.overlap``: auto is on only when the learner runs on a GPU (CUDA, MPS). On a
    CPU the partner and the update compete for the same cores and overlap was slower
    (bench, README)."""
    return setting == "on" or (setting == "auto" and device in ("cuda", "mps"))


class _Deferred(Callbacks):
    """Callbacks and notes of a batch prepared on the worker, replayed in order by the
    main thread when the loop reaches that batch, so the view and the store get exactly
    what a run without overlap gives them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_exchange(self, ex: dict) -> None:
        self.calls.append(("exchange", ex))

    def note(self, kind: str, message: str) -> None:
        self.calls.append(("note", kind, message))


class Overlap:
    """Prepares batch k+1's discussion while the learner updates on batch k, where that is
    exact (``train.overlap``).

    Batch k+1's remarks depend only on its answers, but on-policy answers need update
    k's adapter, so in general nothing of k+1 can start before update k ends. It can
    when answers come from the fast path's llama.cpp snapshot and that snapshot stays
    the one in use after update k (``learner.snapshot_every`` N: every update whose
    step is not a multiple of N). Then the whole discussion of k+1 (answers, remarks,
    revisions, context checks, sequences) runs on a worker thread during update k;
    torch's RNG is reseeded by the main thread only, sampled snapshot answers get the
    seed they would get afterwards, and notes and live-view cards are replayed when the
    loop reaches k+1: the run stores the same turns and ends with the same adapter.
    Not when the partner is the learner itself (``self``: same torch model).
    """

    def __init__(self, cfg: Config, learner, partner, ctx: RunContext, prepare) -> None:
        device = learner.device if supports(learner, OnDevice) else None
        self.on = overlap_enabled(cfg.train.overlap, device) and not supports(
            partner, SharesLearner
        )
        self.learner, self.ctx, self.prepare = learner, ctx, prepare
        self.pool = None
        self.pending = None  # (b_index, future, deferred calls, worker timer, worker context)
        self.used = 0  # batches prepared during an update (tests, bench)

    def start(self, b_index: int, step: int) -> None:
        """Begin batch ``b_index`` (to be trained as update ``step + 1``) during update
        ``step``, if its discussion does not depend on that update."""
        ahead = supports(self.learner, PreparesAhead)
        if not (self.on and ahead and self.learner.unchanged_by_update(step)):
            return
        from concurrent.futures import ThreadPoolExecutor

        self.pool = self.pool or ThreadPoolExecutor(1, thread_name_prefix="saie-overlap")
        later, timer = _Deferred(), Timer()
        c = dataclasses.replace(self.ctx, timer=timer, note=later.note, cb=later)
        self.learner.seed_step = step  # the update count its answers would be seeded with
        future = self.pool.submit(self.prepare, c, b_index, step + 1)
        self.pending = (b_index, future, later, timer, c)

    def wait(self) -> None:
        if self.pending is not None:
            self.pending[1].exception()  # block until done; errors surface in take()
            self.learner.seed_step = None

    def take(self, b_index: int):
        """The prepared (sequences, rows) of ``b_index``, with its notes, cards and times
        delivered now; None when it was not prepared."""
        if self.pending is None or self.pending[0] != b_index:
            return None
        _, future, later, timer, c = self.pending
        self.pending = None
        try:
            result = future.result()  # a PartnerError raised on the worker is raised here
        finally:
            # The worker counted missing remarks on its copy of the context (the update
            # in flight fetches none, so the copy started from the current count); read
            # it only once the worker is done.
            self.ctx.missing_remarks = c.missing_remarks
        for call in later.calls:
            if call[0] == "note":
                self.ctx.note(call[1], call[2])
            else:
                self.ctx.cb.on_exchange(call[1])
        for key, seconds in timer.t.items():
            self.ctx.timer.t[key] += seconds
        self.used += 1
        return result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
        self.wait()


@dataclass
class Plan:
    """What every batch of a run is prepared from: the schedule, the examples with their
    learner prompts (as fitted to the context), and the fit of those not checked yet."""

    batches: list[Batch]
    examples: list[Example]
    bases: list[Chat]
    fit: ContextFit


def prepare_batch(
    plan: Plan, c: RunContext, b_index: int, step: int
) -> tuple[list[TrainSequence], list[dict]]:
    """Batch ``b_index``'s training sequences and the turn rows to store with them, for
    update ``step``.

    May run on the overlap worker thread (``Overlap``) while the learner updates on the
    batch before: then ``c`` is the worker's copy of the run context, whose notes, cards
    and times the main thread replays when the loop reaches this batch, and the draws
    come from an RNG seeded by the batch's position, so the result is the same on either
    thread."""
    m = c.cfg.method
    batch = plan.batches[b_index]
    rng = random.Random(c.cfg.train.seed * 1_000_003 + b_index)  # mix_plain's draws
    rows: list[dict] = []
    plain = batch.phase == "warmup" or not m.stances
    exs, exs_bases = plan.fit.batch(batch.indices, c.note, answers=not plain)
    meta = {"step": step, "phase": batch.phase, "round": batch.round}
    if plain:
        sequences = [plain_sequence(b, e) for b, e in zip(exs_bases, exs)]
        for ex, seq in zip(exs, sequences):
            rows.append(
                turn_row(meta, ex, turn=0, role="target", prompt=seq.context, text=seq.target)
            )
            c.cb.on_exchange({"phase": batch.phase, "example": ex, "target": seq.target})
    elif exs:
        sequences = discussion_batch(c, exs, exs_bases, rows, meta)
        sequences += mix_plain_sequences(
            plan.examples, plan.bases, m.mix_plain, len(sequences), rng
        )
    else:  # every example of the batch was skipped by the context policy
        sequences = []
    return sequences, rows


def train(
    cfg: Config,
    learner: Learner,
    partner: Partner | None,
    examples: list[Example],
    store: Store,
    run_dir: Path,
    callbacks: Callbacks | None = None,
    stop: Callable[[], bool] = lambda: False,
    group=None,
) -> Summary:
    """Run (or resume) training in ``run_dir``. Returns a summary dict.

    Stops cleanly (checkpoint first) when ``stop()`` turns true between batches.
    ``group`` (``distributed.Group``) runs it data-parallel: checkpoints from rank 0 only.
    """
    cb = callbacks or Callbacks()
    task = get_task(cfg.data)
    m = cfg.method
    loaded_notes: list[str] = []  # shown once the view has started
    state = checkpoint.load(
        run_dir,
        learner,
        loaded_notes.append,
        store.recorded_steps(),
        saved_before=store.count_events(SAVED) > 0,
    )
    store.truncate_after(state.step)  # rows past the checkpoint are redone below
    bases = [example_chat(task, e) for e in examples]
    examples, bases, fit_notes = fit_chat_bases(learner, examples, bases, cfg)
    batches = schedule(len(examples), cfg)
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
    for message in loaded_notes:
        store.event("checkpoint", message)
        cb.on_event(message)
    if state.batches_done:
        cb.on_event(f"resumed at update {state.step} ({state.batches_done}/{len(batches)} batches)")

    def note(kind: str, message: str) -> None:
        store.event(kind, message)
        cb.on_event(message)

    if not state.batches_done:  # said once, not again on every resume
        for message in fit_notes:
            note("context", message)
    ctx = RunContext(cfg, learner, partner, store, timer, note, cb)
    if group is not None:
        from saie_lite.train.distributed import remarks_from_main

        ctx.remarks = remarks_from_main(group, ctx.remarks)

    # Batches up to the last update. A checkpoint records this, not the batches skipped
    # since (nothing trained): their turns are filed under the next update, which a
    # resume from this checkpoint removes, so the resume redoes them (cached remarks).
    trained_through = state.batches_done

    def save() -> None:
        if group is None or group.is_main:
            at = checkpoint.LoopState(state.step, trained_through)
            path = checkpoint.save(run_dir, learner, at, cfg.train.keep_checkpoints)
            # Recorded, so that a resume can tell checkpoints deleted since (refused) from
            # none ever written (a run killed before its first: it starts again).
            store.event(SAVED, path.name)

    fit = ContextFit(ctx, examples, bases)
    # Missing remarks of updates already made (a resumed run) count too.
    ctx.missing_remarks = store.count_missing_remarks()

    plan = Plan(batches, examples, bases, fit)
    prepare = functools.partial(prepare_batch, plan)
    ahead = Lookahead(cfg, learner, partner, plan, group)
    ctx.ahead = ahead if ahead.on else None
    overlap = Overlap(cfg, learner, partner, ctx, prepare)
    if group is not None:
        # Every process must meet the same collectives in the same order: a worker
        # fetching remarks during the update's gradient sum could not guarantee that.
        overlap.on = False
    status = "finished"
    last_saved = state.step
    # Where the run stands, for `logs list`: "begin" now, "end" when it stops or finishes
    # (a killed run has a "begin" and no "end" after it).
    progress = {"total": len(batches), "step": state.step, "batches_done": state.batches_done}
    store.event("begin", json.dumps(progress))

    def ended(how: str) -> None:
        progress.update(step=state.step, batches_done=trained_through, status=how)
        store.event("end", json.dumps(progress))

    try:
        for b_index in range(state.batches_done, len(batches)):
            if stop():
                status = "stopped"
                break
            batch = batches[b_index]
            # Every batch reseeds from (seed, position): sampling, dropout and mix_plain draw
            # the same numbers whether or not the run was stopped and resumed in between.
            learner.reseed(cfg.train.seed * 1_000_003 + b_index)
            step = state.step + 1
            t_before = dict(timer.t)
            ahead.before(ctx, b_index, state.step)  # a snapshot's batches decoded together
            ready = overlap.take(b_index)  # prepared during the previous update, if it was
            sequences, rows = ready if ready is not None else prepare(ctx, b_index, step)
            if not sequences:
                why = (
                    "every discussion was skipped (degenerate or missing remarks: see the "
                    "notes above)"
                    if rows
                    else "every example was skipped by the context policy"
                )
                note("skip", f"batch {b_index + 1}: nothing to train, {why}")
                # Its answers and remarks are kept (the remark figures count the skipped
                # ones), filed under the next update (see trained_through).
                store.add_turns(rows)
                state.batches_done += 1
                continue
            if stop():  # asked to stop while generating: redo this batch on resume
                status = "stopped"
                break
            if b_index + 1 < len(batches) and batches[b_index + 1].phase == "discussion":
                overlap.start(b_index + 1, step)
            t0 = time.perf_counter()
            stats = learner.train_step(sequences)
            timer.add("update", t0)
            overlap.wait()  # the store is used by one thread at a time
            state.step, state.batches_done = step, b_index + 1
            trained_through = state.batches_done
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
            cb.on_step(
                {
                    **step_row,
                    "batches_done": state.batches_done,
                    "total": len(batches),
                    "missing_remarks": ctx.missing_remarks,
                }
            )
            if step % cfg.train.save_every == 0:
                save()
                last_saved = step
    except PartnerError as e:
        # Nothing of the failed batch was applied: the state is the last finished update.
        if state.step != last_saved or checkpoint.latest(run_dir) is None:
            save()
        store.event("partner", str(e))
        ended("failed")
        raise PartnerError(
            f"{e}; checkpoint saved at update {state.step}; once the server is fixed: "
            f"saie-lite train --resume {run_dir}"
        ) from None
    except Exception:
        # Any other failure (a full disk under the database, a model fault): keep the
        # updates already made, so that --resume goes on from them.
        try:
            if state.step != last_saved:
                save()
            ended("failed")
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        raise
    finally:
        overlap.close()
    if state.step != last_saved or checkpoint.latest(run_dir) is None:
        save()
    ended(status)
    summary: Summary = {
        "status": status,
        "step": state.step,
        "batches_done": state.batches_done,
        "total": len(batches),
        "seconds": dict(timer.t),
        "run_dir": str(run_dir),
        "next": next_commands(cfg, run_dir) if status == "finished" else [],
        "missing_remarks": ctx.missing_remarks,
        "overlapped_batches": overlap.used,
        "lookahead_groups": ahead.groups,
    }
    cb.on_end(summary)
    return summary
