"""Sequence and token log-probs of outputs given prompts, from one forward pass of a causal LM."""

from __future__ import annotations

from typing import Any

import torch

from plad.losses import token_nll


def decoder_start_id(model: Any) -> int | None:
    """The decoder start token of an encoder-decoder model (which decides the batch layout), None otherwise."""
    cfg = model.config
    if not getattr(cfg, "is_encoder_decoder", False):
        return None
    start = cfg.decoder_start_token_id
    return cfg.pad_token_id if start is None else start


def forward_logits(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels aligned for the loss: position t of the logits scores label t.

    Decoder-only batch (input_ids, attention_mask, labels all (N, T)): the shift is done here, giving
    (N, T-1, V) and (N, T-1). Encoder-decoder batch (with decoder_input_ids): already aligned, (N, To, V), (N, To).
    """
    if "decoder_input_ids" in batch:
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch["decoder_attention_mask"],
        ).logits
        return logits, batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (N, T, V)
    return logits[:, :-1], batch["labels"][:, 1:]


def forward_token_nll(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token NLL of `labels` under `model`, shifted so that position t predicts token t+1.

    Returns (N, T-1), 0 where there is no label.
    """
    logits, labels = forward_logits(model, batch)
    return token_nll(logits, labels)


def sequence_logps(
    model: Any,
    batch: dict[str, torch.Tensor],
    reduction: str = "sum",
    count_labels: torch.Tensor | None = None,
    return_logits: bool = False,
) -> dict[str, torch.Tensor]:
    """log P(output | prompt) for every row: sum over output tokens (EOS included) or their mean.

    count_labels: (N, T) labels that say which tokens the sequence log-prob counts (default: batch["labels"]); the
    divergence-aware calibration counts only the tokens from the first difference between two outputs.
    Returns logps (N,), token_nll (N, T-1) over all of batch["labels"], n_tokens (N,) counted tokens, and with
    return_logits the logits (N, T-1, V).
    """
    logits, labels = forward_logits(model, batch)
    nll = token_nll(logits, labels)  # (N, T-1)
    if count_labels is not None and "decoder_input_ids" not in batch:
        count_labels = count_labels[:, 1:]  # decoder-only: shifted like the labels
    counted = (labels if count_labels is None else count_labels) != -100  # (N, T-1)
    n_tokens = counted.sum(-1)  # (N,)
    logps = -(nll * counted).sum(-1)
    if reduction == "mean":
        logps = logps / n_tokens.clamp(min=1)
    out = {"logps": logps, "token_nll": nll, "n_tokens": n_tokens}
    if return_logits:
        out["logits"] = logits
    return out


@torch.no_grad()
def score_outputs(
    model: Any, pad_id: int, prompts: list[list[int]], outputs: list[list[int]], batch_size: int = 32
) -> list[tuple[float, int]]:
    """(summed log P(output | prompt), output length) of each row, in batches grouped by length (no gradient)."""
    from plad.data import collate_sequences

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(outputs[i])))
    result: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate_sequences(
            [prompts[i] for i in idx], [outputs[i] for i in idx], pad_id, decoder_start_id(model)
        )
        out = sequence_logps(model, {k: v.to(device) for k, v in batch.items()}, reduction="sum")
        for i, lp, n in zip(idx, out["logps"].tolist(), out["n_tokens"].tolist(), strict=True):
            result[i] = (lp, n)
    model.train(was_training)
    return result
