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
