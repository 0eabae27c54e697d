"""``saie-lite logs export RUN --format dataset``: a run's discussions as a Hugging Face
dataset (parquet plus a dataset card), for trainers that run on a cluster.

One row per training target the run made. The columns follow the layout TRL's
self-distillation trainers read, where text feedback is privileged context that the
teacher sees and the student does not: ``prompt`` (the question as a chat), ``completion``
(the target the learner was trained on, as one assistant message: TRL's conversational
prompt-completion layout, so its SFTTrainer trains on the export as it is), and
``privileged_context`` (the partner's remark for that stance as a string, as those trainers
read it; empty for plain warm-up targets); with ``text`` both ``prompt`` and ``completion``
are plain strings instead (TRL's standard layout). Then ``stance``, ``learner_answer``,
``correct``; and, to trace a row back into the run, ``step``, ``phase``, ``round``,
``example_id``, ``turn`` and ``discussion`` (the whole chat the target followed).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.store import Store

CARD = """---
configs:
- config_name: {config}
  default: true
  data_files:
  - split: train
    path: data/train-*.parquet
---

# saie-lite discussions: {name}

{n} training targets from the saie-lite run `{name}` ({steps} updates, mode `{mode}`,
learner `{learner}`, partner `{partner}`).

| column | what |
|---|---|
| `prompt` | the question, as the chat the learner first saw{prompt_text} |
| `completion` | the target the learner was trained on, {completion_layout} |
| `privileged_context` | the partner's remark on the learner's answer for this stance (empty for warm-up targets) |
| `stance` | `supportive`, `adversarial`, or `plain` (warm-up / no discussion) |
| `learner_answer` | the learner's own first answer (empty for warm-up targets) |
| `correct` | whether that answer was right by the run's answer check (null when not checked) |
| `discussion` | the whole chat the target followed (question, answer, remark, ...) |
| `step`, `phase`, `round`, `example_id`, `turn` | where the row sits in the run |

Written by `saie-lite logs export {name} --format dataset{text_flag}`. The questions and reference
answers keep the licence of the data the run was trained on.
"""


def discussion_rows(run_dir: Path, text: bool = False) -> list[dict]:
    """Every target row of the run, joined with its answer and remark. ``prompt`` and
    ``completion`` are chat messages, or with ``text`` plain strings: TRL's SFTTrainer
    needs the two in one layout (it adds a string completion to a list prompt)."""
    db_path = Path(run_dir) / "saie.sqlite"
    if not db_path.is_file():
        raise UserError(f"{run_dir} has no saie.sqlite: give a training run directory")
    store = Store(db_path, reader=True)  # a run on a read-only disk can be exported too
    try:
        store.db.row_factory = sqlite3.Row
        turns = store.db.execute(
            "SELECT step, phase, round, example_id, turn, role, stance, prompt, text, correct "
            "FROM turns ORDER BY id"
        ).fetchall()
    except sqlite3.Error as e:
        raise UserError(f"cannot read {db_path} ({e}): is it a saie-lite run?") from None
    finally:
        store.close()
    answers: dict[tuple, sqlite3.Row] = {}
    remarks: dict[tuple, str] = {}
    targets: list[sqlite3.Row] = []
    for t in turns:
        key = (t["step"], t["example_id"])
        if t["role"] == "learner" and t["turn"] == 0:
            answers[key] = t
        elif t["role"] == "partner" and t["stance"] in ("supportive", "adversarial"):
            remarks[(*key, t["turn"], t["stance"])] = t["text"]
        elif t["role"] == "target":
            targets.append(t)
    rows = []
    for t in targets:
        key = (t["step"], t["example_id"])
        answer = answers.get(key)
        discussion = json.loads(t["prompt"])
        prompt = json.loads(answer["prompt"]) if answer is not None else discussion
        rows.append(
            {
                "prompt": _as_text(prompt) if text else prompt,
                "completion": t["text"] if text else [{"role": "assistant", "content": t["text"]}],
                "privileged_context": remarks.get((*key, t["turn"], t["stance"]), ""),
                "stance": t["stance"] or "plain",
                "learner_answer": answer["text"] if answer is not None else "",
                "correct": None
                if answer is None or answer["correct"] is None
                else bool(answer["correct"]),
                "discussion": discussion,
                "step": t["step"],
                "phase": t["phase"],
                "round": t["round"],
                "example_id": t["example_id"],
                "turn": t["turn"],
            }
        )
    return rows


def _as_text(chat: list[dict]) -> str:
    """A chat as plain text: its messages (the instructions, then the question) one after
    another, and a blank line where the completion starts, so that the two do not run
    together when a trainer joins them."""
    return "".join(f"{m['content']}\n\n" for m in chat)


def export_dataset(run_dir: Path, out: Path | None = None, text: bool = False) -> Path:
    """Write ``out/data/train-00000-of-00001.parquet`` and ``out/README.md``."""
    import datasets
    from datasets import Dataset

    from saie_lite.paths import writable_dir

    run_dir = Path(run_dir)
    rows = discussion_rows(run_dir, text)
    if not rows and not (run_dir / "config.yaml").is_file():  # an evaluation's folder
        raise UserError(f"{run_dir} is not a training run (no config.yaml): give a run directory")
    if not rows:
        raise UserError(f"{run_dir} has no training targets yet: train it first")
    out = Path(out) if out else run_dir / "export" / "dataset"
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: pick another --out or remove it")
    writable_dir(out / "data", "dataset directory", "choose another --out")
    parquet = out / "data" / "train-00000-of-00001.parquet"
    # `datasets` draws a progress bar on the terminal for even a few rows; the command says
    # in its own line what it wrote. Restored after, for a caller that wants its bars.
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        Dataset.from_list(rows).to_parquet(str(parquet))
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    cfg = _saved(run_dir)
    # `datasets` caches a local directory's data under its name and config, not its
    # contents: every export is a directory called `dataset`, so a config named after the
    # data keeps one run's (or one export's) rows from being served for another's.
    digest = hashlib.sha256(parquet.read_bytes()).hexdigest()[:12]
    (out / "README.md").write_text(
        CARD.format(
            config=f"saie-{digest}",
            prompt_text=" (plain text: its messages, each followed by a blank line)"
            if text
            else "",
            completion_layout="as plain text" if text else "as one assistant message",
            text_flag=" --text" if text else "",
            name=run_dir.name,
            n=len(rows),
            steps=max(r["step"] for r in rows),
            mode=cfg.get("method", {}).get("mode", "?"),
            learner=cfg.get("learner", {}).get("model", "?"),
            partner=cfg.get("partner", {}).get("model", "?"),
        )
    )
    return out


def _saved(run_dir: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
