"""What to do after a run finishes: the exact commands for this run directory."""

from __future__ import annotations

import shlex
from pathlib import Path

from saie_lite.config import Config


def next_commands(cfg: Config, run_dir: Path) -> list[tuple[str, str]]:
    """(what, command) pairs: evaluate the run and its base on the same rows, compare
    them, export the learner, train further."""
    run = shlex.quote(str(run_dir))
    d = cfg.data
    rows = f"--task {d.task} --data {shlex.quote(d.path)}"
    # Held-out rows only exist for local files trained with split=nodev; otherwise the
    # user is evaluating on rows the run may have trained on, which the README explains.
    if d.split == "nodev":
        rows += " --split dev"
    rows += " --limit 100"
    base = f"--model {shlex.quote(cfg.learner.model)} --backend {cfg.learner.backend}"
    out_run, out_base = f"{run_dir}/eval", f"{run_dir}/eval-base"
    return [
        (
            "evaluate the trained learner",
            f"saie-lite eval --run {run} {rows} --out {shlex.quote(out_run)}",
        ),
        ("evaluate its base model", f"saie-lite eval {base} {rows} --out {shlex.quote(out_base)}"),
        (
            "compare them (paired test)",
            f"saie-lite compare {shlex.quote(out_base)} {shlex.quote(out_run)}",
        ),
        ("export it (or --to hf | mlx)", f"saie-lite export {run} --to gguf"),
        (
            "train it further",
            f"saie-lite train --resume {run} --set method.rounds={cfg.method.rounds + 1}",
        ),
    ]
