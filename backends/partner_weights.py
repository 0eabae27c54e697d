"""``partner.model: embedded-auto``: the embedded partner's weight type, chosen by measuring.

Remark prompts are long and remarks short, so the partner's time is mostly prompt
evaluation, and which weight type llama.cpp evaluates fastest depends on the CPU's
kernels: f32 read prompts 1.6x faster than q8_0 on an AVX2 machine, bf16 1.6x faster
than either on an AVX512-BF16 one, where AVX2 has no bf16 dot product at all
(docs/benchmarks.md). So each candidate (the shipped Q4_1 file, q8_0, f32, bf16) is
timed once per machine on a remark-shaped workload, and the answer is cached under
``SAIE_LITE_HOME/machine/`` keyed by CPU model, llama.cpp version and threads. The same
choice serves the learner's snapshot (``learner.snapshot_quant: auto``): the ranking is
the CPU's kernels', not the model's.

``SAIE_LITE_PARTNER_WEIGHTS=q4_1|q8_0|f32|bf16`` overrides the measurement. Where each
candidate's file comes from (shipped, or built once) is the partner's business
(``llama_cpp.embedded_weights``): it is passed in as ``files``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from saie_lite.errors import UserError

ENV = "SAIE_LITE_PARTNER_WEIGHTS"
SHIPPED = "q4_1"
CANDIDATES = (SHIPPED, "q8_0", "f32", "bf16")
# Another weight type must be clearly faster to replace the shipped file: timings within
# 10% are inside a shared machine's drift, and the shipped file needs no build, is the
# smallest in memory (f32 is 6x its size) and is the one the project's results use.
MIN_SPEEDUP = 1.10
PROMPT_TOKENS = 400  # a remark prompt: instructions, problem, reference, answer
DECODE_TOKENS = 16  # a short remark's worth of single-token steps
REPEATS = 2
# Opens the timed prompt like a remark prompt (train/prompts.py, a layer above, not
# imported): the time depends on the token count, not on these words.
WORKLOAD_INSTRUCTION = (
    "You are a study partner in a discussion about a student's solution. Give a critical "
    "reply in one or two sentences and name the step the student should recheck."
)


def _llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return "none"


def threads(n_threads: int = 0) -> int:
    """The thread count the partner runs with (``partner.n_threads``; 0 = all cores)."""
    return n_threads or os.cpu_count() or 1


def _buffers() -> str:
    """' | no AMX buffers' where llama_load keeps them off: quantized types time
    differently with them, so ``SAIE_LITE_LLAMA_AMX=1`` gets its own measurement."""
    try:
        from saie_lite.backends.llama_load import extra_buffers_wanted

        return "" if extra_buffers_wanted() else " | no AMX buffers"
    except ImportError:  # no llama-cpp-python: nothing was or will be measured
        return ""


def machine_key(n_threads: int = 0) -> str:
    from saie_lite.backends.cpu_dtype import _cpu_model

    return (
        f"{_cpu_model()} | llama_cpp {_llama_cpp_version()} | {threads(n_threads)} threads"
        f"{_buffers()}"
    )


def label(quant: str) -> str:
    return "Q4_1" if quant == SHIPPED else quant  # as the shipped file's name spells it


def choose(seconds: dict[str, float]) -> str:
    """The fastest candidate, but the shipped file unless the fastest beats it by
    ``MIN_SPEEDUP``."""
    fastest = min(seconds, key=seconds.get)
    if SHIPPED in seconds and seconds[SHIPPED] < seconds[fastest] * MIN_SPEEDUP:
        return SHIPPED
    return fastest


def workload(llm) -> tuple[list[int], list[int]]:
    """A fixed remark-shaped text in this model's tokens: the prompt and the tokens then
    decoded one at a time (what they are does not matter for the time, only how many)."""
    from saie_lite.paths import bundled_data

    parts = [WORKLOAD_INSTRUCTION]
    for line in bundled_data("gsm8k_sample.jsonl").read_text().splitlines():
        row = json.loads(line)
        parts += [f"Problem: {row['question']}", f"Student's answer: {row['answer']}"]
        tokens = llm.tokenize("\n\n".join(parts).encode(), add_bos=True)
        if len(tokens) >= PROMPT_TOKENS + DECODE_TOKENS:
            break
    return tokens[:PROMPT_TOKENS], tokens[PROMPT_TOKENS : PROMPT_TOKENS + DECODE_TOKENS]


def time_file(path: Path, n_threads: int = 0) -> float:
    """Best-of-``REPEATS`` seconds to evaluate the prompt and decode the remark's tokens
    from ``path``, after a warm-up (the first evaluation pays one-off weight repacking and
    page faults); loading the file is not timed: a run pays it once."""
    from saie_lite.backends.llama_load import open_llama

    try:
        llm = open_llama(
            model_path=str(path),
            n_ctx=1024,
            n_threads=threads(n_threads),
            n_gpu_layers=0,
            verbose=False,
        )
    except (ValueError, RuntimeError) as e:
        raise UserError(
            f"llama.cpp could not load {path}: {str(e)[:160]} (delete it to rebuild it, or "
            f"set {ENV}=q4_1)"
        ) from None
    try:
        prompt, decode = workload(llm)
        llm.reset()
        llm.eval(prompt[:64])
        best = float("inf")
        for _ in range(REPEATS):
            llm.reset()  # the next eval drops the KV cache from here: nothing is reused
            t0 = time.perf_counter()
            llm.eval(prompt)
            for token in decode:
                llm.eval([token])
            best = min(best, time.perf_counter() - t0)
        return best
    finally:
        llm.close()


Files = Callable[[str], Path]  # a weight type -> the embedded model's GGUF of that type


def measure(files: Files, n_threads: int = 0) -> dict[str, float]:
    """Seconds per remark prompt for each candidate on this machine."""
    return {quant: time_file(files(quant), n_threads) for quant in CANDIDATES}


def _cache_path() -> Path:
    from saie_lite.paths import home

    return home() / "machine" / "partner-weights.json"


def _entries() -> dict:
    """machine key -> {"seconds", "choice"} as the cache file holds them. One file keeps
    every key measured here: a partner on one thread (``train.overlap``) and one on all
    cores time differently, and each used to overwrite the other's measurement. A file
    from before (one machine at its top level) reads as its one entry."""
    try:
        found = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    if "machine" in found:
        return {found["machine"]: found} if isinstance(found["machine"], str) else {}
    machines = found.get("machines")
    return machines if isinstance(machines, dict) else {}


def cached(n_threads: int = 0) -> dict | None:
    """The cached measurement for this machine, or None (never measures)."""
    key = machine_key(n_threads)
    found = _entries().get(key)
    if not isinstance(found, dict):
        return None
    seconds = found.get("seconds")
    timed = isinstance(seconds, dict) and set(seconds) == set(CANDIDATES)
    timed = timed and all(isinstance(v, (int, float)) for v in seconds.values())
    if found.get("choice") not in CANDIDATES or not timed:
        # a hand-edited file, or one from before a candidate was added: measured again
        return None
    return {"machine": key, "seconds": seconds, "choice": found["choice"]}


def measured(files: Files, n_threads: int = 0, refresh: bool = False) -> dict:
    """This machine's measurement: from the cache, or measured, cached and announced."""
    from saie_lite.fsutil import atomic_write_text

    if not refresh:
        found = cached(n_threads)
        if found is not None:
            return found
    seconds = measure(files, n_threads)
    key = machine_key(n_threads)
    result = {"machine": key, "seconds": seconds, "choice": choose(seconds)}
    kept = {k: v for k, v in _entries().items() if k != key and isinstance(v, dict)}
    path = _cache_path()
    where = f"cached in {path}"
    try:
        entry = {"seconds": seconds, "choice": result["choice"]}
        atomic_write_text(path, json.dumps({"machines": {**kept, key: entry}}, indent=2))
    except OSError:
        where = "not cached: the home is not writable, measured again next run"
    timings = ", ".join(f"{label(q)} {s:.2f} s" for q, s in seconds.items())
    print(
        f"note: partner weights: measured {timings} per remark prompt on this CPU -> "
        f"{label(result['choice'])} ({where})",
        file=sys.stderr,
        flush=True,
    )
    return result


def forced() -> str | None:
    """The weight type ``SAIE_LITE_PARTNER_WEIGHTS`` names, or None when unset."""
    value = os.environ.get(ENV, "").strip().lower()
    if not value:
        return None
    if value not in CANDIDATES:
        raise UserError(
            f"{ENV}={value[:20]!r} is not a partner weight type: use one of "
            f"{', '.join(CANDIDATES)}, or unset it to measure"
        )
    return value


def chosen(files: Files, n_threads: int = 0) -> str:
    """The weight type ``embedded-auto`` uses here: the override, else the measurement."""
    return forced() or measured(files, n_threads)["choice"]


def _snapshot_of(quant: str | None, seconds: dict | None) -> str:
    """The snapshot's type from an override (the shipped Q4_1 read as q8_0, the type
    nearest it in speed) or from timings (the fastest type the snapshot writer makes:
    the shipped file's 10% margin is the partner's alone); f32 with neither."""
    if quant is not None:
        return "q8_0" if quant == SHIPPED else quant
    if not seconds:
        return "f32"
    return min((q for q in CANDIDATES if q != SHIPPED), key=seconds.get)


def snapshot_type(files: Files, n_threads: int = 0) -> str:
    """The GGUF type ``learner.snapshot_quant: auto`` writes (``_snapshot_of``),
    measuring once per machine if nothing is cached."""
    quant = forced()
    return _snapshot_of(quant, None if quant else measured(files, n_threads)["seconds"])


def planned_snapshot(n_threads: int = 0) -> str:
    """``snapshot_type`` for a memory plan, without measuring: the override or the cached
    timings, else f32 (the largest type)."""
    try:
        quant = forced()
    except UserError:
        return "f32"
    return _snapshot_of(quant, None if quant else (cached(n_threads) or {}).get("seconds"))


def planned(n_threads: int = 0) -> str:
    """The weight type a memory plan counts, without measuring: the override or the
    cached choice, else the largest candidate (f32), so the plan never comes out short."""
    try:
        return forced() or (cached(n_threads) or {}).get("choice") or "f32"
    except UserError:
        return "f32"
