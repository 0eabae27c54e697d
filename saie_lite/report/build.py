"""What ``saie-lite report DIR`` makes of a folder: a run, an evaluation or an
ablation, each told by what it holds; and where the pages are written.

An ablation's page links to a page for each of its runs and evaluations, written beside
them (``runs/SYSTEM/report.html``, ``evals/SYSTEM/report.html``) and linked by relative
paths, so the folder can be zipped and opened anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from saie_lite.errors import UserError

NAME = "report.html"


def kind_of(d: Path) -> str:
    """'run' | 'eval' | 'ablation', or one line saying what the folder is not."""
    if not d.is_dir():
        raise UserError(f"{d} is not a directory: give a run, an evaluation or an ablation folder")
    if (d / "results.json").is_file() or ((d / "runs").is_dir() and (d / "evals").is_dir()):
        return "ablation"
    if (d / "summary.json").is_file():
        return "eval"
    if (d / "saie.sqlite").is_file() and (d / "config.yaml").is_file():
        return "run"
    raise UserError(
        f"{d} is not a run, an evaluation or an ablation (no saie.sqlite with config.yaml, "
        "no summary.json, no results.json): give one of those folders"
    )


def _write(path: Path, text: str) -> Path:
    from saie_lite.fsutil import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as e:
        raise UserError(
            f"cannot write {path} ({e.strerror or type(e).__name__}): pass --out FILE in a "
            "writable directory"
        ) from None
    return path


def build(d: Path, out: Path | None = None) -> list[Path]:
    """Write the report of ``d`` (to ``out``, else ``d/report.html``); the paths written,
    the main page last."""
    from saie_lite.report.eval_page import eval_report
    from saie_lite.report.run_page import run_report

    d = Path(d)
    kind = kind_of(d)
    target = Path(out) if out else d / NAME
    if target.is_dir():
        raise UserError(f"--out {target} is a directory: give a file name, e.g. {target / NAME}")
    if kind == "run":
        return [_write(target, run_report(d))]
    if kind == "eval":
        return [_write(target, eval_report(d))]
    return _ablation(d, target)


def _ablation(d: Path, target: Path) -> list[Path]:
    from saie_lite.report.ablation_page import ablation_report, read_results
    from saie_lite.report.eval_page import eval_report
    from saie_lite.report.run_page import run_report

    res = read_results(d)  # before any page is written
    written: list[Path] = []
    links: dict[str, list[tuple[str, str]]] = {}
    for row in res["rows"]:
        system = row["system"]
        for what, folder, make in (("training run", d / "runs" / system, run_report),
                                   ("evaluation", d / "evals" / system, eval_report)):  # fmt: skip
            usable = folder / "config.yaml" if what == "training run" else folder / "summary.json"
            if not usable.is_file():
                continue
            page = _write(folder / NAME, make(folder))
            written.append(page)
            href = os.path.relpath(page.resolve(), target.resolve().parent)
            links.setdefault(system, []).append((what, Path(href).as_posix()))
    written.append(_write(target, ablation_report(d, links)))
    return written
