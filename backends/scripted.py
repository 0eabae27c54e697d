"""Deterministic learner and partner for tests and ``--dry-run``.

Replies come from a queue (``enqueue``) or, when it is empty, from a rule; every call is
recorded in ``history`` so tests can inspect exactly what a model was sent.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

from saie_lite.fsutil import atomic_write_text
from saie_lite.protocols import Chat, StepStats, TrainSequence


class ScriptedLearner:
    """Answers from a queue, else echoes a fixed answer; 'trains' by counting."""

    def __init__(self, default: str = "Let me think.\n#### 0", name: str = "scripted"):
        self.name = name
        self.default = default
        self.queue: deque[str] = deque()
        self.history: list[dict] = []
        self.step = 0
        self.tokens_generated = 0

    def enqueue(self, *replies: str) -> None:
        self.queue.extend(replies)

    def generate(
        self, chats: list[Chat], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        out = [self.queue.popleft() if self.queue else self.default for _ in chats]
        self.history.append({"call": "generate", "chats": chats, "replies": out})
        self.tokens_generated += sum(len(o.split()) for o in out)
        return out

    def count_tokens(self, chat: Chat, target: str = "") -> int:
        # A whitespace token count is enough for testing the context policy.
        return sum(len(m["content"].split()) for m in chat) + len(target.split())

    def reseed(self, seed: int) -> None:
        self.history.append({"call": "reseed", "seed": seed})

    def nll(self, chats: list[Chat], targets: list[str]) -> list[float]:
        """A deterministic stand-in that falls as the learner 'trains' (tests only)."""
        return [(1 + len(t.split()) % 5) / (1 + self.step) for t in targets]

    def train_step(self, sequences: list[TrainSequence]) -> StepStats:
        self.step += 1
        self.history.append({"call": "train_step", "sequences": sequences})
        n_tok = sum(len(s.target.split()) for s in sequences)
        return StepStats(loss=1.0 / self.step, n_sequences=len(sequences), n_target_tokens=n_tok)

    def save(self, directory: Path) -> None:
        atomic_write_text(Path(directory) / "scripted.json", json.dumps({"step": self.step}))

    def load(self, directory: Path) -> None:
        self.step = json.loads((Path(directory) / "scripted.json").read_text())["step"]

    def load_adapter(self, directory: Path) -> None:
        self.load(directory)


class ScriptedPartner:
    """Remarks from a queue, else a stance-tagged canned remark."""

    def __init__(self, name: str = "scripted-partner"):
        self.name = name
        self.queue: deque[str] = deque()
        self.history: list[dict] = []

    def enqueue(self, *replies: str) -> None:
        self.queue.extend(replies)

    def remark(self, chats: list[Chat], max_tokens: int) -> list[str]:
        out = []
        for chat in chats:
            if self.queue:
                out.append(self.queue.popleft())
            else:
                critical = "critical" in chat[-1]["content"]  # the stance goes last
                out.append(
                    "Are you sure? Check each step." if critical else "Well done, that is right."
                )
        self.history.append({"call": "remark", "chats": chats, "replies": out})
        return out


def create_learner(cfg) -> ScriptedLearner:
    return ScriptedLearner()


def create_partner(cfg, learner=None) -> ScriptedPartner:
    return ScriptedPartner()
