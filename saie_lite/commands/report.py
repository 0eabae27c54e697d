"""``report``: one self-contained HTML page of a run, an evaluation or an ablation."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    what: Path = typer.Argument(..., help="a run, evaluation or ablation directory"),
    out: Path | None = typer.Option(None, help="the HTML file to write (default DIR/report.html)"),
) -> None:
    """Write one HTML file (plots inside, no network needed) to open, mail or attach."""
    from saie_lite.report.build import build

    for path in build(what, out):
        typer.echo(f"wrote {path}")
