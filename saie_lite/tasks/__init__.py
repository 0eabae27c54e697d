"""Tasks: load examples, format prompts, extract and score answers. One module per task."""

from __future__ import annotations

from saie_lite.errors import UserError

TASKS = ("gsm8k", "commonsense_qa", "mmlu")


def get_task(name: str):
    """The task module: load, parse_row, learner_chat, score, is_correct, answer_key."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    from importlib import import_module

    return import_module(f"saie_lite.tasks.{name}")
