"""Live view of a debate: each agent's turn as it streams, side by side or stacked,
round by round, then every agent's extracted answer and the vote. Plain text when
stdout is not a terminal.

The question, the agents' turns, their extracted answers and the agent names are text
from outside: every one goes through :mod:`saie_lite.safe_text`, so a question holding
``[link=...]`` or an escape sequence prints as written and never drives the terminal."""

from __future__ import annotations

import sys

from saie_lite.errors import UserError
from saie_lite.safe_text import markup, one_line, text, visible


class PlainDebateView:
    def __init__(self, stream=None):
        self.out = stream or sys.stdout

    def _p(self, s: str) -> None:
        print(s, file=self.out, flush=True)

    def note(self, message: str) -> None:
        self._p(f"note: {one_line(message)}")

    def begin(self, question: str, names: list[str]) -> None:
        self._p(f"Question: {visible(question)}")
        self._p("Agents: " + ", ".join(f"{i + 1}={one_line(n)}" for i, n in enumerate(names)))

    def begin_round(self, r: int) -> None:
        self._p(f"--- Round {r + 1} ---")

    def update(self, agent: int, text: str) -> None:  # plain output waits for whole turns
        pass

    def end_turn(self, agent: int, text: str, key: str | None) -> None:
        self._p(f"[agent {agent + 1}] {visible(text.strip())}")
        self._p(f"[agent {agent + 1}] answer: {one_line(key) if key is not None else '(none)'}")

    def end_round(self) -> None:
        pass

    def verdict(self, keys: list[str | None], final: str | None, debate_id: int | None) -> None:
        self._p("Vote: " + ", ".join(f"agent {i + 1}: {one_line(k)}" for i, k in enumerate(keys)))
        self._p(f"Final answer: {one_line(final) if final is not None else '(no answer)'}")
        if debate_id is not None:
            self._p(f"Saved as debate {debate_id} (saie-lite logs show {debate_id})")

    def close(self) -> None:  # nothing on the terminal to put back
        pass


class RichDebateView:
    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console()
        self.live = None
        self.texts: list[str] = []
        self.keys: list[str | None] = []
        self.names: list[str] = []
        self.round = 0

    def note(self, message: str) -> None:
        self.console.print(f"[yellow]note:[/] {markup(one_line(message))}")

    def begin(self, question: str, names: list[str]) -> None:
        from rich.panel import Panel

        self.names = names
        self.console.print(Panel(text(question), title="Question", title_align="left"))

    def _render(self):
        from rich.columns import Columns
        from rich.console import Group
        from rich.panel import Panel

        panels = []
        for i, name in enumerate(self.names):
            body = text(self.texts[i] or "...")
            if self.keys[i] is not None or self.done[i]:
                body.append(f"\nanswer: {one_line(self.keys[i])}", style="bold cyan")
            style = "green" if self.done[i] else "yellow"
            title = f"agent {i + 1}: {markup(one_line(name))}"
            panels.append(Panel(body, title=title, border_style=style))
        side = self.console.width >= 60 * len(self.names)
        width = self.console.width // len(self.names) - 1 if side else None
        if side:
            for p in panels:
                p.width = width
            return Columns(panels)
        return Group(*panels)

    def begin_round(self, r: int) -> None:
        from rich.live import Live
        from rich.rule import Rule

        self.console.print(Rule(f"Round {r + 1}"))
        self.texts = [""] * len(self.names)
        self.keys = [None] * len(self.names)
        self.done = [False] * len(self.names)
        self.live = Live(self._render(), console=self.console, refresh_per_second=8)
        self.live.start()

    def update(self, agent: int, text: str) -> None:
        self.texts[agent] = text
        self.live.update(self._render())

    def end_turn(self, agent: int, text: str, key: str | None) -> None:
        self.texts[agent], self.keys[agent], self.done[agent] = text, key, True
        self.live.update(self._render())

    def end_round(self) -> None:
        self.close()

    def verdict(self, keys: list[str | None], final: str | None, debate_id: int | None) -> None:
        from rich.table import Table

        t = Table(title="Vote (last round)")
        t.add_column("agent")
        t.add_column("answer")
        for i, k in enumerate(keys):
            mark = " <- majority" if k is not None and k == final else ""
            t.add_row(text(f"{i + 1}: {one_line(self.names[i])}"), text(f"{one_line(k)}{mark}"))
        self.console.print(t)
        shown = one_line(final) if final is not None else "(no answer)"
        self.console.print("[bold]Final answer:[/] ", text(shown), sep="")
        if debate_id is not None:
            self.console.print(f"saved as debate {debate_id} (saie-lite logs show {debate_id})")

    def close(self) -> None:
        """Stop the live display, if one is running. Called on every way out, Ctrl-C
        included: a Live left running keeps the cursor hidden after the program ends."""
        if self.live is not None:
            self.live.stop()
            self.live = None


def make_debate_view(kind: str):
    if kind not in ("auto", "rich", "plain"):
        raise UserError(f"--live: auto | rich | plain, got {kind!r}")
    if kind == "rich" or (kind == "auto" and sys.stdout.isatty()):
        return RichDebateView()
    return PlainDebateView()
