"""Inference-time strategies (docs/protocol.md section 3): single answer, self-consistency,
self-discussion and collaborative multi-agent debate, with majority vote.

An *agent* is anything with ``generate(chats, max_new_tokens, temperature) -> list[str]``
(every learner, and the llama.cpp partner); ``stream(chat, ...)`` is optional and used
by the interactive debate. Strategies work on a batch of examples at once so a learner
generates for many items in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from saie_lite.protocols import Chat, Example, Streams, supports
from saie_lite.tasks import example_chat

STRATEGIES = ("single", "self-consistency", "self-discussion", "debate")

OTHERS_PROMPT = (
    "These are the latest answers of the other agents:\n\n{others}\n\n"
    "Use their reasoning as additional advice: check it against your own, then give an "
    "updated answer, ending with {fmt}."
)
SELF_PROMPT = (
    "{question}\n\nAnother agent answered:\n{previous}\n\n"
    "Check that answer step by step; keep what is right, fix what is wrong, and give your "
    "own final answer, ending with {fmt}."
)
CRITIC_SYSTEM = (
    "You are a critical study partner. Challenge the student's solution: point at a step "
    "that may be wrong, raise an objection or argue for another answer, and ask the "
    "student to defend or revise it."
)


class Agent(Protocol):
    name: str

    def generate(
        self, chats: list[Chat], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]: ...


@dataclass
class Turn:
    round: int
    agent: int
    text: str
    key: str | None  # the extracted answer the vote counts


@dataclass
class ItemResult:
    example: Example
    turns: list[Turn] = field(default_factory=list)
    final_text: str = ""
    final_key: str | None = None
    # Log-likelihood scoring: every choice's score (label -> log-probability).
    choice_scores: dict[str, float] | None = None


def majority(keys: list[str | None]) -> tuple[str | None, int]:
    """Most frequent non-empty key and the index of its first holder.

    Ties go to the key whose first holder comes earliest (the earliest agent or sample).
    No key at all gives (None, 0): the first answer stands, and scores as a parse failure.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k is None:
            continue
        counts[k] = counts.get(k, 0) + 1
        first.setdefault(k, i)
    if not counts:
        return None, 0
    best = max(counts, key=lambda k: (counts[k], -first[k]))
    return best, first[best]


def _system_for(task, stance: str | None) -> Chat:
    base = task.learner_chat("")[0]
    if stance == "adversarial":
        # The critic still answers, so its turn can be voted on.
        content = f"{CRITIC_SYSTEM} Then give your own answer, ending with {task.ANSWER_FORMAT}."
        return [{"role": "system", "content": content}]
    return [base]


def first_chat(task, question: str, stance: str | None = None) -> Chat:
    return _system_for(task, stance) + [{"role": "user", "content": question}]


def followup_chat(task, question: str, own: str, others: list[str], stance: str | None) -> Chat:
    """Du et al. style: an agent sees its own last answer and the others' latest ones."""
    listing = "\n\n".join(f"Agent {i + 1}: {t}" for i, t in enumerate(others))
    return first_chat(task, question, stance) + [
        {"role": "assistant", "content": own},
        {"role": "user", "content": OTHERS_PROMPT.format(others=listing, fmt=task.ANSWER_FORMAT)},
    ]


def self_chat(task, question: str, previous: str) -> Chat:
    text = SELF_PROMPT.format(question=question, previous=previous, fmt=task.ANSWER_FORMAT)
    return task.learner_chat(text)


# -- strategies, batched over examples ------------------------------------------------
def run_single(agent: Agent, task, exs: list[Example], max_new: int) -> list[ItemResult]:
    outs = agent.generate([example_chat(task, e) for e in exs], max_new, 0.0)
    return [
        ItemResult(e, [Turn(0, 0, o, task.answer_key(o))], o, task.answer_key(o))
        for e, o in zip(exs, outs)
    ]


def run_self_consistency(
    agent: Agent, task, exs: list[Example], max_new: int, k: int, temperature: float
) -> list[ItemResult]:
    chats = [example_chat(task, e) for e in exs for _ in range(k)]
    outs = agent.generate(chats, max_new, temperature)
    results = []
    for i, e in enumerate(exs):
        mine = outs[i * k : (i + 1) * k]
        turns = [Turn(0, j, o, task.answer_key(o)) for j, o in enumerate(mine)]
        key, idx = majority([t.key for t in turns])
        results.append(ItemResult(e, turns, mine[idx], key))
    return results


def run_self_discussion(
    agent: Agent, task, exs: list[Example], max_new: int, rounds: int
) -> list[ItemResult]:
    outs = agent.generate([example_chat(task, e) for e in exs], max_new, 0.0)
    results = [ItemResult(e, [Turn(0, 0, o, task.answer_key(o))]) for e, o in zip(exs, outs)]
    for r in range(1, rounds + 1):
        outs = agent.generate(
            [self_chat(task, e.question, o) for e, o in zip(exs, outs)], max_new, 0.0
        )
        for res, o in zip(results, outs):
            res.turns.append(Turn(r, 0, o, task.answer_key(o)))
    for res in results:
        res.final_text, res.final_key = res.turns[-1].text, res.turns[-1].key
    return results


Responder = Callable[[int, list[Chat]], list[str]]


def run_debate(
    n_agents: int,
    respond: Responder,
    task,
    exs: list[Example],
    rounds: int,
    stances: list[str | None] | None = None,
    before_round: Callable[[int], None] | None = None,
    after_round: Callable[[int, list[ItemResult]], None] | None = None,
) -> list[ItemResult]:
    """Collaborative debate: every agent answers, then for ``rounds`` more rounds each sees
    the others' latest answers and answers again; the last round is put to a vote.

    ``respond(agent_index, chats)`` returns that agent's replies (batched over items), so
    the caller decides how agents run (batched, streamed, on which backend).
    """
    stances = stances or [None] * n_agents
    results = [ItemResult(e) for e in exs]
    latest: list[list[str]] = [[""] * n_agents for _ in exs]
    for r in range(rounds + 1):
        if before_round:
            before_round(r)
        for a in range(n_agents):
            if r == 0:
                chats = [first_chat(task, e.question, stances[a]) for e in exs]
            else:
                chats = [
                    followup_chat(
                        task,
                        e.question,
                        latest[i][a],
                        [t for j, t in enumerate(latest[i]) if j != a],
                        stances[a],
                    )
                    for i, e in enumerate(exs)
                ]
            replies = respond(a, chats)
            for i, text in enumerate(replies):
                results[i].turns.append(Turn(r, a, text, task.answer_key(text)))
        for i, res in enumerate(results):
            latest[i] = [t.text for t in res.turns if t.round == r]
        if after_round:
            after_round(r, results)
    for res in results:
        last = [t for t in res.turns if t.round == rounds]
        key, idx = majority([t.key for t in last])
        res.final_text, res.final_key = last[idx].text, key
    return results


def stream_or_generate(agent, chat: Chat, max_new: int, temperature: float) -> Iterator[str]:
    """Yield the growing reply: token by token where the agent can stream."""
    if supports(agent, Streams):
        text = ""
        for piece in agent.stream(chat, max_new, temperature):
            text += piece
            yield text
    else:
        yield agent.generate([chat], max_new, temperature)[0]


def interactive_debate(
    question: str,
    agents: list,
    names: list[str],
    task,
    rounds: int,
    temperature: float,
    max_new: int,
    stances: list[str | None],
    view,
) -> ItemResult:
    """One typed question, agents taking turns with streamed output, then the vote."""
    ex = Example(id="typed", question=question, reference="", answer="")
    view.begin(question, names)

    def respond(a: int, chats: list[Chat]) -> list[str]:
        text = ""
        for text in stream_or_generate(agents[a], chats[0], max_new, temperature):
            view.update(a, text)
        view.end_turn(a, text, task.answer_key(text))
        return [text.strip()]

    (result,) = run_debate(
        len(agents),
        respond,
        task,
        [ex],
        rounds,
        stances,
        before_round=view.begin_round,
        after_round=lambda r, res: view.end_round(),
    )
    return result
