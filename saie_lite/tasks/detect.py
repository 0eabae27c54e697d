"""Which task a data file is, when the command names none: ``--data my.jsonl`` just works.

Without a task (no --task, no data.task in --set or a recipe) a local data file is read
by its rows' shape: GSM8K's fields (question and answer, answers ending in '#### N') are
the gsm8k preset, CommonsenseQA's (question, choices {label, text}, answerKey) the
commonsense_qa preset, MMLU's (question, choices, an index as answer) the mmlu preset,
and anything else is your own data (``custom``, its check chosen
as ``auto`` does). A task named explicitly is never second-guessed: a preset stays strict.
"""

from __future__ import annotations

from saie_lite.safe_text import one_line
from saie_lite.tasks.common import is_local, load_rows

SNIFF_ROWS = 200  # rows looked at, as custom.resolve looks at them
GSM8K_FIELDS = {"id", "question", "answer"}
CSQA_FIELDS = {"id", "question", "question_concept", "choices", "answerKey"}
MMLU_FIELDS = {"id", "question", "subject", "choices", "answer"}
SHOWN_FIELDS = 8  # a note names at most this many of a file's fields


def detect(rows: list) -> tuple[str, str]:
    """(task, why) from the first rows' shape; ``why`` names what was seen."""
    dicts = [r for r in rows if isinstance(r, dict)][:SNIFF_ROWS]
    keys: list[str] = []
    for r in dicts:
        keys += [k for k in r if k not in keys]
    if dicts and {"question", "answer"} <= set(keys) <= GSM8K_FIELDS:
        answers = [r["answer"] for r in dicts if isinstance(r.get("answer"), str)]
        # Most, not all: a few broken rows are the preset's to skip and count by reason.
        if sum("####" in a for a in answers) * 2 > len(answers):
            return "gsm8k", "GSM8K's fields: question, and answers ending in '#### N'"
    if dicts and {"question", "choices", "answerKey"} <= set(keys) <= CSQA_FIELDS:
        if any(isinstance(r.get("choices"), dict) for r in dicts):
            return "commonsense_qa", "CommonsenseQA's fields: question, choices, answerKey"
    if dicts and {"question", "choices", "answer"} <= set(keys) <= MMLU_FIELDS:
        # MMLU's answer is an index: read as own data, an option whose text is a digit
        # would be taken for the answer instead
        if all(type(r.get("answer")) is int for r in dicts if "answer" in r):
            return "mmlu", "MMLU's fields: question, choices, and answers that are indices"
    shown = ", ".join(keys[:SHOWN_FIELDS]) + (", ..." if len(keys) > SHOWN_FIELDS else "")
    return "custom", f"your own layout (fields: {shown or 'none'})"


def settle_task(cfg) -> str | None:
    """Set ``cfg.data.task`` from the rows when no task was given and the data is a
    local file; the note line saying what was chosen, else None (nothing changed).

    Whether a task was given is ``config.build``'s ``task_given``; a config made any
    other way counts as given, so nothing is detected behind a caller's back. Hub names
    are left to the task named (or gsm8k): a hub dataset needs its configuration, which
    only the task knows.
    """
    data = cfg.data
    if getattr(cfg, "task_given", True) or data.path == "bundled" or not is_local(data.path):
        return None
    task, why = detect(load_rows(data.path, "all", None, None))
    data.task = task
    cfg.task_given = True  # settled: a second read of the same config keeps it
    if task == "custom":
        how = "task custom, check chosen from the rows (--task gsm8k | commonsense_qa | mmlu "
        how += "reads a preset's layout)"
    else:
        how = f"task {task} (--task custom reads it as your own data)"
    return one_line(f"no --task given: the rows have {why}: {how}")
