"""Win rates (ties count 1/2) and seeded percentile-bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plad.evaluation.winrate import bootstrap_ci, mean_with_ci, outcomes, win_rate


def test_outcomes_ties_count_half():
    a = [1.0, 0.5, 0.2, 0.7, 0.0]
    b = [0.5, 0.5, 0.9, 0.7, 0.1]
    # a>b: win 1; equal: 1/2; a<b: 0  ->  [1, 0.5, 0, 0.5, 0]
    assert outcomes(a, b).tolist() == [1.0, 0.5, 0.0, 0.5, 0.0]


def test_win_rate_hand_value():
    a = [1.0, 0.5, 0.2, 0.7, 0.0, 0.9]
    b = [0.5, 0.5, 0.9, 0.7, 0.1, 0.3]
    # outcomes [1, 0.5, 0, 0.5, 0, 1]: 2 wins, 2 ties, 2 losses -> (2 + 2 * 0.5) / 6 = 3 / 6 = 0.5
    r = win_rate(a, b, n_resamples=200, seed=0)
    assert r["value"] == pytest.approx(0.5)
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (2, 2, 2, 6)
    # swapping the systems gives the complement
    assert win_rate(b, a, n_resamples=200)["value"] == pytest.approx(1 - 0.5)
    # all ties: exactly one half
    assert win_rate([0.3] * 4, [0.3] * 4)["value"] == 0.5


def test_outcomes_shape_mismatch():
    with pytest.raises(ValueError, match="cannot compare 2 scores with 3"):
        outcomes([1, 2], [1, 2, 3])


def _bernoulli(n: int, p: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def test_bootstrap_interval_is_seeded():
    # Continuous values: every resample mean is distinct, so two seeds cannot give the same interval by chance.
    values = np.random.default_rng(0).normal(size=100)
    interval = bootstrap_ci(values, n_resamples=500, seed=7)
    assert bootstrap_ci(values, n_resamples=500, seed=7) == interval  # same seed, same interval
    assert bootstrap_ci(values, n_resamples=500, seed=8) != interval  # the seed is used
    assert mean_with_ci(values, 500, seed=7)["ci95"] == list(interval)


def test_bootstrap_interval_contains_mean():
    values = _bernoulli(200, 0.3, seed=1)
    low, high = bootstrap_ci(values, n_resamples=1000, seed=7)
    assert low < values.mean() < high
    assert 0.0 <= low and high <= 1.0
    # Sanity against the normal approximation: half-width ~ 1.96 * sqrt(p (1 - p) / n) = 0.063 for p=0.3, n=200.
    half = 1.96 * math.sqrt(values.mean() * (1 - values.mean()) / values.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.2)


def test_bootstrap_interval_narrows_with_more_data():
    small = bootstrap_ci(_bernoulli(50, 0.5, seed=2), n_resamples=1000, seed=0)
    large = bootstrap_ci(_bernoulli(5000, 0.5, seed=2), n_resamples=1000, seed=0)
    assert (large[1] - large[0]) < (small[1] - small[0]) / 5  # ~ 1 / sqrt(100) = 1/10 of the width


def test_bootstrap_level():
    values = _bernoulli(300, 0.6, seed=3)
    lo95, hi95 = bootstrap_ci(values, seed=0, level=0.95)
    lo50, hi50 = bootstrap_ci(values, seed=0, level=0.5)
    assert lo95 < lo50 < hi50 < hi95


def test_bootstrap_degenerate_and_empty():
    assert bootstrap_ci(np.full(30, 0.5), n_resamples=200) == (0.5, 0.5)
    assert bootstrap_ci(np.ones(1), n_resamples=200) == (1.0, 1.0)
    low, high = bootstrap_ci(np.array([]))
    assert math.isnan(low) and math.isnan(high)
    r = mean_with_ci([], n_resamples=200)
    assert math.isnan(r["value"]) and r["n"] == 0


def test_mean_with_ci_fields():
    r = mean_with_ci([0.0, 1.0, 1.0, 1.0], n_resamples=500, seed=0)
    assert r["value"] == 0.75 and r["n"] == 4
    low, high = r["ci95"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0


def test_squad_exact_match_normalisation() -> None:
    from plad.scoring.metrics import squad_exact_match, squad_normalise

    assert squad_normalise("  The Cat, sat!  ") == "cat sat"
    assert squad_exact_match("the cat sat.", "Cat sat") == 1.0
    assert squad_exact_match("a:3 b:2", "a3 b2") == 1.0  # punctuation is dropped entirely
    assert squad_exact_match("cat sat", "cat sits") == 0.0


def test_rouge_l_against_hand_values() -> None:
    from plad.scoring.metrics import rouge_l

    # LCS("the cat on the mat", "the cat sat on the mat") = 5 tokens: P = 5/5, R = 5/6, F = 2PR/(P+R) = 10/11
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("the cats are running", "the cat runs") == pytest.approx(
        6 / 7
    )  # stemming: cats->cat, running->run
    assert rouge_l("same words", "same words") == 1.0
    assert rouge_l("", "something") == 0.0


def test_t_quantile_beyond_the_table():
    """Issue 13: 1.96 beyond 10 degrees of freedom made the interval 11% too narrow at 12 seeds. Exact 97.5%
    quantiles of Student's t (printed tables: 2.201 at 11, 2.179 at 12, 2.042 at 30, 1.980 at 120)."""
    import numpy as np

    from plad.evaluation.winrate import across_seeds, t_975

    for df, exact in ((10, 2.228), (11, 2.201), (12, 2.179), (30, 2.042), (120, 1.980)):
        assert abs(t_975(df) - exact) < 6e-4, df
    values = [0.1 * i for i in range(12)]
    cell = across_seeds(values)
    half = 2.201 * np.std(values, ddof=1) / 12**0.5
    assert cell["ci95"][1] - cell["mean"] == pytest.approx(half, rel=1e-3)
