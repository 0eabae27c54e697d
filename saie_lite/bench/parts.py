"""``saie-lite bench``: where the time goes, and how it compares, in one process run.

Each part returns plain numbers; ``run_bench`` puts them in one JSON report and a
Markdown table with the machine, library versions and settings. Parts whose optional
library is missing (TRL, mlx-lm) are reported as skipped, never faked.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saie_lite import config as config_mod
from saie_lite.protocols import StepStats, TrainSequence, TunableLevers, supports


@dataclass
class BenchSettings:
    model: str = "embedded"
    # SAIE vs SFT part: discussion examples per mode; 16 in batches of 4 times four steps,
    # so a snapshot refreshed every 4 updates is rebuilt once while timed, as in a long run
    examples: int = 16
    steps: int = 3  # timed updates per update measurement (after one warm-up step)
    batch: int = 8
    max_len: int = 256  # training sequences are cut to this many tokens
    new_tokens: int = 64  # generation part
    lora_r: int = 8
    modes: str = ""  # SAIE vs SFT part: comma list of its modes (modes.CPU_MODES); "" = all


# learner.max_seq_len of the SAIE-vs-SFT part and of the shared-prefix lever: the run
# default, at which no GSM8K discussion of the bundled rows is clipped.
DISCUSSION_MAX_LEN = 1024


def _cfg(s: BenchSettings, **over):
    return config_mod.build(
        overrides={
            "learner.model": s.model,
            "learner.lora_r": s.lora_r,
            "learner.lora_alpha": 2 * s.lora_r,
            "learner.max_seq_len": s.max_len,
            "train.batch_size": s.batch,
            "train.micro_batch_size": s.batch,
            "learner.max_new_tokens": s.new_tokens,
            **over,
        }
    )


def _sequences(s: BenchSettings, n: int) -> list[TrainSequence]:
    from saie_lite.tasks import gsm8k

    exs = gsm8k.load("bundled")[0]
    return [TrainSequence(gsm8k.learner_chat(e.question), e.reference) for e in exs[:n]]


def switched(backend, **changes):
    """``with switched(learner, split_head=False): ...``: the backend's own door to its
    speed levers (``TunableLevers``), the one way the bench measures before and after on
    one loaded model; every lever is back as it was when the block ends."""
    if not supports(backend, TunableLevers):
        raise TypeError(f"{type(backend).__name__} has no speed levers to switch")
    return backend.levers(**changes)


def _timed_steps(step: Callable[[], int], steps: int) -> dict:
    step()  # warm-up: allocator, kernels, lazy init
    tokens, t0 = 0, time.perf_counter()
    for _ in range(steps):
        tokens += step()
    dt = time.perf_counter() - t0
    return {"tokens_per_s": tokens / dt, "seconds_per_step": dt / steps}


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate (best of ``repeats`` square products)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def frozen_params(learner) -> int:
    """Parameters of the frozen base (a tied output head counted once, as it is stored)."""
    base = learner.model.get_base_model()
    return sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)


def bench_update(s: BenchSettings, dtype: str, learner=None) -> dict:
    """Our torch backend's optimizer steps on plain GSM8K sequences; ``losses`` holds every
    step's loss, the untimed warm-up step first."""
    from saie_lite.backends.torch_peft import TorchLearner

    if learner is None:
        learner = TorchLearner(_cfg(s, **{"learner.dtype": dtype, "learner.backend": "torch"}))
    seqs = _sequences(s, s.batch)
    losses: list[float] = []

    def step() -> int:
        stats = learner.train_step(seqs)
        losses.append(stats.loss)
        return stats.n_tokens

    timed = _timed_steps(step, s.steps)
    return {
        "dtype": dtype,
        # A LoRA update costs about 2 FLOPs per weight forward and 2 backward (gradients
        # flow to the activations, not to frozen weights): the usual 4N per token.
        "flops_per_token": 4 * frozen_params(learner),
        **timed,
        "losses": losses,
    }


def loss_agreement(fp32: list[float], bf16: list[float], sequences: int) -> dict:
    """How far bf16's step losses are from fp32's on the same sequences (relative). The
    first step is the telling one: both start from the same adapter (LoRA's B is zero),
    so it differs by the base's rounding alone, later steps by the updates' as well."""
    rel = [abs(b - f) / max(abs(f), 1e-12) for f, b in zip(fp32, bf16)]
    return {
        "sequences": sequences,
        "float32_losses": fp32[: len(rel)],
        "bfloat16_losses": bf16[: len(rel)],
        "first_step_relative_difference": rel[0],
        "largest_relative_difference": max(rel),
    }


def bench_update_part(s: BenchSettings) -> dict:
    from saie_lite.backends.cpu_dtype import measured

    # What `learner.dtype: auto` decides on this CPU, measured afresh, beside the real
    # update speeds in both dtypes, so a wrong probe would show.
    probe = measured(refresh=True)
    out = {"float32": bench_update(s, "float32")}
    if probe["bf16_speedup"] < 0.25:
        # bf16 this slow (no bf16 units: 16x slower on an AVX2 EPYC) would make the full
        # measurement take half an hour: time it on 2 sequences, one step, and say so.
        small = dataclasses.replace(s, batch=2, steps=1)
        out["bfloat16"] = bench_update(small, "bfloat16")
        out["bfloat16"]["reduced"] = "2 sequences, 1 timed step (the probe found bf16 slow)"
        # fp32 on those same 2 sequences, for the loss comparison (fp32 is the fast one)
        fp32_losses, n = bench_update(small, "float32")["losses"], small.batch
    else:
        out["bfloat16"] = bench_update(s, "bfloat16")
        fp32_losses, n = out["float32"]["losses"], s.batch
    out["loss_bf16_vs_fp32"] = loss_agreement(fp32_losses, out["bfloat16"]["losses"], n)
    out["dtype_auto_probe"] = probe
    peak = matmul_peak_gflops()
    bound = peak * 1e9 / out["float32"]["flops_per_token"]
    out["matmul_peak_gflops_fp32"] = peak
    out["matmul_bound_tokens_per_s_fp32"] = bound
    out["fraction_of_matmul_bound_fp32"] = out["float32"]["tokens_per_s"] / bound
    return out


def in_fresh_process(fn: Callable, *args):
    """``fn(*args)`` in a new Python process (spawned, so nothing is inherited but the
    environment), its result or exception returned here. For timings that must not
    depend on what ran before in this process: on an H200, TRL's 1.5B QLoRA steps took
    1.4 to 2.4 s after our learner had run in the same process, 0.4 to 0.55 s in a fresh
    one. ``fn`` and its arguments must pickle (module-level functions, plain data).

    The child never outlives this process (it watches for its parent's end), and an
    interrupt here ends it at once: a stopped bench leaves no process holding a GPU."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(there, os.getpid(), fn, args))
    child.start()
    there.close()
    try:
        ok, value, trace = here.recv()
    except EOFError:  # it died before answering (killed, out of memory, a crash)
        child.join()
        raise RuntimeError(
            f"the measuring process ended without a result (exit code {child.exitcode})"
        ) from None
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
    if ok:
        return value
    sys.stderr.write(trace)  # the child's traceback, for whoever reads the log
    raise value


def _child(conn, parent: int, fn: Callable, args: tuple) -> None:
    import pickle
    import threading
    import traceback

    def watch() -> None:  # an orphan (the parent killed) ends itself
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    try:
        result = (True, fn(*args), "")
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        result = (False, e, traceback.format_exc())
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:  # noqa: BLE001 - an exception that cannot be rebuilt there
            result = (False, RuntimeError(f"{type(e).__name__}: {e}"), result[2])
    conn.send(result)
    conn.close()


def trl_rate(
    s: BenchSettings, model_dir, model_kwargs: dict, sync=lambda: None, **train_args
) -> dict:
    """TRL's ``SFTTrainer`` on the same model, sequences, LoRA settings, batch and length
    as ours; steps 2..n are timed (the first is warm-up). ``model_kwargs`` and
    ``train_args`` carry what differs by device (dtype, quantization, ``use_cpu``/``bf16``);
    ``sync`` waits for the device before each time mark."""
    try:
        import trl  # noqa: F401
    except ImportError:
        return {"skipped": "trl not installed (pip install 'saie-lite[bench]')"}
    import tempfile

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [
        {"prompt": q.context, "completion": [{"role": "assistant", "content": q.target}]}
        for q in _sequences(s, s.batch)
    ] * (s.steps + 1)
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            sync()
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir, **model_kwargs),
            args=SFTConfig(
                output_dir=tmp,
                per_device_train_batch_size=s.batch,
                max_steps=s.steps + 1,
                max_length=s.max_len,
                learning_rate=2e-4,
                logging_steps=10_000,
                save_strategy="no",
                report_to=[],
                dataloader_num_workers=0,
                seed=0,
                # SFTConfig turns activation checkpointing on by default; ours recomputes
                # nothing, so "the same settings" means it off here too.
                gradient_checkpointing=False,
                **train_args,
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=LoraConfig(
                r=s.lora_r,
                lora_alpha=2 * s.lora_r,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
            callbacks=[Clock()],
        )
        n_tokens = sum(
            min(len(x), s.max_len) for x in trainer.train_dataset["input_ids"][: s.batch]
        )
        trainer.train()
    dt = marks[-1] - marks[0]
    return {"tokens_per_s": n_tokens * s.steps / dt, "seconds_per_step": dt / s.steps}


def bench_trl(s: BenchSettings) -> dict:
    """TRL's SFTTrainer on the same model, data, LoRA settings, batch and length, fp32 CPU."""
    from saie_lite.backends.torch_models import resolve_model_path

    # SFTConfig's bf16 defaults to True, which on a CPU means bf16 autocast: the same
    # settings as ours (fp32) need it off, as on CPUs without bf16 units it is 20x slower.
    return trl_rate(s, resolve_model_path(s.model), {"dtype": "float32"}, use_cpu=True, bf16=False)


def bench_mlx(s: BenchSettings) -> dict:
    """Our MLX backend against mlx-lm's own LoRA trainer, same model, batch and data."""
    try:
        import mlx.core as mx
        from mlx_lm.tuner.trainer import TrainingArgs, train
    except ImportError:
        return {"skipped": "mlx-lm not installed (pip install 'saie-lite[mlx]')"}
    import tempfile

    import mlx.optimizers as optim

    from saie_lite.backends.mlx import MLXLearner

    cfg = _cfg(s, **{"learner.backend": "mlx"})
    ours = MLXLearner(cfg)
    seqs = _sequences(s, s.batch)
    mine = _timed_steps(lambda: ours.train_step(seqs).n_tokens, s.steps)
    # mlx-lm on identical tokens: (ids, prompt length) pairs, its default masked loss.
    theirs = MLXLearner(cfg)
    data = []
    for q in seqs:
        ids, labels = theirs.encode(q)
        offset = next(i for i, lab in enumerate(labels) if lab != -100)
        data.append((ids[: s.max_len], offset))
    marks: list[float] = []

    class Clock:
        def on_train_loss_report(self, info):
            marks.append(time.perf_counter())

        def on_val_loss_report(self, info):
            pass

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArgs(
            batch_size=s.batch,
            iters=s.steps + 1,
            val_batches=0,
            steps_per_report=1,
            steps_per_eval=10**9,
            steps_per_save=10**9,
            max_seq_length=s.max_len,
            adapter_file=f"{tmp}/a.safetensors",
        )
        train(
            theirs.model,
            optim.AdamW(learning_rate=2e-4),
            data,
            None,
            args,
            training_callback=Clock(),
        )
    mx.eval(theirs.model.parameters())
    dt = marks[-1] - marks[0]
    return {
        "ours_seconds_per_step": mine["seconds_per_step"],
        "mlx_lm_seconds_per_step": dt / s.steps,
        "ratio_ours_over_mlx_lm": mine["seconds_per_step"] / (dt / s.steps),
    }


def _gen_rate(learner, chats: list, new_tokens: int) -> dict:
    t0, before = time.perf_counter(), learner.tokens_generated
    learner.generate(chats, new_tokens)
    dt = time.perf_counter() - t0
    n = learner.tokens_generated - before
    return {"seconds": dt, "tokens": n, "tokens_per_s": n / dt}


def bench_saie(
    s: BenchSettings, run_root: Path, runs: dict | None = None, base: dict | None = None
) -> dict:
    """SAIE (both stances) against plain SFT through the real loop: wall time per example,
    and the SAIE time split per discussion step. ``runs`` (name -> overrides, "sft" among
    them) and ``base`` (overrides of every run) replace the CPU set (``bench --device
    cuda`` passes its own)."""
    from saie_lite.store import Store
    from saie_lite.tasks import gsm8k
    from saie_lite.train.fast_generation import SnapshotAnswers
    from saie_lite.train.loop import train
    from saie_lite.train.runs import build_backends

    examples = gsm8k.load("bundled")[0][: s.examples]
    out = {}
    from saie_lite.bench.modes import chosen_modes

    runs = runs or chosen_modes(s.modes)
    for run, over in runs.items():
        cfg = _cfg(
            s,
            **{
                "learner.backend": "torch",
                **(base or {}),
                **over,
                "method.warmup_fraction": 0.0,
                "train.batch_size": 4,
                "train.micro_batch_size": 4,
                "partner.max_tokens": 48,
                # The run default: a discussion (question, answer, remark, reference) is
                # about twice a plain example, and the update part's cut (256) would clip
                # answers and remarks and drop target tokens, making SAIE look cheaper.
                "learner.max_seq_len": max(s.max_len, DISCUSSION_MAX_LEN),
            },
        )
        run_dir = run_root / run
        if run_dir.exists():  # the bench's own scratch runs from an earlier bench
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        learner, partner = build_backends(cfg, dry_run=False, run_dir=run_dir)
        # One untimed update first: the first step after loading pays one-off costs
        # (allocator growth, kernel selection) that would bias whichever mode runs first.
        learner.train_step(_sequences(s, 1))
        if isinstance(learner, SnapshotAnswers):
            # The first snapshot (in the adapter modes, the base model's file) is built
            # before the clock starts, as the models are loaded: a run builds it once.
            # After the warm-up update the timed steps are 1..N, so a snapshot refreshed
            # every k updates is rebuilt once per k timed steps, as in a long run.
            learner.refresh_if_due()
        counted = CountedLearner(learner)
        trained = counted.seen
        store = Store(run_dir / "saie.sqlite")
        t0 = time.perf_counter()
        summary = train(cfg, counted, partner, examples, store, run_dir)
        wall = time.perf_counter() - t0
        clipped = store.count_events("context")
        store.close()
        steps = max(1, summary["step"])
        out[run] = {
            "seconds_per_example": wall / len(examples),
            "examples_per_minute": 60 * len(examples) / wall,
            "overlapped_batches": summary.get("overlapped_batches", 0),
            # what the update trained per example: tokens of its sequences (both stances
            # in full; packing computes their shared prefix once) and target tokens; and
            # how many notes the context policy left (a turn clipped or an example
            # skipped: one per turn and stance)
            "trained_tokens_per_example": trained["tokens"] / len(examples),
            "target_tokens_per_example": trained["targets"] / len(examples),
            "context_policy_notes": clipped,
            "update_seconds_per_example": summary["seconds"]["update"] / len(examples),
            **{f"{k}_seconds_per_step": v / steps for k, v in summary["seconds"].items()},
        }
    for run in [r for r in runs if r != "sft"]:
        out[f"ratio_{run}_over_sft"] = (
            out[run]["seconds_per_example"] / out["sft"]["seconds_per_example"]
        )
        # the update alone against a whole SFT example: the ratio SAIE would reach if
        # answers and remarks cost nothing
        out[f"ratio_{run}_update_over_sft"] = (
            out[run]["update_seconds_per_example"] / out["sft"]["seconds_per_example"]
        )
        # a whole SAIE example against its own update: what answers and remarks add on top
        # of the training the method cannot avoid (1.0 = they cost nothing)
        if out[run]["update_seconds_per_example"] > 0:  # none when every discussion was cut
            out[f"ratio_{run}_over_own_update"] = (
                out[run]["seconds_per_example"] / out[run]["update_seconds_per_example"]
            )
        out[f"ratio_{run}_trained_tokens_over_sft"] = (
            out[run]["trained_tokens_per_example"] / out["sft"]["trained_tokens_per_example"]
        )
    return out


class CountedLearner:
    """The learner as ``train`` sees it, with the tokens each update trains summed in
    ``seen``: a wrapper the bench hands the loop, so the learner's own ``train_step`` is
    never replaced. Everything else is the learner's, read and set (the loop sets
    ``seed_step`` on a snapshot learner)."""

    def __init__(self, inner) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "seen", {"tokens": 0, "targets": 0})

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value) -> None:
        setattr(self.inner, name, value)

    def train_step(self, sequences: list[TrainSequence]) -> StepStats:
        stats = self.inner.train_step(sequences)
        self.seen["tokens"] += stats.n_tokens
        self.seen["targets"] += stats.n_target_tokens
        return stats
