"""``saie-lite train``: flags and recipe into one config, then the training run."""

from __future__ import annotations

from pathlib import Path

import typer

from saie_lite.commands.guard import fail, storage_failure

# Allowed values are read from the schema, so a new one shows in --help at once.
from saie_lite.config import choices_help
from saie_lite.errors import UserError


def train(
    recipe: Path | None = typer.Option(None, "--recipe", "-r", help="YAML recipe (see recipes/)"),
    mode: str | None = typer.Option(None, help=choices_help("method.mode")),
    backend: str | None = typer.Option(None, help="learner backend: torch | scripted | ..."),
    model: str | None = typer.Option(None, help="learner: hub id, local dir, or 'embedded'"),
    partner: str | None = typer.Option(None, help="partner backend: llama_cpp | openai | self"),
    partner_model: str | None = typer.Option(
        None,
        help="partner GGUF path or 'embedded'; --partner openai: the server's model name "
        "(default: the one it lists)",
    ),
    partner_url: str | None = typer.Option(
        None, help="--partner openai: server base URL, e.g. http://127.0.0.1:8080/v1"
    ),
    data: str | None = typer.Option(
        None, help="hub name, .jsonl/.json/.csv/.parquet path, or 'bundled'"
    ),
    task: str | None = typer.Option(
        None, help="gsm8k | commonsense_qa | mmlu | custom (your own data, see data.* keys)"
    ),
    check: str | None = typer.Option(
        None, help="--task custom: number | choice | exact | contains | regex:PATTERN | none"
    ),
    limit: int | None = typer.Option(None, help="use N examples (0 = all)"),
    rounds: int | None = typer.Option(None, help="discussion rounds"),
    max_steps: int | None = typer.Option(None, help="stop after N updates"),
    run_dir: Path | None = typer.Option(None, help="where to write the run"),
    resume: Path | None = typer.Option(None, help="continue the run in this directory"),
    live: str | None = typer.Option(None, help=choices_help("run.live")),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="scripted models: check config, data and view"
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="any config key: section.key=value (repeatable)"
    ),
) -> None:
    """Train a learner with SAIE: warm-up, then discussion rounds with a partner."""
    from saie_lite import config as config_mod
    from saie_lite.train.runs import new_run_dir, saved_config, start_training
    from saie_lite.ui.train_view import make_view

    flags = {
        "method.mode": mode,
        "learner.backend": backend,
        "learner.model": model,
        "partner.backend": partner,
        "partner.model": partner_model,
        "partner.url": partner_url,
        "data.path": data,
        "data.task": task,
        "data.check": check,
        "data.limit": limit,
        "method.rounds": rounds,
        "train.max_steps": max_steps,
        "run.dir": str(resume or run_dir) if (resume or run_dir) else None,
        "run.live": live,
    }
    target = None
    try:
        # A flag left out must not undo the same key given with --set.
        given = {k: v for k, v in flags.items() if v is not None}
        overrides = {**config_mod.parse_sets(set_), **given}
        if resume:
            if recipe:
                raise UserError("--resume takes the run's saved config; drop --recipe")
            saved = saved_config(resume)
            cfg = config_mod.build(None, overrides, base=saved)
            safe, unsafe = config_mod.resume_changes(config_mod.build(None, None, saved), cfg)
            if unsafe:
                raise UserError(
                    f"--resume cannot change {', '.join(unsafe)}: the resumed run would no "
                    "longer match its first part. Drop those flags, or start a new run. "
                    f"Keys a resume may change: {', '.join(config_mod.SAFE_ON_RESUME[:-1])}"
                )
            for key in safe:
                typer.echo(f"resume: {key} changed to {config_mod.flat(cfg)[key]!r}")
        else:
            cfg = config_mod.build(recipe, overrides)
        target = Path(resume) if resume else new_run_dir(cfg)
        cfg.run.dir = str(target)
        summary = start_training(cfg, target, bool(resume), dry_run, make_view(cfg.run.live))
    except Exception as e:
        # the updates made so far are checkpointed (train.loop): say how to go on
        again = f"saie-lite train --resume {target}" if target else "run the command again"
        line = storage_failure(e, again)
        if line is None:
            raise
        fail(line)
    except KeyboardInterrupt as e:
        typer.secho("aborted; the last checkpoint is intact", fg="yellow", err=True)
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    if summary["status"] == "stopped":
        from saie_lite.train.runs import exit_code

        # 128 + the signal, as a shell reports it: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP
        raise typer.Exit(exit_code(summary.get("signal")))
