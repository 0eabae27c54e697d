"""``learner.dtype: auto`` on a CPU: bfloat16 or float32, decided by measuring.

A list of CPU flags (AMX, AVX512-BF16) says which instructions exist, not whether
torch's kernels for this build, shape and thread count use them well: bf16 was 3.8x
slower than fp32 on an AVX-512 machine without bf16 units, and can be faster on one
with them. So a short matmul probe times both, once per machine, and the answer is
cached under ``SAIE_LITE_HOME/machine/`` keyed by CPU model, torch version and threads.

A matmul is not an update, though (attention, norms, casts and the backward pass weigh
too), so when the probe picks bf16 the learner's first update checks it: passes of the
first micro-batch in bf16 and in float32, alternating (``check_update``). If bf16 is not
clearly faster there, the run switches to float32, and the verdict is cached beside the probe's
(``update_check``), which then decides ``auto`` on this machine without timing again.

``SAIE_LITE_CPU_BF16=1`` or ``=0`` overrides both (the test suite pins ``0`` so its
verdict never depends on the CPU it runs on).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

# bf16 must be clearly faster to be chosen: it also costs precision. The first-update
# check keeps bf16 by the same margin.
BF16_MIN_SPEEDUP = 1.2
ENV = "SAIE_LITE_CPU_BF16"
UPDATE_CHECK = "update_check"  # the first-update verdict's entry in the cache file


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    import torch

    return f"{_cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def probe(n: int = 512, repeats: int = 5) -> dict:
    """Best-of-``repeats`` seconds for an n x n matmul in float32 and in bfloat16."""
    import torch

    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        a @ b  # first call pays one-off kernel selection
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_seconds"] = best
    out["bf16_speedup"] = out["float32_seconds"] / max(out["bfloat16_seconds"], 1e-12)
    out["choice"] = "bfloat16" if out["bf16_speedup"] >= BF16_MIN_SPEEDUP else "float32"
    return out


def cache_path() -> Path:
    """Where the verdicts are cached (deleting it makes the next run measure again)."""
    from saie_lite.paths import home

    return home() / "machine" / "cpu-dtype.json"


def _cached(key: str) -> dict | None:
    try:
        cached = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return None
    return cached if isinstance(cached, dict) and cached.get("machine") == key else None


def _write(result: dict) -> None:
    from saie_lite.fsutil import atomic_write_text

    try:
        atomic_write_text(cache_path(), json.dumps(result, indent=2))
    except OSError:
        pass  # an unwritable home only costs a re-measure next time


def measured(refresh: bool = False) -> dict:
    """The probe's result for this machine: from the cache, or measured and cached. A
    fresh probe keeps this machine's first-update verdict: that was the decisive one."""
    key = machine_key()
    cached = _cached(key)
    if cached is not None and not refresh:
        return cached
    result = {"machine": key, **probe()}
    if cached is not None and UPDATE_CHECK in cached:
        result[UPDATE_CHECK] = cached[UPDATE_CHECK]
    _write(result)
    return result


def _forced() -> bool | None:
    forced = os.environ.get(ENV, "").strip()
    return forced == "1" if forced in ("0", "1") else None


def cpu_prefers_bf16() -> bool:
    forced = _forced()
    if forced is not None:
        return forced
    result = measured()
    return result.get(UPDATE_CHECK, result)["choice"] == "bfloat16"


def update_check_due() -> bool:
    """Whether ``auto`` chose bf16 on this machine by the probe alone: not forced by the
    environment and no first-update verdict cached yet."""
    return _forced() is None and UPDATE_CHECK not in measured()


ROUNDS = 3  # timed passes per dtype, alternating


def time_update(
    one_pass: Callable[[], None], to_float32: Callable[[], None], to_bf16: Callable[[], None]
) -> tuple:
    """(bf16 seconds, float32 seconds) of ``one_pass``, the faster of ``ROUNDS`` passes
    each: as loaded (bf16), then after ``to_float32()``, and back and forth, ending in
    float32. Alternating and taking each dtype's best keeps a slow spell of a shared VM
    from deciding: one pass each way read bf16 0.79x-1.34x float32 from run to run on one
    AVX512-BF16 VM whose updates ran 1.35x faster in bf16. Each dtype's first pass is not
    timed (one-off kernel selection and allocation would count against whichever ran
    first); the casts are not timed either."""
    best = {"bf16": float("inf"), "fp32": float("inf")}
    for r in range(ROUNDS):
        for name, switch in (("bf16", to_bf16 if r else None), ("fp32", to_float32)):
            if switch is not None:
                switch()
            if r == 0:
                one_pass()
            t0 = time.perf_counter()
            one_pass()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best["bf16"], best["fp32"]


def check_update(
    one_pass: Callable[[], None], to_float32: Callable[[], None], to_bf16: Callable[[], None]
) -> dict:
    """Time the first update's pass both ways (``time_update``), decide, and cache the
    verdict for this machine. Leaves the model in float32: the caller puts it in the
    chosen dtype."""
    bf16, fp32 = time_update(one_pass, to_float32, to_bf16)
    speedup = fp32 / max(bf16, 1e-12)
    verdict = {
        "bfloat16_seconds": bf16,
        "float32_seconds": fp32,
        "bf16_speedup": speedup,
        "choice": "bfloat16" if speedup >= BF16_MIN_SPEEDUP else "float32",
    }
    _write({**measured(), UPDATE_CHECK: verdict})
    return verdict
