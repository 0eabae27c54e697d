"""Item identity for evaluations, and pairing two of them for ``compare``.

An item is known by its content (a short hash of the question and the reference
answer), not by its row position: two evaluations of equal length over different rows or
files share no ids, so ``compare`` refuses them instead of pairing unrelated questions.
The dataset's own id (CommonsenseQA's ``id``, or ``row-N``) is kept beside it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from saie_lite.errors import UserError
from saie_lite.evaluate.metrics import RANGE
from saie_lite.evaluate.stats import paired, paired_continuous

# Written into summary.json; a summary without it predates content ids.
ID_SCHEME = "sha256(question, answer)[:16]"


def content_id(question: str, answer: str) -> str:
    blob = json.dumps([question.strip(), str(answer).strip()], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def unique_ids(rows: list[dict]) -> list[str]:
    """Content ids of ``rows`` (in order); a repeated question+answer pair gets ``#2``,
    ``#3``... by order of appearance, so every item of one evaluation keeps its own id."""
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        cid = r.get("item_id") or content_id(r["question"], r["gold"])
        seen[cid] = seen.get(cid, 0) + 1
        out.append(cid if seen[cid] == 1 else f"{cid}#{seen[cid]}")
    return out


def load_summary(path: Path) -> dict:
    """A summary.json that ``compare`` can pair, or one line saying why not."""
    p = Path(path)
    p = p / "summary.json" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"no evaluation summary at {p}: give an eval directory or its summary.json")
    try:
        s = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{p} is not valid JSON: re-run the evaluation to rewrite it") from None
    items = s.get("items") if isinstance(s, dict) else None
    fields = ("id", "strict_correct", "flexible_correct")
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and all(f in i for f in fields) for i in items
    ):
        raise UserError(
            f"{p} is not a saie-lite evaluation summary (no items with id, strict_correct and "
            "flexible_correct): give the summary.json that 'saie-lite eval' wrote"
        )
    for n, item in enumerate(items, 1):  # a hand-edited or damaged file: say which item
        bad = _bad_item(item)
        if bad:
            raise UserError(f"{p}: item {n} {bad}: re-run the evaluation to rewrite it")
    ids = [i["id"] for i in items]
    if len(set(ids)) != len(ids):
        raise UserError(f"{p} lists an item id twice: re-run the evaluation to rewrite it")
    if s.get("item_ids") != ID_SCHEME:
        raise UserError(
            f"{p} was written before items had content ids, so it cannot be paired safely: "
            "run the same 'saie-lite eval' again to rewrite it (finished items are not redone)"
        )
    return s


def _bad_item(item: dict) -> str | None:
    """What is wrong with one summary item, or None."""
    if not isinstance(item["id"], str) or not item["id"]:
        return f"has id {item['id']!r}, not a text id"
    for f in ("strict_correct", "flexible_correct"):
        if not isinstance(item[f], (bool, int)) or item[f] not in (0, 1):
            return f"has {f} {item[f]!r}, not true/false"
    for name, value in (item.get("metrics") or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"has metric {name} {value!r}, not a number"
    return None


def compare(a: dict, b: dict, shared_only: bool = False) -> dict:
    """Paired comparison of two evaluations item by item (same content ids).

    Different item sets are refused unless ``shared_only``; then only the shared items
    are paired and the result says how many were left out on each side.
    """
    ia = {i["id"]: i for i in a["items"]}
    ib = {i["id"]: i for i in b["items"]}
    shared = set(ia) & set(ib)
    only_a, only_b = len(ia) - len(shared), len(ib) - len(shared)
    if (only_a or only_b) and not shared_only:
        raise UserError(
            f"the evaluations cover different items (n={len(ia)} vs n={len(ib)}; "
            f"{len(shared)} shared, {only_a} only in A, {only_b} only in B): evaluate both "
            "with the same --data, --split and --limit, or pass --shared-only to pair the "
            "shared items"
        )
    if not shared:
        raise UserError(
            f"the evaluations share no items (n={len(ia)} vs n={len(ib)}): nothing to pair"
        )
    ids = sorted(shared)
    out: dict = {"n": len(ids), "left_out": {"A": only_a, "B": only_b}}
    # Marks exist only where the data has a check: data.check none marks nothing right.
    checked = all((x.get("settings") or {}).get("check") != "none" for x in (a, b))
    for kind in ("strict", "flexible") if checked else ():
        key = f"{kind}_correct"
        p = paired([bool(ia[i][key]) for i in ids], [bool(ib[i][key]) for i in ids])
        out[kind] = {**p.__dict__, "verdict": p.verdict()}
    # Continuous metrics both evaluations hold for every shared item: paired t-test and
    # Wilcoxon signed-rank, with the mean difference B - A and its interval.
    names = [
        m
        for m in ("nll", "rouge")
        if all(m in (ia[i].get("metrics") or {}) for i in ids)
        and all(m in (ib[i].get("metrics") or {}) for i in ids)
    ]
    out["metrics"] = {
        m: paired_continuous(
            [ia[i]["metrics"][m] for i in ids], [ib[i]["metrics"][m] for i in ids], RANGE[m]
        )
        for m in names
    }
    return out
