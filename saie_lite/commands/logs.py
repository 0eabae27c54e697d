"""``saie-lite logs``: saved debates, evaluations and runs."""

from __future__ import annotations

from pathlib import Path

import typer

from saie_lite.errors import UserError


def logs_list() -> None:
    """List saved debates, evaluations and runs."""
    from saie_lite.evaluate.logs import list_logs

    typer.echo(list_logs())


def logs_show(
    what: str = typer.Argument(
        ..., help="debate number from 'logs list', or an evaluation directory"
    ),
) -> None:
    """Print one debate transcript, or an evaluation's items (question, answer, mark, reference)."""
    from saie_lite.evaluate.logs import get_debate, show_eval
    from saie_lite.evaluate.transcripts import to_markdown

    if what.isdigit():
        typer.echo(to_markdown(get_debate(int(what))))
    elif Path(what).is_dir():
        typer.echo(show_eval(Path(what)))
    else:
        raise UserError(
            f"{what!r} is neither a debate number nor a directory: see 'saie-lite logs list'"
        )


def logs_remarks(run_dir: Path = typer.Argument(..., help="a training run directory")) -> None:
    """A run's remark diagnostics: echo, on-stance and degenerate rates per stance."""
    from saie_lite.evaluate.logs import run_remarks

    typer.echo(run_remarks(run_dir))


def logs_export(
    what: str = typer.Argument(
        ..., help="debate number from 'logs list', or a run directory with --format dataset"
    ),
    format: str = typer.Option("md", help="md | json (a debate) | dataset (a training run)"),
    out: Path | None = typer.Option(
        None, help="write here instead of stdout (dataset: a directory)"
    ),
    text: bool = typer.Option(
        False, "--text", help="dataset: prompt and completion as plain text, not chat messages"
    ),
) -> None:
    """Export a debate transcript (Markdown, JSON), or a run's discussions as a dataset."""
    if format == "dataset":
        from saie_lite.export.dataset import export_dataset

        typer.echo(f"wrote {export_dataset(Path(what), out, text)}")
        return
    from saie_lite.evaluate.logs import get_debate
    from saie_lite.evaluate.transcripts import to_json, to_markdown

    if text:
        raise UserError("--text goes with --format dataset (md and json are text already)")
    if format not in ("md", "json"):
        raise UserError(f"--format must be md, json or dataset, got {format!r}")
    if not what.isdigit():
        raise UserError(
            f"{what!r} is not a debate number: see 'saie-lite logs list' "
            "(a run directory needs --format dataset)"
        )
    d = get_debate(int(what))
    text = to_json(d) if format == "json" else to_markdown(d)
    if out:
        out.write_text(text)
        typer.echo(f"wrote {out}")
    else:
        typer.echo(text)
