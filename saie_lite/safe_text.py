"""The one path by which text from outside reaches a terminal or an exported file.

Questions, reference answers, the learner's answers, the partner's remarks, a server's
error body and anything read back from the stores are data: never Rich markup, never
control sequences. A remark holding ``\\x1b]0;title\\x07`` must not set the window title,
and a question holding ``[link=file:///etc/passwd]`` must not become a live link.
Every view prints such text through :func:`visible` (plain output, Markdown) or
:func:`text` / :func:`markup` (Rich).
"""

from __future__ import annotations

import re

# C0 controls but newline and tab, DEL, and the C1 controls (0x80-0x9f: a terminal may
# read 0x9b as CSI). Newline and tab are layout, the rest can drive the terminal.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _show(m: re.Match) -> str:
    return f"\\x{ord(m.group()):02x}"


def visible(s: object) -> str:
    """``s`` as a string with every control character but newline and tab written out
    in a visible form (``ESC`` becomes the four characters ``\\x1b``). A carriage return
    is shown too: alone it lets a line overwrite what came before it on the screen."""
    return _CONTROL.sub(_show, str(s))


def one_line(s: object) -> str:
    """:func:`visible`, with newlines and tabs as spaces: for a one-line message."""
    return " ".join(visible(s).split())


def markup(s: object) -> str:
    """``s`` ready to sit inside a Rich markup string: control characters made visible
    and square brackets escaped, so ``[bold]`` or ``[link=...]`` prints as written."""
    from rich.markup import escape

    return escape(visible(s))


def text(s: object, style: str = ""):
    """``s`` as a Rich ``Text``: Rich never parses a ``Text`` for markup, and the
    control characters are made visible first."""
    from rich.text import Text

    return Text(visible(s), style=style)


# What JSON leaves raw inside a string with ensure_ascii=False: DEL and the C1 controls
# (json.dumps escapes only the C0 ones).
_JSON_RAW = re.compile("[\x7f-\x9f]")


def json_text(s: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with DEL and the C1
    controls written as ``\\u00XX``: the same JSON value, and nothing in it a terminal
    would act on (0x9b is a CSI to some). Outside strings JSON holds no such character."""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", s)
