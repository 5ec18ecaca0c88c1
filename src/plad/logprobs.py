"""Sequence and token log-probs of outputs given prompts, from one forward pass of a causal LM."""

from __future__ import annotations

from typing import Any

import torch

from plad.losses import token_nll


def forward_token_nll(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token NLL of `labels` under `model`, shifted so that position t predicts token t+1.

    batch: input_ids, attention_mask, labels, all (N, T) with labels aligned to input_ids.
    Returns (N, T-1), 0 where there is no label.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (N, T, V)
    return token_nll(logits[:, :-1], batch["labels"][:, 1:])


def sequence_logps(
    model: Any, batch: dict[str, torch.Tensor], reduction: str = "sum"
) -> dict[str, torch.Tensor]:
    """log P(output | prompt) for every row: sum over output tokens (EOS included) or their mean.

    Returns logps (N,), token_nll (N, T-1) and n_tokens (N,).
    """
    nll = forward_token_nll(model, batch)  # (N, T-1)
    n_tokens = (batch["labels"][:, 1:] != -100).sum(-1)  # (N,)
    logps = -nll.sum(-1)
    if reduction == "mean":
        logps = logps / n_tokens.clamp(min=1)
    return {"logps": logps, "token_nll": nll, "n_tokens": n_tokens}
