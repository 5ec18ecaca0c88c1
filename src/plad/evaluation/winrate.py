"""Win rates (ties count 1/2) and seeded bootstrap intervals."""

from __future__ import annotations

import numpy as np


def outcomes(a_scores: list[float], b_scores: list[float]) -> np.ndarray:
    """Per comparison: 1 if a beats b, 1/2 for a tie, 0 if b wins."""
    a, b = np.asarray(a_scores, dtype=float), np.asarray(b_scores, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare {a.size} scores with {b.size}")
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple:
    """Percentile bootstrap interval of the mean: (low, high)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_resamples, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def mean_with_ci(values, n_resamples: int = 1000, seed: int = 0) -> dict:
    values = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(values, n_resamples, seed)
    return {
        "value": float(values.mean()) if values.size else float("nan"),
        "ci95": [low, high],
        "n": int(values.size),
    }


def win_rate(a_scores, b_scores, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Win rate of a over b with a 95% bootstrap interval and the win/tie/loss counts."""
    o = outcomes(a_scores, b_scores)
    return {
        **mean_with_ci(o, n_resamples, seed),
        "wins": int((o == 1).sum()),
        "ties": int((o == 0.5).sum()),
        "losses": int((o == 0).sum()),
    }


# Two-sided 97.5% quantiles of Student's t by degrees of freedom (n - 1); 1.96 beyond the table.
_T_975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
}


def across_seeds(values: list[float]) -> dict:
    """Mean over seeds with a 95% t-interval (seeds are few: a bootstrap over 3 values says nothing)."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean()) if v.size else float("nan")
    if v.size < 2:
        return {"mean": mean, "ci95": [mean, mean], "values": v.tolist()}
    half = _T_975.get(v.size - 1, 1.96) * float(v.std(ddof=1)) / v.size**0.5
    return {"mean": mean, "ci95": [mean - half, mean + half], "values": v.tolist()}
