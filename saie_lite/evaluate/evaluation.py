"""Accuracy runs and paired comparisons (docs/protocol.md section 4).

Items are evaluated in batches and written to SQLite as they finish, so an evaluation
that stops resumes where it stopped. The summary reports n, accuracy with a 95% Wilson
interval (strict and flexible extraction side by side), the parse-failure rate, tokens
generated and wall time; ``summary.json`` also lists every item's correctness so two
evaluations can be compared item by item.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from saie_lite.config import Config
from saie_lite.errors import UserError
from saie_lite.evaluate import strategies
from saie_lite.evaluate.agents import asked_precision, tokens_generated
from saie_lite.evaluate.pairing import ID_SCHEME, content_id, unique_ids
from saie_lite.evaluate.stats import wilson
from saie_lite.fsutil import atomic_write_text
from saie_lite.protocols import CountsTokens, Example, Reseeds, ScoresChoices, supports
from saie_lite.store import Store
from saie_lite.tasks import example_chat

LOGLIK_PREFIX = "The answer is ("


def settings(cfg: Config, agent_names: list[str]) -> dict:
    """What defines an evaluation's item results: a resumed one must match it."""
    e = cfg.eval
    s = {
        "task": cfg.data.task,
        "data": cfg.data.path,
        "split": cfg.data.split,
        "limit": cfg.data.limit,
        "seed": cfg.data.seed,
        "strategy": e.strategy,
        "scoring": e.scoring,
        "max_new_tokens": e.max_new_tokens,
        "agents": agent_names,
        "metrics": e.metrics,
    }
    # recorded when asked for (older evaluations predate the keys)
    s.update({f"learner_{k}": v for k, v in asked_precision(cfg).items()})
    if cfg.data.task == "custom":  # how your own data was read decides the marks
        d = cfg.data
        s.update(check=d.check, format=d.format, fields=[d.question_field, d.answer_field])
        s["final_field"] = d.final_field
    if e.scoring == "loglik":
        s["loglik_dtype"] = e.loglik_dtype
    if e.strategy == "self-consistency":
        s.update(k=e.k, temperature=e.temperature)
    if e.strategy in ("self-discussion", "debate"):
        s["rounds"] = e.rounds
    if e.strategy == "debate":
        s["temperature"] = e.temperature
    return s


def check_can_run(cfg: Config, task, agents: list) -> list[str]:
    """The metrics to compute; refuses, before anything is written, what the agents
    cannot do: log-likelihood scoring, or a metric asked for by name."""
    from saie_lite.evaluate.metrics import resolve

    if cfg.eval.scoring == "loglik" and not supports(agents[0], ScoresChoices):
        raise UserError(
            f"agent {agents[0].name} cannot score log-likelihoods: use --scoring generate"
        )
    return resolve(cfg.eval.metrics, task, cfg.eval.scoring, agents[0])


def run_batch(cfg: Config, task, agents: list, exs: list[Example]) -> list[strategies.ItemResult]:
    e = cfg.eval
    first = agents[0]
    if e.scoring == "loglik":  # check_can_run has made sure the agent can score
        chats = [example_chat(task, x) for x in exs]
        scores = first.choice_logprobs(chats, LOGLIK_PREFIX, [x.choices or [] for x in exs])
        out = []
        for x, sc in zip(exs, scores):
            letter = pick_choice(x.choices, sc)
            text = f"The answer is ({letter})"
            res = strategies.ItemResult(x, [strategies.Turn(0, 0, text, letter)], text, letter)
            res.choice_scores = dict(zip(x.choices, sc))
            out.append(res)
        return out
    if e.strategy == "single":
        return strategies.run_single(first, task, exs, e.max_new_tokens)
    if e.strategy == "self-consistency":
        return strategies.run_self_consistency(
            first, task, exs, e.max_new_tokens, e.k, e.temperature
        )
    if e.strategy == "self-discussion":
        return strategies.run_self_discussion(first, task, exs, e.max_new_tokens, e.rounds)

    def respond(a: int, chats):
        return agents[a].generate(chats, e.max_new_tokens, e.temperature)

    return strategies.run_debate(len(agents), respond, task, exs, e.rounds)


def fit_question(cfg: Config, task, agent, ex: Example, note: Callable[[str], None]) -> Example:
    """The question clipped to the learner's context before anything is generated, as
    training does: a question of tens of thousands of tokens would otherwise cost minutes
    of attention for an answer that cannot fit. Never skipped: every item stays, so the
    evaluation still pairs with others; an item that clipping cannot fit goes as it is."""
    if not supports(agent, CountsTokens):
        return ex
    from saie_lite.train.context import fit_example

    fitted, line = fit_example(
        agent, task, ex, cfg.eval.max_new_tokens, cfg.learner.max_seq_len, "truncate"
    )
    if line:
        note(line if fitted is not None else f"{line}; evaluated unclipped")
    return fitted or ex


def pick_choice(labels: list[str], scores: list[float]) -> str:
    """The highest-scoring choice; an exact tie goes to the choice listed first (A before
    B), so the same scores always give the same letter."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return labels[best]


def margin(choice_scores: dict[str, float] | None) -> float | None:
    """How close the call was: best score minus the runner-up (0.0 is a tie)."""
    if not choice_scores or len(choice_scores) < 2:
        return None
    top = sorted(choice_scores.values(), reverse=True)
    return top[0] - top[1]


def item_row(
    task,
    idx: int,
    res: strategies.ItemResult,
    tokens: int,
    seconds: float,
    metrics: dict | None = None,
) -> dict:
    ex = res.example
    sc = task.score(res.final_text, ex.answer)
    return {
        "idx": idx,
        "example_id": ex.id,
        "item_id": content_id(ex.question, ex.answer),
        "question": ex.question,
        "reference": ex.reference,
        "gold": ex.answer,
        "final": res.final_text,
        "strict": sc.strict,
        "flexible": sc.flexible,
        "strict_correct": int(sc.strict_correct),
        "flexible_correct": int(sc.flexible_correct),
        "turns": [t.__dict__ for t in res.turns],
        "tokens": tokens,
        "seconds": seconds,
        "choice_scores": res.choice_scores,
        "metrics": metrics or {},
    }


def summarize(items: list[dict], meta: dict) -> dict:
    n = len(items)
    ids = unique_ids(items)

    def acc(key: str) -> dict:
        k = sum(i[key] for i in items)
        lo, hi = wilson(k, n)
        return {"correct": k, "accuracy": k / n if n else 0.0, "ci95": [lo, hi]}

    return {
        **meta,
        "n": n,
        "strict": acc("strict_correct"),
        "flexible": acc("flexible_correct"),
        "parse_failure_rate": {
            "strict": sum(i["strict"] is None for i in items) / n if n else 0.0,
            "flexible": sum(i["flexible"] is None for i in items) / n if n else 0.0,
        },
        "tokens_generated": sum(i["tokens"] for i in items),
        "seconds": sum(i["seconds"] for i in items),
        **close_calls(items),
        "metrics": metric_summary(items, meta.get("metrics")),
        "item_ids": ID_SCHEME,
        "items": [item_summary(cid, i) for cid, i in zip(ids, items)],
    }


def metric_summary(items: list[dict], names: list[str] | None) -> dict:
    """Mean and 95% interval of every metric: Wilson for accuracy, Student-t for the
    continuous ones."""
    from saie_lite.evaluate.metrics import CONTINUOUS, RANGE, mean_ci

    names = names if names is not None else sorted({k for i in items for k in i["metrics"]})
    out = {}
    n = len(items)
    for m in names:
        if m == "accuracy":
            k = sum(i["strict_correct"] for i in items)
            out[m] = {"n": n, "mean": k / n if n else None, "ci95": list(wilson(k, n))}
        elif m in CONTINUOUS:
            out[m] = mean_ci([i["metrics"].get(m) for i in items], bounds=RANGE[m])
    return out


def close_calls(items: list[dict]) -> dict:
    """How close log-likelihood calls were: exact ties, calls within 0.1 nats, the
    median margin (best minus runner-up). Empty for generated answers."""
    margins = sorted(m for m in (margin(i.get("choice_scores")) for i in items) if m is not None)
    if not margins:
        return {}
    mid = len(margins) // 2
    median = margins[mid] if len(margins) % 2 else (margins[mid - 1] + margins[mid]) / 2
    return {
        "loglik": {
            "ties": sum(m == 0.0 for m in margins),
            "within_0.1": sum(m < 0.1 for m in margins),
            "median_margin": median,
        }
    }


def item_summary(cid: str, row: dict) -> dict:
    out = {
        "id": cid,
        "dataset_id": row["example_id"],
        "strict_correct": bool(row["strict_correct"]),
        "flexible_correct": bool(row["flexible_correct"]),
    }
    if row.get("metrics"):
        out["metrics"] = row["metrics"]
    scores = row.get("choice_scores")
    if scores:
        out["choice_scores"] = scores
        out["margin"] = margin(scores)
    return out


def evaluate(
    cfg: Config,
    task,
    examples: list[Example],
    agents: list,
    store: Store,
    name: str,
    out_dir: Path,
    on_batch: Callable[[int, int, list[dict]], None] = lambda done, total, rows: None,
    stop: Callable[[], bool] = lambda: False,
    note: Callable[[str], None] = lambda line: None,
) -> dict:
    agent_names = [a.name for a in agents]
    want = settings(cfg, agent_names)
    have = store.eval_config(name)
    if have is not None and have != want:
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        raise UserError(
            f"{out_dir} holds an evaluation with other settings ({', '.join(diff)}): "
            "pass another --out to start a new one"
        )
    from saie_lite.evaluate.metrics import item_metrics

    names = check_can_run(cfg, task, agents)
    stored = store.eval_items(name)
    current = {x.id: x for x in examples}
    # Same settings, but the data file edited since: its stored items would be counted
    # as if they were the rows read now.
    stale = [
        i["example_id"]
        for i in stored
        if i["example_id"] not in current
        or (i["reference"], i["gold"])
        != (current[i["example_id"]].reference, current[i["example_id"]].answer)
    ]
    if stale:
        raise UserError(
            f"{out_dir} holds results for rows that changed since ({len(stale)} of "
            f"{len(stored)}, e.g. {stale[0]}): pass another --out to evaluate the data as it "
            "is now"
        )
    store.start_eval(name, want)
    done = {i["example_id"] for i in stored}
    todo = [
        (i, fit_question(cfg, task, agents[0], x, note))
        for i, x in enumerate(examples)
        if x.id not in done
    ]
    bs = cfg.eval.batch_size
    status = "finished"
    on_batch(len(done), len(examples), [])
    for start in range(0, len(todo), bs):
        if stop():
            status = "stopped"
            break
        chunk = todo[start : start + bs]
        # Sampling strategies draw the same numbers for the same items, resumed or not.
        for agent in {id(a): a for a in agents}.values():
            if supports(agent, Reseeds):
                agent.reseed(cfg.data.seed * 1_000_003 + chunk[0][0])
        t0, tok0 = time.perf_counter(), tokens_generated(agents)
        results = run_batch(cfg, task, agents, [x for _, x in chunk])
        dt, dtok = time.perf_counter() - t0, tokens_generated(agents) - tok0
        values = item_metrics(task, agents[0], results, names)
        rows = [
            item_row(task, idx, res, dtok // len(chunk), dt / len(chunk), v)
            for (idx, _), res, v in zip(chunk, results, values)
        ]
        store.add_eval_items(name, rows)
        on_batch(len(done) + start + len(chunk), len(examples), rows)
    meta = {"name": name, "status": status, "settings": want, "metrics": names}
    summary = summarize(store.eval_items(name), meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
