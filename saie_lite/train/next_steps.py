"""What to do after a run finishes: the exact commands for this run directory."""

from __future__ import annotations

import shlex
from pathlib import Path

from saie_lite.config import Config, DataConfig

# How a custom data file was read: an eval of the same rows must read it the same way.
READING_KEYS = (
    "format", "question_field", "answer_field", "final_field", "choices_field", "id_field",
    "answer_format", "system", "hub_config",
    "difficulty", "n_generated",  # the generated arithmetic task's rows
)  # fmt: skip


def data_flags(d: DataConfig) -> str:
    """--task/--data (and, for your own data, --check and the data.* keys that read it)."""
    flags = f"--task {d.task} --data {shlex.quote(d.path)}"
    if d.task == "arithmetic":  # the generated rows: the same problems
        for key in ("difficulty", "n_generated"):
            if getattr(d, key) != getattr(DataConfig(), key):
                flags += f" --set data.{key}={getattr(d, key)}"
    if d.task != "custom":
        return flags
    if d.check != "auto":
        flags += f" --check {shlex.quote(d.check)}"
    default = DataConfig()
    for key in READING_KEYS:
        value = getattr(d, key)
        if value != getattr(default, key):
            flags += " --set " + shlex.quote(f"data.{key}={value}")
    return flags


def next_commands(cfg: Config, run_dir: Path) -> list[tuple[str, str]]:
    """(what, command) pairs: evaluate the run and its base on the same rows, compare
    them, see the run in one page, export the learner, train further."""
    run = shlex.quote(str(run_dir))
    # a dry run's page is worth a look too: every discussion, as a real run's would be
    report = ("see it in one HTML page", f"saie-lite report {run}")
    if cfg.learner.backend in ("auto", "scripted"):  # --dry-run: scripted models
        # not --resume or the same --run-dir: that directory holds the scripted run
        return [
            (
                "train for real",
                f"the same command without --dry-run, into a new run directory ({run} "
                "holds this dry run)",
            ),
            report,
        ]
    d = cfg.data
    rows = data_flags(d)
    # Held-out rows exist for local files (and the bundled ones) trained with split=nodev.
    held_out = d.split == "nodev"
    if held_out:
        rows += " --split dev"
    rows += " --limit 100"
    overlap = (
        ""
        if held_out
        else " (on rows it trained on: train with data.split=nodev for held-out ones)"
    )
    base = f"--model {shlex.quote(cfg.learner.model)} --backend {cfg.learner.backend}"
    # The trained learner's folder names its checkpoint: after training further, the
    # same hint evaluates the new one instead of meeting the old one's items.
    from saie_lite.train.checkpoint import latest

    ckpt = latest(Path(run_dir))
    out_run = f"{run_dir}/eval" + (f"-{ckpt.name}" if ckpt else "")
    out_base = f"{run_dir}/eval-base"
    further = f"saie-lite train --resume {run} --set method.rounds={cfg.method.rounds + 1}"
    if cfg.train.max_steps:  # the saved cap would stop the resumed run at once
        further += " --set train.max_steps=0"
    return [
        (
            f"evaluate the trained learner{overlap}",
            f"saie-lite eval --run {run} {rows} --out {shlex.quote(out_run)}",
        ),
        ("evaluate its base model", f"saie-lite eval {base} {rows} --out {shlex.quote(out_base)}"),
        (
            "compare them (paired test)",
            f"saie-lite compare {shlex.quote(out_base)} {shlex.quote(out_run)}",
        ),
        report,
        ("export it (or --to hf | mlx)", f"saie-lite export {run} --to gguf"),
        ("train it further", further),
    ]
