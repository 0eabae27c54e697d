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
