"""``saie-lite config``: the schema's keys with type, default, allowed values and help, or
the effective config of a recipe and ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path

import typer


def config(
    what: str | None = typer.Argument(
        None, help="a section (learner) or one key (learner.lora_r); default: every key"
    ),
    recipe: Path | None = typer.Option(
        None, "--recipe", "-r", help="print the effective config of this YAML recipe"
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="section.key=value applied after the recipe (repeatable)"
    ),
    markdown: bool = typer.Option(
        False, "--markdown", help="the whole reference as Markdown (docs/config.md)"
    ),
) -> None:
    """Show the config keys, or the effective config after a recipe and --set ('*' = changed)."""
    from saie_lite import config as config_mod
    from saie_lite import config_reference as ref

    if markdown:
        typer.echo(ref.markdown(), nl=False)
        return
    chosen = ref.select(what)
    if recipe is None and not set_:
        if len(chosen) == 1:
            typer.echo(ref.describe(chosen[0]))
        else:
            typer.echo(ref.table(chosen))
        return
    cfg = config_mod.build(recipe, config_mod.parse_sets(set_))
    typer.echo(ref.table(chosen, config_mod.flat(cfg)))
