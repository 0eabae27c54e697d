"""Measure the memory plan against the real peak (docs/memory.md's table).

    python tests/memory_peaks.py [--extra "--set learner.dtype=float32"]

Each setting is one short real run of the embedded model (``--limit 4``, one update) in
a fresh process; its peak is that process's resident high-water mark (``ru_maxrss``),
its estimate the ``memory:`` line it printed before loading. Not collected by pytest:
it trains for real and takes minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time

SETTINGS = {
    "default (sft, micro-batch 4)": [],
    "micro_batch 1, max_seq_len 256": [
        "--set", "train.micro_batch_size=1", "--set", "learner.max_seq_len=256",
    ],
    "gradient checkpointing": ["--set", "learner.gradient_checkpointing=true"],
    "saie, partner embedded (answers + remarks)": [
        "--mode", "saie", "--set", "method.warmup_fraction=0",
    ],
}  # fmt: skip


def measure(args: list[str]) -> tuple[float | None, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "saie_lite.cli", "train", "--limit", "4", "--live", "plain"]
        cmd += ["--mode", "sft", "--set", "train.max_steps=1", "--set", "method.warmup_fraction=0"]
        cmd += ["--run-dir", f"{tmp}/run", *args]
        out = subprocess.run(cmd, capture_output=True, text=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    text = out.stdout + out.stderr
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {shlex.join(cmd)}\n{text[-2000:]}")
    found = re.search(r"memory: about ([\d.]+) GB needed", text)
    return (float(found.group(1)) if found else None), peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--extra", default="", help="flags added to every run")
    ap.add_argument("--only", default="", help="a setting's name starts with this")
    a = ap.parse_args()
    machine = f"{platform.machine()} {platform.system()}, {_cpu()}"
    print("| setting | estimate | measured peak | ratio | machine | date |")
    print("|---|---|---|---|---|---|")
    for name, args in SETTINGS.items():
        if not name.startswith(a.only):
            continue
        # one wrapper process per setting: RUSAGE_CHILDREN is the peak of its one run
        code = (
            "import sys, json; sys.path.insert(0, 'tests'); import memory_peaks as m; "
            f"print(json.dumps(m.measure({[*args, *shlex.split(a.extra)]!r})))"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(res.stdout + res.stderr)
        est, peak = json.loads(res.stdout.strip().splitlines()[-1])
        ratio = f"{est / peak:.2f}" if est else "-"
        day = time.strftime("%Y-%m-%d")
        print(f"| {name} | {est} GB | {peak:.2f} GB | {ratio} | {machine} | {day} |")
        sys.stdout.flush()


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
