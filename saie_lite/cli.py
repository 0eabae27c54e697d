"""The ``saie-lite`` command. Thin: parse flags, build the config, call one core function.

This file is the command table; each group's commands live in ``saie_lite/commands/``,
and heavy libraries (torch, transformers, llama_cpp, datasets) are imported inside commands
so that ``saie-lite --help`` answers at once.
"""

from __future__ import annotations

import typer

from saie_lite.commands import config_cmd, evaluate, logs, tools, train
from saie_lite.commands.guard import GuardedTyper
from saie_lite.commands.report import report

app = GuardedTyper(
    add_completion=False,
    no_args_is_help=True,
    help="saie-lite: fine-tune a small LM from supportive and adversarial discussions (SAIE).",
)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=tools.print_version,
        is_eager=True,
        help="Print the version.",
    ),
) -> None:
    """saie-lite: fine-tune a small LM from supportive and adversarial discussions (SAIE)."""


# Train, then find out whether it helped, then share it.
app.command()(train.train)
app.command("eval")(evaluate.eval_)
app.command()(evaluate.compare)
app.command()(evaluate.ablate)
app.command("debate")(evaluate.debate_cmd)
app.command()(report)

logs_app = GuardedTyper(help="Saved debates, evaluations and training runs.", no_args_is_help=True)
logs_app.command("list")(logs.logs_list)
logs_app.command("show")(logs.logs_show)
logs_app.command("remarks")(logs.logs_remarks)
logs_app.command("export")(logs.logs_export)
app.add_typer(logs_app, name="logs")

app.command()(tools.export)
app.command()(tools.bench)
app.command()(tools.version)
app.command("config")(config_cmd.config)


def main() -> None:
    """The ``saie-lite`` program. A wrong flag or value is one line with exit code 2, like
    every other mistake (Typer's own handling draws a box of several lines)."""
    import sys

    # click's UsageError and ClickException (vendored by newer Typer): the bases of the
    # BadParameter that Typer exports.
    usage_error, click_exception = typer.BadParameter.__mro__[1:3]
    try:
        rv = app(prog_name="saie-lite", standalone_mode=False)
    except usage_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare command group: its help
            e.show()
            sys.exit(e.exit_code)
        where = e.ctx.command_path if e.ctx is not None else "saie-lite"
        typer.secho(f"error: {e.format_message()} (see '{where} --help')", fg="red", err=True)
        sys.exit(e.exit_code)
    except click_exception as e:
        e.show()
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    # Without standalone mode an exit (``typer.Exit``, --help, Ctrl-C's 130) comes back
    # as its code, and a finished command as its return value (None).
    sys.exit(rv if type(rv) is int else 0)


if __name__ == "__main__":  # python -m saie_lite.cli (accelerate launch, torchrun)
    main()
