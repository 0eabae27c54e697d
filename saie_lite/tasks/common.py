"""Row loading shared by every task: the bundled sample, local files, or hub names.

Local files get reproducible held-out splits, so a user with only a training file can
tune on one part and evaluate on another: ``split: dev`` is ``DEV_SIZE`` rows chosen with
``DEV_SEED``; ``split: nodev`` is every other row; ``all`` (or a hub split name: the
file is one split) means all rows, and any other name is refused.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.paths import bundled_data
from saie_lite.protocols import Example


@dataclass
class Score:
    """An answer read two ways (docs/protocol.md section 4): strict format, and flexible."""

    strict: str | None
    flexible: str | None
    strict_correct: bool
    flexible_correct: bool


LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
DEV_SEED = 2024
DEV_SIZE = 500


# A local file is one split: the hub's usual split names (the presets' defaults) and
# 'all' read every row; dev and nodev carve it.
LOCAL_SPLITS = ("dev", "nodev", "all", "train", "validation", "test")


def is_local(path: str) -> bool:
    """A file on this machine: a data suffix, a path-like name, or anything that exists
    (an existing file of another type is refused as such, not looked up on the hub)."""
    p = Path(path).expanduser()
    return p.suffix in LOCAL_SUFFIXES or path.startswith((".", "/", "~")) or p.exists()


def splits_overlap(path: str, train_split: str, eval_split: str) -> bool:
    """Whether training on ``train_split`` would see rows of ``eval_split``. Local files
    (and the bundled rows) are carved here: only dev and nodev are disjoint. Hub splits
    are the dataset's own: distinct names are distinct rows."""
    if path == "bundled" or is_local(path):
        return {train_split, eval_split} != {"dev", "nodev"}
    return train_split == eval_split


def carve(rows: list, split: str) -> list:
    if split not in LOCAL_SPLITS:
        raise UserError(
            f"a local data file has no split {split!r}: use dev (held-out rows) | nodev "
            "(the rest) | all"
        )
    if split not in ("dev", "nodev"):
        return rows
    order = list(range(len(rows)))
    random.Random(DEV_SEED).shuffle(order)
    dev = set(order[: min(DEV_SIZE, len(rows) // 5 or 1)])
    return [r for i, r in enumerate(rows) if (i in dev) == (split == "dev")]


def load_rows(path: str, split: str, hub_config: str | None, bundled: str | None) -> list[dict]:
    """Rows through ``datasets``: 'bundled', a local jsonl/json/parquet file, or a hub name."""
    import datasets

    datasets.disable_progress_bars()
    if path == "bundled":
        if bundled is None:
            raise UserError("this task has no bundled sample: give --data PATH or a hub name")
        path = str(bundled_data(bundled))
    p = Path(path).expanduser()
    try:
        if is_local(path):
            if p.is_dir():
                raise UserError(f"data path {p} is a directory: give a data file in it")
            if not p.is_file():
                raise UserError(
                    f"data file not found: {p} (give a {' / '.join(LOCAL_SUFFIXES)} file or a "
                    "hub name)"
                )
            if p.suffix not in LOCAL_SUFFIXES:
                raise UserError(
                    f"data file {p} has an unsupported type ({p.suffix or 'no suffix'}): "
                    f"save it as {' / '.join(LOCAL_SUFFIXES)}"
                )
            if p.suffix != ".parquet" and not p.read_bytes().strip():
                raise UserError(f"no rows in {path!r}: the file is empty")
            if p.suffix == ".csv":
                rows = read_csv(p)
            elif p.suffix == ".jsonl":
                rows = read_jsonl(p)
            else:
                kind = "parquet" if p.suffix == ".parquet" else "json"
                rows = list(datasets.load_dataset(kind, data_files=str(p), split="train"))
            if not rows:
                raise UserError(f"no rows in {path!r}")
            return carve(rows, split)
        from saie_lite import hub_access

        hub_access.settle()
        return list(datasets.load_dataset(path, hub_config, split=split))
    except UserError:
        raise
    except Exception as e:  # datasets raises many types; all mean "could not read"
        from saie_lite.hub_access import offline_reason

        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"could not load data {path!r}: {offline_reason(path, str(e)) or first[:200]}"
        ) from None


@dataclass(frozen=True)
class BadLine:
    """A JSONL line that is not a JSON value: skipped and counted like a bad row."""

    reason: str


def read_jsonl(p: Path) -> list:
    """One row per non-blank line. Read here, not through ``datasets``, whose JSON reader
    fails the whole file on one broken line (without naming it) and on a column whose
    type changes between rows; a broken line is one skipped row."""
    rows: list = []
    with p.open("rb") as f:
        for i, raw in enumerate(f):
            try:
                # a byte-order mark (Windows' "UTF-8 with BOM") opens the first line only
                line = raw.decode("utf-8-sig" if i == 0 else "utf-8")
            except UnicodeDecodeError:
                rows.append(BadLine("line is not UTF-8 text"))
                continue
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append(BadLine("line is not valid JSON"))
    return rows


def read_csv(p: Path) -> list:
    """Rows of a CSV file as text cells ('007' stays '007', an empty cell stays ''), read
    with the csv module: it names the line of a broken quote (``datasets`` only says that
    generation failed), a spreadsheet's byte-order mark does not stick to the first
    column's name, and a row with more cells than the header is one skipped row (pandas
    would silently shift every row's columns)."""
    import csv

    rows: list = []
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
            if not header:
                raise UserError(f"no rows in {str(p)!r}: the file is empty")
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue  # a blank line
                if len(cells) > len(header):
                    rows.append(BadLine("row has more cells than the header"))
                    continue
                rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)))))
        except csv.Error as e:
            raise UserError(
                f"CSV {p.name} is broken near line {reader.line_num}: {e} (is a quote left open?)"
            ) from None
        except UnicodeDecodeError as e:
            # a spreadsheet's "CSV" in a Windows code page (cp1252): an accent stops it
            raise UserError(
                f"CSV {p.name} is not UTF-8 text (it holds byte {e.object[e.start]:#04x}): "
                "save it as 'CSV UTF-8'"
            ) from None
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:  # the last column of a name would silently win
            raise UserError(f"CSV {p.name} names a column twice ({', '.join(dupes)}): rename one")
    if not rows:
        raise UserError(f"no rows in {str(p)!r}: the file has a header line only")
    return rows


# A preset's rows that are all unusable are often a file in the user's own layout.
PRESET_HINT = ": to read your own layout, give --task custom"


def parse_all(
    rows: list[dict],
    parse_row: Callable[[dict, int], Example | str],
    what: str,
    path: str,
    hint: str = "",
) -> tuple[list[Example], dict[str, int]]:
    """Examples plus a count of skipped rows by reason (never a crash on a bad row);
    ``hint`` ends the line when no row is usable."""
    examples: list[Example] = []
    skipped: dict[str, int] = {}
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            parsed = parse_row(row, i)
        else:
            parsed = row.reason if isinstance(row, BadLine) else "row is not an object"
        if isinstance(parsed, str):
            skipped[parsed] = skipped.get(parsed, 0) + 1
        else:
            examples.append(parsed)
    if not examples:
        raise UserError(f"no usable {what} rows in {path!r} (skipped: {skipped or 'none'}){hint}")
    return distinct_ids(examples), skipped


def distinct_ids(examples: list[Example]) -> list[Example]:
    """Each example keyed apart: a row whose id an earlier row already has (a data file
    with repeated ids) becomes ``ID#2``, ``ID#3``..., since runs and evaluations store
    one row per id and a repeat would overwrite the earlier one."""
    taken = {e.id for e in examples}
    seen: set[str] = set()
    out = []
    for e in examples:
        if e.id in seen:
            n = 2
            while f"{e.id}#{n}" in taken:
                n += 1
            e = dataclasses.replace(e, id=f"{e.id}#{n}")
            taken.add(e.id)
        seen.add(e.id)
        out.append(e)
    return out
