"""Metrics beside accuracy that need no answer checker (issue 14).

- ``nll``: negative log-likelihood per token of the reference answer given the question,
  teacher-forced under the learner's training chat template (one forward pass per
  batch, no generation). Lower is better.
- ``rouge``: ROUGE-L F1 of the generated answer against the reference solution (the
  paper's reasoning-verbalisation measure), with the ``rouge-score`` package.
- ``accuracy``: the task's check, as before (strict reading), where a check exists.

Every metric is stored per item; the summary gives its mean and 95% interval.
"""

from __future__ import annotations

import math

from saie_lite.config import EVAL_METRICS
from saie_lite.errors import UserError
from saie_lite.protocols import ScoresNll, supports
from saie_lite.remarks import rouge_l
from saie_lite.tasks import example_chat, is_checked

# Which way is better, for tables and plots.
HIGHER_IS_BETTER = {"accuracy": True, "nll": False, "rouge": True}
CONTINUOUS = ("nll", "rouge")
# The values a metric can take: a t-interval is cut to them (a mean ROUGE of 0.02 with a
# wide spread would otherwise report a lower bound below 0, which no system can score).
RANGE = {"nll": (0.0, math.inf), "rouge": (0.0, 1.0)}


def resolve(spec: str, task, scoring: str, agent) -> list[str]:
    """The metrics an evaluation computes: ``all`` = every one that applies; a named
    one that cannot apply is refused in one line."""
    can = {
        "accuracy": is_checked(task),
        "nll": supports(agent, ScoresNll),
        "rouge": scoring == "generate",
    }
    why = {
        "accuracy": "the data has no answer check (data.check: none)",
        "nll": f"agent {agent.name} cannot score log-likelihoods",
        "rouge": "log-likelihood scoring generates no answer to compare",
    }
    names = [m.strip() for m in spec.split(",") if m.strip()]
    if "all" in names:
        return [m for m in EVAL_METRICS if can[m]]
    for m in names:
        if m not in EVAL_METRICS:
            raise UserError(f"unknown metric {m!r}; metrics: {', '.join(EVAL_METRICS)}")
        if not can[m]:
            raise UserError(f"metric {m} does not apply here: {why[m]}")
    return [m for m in EVAL_METRICS if m in names]


def item_metrics(task, agent, results: list, names: list[str]) -> list[dict]:
    """The continuous metrics of one batch of results (accuracy is the row's own mark)."""
    out: list[dict] = [{} for _ in results]
    if "nll" in names:
        exs = [r.example for r in results]
        values = agent.nll([example_chat(task, x) for x in exs], [x.reference for x in exs])
        for d, v in zip(out, values):
            d["nll"] = float(v)
    if "rouge" in names:
        for d, r in zip(out, results):
            d["rouge"] = rouge_l(r.final_text, r.example.reference)
    return out


def mean_ci(
    values: list[float], level: float = 0.95, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> dict:
    """Mean with a Student-t interval, cut to ``bounds`` (None bounds when n < 2)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": [None, None]}
    mean = sum(vals) / n
    if n < 2:
        return {"n": n, "mean": mean, "ci95": [None, None]}
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    lo, hi = bounds
    return {"n": n, "mean": mean, "ci95": [max(lo, mean - half), min(hi, mean + half)]}
