"""The distillation methods: each a row of one table (what a batch needs, how the loss is computed).

A method's loss function gets the model and a micro-batch and returns *sums*: `seq_sum` over examples (sequence-level
terms) and `tok_sum` over tokens (token-level terms). The training loop divides them by the number of examples and
tokens in the whole accumulation window, so results do not depend on micro-batch x accumulation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from plad.config import LossConfig
from plad.data import collate_sequences
from plad.logprobs import forward_token_nll, sequence_logps
from plad.losses import margin_calibration_loss, rank_calibration_loss, ranking_accuracy


@dataclass
class Item:
    """One training example in token ids: a prompt with one output (sft, seqkd) or a pair (calibration)."""

    prompt: list[int]
    chosen: list[int]  # the target, the teacher output, or y+
    rejected: list[int] | None = None  # y- (pair methods)
    chosen_score: float = 0.0
    rejected_score: float = 0.0


@dataclass
class LossParts:
    seq_sum: torch.Tensor | None = None  # sum over examples of sequence-level losses
    tok_sum: torch.Tensor | None = None  # sum over tokens of token-level losses
    tok_weight: float = 1.0
    metrics: dict[str, float] = field(
        default_factory=dict
    )  # detached diagnostics, means over the micro-batch


def make_batch(
    items: list[Item], reg_items: list[Item] | None, pad_id: int, loss: LossConfig
) -> dict[str, Any]:
    """A micro-batch: single outputs, or chosen and rejected stacked for one concatenated forward."""
    prompts = [it.prompt for it in items]
    if items[0].rejected is None:
        main = collate_sequences(prompts, [it.chosen for it in items], pad_id)
        n_tokens = int((main["labels"] != -100).sum())
    else:
        # rows [0, B) are prompt+chosen, rows [B, 2B) prompt+rejected: one forward for both.
        main = collate_sequences(
            prompts + prompts, [it.chosen for it in items] + [it.rejected for it in items], pad_id
        )
        main["chosen_scores"] = torch.tensor([it.chosen_score for it in items])
        main["rejected_scores"] = torch.tensor([it.rejected_score for it in items])
        n_tokens = sum(len(it.chosen) for it in items)
    batch: dict[str, Any] = {"main": main, "n_examples": len(items), "n_tokens": n_tokens}
    if reg_items:
        batch["reg"] = collate_sequences(
            [it.prompt for it in reg_items], [it.chosen for it in reg_items], pad_id
        )
        batch["n_tokens"] = int((batch["reg"]["labels"] != -100).sum())
    return batch


def cross_entropy(model: Any, batch: dict[str, Any], loss: LossConfig) -> LossParts:
    """CE on the output tokens (targets for sft, teacher outputs for seqkd), EOS included."""
    nll = forward_token_nll(model, batch["main"])  # (B, T-1)
    n = max(batch["n_tokens"], 1)
    return LossParts(tok_sum=nll.sum(), metrics={"ce": float(nll.sum().detach()) / n})


def _calibration(kind: str) -> Callable[[Any, dict[str, Any], LossConfig], LossParts]:
    def loss_fn(model: Any, batch: dict[str, Any], loss: LossConfig) -> LossParts:
        main, B = batch["main"], batch["n_examples"]
        out = sequence_logps(model, main, reduction=loss.logp)
        chosen_logps, rejected_logps = out["logps"][:B], out["logps"][B:]  # (B,), (B,)
        if kind == "rank":
            per_example = rank_calibration_loss(chosen_logps, rejected_logps, loss.beta)
        else:
            per_example = margin_calibration_loss(
                chosen_logps, rejected_logps, main["chosen_scores"], main["rejected_scores"], loss.beta
            )
        tok_sum = None
        if loss.regularizer == "chosen":
            tok_sum = out["token_nll"][:B].sum()
        elif loss.regularizer == "target":
            tok_sum = forward_token_nll(model, batch["reg"]).sum()
        metrics = {
            "calibration": float(per_example.detach().mean()),
            "chosen_logps": float(chosen_logps.detach().mean()),
            "rejected_logps": float(rejected_logps.detach().mean()),
            "margin": float((chosen_logps - rejected_logps).detach().mean()),
            "rank_acc": float(ranking_accuracy(chosen_logps, rejected_logps)),
        }
        if tok_sum is not None:
            metrics["reg_ce"] = float(tok_sum.detach()) / max(batch["n_tokens"], 1)
        return LossParts(
            seq_sum=per_example.sum(), tok_sum=tok_sum, tok_weight=loss.reg_weight, metrics=metrics
        )

    return loss_fn


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    source: str  # "targets": labeled data; "teacher": teacher outputs of the pairs; "pairs": (y+, y-) pairs
    needs_scores: bool
    loss: Callable[[Any, dict[str, Any], LossConfig], LossParts]
    uses_regularizer: bool = False


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("sft", "CE on dataset targets (the equal-compute control)", "targets", False, cross_entropy),
        Method(
            "seqkd",
            "CE on teacher outputs (sequence-level KD, Kim & Rush 2016)",
            "teacher",
            False,
            cross_entropy,
        ),
        Method(
            "plad-rank",
            "PLaD ranking calibration on (teacher, student) pairs + lambda * CE regulariser",
            "pairs",
            False,
            _calibration("rank"),
            uses_regularizer=True,
        ),
        Method(
            "plad-margin",
            "PLaD margin calibration (margin = beta * score gap) + lambda * CE regulariser",
            "pairs",
            True,
            _calibration("margin"),
            uses_regularizer=True,
        ),
    ]
}
