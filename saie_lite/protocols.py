"""The two small protocols every backend implements, and the plain data they pass.

A chat is a list of ``{"role": ..., "content": ...}`` dicts, the format every chat
template and every OpenAI-style server understands, so backends need no adapter layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

Chat = list[dict[str, str]]


@dataclass
class Example:
    id: str
    question: str
    reference: str  # full reference solution, used as the training target
    answer: str  # gold final answer (normalised number for GSM8K, a letter for choices)
    choices: list[str] | None = None  # choice labels for multiple-choice tasks
    # Chat-format data: the turns before the reference answer (system turn first); the
    # learner sees these instead of a system prompt plus ``question``.
    context: list[dict[str, str]] | None = None


@dataclass
class TrainSequence:
    """A chat context plus the learner turn that carries the loss.

    Only the tokens of ``target`` (and the end-of-turn marker) are trained; the
    question, earlier learner turns and partner remarks are context with masked loss.
    """

    context: Chat
    target: str
    kind: str = "plain"  # plain | supportive | adversarial (for logs and tests)
    # Sequences with the same non-empty group open with the same turns (an example's
    # question and answer, before each stance's remark): a learner may compute that
    # shared prefix once. Purely a speed hint; the loss is the same either way.
    group: str = ""


@dataclass
class StepStats:
    loss: float
    n_sequences: int
    n_target_tokens: int
    n_tokens: int = 0


@runtime_checkable
class Learner(Protocol):
    """The model being fine-tuned (LoRA adapters on a frozen base)."""

    name: str

    def generate(
        self, chats: list[Chat], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        """One reply per chat, batched; greedy when temperature is 0."""
        ...

    def count_tokens(self, chat: Chat, target: str = "") -> int:
        """Tokens the chat (plus a target turn) takes in this learner's template."""
        ...

    def reseed(self, seed: int) -> None:
        """Seed every RNG the backend draws from (sampling, dropout)."""
        ...

    def train_step(self, sequences: list[TrainSequence]) -> StepStats:
        """One optimizer update on a batch; loss only on target tokens."""
        ...

    def save(self, directory: Path) -> None:
        """Write adapter weights, optimizer state and step counter into ``directory``."""
        ...

    def load(self, directory: Path) -> None:
        """Restore what ``save`` wrote."""
        ...


@runtime_checkable
class Partner(Protocol):
    """A frozen model that remarks on the learner's answers."""

    name: str  # identifies model + settings; part of the remark-cache key

    def remark(self, chats: list[Chat], max_tokens: int) -> list[str]:
        """One remark per chat; a ``MissingRemark`` where the partner gave none."""
        ...


class MissingRemark(str):
    """A remark the partner did not give after every retry (null or empty content, a
    refusal, no choices). It reads as an empty string, so agents that only generate
    still work; the training loop records ``reason`` and skips that discussion."""

    reason: str

    def __new__(cls, reason: str) -> MissingRemark:
        obj = super().__new__(cls, "")
        obj.reason = reason
        return obj


class Callbacks:
    """Live-view hooks; the UI overrides what it shows. All no-ops here."""

    def on_begin(self, info: dict) -> None: ...
    def on_exchange(self, ex: dict) -> None: ...
    def on_step(self, row: dict) -> None: ...
    def on_event(self, message: str) -> None: ...
    def on_end(self, summary: dict) -> None: ...
