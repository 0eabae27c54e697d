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


def paired(a: list[bool], b: list[bool]) -> Paired:
    """Compare two systems on the same items, in the same order."""
    if len(a) != len(b):
        raise ValueError("paired comparison needs the same items in both")
    n = len(a)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    both = sum(1 for x, y in zip(a, b) if x and y)
    diff = (only_b - only_a) / n if n else 0.0
    return Paired(
        n,
        sum(a),
        sum(b),
        only_a,
        only_b,
        diff,
        paired_diff_interval(both, only_b, only_a, n - both - only_a - only_b),
        mcnemar_exact(only_a, only_b),
    )


def paired_diff_interval(both: int, only_b: int, only_a: int, neither: int) -> tuple[float, float]:
    """95% interval for accuracy(B) - accuracy(A) on paired items: Newcombe's hybrid
    score interval for paired data (Statist. Med. 1998;17:2635, method 10), built from
    the two Wilson intervals and the correlation of the paired marks. Unlike the Wald
    interval it never has zero width (0 of 25 right on both sides gives -13.3 to +13.3
    points, not 0 to 0) and stays within -1..1."""
    n = both + only_b + only_a + neither
    if n == 0:
        return (-1.0, 1.0)
    pb, pa = (both + only_b) / n, (both + only_a) / n
    lb, ub = wilson(both + only_b, n)
    la, ua = wilson(both + only_a, n)
    margins = (both + only_b) * (only_a + neither) * (both + only_a) * (only_b + neither)
    cross = both * neither - only_b * only_a
    if cross > 0:  # Newcombe's correction of the correlation's estimate
        cross = max(cross - n / 2, 0.0)
    phi = cross / math.sqrt(margins) if margins else 0.0
    down = (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2
    up = (ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2
    diff = pb - pa
    return (max(-1.0, diff - math.sqrt(max(down, 0.0))), min(1.0, diff + math.sqrt(max(up, 0.0))))


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
        # one item says nothing about the spread: no interval, as for a single mean
        "diff_ci": [max(lo - hi, diff - half), min(hi - lo, diff + half)]
        if n >= 2
        else [None, None],
        "t_p": t_p,
        "wilcoxon_p": w_p,
    }


def spread(values: list[float]) -> dict:
    """Mean of per-seed values with their spread: sample sd (None for one seed), min, max."""
    n = len(values)
    mean = sum(values) / n if n else None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n >= 2 else None
    return {
        "mean": mean,
        "sd": sd,
        "min": min(values) if n else None,
        "max": max(values) if n else None,
        "seeds": list(values),
    }


def over_seeds(a: list[float], b: list[float]) -> dict:
    """Test of B against A over training seeds (one mean per seed and side), two-sided:
    Welch's t-test when both sides have two or more seeds (seeds of different systems
    are independent runs, variances not assumed equal); a one-sample t-test of the
    seeds against the other side's one value when one side has a single run (the base
    learner, which no seed changes); None when neither side varies by seed. Spreads of
    zero give p = 0 for a difference and p = 1 for none, as ``paired_continuous``."""
    from scipy import stats

    diff = sum(b) / len(b) - sum(a) / len(a)
    out = {"test": None, "n_a": len(a), "n_b": len(b), "diff": diff, "p": None}
    if len(a) < 2 and len(b) < 2:
        return out
    if len(a) >= 2 and len(b) >= 2:
        out["test"] = "welch"
        flat = len(set(a)) == 1 and len(set(b)) == 1
        p = None if flat else float(stats.ttest_ind(b, a, equal_var=False).pvalue)
    else:
        out["test"] = "one-sample"
        many, one = (b, a[0]) if len(b) >= 2 else (a, b[0])
        flat = len(set(many)) == 1
        p = None if flat else float(stats.ttest_1samp(many, one).pvalue)
    out["p"] = (0.0 if diff != 0 else 1.0) if flat else p
    return out
