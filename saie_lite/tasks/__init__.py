"""Tasks: load examples, format prompts, extract and score answers. One module per task."""

from __future__ import annotations

from saie_lite.errors import UserError

TASKS = ("gsm8k", "commonsense_qa", "mmlu", "arithmetic", "custom")


def get_task(spec):
    """The task for a name or a ``DataConfig``: an object with load, parse_row,
    learner_chat, score, is_correct, answer_key, answer_end and ANSWER_FORMAT.

    The presets are modules; ``custom`` (your own data) is a ``CustomTask`` built from
    the data.* keys, and ``arithmetic`` an ``ArithmeticTask`` (data.difficulty and
    data.n_generated), so give it the config's ``data`` section, not only the name.
    """
    from saie_lite.config import DataConfig

    data = spec if isinstance(spec, DataConfig) else DataConfig(task=spec)
    if data.task not in TASKS:
        raise UserError(f"unknown task {data.task!r}; known tasks: {', '.join(TASKS)}")
    from importlib import import_module

    module = import_module(f"saie_lite.tasks.{data.task}")
    if data.task == "arithmetic":
        return module.ArithmeticTask(data)
    return module.CustomTask(data) if data.task == "custom" else module


def example_chat(task, example) -> list[dict[str, str]]:
    """The learner's opening chat for an example: a chat row's own turns, else the
    task's system prompt and the question."""
    if example.context:
        return [dict(t) for t in example.context]
    return task.learner_chat(example.question)


def is_checked(task) -> bool:
    """False for free-form data (``data.check: none``): no right/wrong mark."""
    return getattr(task, "checked", True)


# Early stop checks the answer after every new token, so a final answer that has just
# been completed ('#### 1,234.5' plus a newline: about a dozen tokens) lies within the
# reply's last tokens; decoding only those keeps the check cheap on long replies.
ANSWER_TAIL_TOKENS = 24


def reply_finished(tok, reply: list[int], answer_end) -> bool:
    """Early stop: does this reply (token ids) end in a finished final answer? Only its
    tail is decoded; a tokenizer decode costs microseconds, a decode step milliseconds."""
    if answer_end is None:
        return False
    return answer_end(tok.decode(reply[-ANSWER_TAIL_TOKENS:], skip_special_tokens=True)) is not None


def answer_stop(cfg):
    """The early-stop rule for learner generation: the task's ``answer_end`` when
    ``learner.stop_at_answer`` is on, else None."""
    return get_task(cfg.data).answer_end if cfg.learner.stop_at_answer else None


def cut_at_answer(text: str, answer_end) -> str:
    """Drop what follows a finished final answer (a model that keeps going after it)."""
    end = answer_end(text) if answer_end else None
    return text[:end] if end else text


def key_correct(task, key: str | None, gold: str) -> bool:
    """Is a vote's answer key (already read from a reply) the gold answer?"""
    check = getattr(task, "check", None)
    if check is not None:
        return check.same(key, gold)
    return key is not None and key == gold
