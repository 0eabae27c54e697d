import math

import pytest

from saie_lite.evaluate import stats


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        # reference values computed with statsmodels' proportion_confint(method="wilson")
        (81, 263, 0.2553, 0.3662),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    a, b = stats.wilson(k, n)
    assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)


def test_mcnemar_exact():
    assert stats.mcnemar_exact(0, 0) == 1.0
    # 1 vs 9 discordant: 2 * P(X <= 1 | n=10, p=.5) = 2 * 11/1024
    assert stats.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact(5, 5) == 1.0


def test_paired_counts_and_verdict():
    a = [True] * 10 + [False] * 10 + [True] * 1 + [False] * 9
    b = [True] * 10 + [False] * 10 + [False] * 1 + [True] * 9
    p = stats.paired(a, b)
    assert (p.n, p.only_a, p.only_b) == (30, 1, 9)
    assert p.diff == pytest.approx(8 / 30)
    assert p.diff_ci[0] < p.diff < p.diff_ci[1]
    assert p.verdict().startswith("B is better")
    assert stats.paired(a, a).verdict().startswith("no significant difference")
    with pytest.raises(ValueError):
        stats.paired([True], [True, False])


def test_paired_difference_interval_is_newcombes():
    # Newcombe (Statist. Med. 1998;17:2635), method 10, his first example: 36 pairs both
    # positive, 12 positive on the first only, 2 on the second only, 0 neither
    lo, hi = stats.paired_diff_interval(36, 12, 2, 0)
    assert lo == pytest.approx(0.0569, abs=1e-4) and hi == pytest.approx(0.3404, abs=1e-4)
    # with no correlation term (A never right: an empty margin) it is the hybrid score
    # interval of two independent proportions
    lb, ub = stats.wilson(10, 20)
    la, ua = stats.wilson(0, 20)
    lo, hi = stats.paired_diff_interval(0, 10, 0, 10)
    assert lo == pytest.approx(0.5 - math.hypot(0.5 - lb, ua - 0.0))
    assert hi == pytest.approx(0.5 + math.hypot(ub - 0.5, 0.0 - la))


def test_paired_interval_never_claims_certainty():
    # 0 of 25 right on both sides: the Wald interval was [0, 0]
    p = stats.paired([False] * 25, [False] * 25)
    assert p.diff == 0 and p.diff_ci[0] == pytest.approx(-0.1332, abs=1e-4)
    assert p.diff_ci[1] == pytest.approx(0.1332, abs=1e-4)
    # all right on both sides, and every item lost: inside -1..1, never empty
    for a, b in (([True] * 25, [True] * 25), ([True] * 5, [False] * 5)):
        p = stats.paired(a, b)
        assert -1 <= p.diff_ci[0] < p.diff_ci[1] <= 1 and p.diff_ci[0] <= p.diff <= p.diff_ci[1]
