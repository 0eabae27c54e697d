"""The ``saie-lite`` command. Thin: parse flags, build the config, call one core function.

Heavy libraries (torch, transformers, llama_cpp, datasets) are imported inside commands
so that ``saie-lite --help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path

import typer

from saie_lite.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="saie-lite: fine-tune a small LM from supportive and adversarial discussions (SAIE).",
)


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    recipe: Path | None = typer.Option(None, "--recipe", "-r", help="YAML recipe (see recipes/)"),
    mode: str | None = typer.Option(None, help="sft | saie | saie-support | saie-adversarial"),
    backend: str | None = typer.Option(None, help="learner backend: torch | scripted | ..."),
    model: str | None = typer.Option(None, help="learner: hub id, local dir, or 'embedded'"),
    partner: str | None = typer.Option(None, help="partner backend: llama_cpp | self | ..."),
    partner_model: str | None = typer.Option(None, help="partner GGUF path, or 'embedded'"),
    data: str | None = typer.Option(None, help="hub name, .jsonl/.parquet path, or 'bundled'"),
    limit: int | None = typer.Option(None, help="use N examples (0 = all)"),
    rounds: int | None = typer.Option(None, help="discussion rounds"),
    max_steps: int | None = typer.Option(None, help="stop after N updates"),
    run_dir: Path | None = typer.Option(None, help="where to write the run"),
    resume: Path | None = typer.Option(None, help="continue the run in this directory"),
    live: str | None = typer.Option(None, help="auto | rich | plain | quiet"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="scripted models: check config, data and view"
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="any config key: section.key=value (repeatable)"
    ),
) -> None:
    """Train a learner with SAIE: warm-up, then discussion rounds with a partner."""
    from saie_lite import config as config_mod
    from saie_lite.runs import new_run_dir, saved_config, start_training
    from saie_lite.ui import make_view

    flags = {
        "method.mode": mode,
        "learner.backend": backend,
        "learner.model": model,
        "partner.backend": partner,
        "partner.model": partner_model,
        "data.path": data,
        "data.limit": limit,
        "method.rounds": rounds,
        "train.max_steps": max_steps,
        "run.dir": str(resume or run_dir) if (resume or run_dir) else None,
        "run.live": live,
    }
    try:
        overrides = {**config_mod.parse_sets(set_), **flags}
        if resume:
            if recipe:
                raise UserError("--resume takes the run's saved config; drop --recipe")
            cfg = config_mod.build(None, overrides, base=saved_config(resume))
        else:
            cfg = config_mod.build(recipe, overrides)
        target = Path(resume) if resume else new_run_dir(cfg)
        cfg.run.dir = str(target)
        summary = start_training(cfg, target, bool(resume), dry_run, make_view(cfg.run.live))
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        typer.secho("aborted; the last checkpoint is intact", fg="yellow", err=True)
        raise typer.Exit(130) from None
    if summary["status"] == "stopped":
        raise typer.Exit(130)


@app.command()
def version() -> None:
    """Print the saie-lite version."""
    from importlib.metadata import version as v

    typer.echo(v("saie-lite"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
