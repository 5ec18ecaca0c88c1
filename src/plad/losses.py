"""Distillation losses as pure functions over tensors.

Nothing here sees a model: the training loop computes log-probs and passes tensors in. Every function returns
unreduced values ((B,) per example or (B, T) per token); reduction happens in one place, the training loop, which
normalises over the whole gradient-accumulation window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rank_calibration_loss(
    chosen_logps: torch.Tensor,  # (B,) log P(y+|x) of the teacher output
    rejected_logps: torch.Tensor,  # (B,) log P(y-|x) of the student output
    beta: float,
) -> torch.Tensor:  # (B,)
    """PLaD ranking calibration: max(0, beta - log P(y+|x) + log P(y-|x)) (Zhang et al. 2024, eq. 3)."""
    return torch.clamp(beta - chosen_logps + rejected_logps, min=0.0)


def margin_calibration_loss(
    chosen_logps: torch.Tensor,  # (B,)
    rejected_logps: torch.Tensor,  # (B,)
    chosen_scores: torch.Tensor,  # (B,) quality s(y+; x)
    rejected_scores: torch.Tensor,  # (B,) quality s(y-; x)
    beta: float,
) -> torch.Tensor:  # (B,)
    """PLaD margin calibration: max(0, beta * (s(y+) - s(y-)) - log P(y+|x) + log P(y-|x)) (eq. 4).

    The required log-likelihood gap grows with the quality gap; pairs the scorer rates equal ask for no gap.
    """
    margin = beta * (chosen_scores - rejected_scores)
    return torch.clamp(margin - chosen_logps + rejected_logps, min=0.0)


def token_nll(
    logits: torch.Tensor,  # (B, T, V), aligned: logits[:, t] scores labels[:, t]
    labels: torch.Tensor,  # (B, T), -100 where no loss
) -> torch.Tensor:  # (B, T), 0 where labels == -100
    """Per-token negative log-likelihood (the CE of SFT, SeqKD and the regulariser)."""
    B, T, V = logits.shape
    nll = F.cross_entropy(
        logits.reshape(B * T, V).float(), labels.reshape(B * T), ignore_index=-100, reduction="none"
    )
    return nll.view(B, T)


def ranking_accuracy(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs where the model already ranks the chosen output first (a detached diagnostic)."""
    return (chosen_logps > rejected_logps).float().mean().detach()
