"""Every command ends a user's mistake in one line with exit code 2, never a traceback."""

from __future__ import annotations

import functools

import typer

from saie_lite.errors import UserError


class GuardedTyper(typer.Typer):
    """A Typer whose commands turn errors into one line: ``UserError`` carries its own
    line; an ``OSError`` no check foresaw (a full disk, a vanished file) still gets one,
    naming the file; so do SQLite's and safetensors' storage errors."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorate(fn):
            @functools.wraps(fn)
            def guarded(*a, **k):
                try:
                    return fn(*a, **k)
                except UserError as e:
                    fail(str(e))
                except BrokenPipeError:
                    # the reader of our output went away (`| head`): end quietly, as
                    # command-line tools do, with nothing more written to the pipe
                    _silence_stdout()
                    raise typer.Exit(1) from None
                except OSError as e:
                    where = f" ({e.filename})" if e.filename else ""
                    fail(
                        f"{e.strerror or type(e).__name__}{where}: check the path, its "
                        "permissions and free space, then run the command again"
                    )
                except Exception as e:
                    line = storage_failure(e)
                    if line is None:
                        raise  # a bug: its traceback is what a report needs
                    fail(line)

            return register(guarded)

        return decorate


def _silence_stdout() -> None:
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (tests capture it)
        pass


def storage_failure(
    e: Exception,
    again: str = "run the command again; a stopped train run goes on with "
    "saie-lite train --resume RUN_DIR",
) -> str | None:
    """One line for the storage errors that are not ``OSError``: SQLite's (a full disk
    under a run's database; or a database another process holds, which is no fault of
    the disk or the file) and safetensors' (a full disk, a damaged weights file)."""
    import sqlite3

    from saie_lite.store import DatabaseBusy, is_busy

    if isinstance(e, DatabaseBusy):  # waited for already: the line with this command's `again`
        return e.line(again)
    if is_busy(e):
        return (
            f"a database is busy (held by another process) ({e}): let that process finish "
            f"(or close it), then {again}"
        )
    if isinstance(e, sqlite3.Error):
        what = f"database error ({e})"
    elif type(e).__name__ == "SafetensorError":  # safetensors is imported only by some commands
        what = f"a weights file could not be read or written ({e})"
    else:
        return None
    return f"{what}: free disk space (or restore the damaged file), then {again}"


def fail(message: str) -> None:
    from saie_lite.safe_text import visible

    # an error line often quotes what it refuses (a path, a data field, a server's
    # body): written out visibly, so it cannot drive the terminal
    typer.secho(f"error: {visible(message)}", fg="red", err=True)
    raise typer.Exit(2)
