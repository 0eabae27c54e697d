"""One typed line at the terminal, for the interactive ``debate``.

A terminal in canonical mode (the kernel's own line editing) keeps at most 4,095 bytes
of a line and silently drops the rest, so a long pasted question would be debated cut.
GNU readline (or libedit) reads the terminal in non-canonical mode and has no such
limit; Python's ``input()`` edits through it once the module is loaded. Where readline
is missing, or stdout is not a terminal (then ``input()`` does not use it), a line that
reached the limit is reported instead of being cut without a word.
"""

from __future__ import annotations

import sys

# N_TTY_BUF_SIZE (4096) less the newline: the longest canonical-mode line on Linux.
CANONICAL_LIMIT = 4095


def _readline_loaded() -> bool:
    try:
        import readline  # noqa: F401  (loading it is what makes input() use it)
    except ImportError:
        return False
    return True


def ask_line(prompt: str, note) -> str | None:
    """The line typed after ``prompt``, or None at the end of input (Ctrl-D), like an
    empty line. ``note(message)`` says when the terminal may have cut the line."""
    through_readline = _readline_loaded() and sys.stdin.isatty() and sys.stdout.isatty()
    try:
        line = input(prompt)
    except EOFError:
        print(flush=True)  # Ctrl-D leaves the cursor after the prompt: end that line
        return None
    except KeyboardInterrupt:
        print(flush=True)  # so does Ctrl-C: what is said next starts a line of its own
        raise
    if not through_readline and len(line.encode("utf-8", "surrogateescape")) >= CANONICAL_LIMIT:
        note(
            f"the terminal keeps at most {CANONICAL_LIMIT} bytes of a typed line, so this "
            "question may have been cut: pass a longer one with --question or --file"
        )
    return line
