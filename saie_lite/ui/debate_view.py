"""Live view of a debate: each agent's turn as it streams, side by side or stacked,
round by round, then every agent's extracted answer and the vote. Plain text when
stdout is not a terminal."""

from __future__ import annotations

import sys

from saie_lite.errors import UserError


class PlainDebateView:
    def __init__(self, stream=None):
        self.out = stream or sys.stdout

    def _p(self, s: str) -> None:
        print(s, file=self.out, flush=True)

    def begin(self, question: str, names: list[str]) -> None:
        self._p(f"Question: {question}")
        self._p("Agents: " + ", ".join(f"{i + 1}={n}" for i, n in enumerate(names)))

    def begin_round(self, r: int) -> None:
        self._p(f"--- Round {r + 1} ---")

    def update(self, agent: int, text: str) -> None:  # plain output waits for whole turns
        pass

    def end_turn(self, agent: int, text: str, key: str | None) -> None:
        self._p(f"[agent {agent + 1}] {text.strip()}")
        self._p(f"[agent {agent + 1}] answer: {key if key is not None else '(none)'}")

    def end_round(self) -> None:
        pass

    def verdict(self, keys: list[str | None], final: str | None, debate_id: int | None) -> None:
        self._p("Vote: " + ", ".join(f"agent {i + 1}: {k}" for i, k in enumerate(keys)))
        self._p(f"Final answer: {final if final is not None else '(no answer)'}")
        if debate_id is not None:
            self._p(f"Saved as debate {debate_id} (saie-lite logs show {debate_id})")


class RichDebateView:
    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console()
        self.live = None
        self.texts: list[str] = []
        self.keys: list[str | None] = []
        self.names: list[str] = []
        self.round = 0

    def begin(self, question: str, names: list[str]) -> None:
        from rich.panel import Panel

        self.names = names
        self.console.print(Panel(question, title="Question", title_align="left"))

    def _render(self):
        from rich.columns import Columns
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        panels = []
        for i, name in enumerate(self.names):
            body = Text(self.texts[i] or "...")
            if self.keys[i] is not None or self.done[i]:
                body.append(f"\nanswer: {self.keys[i]}", style="bold cyan")
            style = "green" if self.done[i] else "yellow"
            panels.append(Panel(body, title=f"agent {i + 1}: {name}", border_style=style))
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
        self.live.stop()

    def verdict(self, keys: list[str | None], final: str | None, debate_id: int | None) -> None:
        from rich.table import Table

        t = Table(title="Vote (last round)")
        t.add_column("agent")
        t.add_column("answer")
        for i, k in enumerate(keys):
            mark = " <- majority" if k is not None and k == final else ""
            t.add_row(f"{i + 1}: {self.names[i]}", f"{k}{mark}")
        self.console.print(t)
        shown = final if final is not None else "(no answer)"
        self.console.print(f"[bold]Final answer:[/] {shown}")
        if debate_id is not None:
            self.console.print(f"saved as debate {debate_id} (saie-lite logs show {debate_id})")


def make_debate_view(kind: str):
    if kind not in ("auto", "rich", "plain"):
        raise UserError(f"--live: auto | rich | plain, got {kind!r}")
    if kind == "rich" or (kind == "auto" and sys.stdout.isatty()):
        return RichDebateView()
    return PlainDebateView()
