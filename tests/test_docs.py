"""The docs cannot drift from the tree and the CLI: every repository path the README and
docs/ name exists, and every ``saie-lite COMMAND [SUB] --flag`` they name is one the CLI
has. The checks run on the real pages; the last tests prove that they catch a bad one."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from saie_lite.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Names that read as repository paths when they appear in code or a link.
TOP = ("saie_lite", "backends", "recipes", "examples", "tests", "docs", ".ci")
TOP_FILES = ("pyproject.toml", "README.md", "mkdocs.yml")
PATH = re.compile(
    r"(?<![\w./~$-])((?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w./-]*"
    r"|(?:" + "|".join(re.escape(f) for f in TOP_FILES) + r"))(?![\w/-])"
)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# A command starts at the program's name; it ends at a shell separator or the code's end.
PROGRAM = re.compile(r"(?<![\w/.~-])(?:saie-lite|saie_lite\.cli)(?![\w-])")
SEPARATORS = re.compile(r"\s(?:\||&&|;|#|>)\s|\n")


def code_texts(markdown: str) -> list[str]:
    """Fenced blocks (line continuations joined) and inline code spans."""
    blocks = [b.replace("\\\n", " ") for b in (m.group(0) for m in FENCE.finditer(markdown))]
    rest = FENCE.sub("", markdown)
    return blocks + SPAN.findall(rest)


def named_paths(markdown: str) -> set[str]:
    """Repository paths in code; link targets are checked relative to the page."""
    found = set()
    for text in code_texts(markdown):
        found.update(p.rstrip(".,:;") for p in PATH.findall(text))
    return found


def broken_links(page: Path, markdown: str) -> list[str]:
    bad = []
    for target in LINK.findall(FENCE.sub("", markdown)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            bad.append(target)
    return bad


def cli_table() -> dict[tuple[str, ...], set[str]]:
    """(command path) -> the options it takes, read from the Typer app itself."""
    table: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd, path: tuple[str, ...]) -> None:
        opts = {"--help"}
        for p in cmd.params:
            opts.update(o for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])])
        table[path] = {o for o in opts if o.startswith("-")}
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return table


def named_commands(markdown: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """Each ``saie-lite ...`` in code: (command path, the flags given to it)."""
    out = []
    for text in code_texts(markdown):
        for m in PROGRAM.finditer(text):
            tail = SEPARATORS.split(text[m.end() :], maxsplit=1)[0]
            try:
                words = shlex.split(tail, posix=True)
            except ValueError:  # an unclosed quote in prose: read it word by word
                words = tail.split()
            out.append(split_command(words))
    return out


def split_command(words: list[str]) -> tuple[tuple[str, ...], list[str]]:
    table = cli_table()
    path: tuple[str, ...] = ()
    for w in words:
        if w.startswith("-") or (*path, w) not in table:
            if not path and not w.startswith("-") and w.isidentifier():
                path = (w,)  # an unknown command: reported by the caller
            break
        path = (*path, w)
    flags = [w.split("=", 1)[0] for w in words if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w)]
    return path, flags


def bad_commands(markdown: str) -> list[str]:
    table = cli_table()
    bad = []
    for path, flags in named_commands(markdown):
        if path not in table:
            bad.append(f"saie-lite {' '.join(path)}: no such command")
            continue
        bad += [
            f"saie-lite {' '.join(path)} {f}: no such flag" for f in flags if f not in table[path]
        ]
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_named_path_exists(page):
    text = page.read_text()
    missing = sorted(p for p in named_paths(text) if not (ROOT / p.rstrip("/")).exists())
    assert missing == [], f"{page.name} names paths that do not exist"
    assert broken_links(page, text) == [], f"{page.name} links to files that do not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_named_command_and_flag_exists(page):
    assert bad_commands(page.read_text()) == []


def test_the_pages_name_commands_and_paths_at_all():
    """The checks above see something: an empty match would pass every page."""
    readme = (ROOT / "README.md").read_text()
    assert ("train",) in [p for p, _ in named_commands(readme)]
    assert "recipes/quickstart.yaml" in named_paths(readme)


def test_a_bad_path_or_link_is_caught():
    page = ROOT / "docs" / "index.md"
    text = "Read `saie_lite/train/no_such_file.py` and [this](no-such-page.md).\n"
    assert named_paths(text) == {"saie_lite/train/no_such_file.py"}
    assert broken_links(page, text) == ["no-such-page.md"]


def test_a_bad_command_or_flag_is_caught():
    text = (
        "```bash\nsaie-lite train --recipe recipes/quickstart.yaml \\\n  --no-such-flag 3\n```\n"
        "and `saie-lite logs export RUN --nope` and `saie-lite frobnicate --limit 2`.\n"
    )
    assert bad_commands(text) == [
        "saie-lite train --no-such-flag: no such flag",
        "saie-lite logs export --nope: no such flag",
        "saie-lite frobnicate: no such command",
    ]
    good = "`saie-lite eval --run RUN --split dev` | `saie-lite logs list | head`"
    assert bad_commands(good) == []
