"""``saie-lite train``: flags and recipe into one config, then the training run."""

from __future__ import annotations

from pathlib import Path

import typer

from saie_lite.commands import options
from saie_lite.commands.guard import fail, storage_failure

# Allowed values are read from the schema, so a new one shows in --help at once.
from saie_lite.config import choices_help
from saie_lite.errors import UserError
from saie_lite.track.registry import REPORT_TO_HELP


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
    data: str | None = options.data_option(),
    task: str | None = options.task_option(),
    split: str | None = options.split_option(),
    check: str | None = options.check_option(),
    limit: int | None = options.limit_option(),
    rounds: int | None = typer.Option(None, help="discussion rounds"),
    max_steps: int | None = typer.Option(None, help="stop after N updates"),
    run_dir: Path | None = typer.Option(None, help="where to write the run"),
    resume: Path | None = typer.Option(None, help="continue the run in this directory"),
    live: str | None = typer.Option(None, help=choices_help("run.live")),
    report_to: str | None = typer.Option(None, "--report-to", help=REPORT_TO_HELP),
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
        **options.data_keys(task, data, split, limit, check),
        "method.rounds": rounds,
        "train.max_steps": max_steps,
        "run.dir": str(resume or run_dir) if (resume or run_dir) else None,
        "run.live": live,
        "train.report_to": report_to,
    }
    target = None
    try:
        # A flag left out must not undo the same key given with --set.
        given = {k: v for k, v in flags.items() if v is not None}
        overrides = {**config_mod.parse_sets(set_), **given}
        if resume:
            if recipe:
                raise UserError("--resume takes the run's saved config; drop --recipe")
            # what a resume may change: the one rule (config.resume_changes)
            cfg, safe = config_mod.resume_config(saved_config(resume), overrides)
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
        from saie_lite.train.memory import out_of_memory_line

        line = out_of_memory_line(e, target) or storage_failure(e, again)
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
