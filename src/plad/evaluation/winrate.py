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
    return summarise_outcomes(outcomes(a_scores, b_scores), n_resamples, seed)


def summarise_outcomes(o, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Win rate from per-comparison outcomes (1 win, 1/2 tie, 0 loss; NaN: no verdict, left out and counted)."""
    o = np.asarray(o, dtype=float)
    known = o[~np.isnan(o)]
    return {
        **mean_with_ci(known, n_resamples, seed),
        "wins": int((known == 1).sum()),
        "ties": int((known == 0.5).sum()),
        "losses": int((known == 0).sum()),
        "no_verdict": int(o.size - known.size),
    }


def quantile_edges(lengths, n_buckets: int) -> list[float]:
    """Inner edges of `n_buckets` quantile buckets of `lengths` (duplicates merged: ties at an edge)."""
    if n_buckets <= 1 or len(lengths) == 0:
        return []
    edges = np.quantile(np.asarray(lengths, dtype=float), np.linspace(0, 1, n_buckets + 1)[1:-1])
    return sorted({float(e) for e in edges})


def bucket_labels(edges: list[float]) -> list[str]:
    """'<= e0', 'e0-e1', ..., '> ek' for inner edges (a length equal to an edge goes to the lower bucket)."""
    if not edges:
        return ["all"]
    labels = [f"<= {edges[0]:g}"]
    labels += [f"{lo:g}-{hi:g}" for lo, hi in zip(edges, edges[1:], strict=False)]
    return [*labels, f"> {edges[-1]:g}"]


def bucket_of(lengths, edges: list[float]) -> np.ndarray:
    """Bucket index of every length (a length equal to an edge goes to the lower bucket)."""
    return np.searchsorted(np.asarray(edges, dtype=float), np.asarray(lengths, dtype=float), side="left")


def by_bucket(o, lengths, edges: list[float], n_resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Win rate per length bucket: [{"bucket": label, "size": n, **summarise_outcomes}], empty buckets included."""
    o = np.asarray(o, dtype=float)
    bucket = bucket_of(lengths, edges)
    out = []
    for b, label in enumerate(bucket_labels(edges)):
        mask = bucket == b
        out.append(
            {"bucket": label, "size": int(mask.sum()), **summarise_outcomes(o[mask], n_resamples, seed)}
        )
    return out


# 97.5% quantiles of Student's t by degrees of freedom (n - 1); t_975 expands beyond the table.
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


def t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom: the table up to 10, beyond it the
    Cornish-Fisher expansion around the normal quantile (Abramowitz & Stegun 26.7.5), within 2e-4 of the exact
    value from df = 11 on (2.2010 at 11, 2.0423 at 30)."""
    if df in _T_975:
        return _T_975[df]
    z = 1.959963984540054
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def across_seeds(values: list[float]) -> dict:
    """Mean over seeds with a 95% t-interval (seeds are few: a bootstrap over 3 values says nothing)."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean()) if v.size else float("nan")
    if v.size < 2:
        return {"mean": mean, "ci95": [mean, mean], "values": v.tolist()}
    half = t_975(v.size - 1) * float(v.std(ddof=1)) / v.size**0.5
    return {"mean": mean, "ci95": [mean - half, mean + half], "values": v.tolist()}
