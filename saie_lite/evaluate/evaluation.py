"""Accuracy runs and paired comparisons (SAIE.md section 4).

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
from saie_lite.evaluate.agents import tokens_generated
from saie_lite.evaluate.stats import paired, wilson
from saie_lite.fsutil import atomic_write_text
from saie_lite.protocols import Example
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
    }
    if cfg.data.task == "custom":  # how your own data was read decides the marks
        d = cfg.data
        s.update(check=d.check, format=d.format, fields=[d.question_field, d.answer_field])
        s["final_field"] = d.final_field
    if e.strategy == "self-consistency":
        s.update(k=e.k, temperature=e.temperature)
    if e.strategy in ("self-discussion", "debate"):
        s["rounds"] = e.rounds
    if e.strategy == "debate":
        s["temperature"] = e.temperature
    return s


def run_batch(cfg: Config, task, agents: list, exs: list[Example]) -> list[strategies.ItemResult]:
    e = cfg.eval
    first = agents[0]
    if e.scoring == "loglik":
        if not hasattr(first, "choice_logprobs"):
            raise UserError(
                f"agent {first.name} cannot score log-likelihoods: use --scoring generate"
            )
        chats = [example_chat(task, x) for x in exs]
        scores = first.choice_logprobs(chats, LOGLIK_PREFIX, [x.choices or [] for x in exs])
        out = []
        for x, sc in zip(exs, scores):
            letter = x.choices[max(range(len(sc)), key=sc.__getitem__)]
            text = f"The answer is ({letter})"
            out.append(
                strategies.ItemResult(x, [strategies.Turn(0, 0, text, letter)], text, letter)
            )
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


def item_row(task, idx: int, res: strategies.ItemResult, tokens: int, seconds: float) -> dict:
    ex = res.example
    sc = task.score(res.final_text, ex.answer)
    return {
        "idx": idx,
        "example_id": ex.id,
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
    }


def summarize(items: list[dict], meta: dict) -> dict:
    n = len(items)

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
        "items": [
            {
                "id": i["example_id"],
                "strict_correct": bool(i["strict_correct"]),
                "flexible_correct": bool(i["flexible_correct"]),
            }
            for i in items
        ],
    }


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
    store.start_eval(name, want)
    done = {i["example_id"] for i in store.eval_items(name)}
    todo = [(i, x) for i, x in enumerate(examples) if x.id not in done]
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
            if hasattr(agent, "reseed"):
                agent.reseed(cfg.data.seed * 1_000_003 + chunk[0][0])
        t0, tok0 = time.perf_counter(), tokens_generated(agents)
        results = run_batch(cfg, task, agents, [x for _, x in chunk])
        dt, dtok = time.perf_counter() - t0, tokens_generated(agents) - tok0
        rows = [
            item_row(task, idx, res, dtok // len(chunk), dt / len(chunk))
            for (idx, _), res in zip(chunk, results)
        ]
        store.add_eval_items(name, rows)
        on_batch(len(done) + start + len(chunk), len(examples), rows)
    meta = {"name": name, "status": status, "settings": want}
    summary = summarize(store.eval_items(name), meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def load_summary(path: Path) -> dict:
    p = Path(path)
    p = p / "summary.json" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"no evaluation summary at {p}: give an eval directory or its summary.json")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{p} is not valid JSON: re-run the evaluation to rewrite it") from None


def compare(a: dict, b: dict) -> dict:
    """Paired comparison of two evaluations; refuses different item sets."""
    ia = {i["id"]: i for i in a["items"]}
    ib = {i["id"]: i for i in b["items"]}
    if set(ia) != set(ib):
        only_a, only_b = len(set(ia) - set(ib)), len(set(ib) - set(ia))
        raise UserError(
            f"the evaluations cover different items (n={len(ia)} vs n={len(ib)}; {only_a} only "
            f"in A, {only_b} only in B): evaluate both with the same --data, --split and --limit"
        )
    ids = sorted(ia)
    out = {"n": len(ids)}
    for kind in ("strict", "flexible"):
        key = f"{kind}_correct"
        p = paired([ia[i][key] for i in ids], [ib[i][key] for i in ids])
        out[kind] = {**p.__dict__, "verdict": p.verdict()}
    return out
