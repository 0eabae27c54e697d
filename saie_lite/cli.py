"""The ``saie-lite`` command. Thin: parse flags, build the config, call one core function.

This file is the command table; each group's commands live in ``saie_lite/commands/``,
and heavy libraries (torch, transformers, llama_cpp, datasets) are imported inside commands
so that ``saie-lite --help`` answers at once.
"""

from __future__ import annotations

import typer

from saie_lite.commands import evaluate, logs, tools, train
from saie_lite.commands.guard import GuardedTyper

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

logs_app = GuardedTyper(help="Saved debates, evaluations and training runs.", no_args_is_help=True)
logs_app.command("list")(logs.logs_list)
logs_app.command("show")(logs.logs_show)
logs_app.command("remarks")(logs.logs_remarks)
logs_app.command("export")(logs.logs_export)
app.add_typer(logs_app, name="logs")

app.command()(tools.export)
app.command()(tools.bench)
app.command()(tools.version)


def main() -> None:
    app()


if __name__ == "__main__":  # python -m saie_lite.cli (accelerate launch, torchrun)
    main()
