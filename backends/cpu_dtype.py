"""``learner.dtype: auto`` on a CPU: bfloat16 or float32, decided by measuring.

A list of CPU flags (AMX, AVX512-BF16) says which instructions exist, not whether
torch's kernels for this build, shape and thread count use them well: bf16 was 3.8x
slower than fp32 on an AVX-512 machine without bf16 units, and can be faster on one
with them. So a short matmul probe times both, once per machine, and the answer is
cached under ``SAIE_LITE_HOME/machine/`` keyed by CPU model, torch version and threads.

``SAIE_LITE_CPU_BF16=1`` or ``=0`` overrides the probe (the test suite pins ``0`` so its
verdict never depends on the CPU it runs on).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

# bf16 must be clearly faster to be chosen: it also costs precision.
BF16_MIN_SPEEDUP = 1.2
ENV = "SAIE_LITE_CPU_BF16"


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


def _cache_path() -> Path:
    from saie_lite.paths import home

    return home() / "machine" / "cpu-dtype.json"


def measured(refresh: bool = False) -> dict:
    """The probe's result for this machine: from the cache, or measured and cached."""
    from saie_lite.fsutil import atomic_write_text

    key = machine_key()
    path = _cache_path()
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if cached.get("machine") == key:
                return cached
        except (OSError, ValueError):
            pass
    result = {"machine": key, **probe()}
    try:
        atomic_write_text(path, json.dumps(result, indent=2))
    except OSError:
        pass  # an unwritable home only costs a re-measure next time
    return result


def cpu_prefers_bf16() -> bool:
    forced = os.environ.get(ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return measured()["choice"] == "bfloat16"
