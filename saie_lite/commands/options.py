"""The data flags every command shares: ``--task``, ``--data``, ``--split``, ``--limit`` and
``--check`` mean the same on ``train``, ``eval``, ``ablate`` and ``debate``, and set the
same config keys (a user who learned them on one command knows them on all).

Each factory returns a fresh ``typer.Option`` (one object must not be the default of two
commands' parameters); ``data_keys`` maps the values to the keys, leaving out the flags not
given so that a ``--set`` of the same key still counts.
"""

from __future__ import annotations

import typer

TASK_HELP = (
    "gsm8k | commonsense_qa | mmlu | arithmetic (generated: --data generated) | custom "
    "(your own data, see data.* keys); default: a "
    "--data file's rows choose (a run's own task with --run), else gsm8k"
)
DATA_HELP = "hub name, .jsonl/.json/.csv/.parquet path, or 'bundled'"
SPLIT_HELP = "hub split; local files and 'bundled': dev (held-out rows) | nodev | all"
LIMIT_HELP = "use N examples (0 = all)"
CHECK_HELP = "--task custom: number | choice | exact | contains | regex:PATTERN | none"


def task_option(help: str = TASK_HELP):
    return typer.Option(None, "--task", help=help)


def data_option(help: str = DATA_HELP):
    return typer.Option(None, "--data", help=help)


def split_option(help: str = SPLIT_HELP):
    return typer.Option(None, "--split", help=help)


def limit_option(help: str = LIMIT_HELP):
    return typer.Option(None, "--limit", help=help)


def check_option(help: str = CHECK_HELP):
    return typer.Option(None, "--check", help=help)


def data_keys(
    task: str | None = None,
    data: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    check: str | None = None,
) -> dict:
    """The config keys the data flags given set (the same keys on every command)."""
    keys = {
        "data.task": task,
        "data.path": data,
        "data.split": split,
        "data.limit": limit,
        "data.check": check,
    }
    return {k: v for k, v in keys.items() if v is not None}
