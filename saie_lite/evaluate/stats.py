"""Intervals and paired tests: Wilson and McNemar (stdlib) for accuracy; paired t-test
and Wilcoxon signed-rank (scipy, imported inside the function) for continuous metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass


def wilson(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (stays inside [0, 1], sane at n small)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Paired:
    n: int
    a_correct: int
    b_correct: int
    only_a: int  # A right, B wrong
    only_b: int  # B right, A wrong
    diff: float  # accuracy(B) - accuracy(A)
    diff_ci: tuple[float, float]
    p_value: float  # exact two-sided McNemar (binomial on discordant pairs)

    def verdict(self, alpha: float = 0.05) -> str:
        if self.p_value >= alpha:
            return f"no significant difference (p={self.p_value:.3g})"
        better = "B" if self.diff > 0 else "A"
        return f"{better} is better (p={self.p_value:.3g})"


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: binomial(k; only_a + only_b, 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(a: list[bool], b: list[bool], z: float = 1.959963984540054) -> Paired:
    """Compare two systems on the same items, in the same order."""
    if len(a) != len(b):
        raise ValueError("paired comparison needs the same items in both")
    n = len(a)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    diff = (only_b - only_a) / n if n else 0.0
    # Interval for a difference of paired proportions (Wald on the per-item differences).
    var = ((only_a + only_b) / n - diff * diff) / n if n else 0.0
    half = z * math.sqrt(max(var, 0.0))
    return Paired(
        n,
        sum(a),
        sum(b),
        only_a,
        only_b,
        diff,
        (max(-1.0, diff - half), min(1.0, diff + half)),  # a difference of proportions
        mcnemar_exact(only_a, only_b),
    )


def paired_continuous(
    a: list[float], b: list[float], bounds: tuple[float, float] = (-math.inf, math.inf)
) -> dict:
    """Paired comparison of a continuous per-item metric (same items, same order):
    mean difference B - A with its 95% t-interval (cut to what a difference of values
    within ``bounds`` can be), paired t-test and Wilcoxon signed-rank test (two-sided,
    scipy). Identical values give p = 1."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError("paired comparison needs the same items in both")
    n = len(a)
    lo, hi = bounds
    d = [y - x for x, y in zip(a, b)]
    mean_a = sum(a) / n if n else 0.0
    mean_b = sum(b) / n if n else 0.0
    diff = sum(d) / n if n else 0.0
    w_p = float(stats.wilcoxon(b, a).pvalue) if n >= 1 and any(d) else 1.0
    if n < 2 or all(x == d[0] for x in d):
        # No spread: the interval is the difference itself; the t statistic is infinite
        # (p = 0) for a constant non-zero shift and undefined (p = 1) for none.
        t_p = 0.0 if diff != 0 and n >= 2 else 1.0
        half = 0.0
    else:
        sd = math.sqrt(sum((x - diff) ** 2 for x in d) / (n - 1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        t_p = float(stats.ttest_rel(b, a).pvalue)
    return {
        "n": n,
        "mean_a": mean_a,
        "mean_b": mean_b,
        "diff": diff,
        "diff_ci": [max(lo - hi, diff - half), min(hi - lo, diff + half)],
        "t_p": t_p,
        "wilcoxon_p": w_p,
    }
