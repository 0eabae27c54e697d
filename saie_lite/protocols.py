"""The backend contract: the two protocols every backend implements, the optional
capabilities the core uses where a backend has them, and the plain data they pass.

A chat is a list of ``{"role": ..., "content": ...}`` dicts, the format every chat
template and every OpenAI-style server understands, so backends need no adapter layer.

Every optional method or attribute the core reads on a learner or partner is declared
below as a small capability protocol and asked for in one place, ``supports(obj, Cap)``
(tests/test_backend_contract.py fails on any other probe). docs/backends.md shows a
complete minimal backend.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, runtime_checkable

if TYPE_CHECKING:
    from saie_lite.config import Config

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
    # plain | supportive | adversarial | critique-<stance> (for logs and tests)
    kind: str = "plain"
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


# -- factories: what an entry point in ``saie_lite.learners`` / ``saie_lite.partners`` names

LearnerFactory = Callable[["Config"], Learner]
"""``create_learner(cfg)``: the resolved config in, a ``Learner`` out."""

PartnerFactory = Callable[["Config", "Learner | None"], Partner]
"""``create_partner(cfg, learner)``: the run's learner is passed (None where there is
none, e.g. a partner loaded as a debate agent) for partners that share its model."""


# -- optional capabilities ------------------------------------------------------------
# Each is what one feature needs; a backend without it still trains, and the feature is
# refused in one line or skipped (said where each is used).


@runtime_checkable
class CountsTokens(Protocol):
    """Token counting (every learner; partners used as debate agents may): questions
    are clipped to the context before anything is generated."""

    def count_tokens(self, chat: Chat, target: str = "") -> int: ...


@runtime_checkable
class Reseeds(Protocol):
    """Seedable sampling (every learner; agents may): evaluations draw the same
    numbers for the same items, resumed or not."""

    def reseed(self, seed: int) -> None: ...


@runtime_checkable
class CountsGenerated(Protocol):
    """A running count of generated tokens (evaluation summaries, bench rates)."""

    tokens_generated: int


@runtime_checkable
class Streams(Protocol):
    """Token-by-token output (the interactive debate view); else one reply at once."""

    def stream(self, chat: Chat, max_new_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        """Yields the reply's pieces as they are decoded."""
        ...


@runtime_checkable
class ScoresChoices(Protocol):
    """Log-likelihood scoring of multiple-choice labels (``eval.scoring: loglik``)."""

    def choice_logprobs(
        self, chats: list[Chat], prefix: str, choices: list[list[str]]
    ) -> list[list[float]]:
        """Per chat, the log-probability of ``prefix + label`` for each label."""
        ...


@runtime_checkable
class ScoresNll(Protocol):
    """Teacher-forced negative log-likelihood per token (the ``nll`` metric)."""

    def nll(self, chats: list[Chat], targets: list[str]) -> list[float]: ...


@runtime_checkable
class LoadsAdapter(Protocol):
    """Loading only a checkpoint's adapter weights, without the optimizer state
    (evaluating or exporting a run). Without it, ``load`` restores the whole checkpoint."""

    def load_adapter(self, directory: Path) -> None: ...


@runtime_checkable
class OnDevice(Protocol):
    """The device the learner computes on (``cpu``, ``cuda``, ``mps``): ``train.overlap:
    auto`` is on only on a GPU."""

    device: str


@runtime_checkable
class CountsSteps(Protocol):
    """The number of optimizer updates made (``save`` records it, ``load`` restores it)."""

    step: int


@runtime_checkable
class EndsAtAnswer(Protocol):
    """Answer-end detection: ``answer_end`` (None = off) is the rule that stops a reply
    once it states its final answer (``learner.stop_at_answer``); answers decoded
    elsewhere (llama.cpp snapshot, vLLM) are cut with the same rule."""

    answer_end: Any


@runtime_checkable
class Snapshots(CountsSteps, EndsAtAnswer, Protocol):
    """What the llama.cpp fast path needs (``learner.snapshot_every``): the weights with
    the adapter folded in, the base and the LoRA factors (``gguf_writer``), the model
    folder (tokenizer, config), and the learner's own prompt rendering and stop tokens."""

    model_dir: Path
    seq2seq: bool  # encoder-decoder models have no llama.cpp snapshot
    quantized: bool  # a 4-bit base cannot be merged
    chat: Any  # ``chat_tokens.ChatTokens``: ``prompt_ids(chat)``
    tok: Any  # the Hugging Face tokenizer (``decode``)
    stop_ids: Any  # token ids that end a reply

    # bf16=True: matrices as bfloat16 bit patterns (uint16), for a bf16 snapshot
    def merged_weights(self, bf16: bool = False) -> dict: ...
    def base_weights(self) -> dict: ...
    def lora_factors(self) -> dict: ...


@runtime_checkable
class ExportsAdapter(CountsSteps, EndsAtAnswer, Protocol):
    """Writing the live adapter in PEFT's format (a vLLM server loads it:
    ``learner.generate_on: vllm``)."""

    def save_adapter(self, directory: Path) -> None: ...


@runtime_checkable
class SyncsGradients(Protocol):
    """Data-parallel training: ``grad_sync`` (None alone) is set to the process group,
    whose ``sum_number`` and ``sum_grads`` the learner calls in ``train_step``."""

    grad_sync: Any


@runtime_checkable
class SharesPrefix(Protocol):
    """Shared-prefix training (``train.share_prefix``): whether ``train_step`` computes
    the common opening of a group's sequences once, and attends block by block."""

    def shares_prefix(self) -> bool: ...
    def attends_blockwise(self) -> bool: ...


@runtime_checkable
class PreparesAhead(Protocol):
    """Answers that do not always depend on the latest update (a snapshot kept for N
    updates), so the loop may prepare the next batch during an update (``train.overlap``)
    and decode the answers of the batches one snapshot serves together (``train.lookahead``)."""

    seed_step: int | None  # set by the loop: the update count such answers are seeded with

    def unchanged_by_update(self, step: int) -> bool: ...

    # The last update count whose answers come from the same weights as the answers
    # given after ``step`` updates (``train.lookahead`` decodes those batches together).
    def answers_fixed_through(self, step: int) -> int: ...


@runtime_checkable
class SharesLearner(Protocol):
    """A partner that runs on the learner's own model (``self``): its remarks cannot be
    fetched while that model updates."""

    learner: Any


@runtime_checkable
class TunableLevers(Protocol):
    """Speed levers switched for one measurement (``saie-lite bench``): ``levers(**changes)``
    sets the named ones (fields of the backend's frozen ``Levers``) for a ``with`` block,
    yields the levers in effect and restores every one on exit; ``current_levers()`` reads
    them. A lever changes only speed, never a loss or a greedy answer."""

    def levers(self, **changes: Any) -> AbstractContextManager[Any]: ...
    def current_levers(self) -> Any: ...


CAPABILITIES: tuple[type, ...] = (
    CountsTokens,
    Reseeds,
    CountsGenerated,
    Streams,
    ScoresChoices,
    ScoresNll,
    LoadsAdapter,
    OnDevice,
    CountsSteps,
    EndsAtAnswer,
    Snapshots,
    ExportsAdapter,
    SyncsGradients,
    SharesPrefix,
    PreparesAhead,
    SharesLearner,
    TunableLevers,
)


@functools.cache
def members(capability: type) -> tuple[tuple[str, bool], ...]:
    """(name, is a method) for every member a protocol declares, its bases' included."""
    out: dict[str, bool] = {}
    for klass in reversed(capability.__mro__):
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        for name in inspect.get_annotations(klass):  # this class's own, not its bases'
            out.setdefault(name, False)
        for name, value in vars(klass).items():
            if name.startswith("_"):  # typing's and abc's bookkeeping, never a member
                continue
            if callable(value) or isinstance(value, property):
                out[name] = callable(value)
    return tuple(out.items())


def supports(obj: object, capability: type) -> bool:
    """Whether ``obj`` has every member of ``capability``: the one place the core asks.

    Members are looked up with ``getattr``, so a wrapper that forwards attributes to the
    learner it wraps (``__getattr__``: the snapshot and vLLM paths, data parallelism)
    reports that learner's capabilities, on every Python version (``isinstance`` on a
    protocol looks attributes up statically from 3.12 on, missing forwarded ones)."""
    missing = object()
    for name, is_method in members(capability):
        value = getattr(obj, name, missing)
        if value is missing or (is_method and not callable(value)):
            return False
    return True


def capabilities(obj: object) -> list[str]:
    """The names of the optional capabilities ``obj`` has (tests, diagnostics)."""
    return [c.__name__ for c in CAPABILITIES if supports(obj, c)]


# -- callback payloads -------------------------------------------------------------------


class BeginInfo(TypedDict):
    total: int  # batches in the whole run
    done: int  # batches already done (a resumed run)
    examples: int
    mode: str
    learner: str
    partner: str  # "-" without one
    run_dir: str


class Exchange(TypedDict, total=False):
    """One example's card: a warm-up target, or a discussion (answer, remarks)."""

    phase: str  # warmup | discussion
    example: Example
    target: str
    answer: str
    correct: bool | None
    remarks: list[tuple[str, str, bool]]  # (stance, text, came from the cache)
    diagnostics: list[tuple[str, dict | None]]  # (stance, ``remarks.diagnose`` or None)


class StepRow(TypedDict):
    """One update, as stored (``steps`` table) plus the run's progress."""

    step: int
    phase: str
    round: int
    loss: float
    n_sequences: int
    n_target_tokens: int
    t_generate: float
    t_remark: float
    t_update: float
    batches_done: int
    total: int
    missing_remarks: int


class Summary(TypedDict):
    """What ``train`` returns and ``on_end`` receives."""

    status: str  # finished | stopped
    step: int
    batches_done: int
    total: int
    seconds: dict[str, float]  # generate | remark | update
    run_dir: str
    next: list[str]  # commands to try next (finished runs)
    missing_remarks: int
    overlapped_batches: int
    lookahead_groups: int  # groups of batches whose answers were decoded together


class Callbacks:
    """Live-view hooks; the UI overrides what it shows. All no-ops here."""

    def on_begin(self, info: BeginInfo) -> None: ...
    def on_exchange(self, ex: Exchange) -> None: ...
    def on_step(self, row: StepRow) -> None: ...
    def on_event(self, message: str) -> None: ...
    def on_end(self, summary: Summary) -> None: ...
