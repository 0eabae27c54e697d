"""An evaluation read back from its folder: ``summary.json`` and every item, wherever
the items are stored (for ``logs show EVAL_DIR`` and ``saie-lite report``).

An evaluation's items live in the evaluation folder's own ``saie.sqlite``, or, when a
run was evaluated, in the run's (``RUN/evals/NAME`` and the ``RUN/eval-...`` folders the
end-of-run hints name), under the key the summary records as its ``name``.
"""

from __future__ import annotations

import json
from pathlib import Path

from saie_lite.errors import UserError


def read_summary(eval_dir: Path) -> dict:
    """``summary.json``, or one line saying why there is none to read."""
    path = Path(eval_dir) / "summary.json"
    if not Path(eval_dir).is_dir():
        raise UserError(f"{eval_dir} is not a directory: give an evaluation's folder")
    if not path.is_file():
        raise UserError(
            f"{eval_dir} has no summary.json: not an evaluation, or one stopped before its "
            "first batch (the same eval command continues it)"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        summary = None
    if not isinstance(summary, dict) or not isinstance(summary.get("name"), str):
        raise UserError(
            f"{path} cannot be read as an evaluation summary: run the eval command again "
            "to write it anew"
        )
    return summary


def _databases(eval_dir: Path) -> list[Path]:
    """Where the items may be: the folder's own database, then the run's (RUN/eval-x
    has the run one level up, RUN/evals/NAME two)."""
    d = Path(eval_dir).resolve()
    return [p / "saie.sqlite" for p in (d, d.parent, d.parent.parent)]


def read_evaluation(eval_dir: Path) -> tuple[dict, list[dict]]:
    """(summary, items in evaluation order); each item as ``Store.eval_items`` gives it,
    with ``turns`` decoded."""
    from saie_lite.store import Store

    summary = read_summary(eval_dir)
    name = summary["name"]
    for db in _databases(eval_dir):
        if not db.is_file():
            continue
        store = Store(db, reader=True)
        try:
            if store.eval_config(name) is None:
                continue
            items = store.eval_items(name)
        finally:
            store.close()
        for item in items:
            try:
                item["turns"] = json.loads(item["turns"])
            except (TypeError, ValueError):
                item["turns"] = []
        return summary, items
    raise UserError(
        f"the items of {eval_dir} are not in its saie.sqlite nor its run's (moved apart?): "
        "keep the evaluation folder where it was made, or run the eval command again"
    )
