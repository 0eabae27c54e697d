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

from saie_lite.config import Config
from saie_lite.errors import PartnerError
from saie_lite.protocols import Callbacks, Example, Learner, Partner
from saie_lite.store import Store
from saie_lite.tasks import example_chat, get_task
from saie_lite.train import checkpoint
from saie_lite.train.batch import (
    ContextFit,
    RunContext,
    discussion_batch,
    fit_chat_bases,
    turn_row,
)
from saie_lite.train.next_steps import next_commands
from saie_lite.train.prompts import mix_plain_sequences, plain_sequence


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


class Timer:
    def __init__(self) -> None:
        self.t = {"generate": 0.0, "remark": 0.0, "update": 0.0}

    def add(self, key: str, since: float) -> float:
        dt = time.perf_counter() - since
        self.t[key] += dt
        return dt


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
) -> dict:
    """Run (or resume) training in ``run_dir``. Returns a summary dict.

    Stops cleanly (checkpoint first) when ``stop()`` turns true between batches.
    ``group`` (``distributed.Group``) runs it data-parallel: checkpoints from rank 0 only.
    """
    cb = callbacks or Callbacks()
    task = get_task(cfg.data)
    m = cfg.method
    loaded_notes: list[str] = []  # shown once the view has started
    state = checkpoint.load(run_dir, learner, loaded_notes.append, store.recorded_steps())
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

    def save() -> None:
        if group is None or group.is_main:
            checkpoint.save(run_dir, learner, state, cfg.train.keep_checkpoints)
    fit = ContextFit(ctx, examples, bases)
    # Missing remarks of updates already made (a resumed run) count too.
    ctx.missing_remarks = store.count_missing_remarks()
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
            exs, exs_bases = fit.batch(batch.indices)

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
            elif exs:
                sequences = discussion_batch(ctx, exs, exs_bases, rows, meta)
                sequences += mix_plain_sequences(examples, bases, m.mix_plain, len(sequences), rng)
            else:
                sequences = []
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
        raise PartnerError(
            f"{e}; checkpoint saved at update {state.step}, once it is back: "
            f"saie-lite train --resume {run_dir}"
        ) from None
    if state.step != last_saved or checkpoint.latest(run_dir) is None:
        save()
    summary = {
        "status": status,
        "step": state.step,
        "batches_done": state.batches_done,
        "total": len(batches),
        "seconds": dict(timer.t),
        "run_dir": str(run_dir),
        "next": next_commands(cfg, run_dir) if status == "finished" else [],
        "missing_remarks": ctx.missing_remarks,
    }
    cb.on_end(summary)
    return summary
