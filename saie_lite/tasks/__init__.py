"""Tasks: load examples, format prompts, extract and score answers. One module per task."""

from __future__ import annotations

from saie_lite.errors import UserError


def get_task(name: str):
    if name == "gsm8k":
        from saie_lite.tasks import gsm8k

        return gsm8k
    raise UserError(f"unknown task {name!r}; known tasks: gsm8k")
