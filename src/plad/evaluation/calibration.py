"""Calibration: how often a model's sequence likelihood ranks the better of two outputs first.

PLaD's claim is that an SFT student is mis-calibrated (its likelihood does not track quality) and that
distillation with calibration losses fixes it. On held-out pairs (prompt, chosen = the better output, rejected),
the rate of log P(chosen | prompt) > log P(rejected | prompt) is measured with the summed log-prob (which favours
short outputs) and the per-token mean; ties count 1/2; 95% bootstrap intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plad.config import DataOptions
from plad.core.batching import Truncation, encode_output, encode_prompt
from plad.core.logprobs import score_outputs
from plad.core.models import fit_positions
from plad.evaluation.winrate import outcomes, summarise_outcomes
from plad.utils.errors import DataError
from plad.utils.io import read_jsonl


def load_calibration_pairs(path: str) -> list[dict]:
    """Rows {prompt, chosen, rejected} (a pairs.jsonl works), checked row by row."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"calibration_file {p} does not exist; give held-out pairs (prompt, chosen, rejected)"
        )
    rows = read_jsonl(p)
    if not rows:
        raise DataError(f"calibration_file {p} holds no pairs")
    for i, r in enumerate(rows, start=1):
        for key in ("prompt", "chosen", "rejected"):
            if key not in r:
                raise DataError(
                    f"{p}:{i}: missing field {key!r} (calibration pairs need prompt, chosen, rejected)"
                )
        if not isinstance(r["chosen"], str) or not isinstance(r["rejected"], str):
            raise DataError(f"{p}:{i}: chosen and rejected must be texts")
        if not isinstance(r["prompt"], str | list):
            raise DataError(f"{p}:{i}: prompt must be a text or a list of chat messages")
    return rows


def encode_pairs(
    tok: Any, rows: list[dict], options: DataOptions, config: Any, source: str
) -> tuple[list[list[int]], list[list[int]], Truncation]:
    """Token ids of every pair (a prompt for chosen, the same for rejected; the outputs), fitted to the positions of
    the model whose `config` is given (None: as the options say): what can be wrong with the pairs, before any
    weights are read."""
    stats = Truncation()
    if config is not None:
        options = fit_positions(options, [config], options.max_target_tokens, "data.max_target_tokens")
    prompts, outputs = [], []
    for i, r in enumerate(rows, start=1):
        where = f"{source}:{i}"
        p = encode_prompt(tok, r["prompt"], options, stats, where)
        for key in ("chosen", "rejected"):
            prompts.append(p)
            ended = (r.get("meta") or {}).get(
                f"{key}_finish"
            ) != "length"  # a sample max_new_tokens cut: no end
            outputs.append(encode_output(tok, r[key], options, stats, where, r["prompt"], ended))
    return prompts, outputs, stats


def calibration(
    model: Any,
    tok: Any,
    rows: list[dict],
    options: DataOptions,
    source: str,
    batch_size: int = 16,
    n_resamples: int = 1000,
    seed: int = 0,
    encoded: tuple[list, list, Truncation] | None = None,
) -> dict:
    """Ranking accuracy of the model's summed and per-token log-probs on `rows` (chosen should rank first);
    `encoded`: the rows as `encode_pairs` made them already."""
    config = getattr(model, "config", None)
    prompts, outputs, stats = encoded or encode_pairs(tok, rows, options, config, source)
    scored = score_outputs(model, tok.pad_token_id, prompts, outputs, batch_size)
    chosen, rejected = scored[0::2], scored[1::2]
    summed = outcomes([c[0] for c in chosen], [r[0] for r in rejected])
    mean = outcomes([c[0] / c[1] for c in chosen], [r[0] / r[1] for r in rejected])
    return {
        "file": source,
        "pairs": len(rows),
        "summed": summarise_outcomes(summed, n_resamples, seed),
        "per_token": summarise_outcomes(mean, n_resamples, seed),
        "mean_logp_gap": float(sum(c[0] - r[0] for c, r in zip(chosen, rejected, strict=True)) / len(rows)),
        "truncated": {"prompts": stats.prompts, "outputs": stats.targets},
    }
