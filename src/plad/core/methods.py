"""The distillation methods: each a row of one table (what a batch needs, how the loss is computed).

A method's loss function gets the model, a micro-batch and the frozen models it needs, and returns *sums*:
`seq_sum` over examples (sequence-level terms) and `tok_sum` over tokens (token-level terms). The training loop
divides them by the number of examples and tokens in the whole accumulation window, so results do not depend on
micro-batch x accumulation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from plad.config import LossConfig
from plad.config.method_specs import METHOD_SPECS, MethodSpec
from plad.core.batching import collate_sequences
from plad.core.logprobs import chunked_rows, forward_token_nll, output_hidden, output_logits, sequence_logps
from plad.core.losses import (
    dpkd_sequence_loss,
    dpkd_token_loss,
    generalized_jsd,
    listwise_rank_loss,
    margin_calibration_loss,
    rank_calibration_loss,
    ranking_accuracy,
    token_divergence,
    token_kl_to_reference,
    token_nll,
)


@dataclass
class Item:
    """One training example in token ids: a prompt with one output (sft, seqkd, token-level methods), a pair
    (calibration, dpkd) or a ranked list of outputs (plad-list)."""

    prompt: list[int]
    chosen: list[int]  # the target, the teacher output, or y+
    rejected: list[int] | None = None  # y- (pair methods)
    chosen_score: float = 0.0
    rejected_score: float = 0.0
    teacher_chosen_logp: float = 0.0  # dpkd: summed teacher log-probs, in the teacher's tokenizer
    teacher_rejected_logp: float = 0.0
    outputs: list[list[int]] | None = None  # plad-list: every output of the prompt, outputs[0] == chosen
    ranks: list[int] | None = None  # plad-list: rank of each output, 0 = best, equal ranks = tie
    prompt_text: str = ""  # the formatted prompt (iterated PLaD scores fresh samples with it)


@dataclass
class Frozen:
    """Models held fixed during training: the teacher of the token-level methods, the initial student of the
    kl-init regulariser (a frozen copy, or for a LoRA student its own base with the adapters off: anything called
    like a model). `vocab` is the shared vocabulary size (logits beyond it are embedding padding)."""

    teacher: Any = None
    reference: Any = None
    vocab: int = 0


NO_FROZEN = Frozen()


@dataclass
class LossParts:
    seq_sum: torch.Tensor | None = None  # sum over examples of sequence-level losses
    tok_sum: torch.Tensor | None = None  # sum over tokens of token-level losses
    tok_weight: float = 1.0
    # detached diagnostics, micro-batch means: 0-dim tensors on the model's device (read at log time, not per step)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def divergence_labels(labels: torch.Tensor, prompt_len: int, a: list[int], b: list[int], window: int) -> None:
    """In place: keep only the labels of output `a` from the first token where it differs from `b` (and at most
    `window` tokens of it when window > 0). Identical outputs keep nothing."""
    d = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    end = len(a) if window == 0 else min(len(a), d + window)
    labels[: prompt_len + d] = -100
    labels[prompt_len + end :] = -100


def make_batch(
    items: list[Item],
    reg_items: list[Item] | None,
    pad_id: int,
    loss: LossConfig,
    decoder_start_id: int | None = None,
    divergence: bool = False,
    shared_prompt: bool = False,
) -> dict[str, Any]:
    """A micro-batch: single outputs; a pair stacked for one concatenated forward; or a list of K outputs.
    decoder_start_id: the encoder-decoder layout (prompts to the encoder, outputs to the decoder).
    divergence: also the pairs' divergence-aware labels (a Python loop per pair: only for the -div methods).
    shared_prompt: pairs and lists also carry one row per prompt with all its outputs, for output_hidden's
    shared-prompt forward."""
    prompts = [it.prompt for it in items]
    B = len(items)
    if items[0].outputs is None and items[0].rejected is None:
        main = collate_sequences(prompts, [it.chosen for it in items], pad_id, decoder_start_id)
        n_tokens = int((main["labels"] != -100).sum())
    else:
        # row k*B + b holds output k of prompt b, all in one forward: a pair's chosen then rejected; a list's K
        # outputs (a 1-token stand-in where a prompt has fewer)
        outs = _outputs(items, pad_id)
        K = len(outs) // B
        main = collate_sequences(prompts * K, outs, pad_id, decoder_start_id)
        rows = (
            _shared_prompt_rows(prompts, outs, pad_id) if decoder_start_id is None and shared_prompt else None
        )
        if rows is not None:  # each prompt once, its outputs after it in the same row
            main["shared_prompt"] = rows
        if items[0].outputs is not None:
            main["list_mask"] = torch.tensor(
                [[k < len(it.outputs) for k in range(K)] for it in items]
            )  # (B, K)
            main["list_ranks"] = torch.tensor(
                [[it.ranks[k] if k < len(it.outputs) else 0 for k in range(K)] for it in items]
            )  # (B, K)
        else:
            main.update(_pair_fields(items, main["labels"], loss, decoder_start_id, divergence))
        n_tokens = sum(len(it.chosen) for it in items)
    n_chosen = sum(len(it.chosen) for it in items)  # labelled tokens of rows [0, B): the chosen outputs
    batch: dict[str, Any] = {"main": main, "n_examples": B, "n_tokens": n_tokens, "n_chosen_tokens": n_chosen}
    if reg_items:
        batch["reg"] = collate_sequences(
            [it.prompt for it in reg_items], [it.chosen for it in reg_items], pad_id, decoder_start_id
        )
        batch["n_tokens"] = int((batch["reg"]["labels"] != -100).sum())
    return batch


def _outputs(items: list[Item], pad_id: int) -> list[list[int]]:
    """Every output of a pair or list batch, output k of prompt b at k*B + b."""
    if items[0].outputs is None:
        return [it.chosen for it in items] + [it.rejected for it in items]
    K = max(len(it.outputs) for it in items)
    return [it.outputs[k] if k < len(it.outputs) else [pad_id] for k in range(K) for it in items]


def _pair_fields(
    items: list[Item], labels: torch.Tensor, loss: LossConfig, decoder_start_id: int | None, divergence: bool
) -> dict[str, torch.Tensor]:
    """A pair batch's scores and stored teacher log-probs (chosen rows, then rejected) and, for the divergence-aware
    methods, labels that count each output from the first token where the two differ."""
    B = len(items)
    fields = {
        "chosen_scores": torch.tensor([it.chosen_score for it in items]),
        "rejected_scores": torch.tensor([it.rejected_score for it in items]),
        "teacher_logps": torch.tensor(
            [it.teacher_chosen_logp for it in items] + [it.teacher_rejected_logp for it in items],
            dtype=torch.float32,
        ),
    }
    if divergence:
        div = labels.clone()
        for i, it in enumerate(items):
            offset = 0 if decoder_start_id is not None else len(it.prompt)  # where the output starts
            divergence_labels(div[i], offset, it.chosen, it.rejected, loss.divergence_window)
            divergence_labels(div[B + i], offset, it.rejected, it.chosen, loss.divergence_window)
        fields["divergence_labels"] = div
    return fields


def _shared_prompt_rows(
    prompts: list[list[int]], outputs: list[list[int]], pad_id: int
) -> dict[str, torch.Tensor] | None:
    """Rows for output_hidden's shared-prompt forward: each prompt once with its outputs after it (output k of
    prompt b is row k*B + b of `outputs`), a group of tokens per prompt; the groups packed into R <= B rows of
    the longest group's length G (first fit, longest first: a short group shares a row with others where they
    fit, so no row is longer and there are fewer of them), padded at the end.

    - ids (R, G); positions (R, G): each group's prompt 0..P-1 and each of its outputs P, P+1, ... (their positions
      in a prompt + output row); segments (R, G): 0 for a prompt, k + 1 for output k, -1 for padding; groups (R, G):
      the prompt's number b, -1 for padding (the attention mask, a tree per group, is built from these on the
      model's device: logprobs.tree_mask);
    - gather (M,): for each labelled token, in the order of the prompt + output rows' labels (row k*B + b, then
      token j), the flat index into (R*G) of the position whose hidden state predicts it: its prompt's last for
      token 0, the output's token j - 1 after.

    None when a prompt is empty (its first output token has no predicting position in a prompt + output row)."""
    B = len(prompts)
    if any(not p for p in prompts):
        return None
    K = len(outputs) // B
    parts = [[prompts[b]] + [outputs[k * B + b] for k in range(K)] for b in range(B)]
    sizes = [sum(len(x) for x in group) for group in parts]
    G = max(sizes)
    where, R = _first_fit(sizes, G)
    ids = torch.full((R, G), pad_id, dtype=torch.long)
    positions = torch.zeros((R, G), dtype=torch.long)
    segments = torch.full((R, G), -1, dtype=torch.long)
    groups = torch.full((R, G), -1, dtype=torch.long)
    starts = [[0] * (K + 1) for _ in range(B)]  # flat index where each part of group b begins
    for b, group in enumerate(parts):
        r, at = where[b]
        for part, tokens in enumerate(group):
            n, first = len(tokens), 0 if part == 0 else len(group[0])
            starts[b][part] = r * G + at
            ids[r, at : at + n] = torch.tensor(tokens, dtype=torch.long)
            positions[r, at : at + n] = torch.arange(first, first + n)
            segments[r, at : at + n] = part
            groups[r, at : at + n] = b
            at += n
    gather = [
        starts[b][0] + len(prompts[b]) - 1 if j == 0 else starts[b][k + 1] + j - 1
        for k in range(K)
        for b in range(B)
        for j in range(len(outputs[k * B + b]))
    ]
    return {
        "ids": ids,
        "positions": positions,
        "segments": segments,
        "groups": groups,
        "gather": torch.tensor(gather, dtype=torch.long),
    }


def _first_fit(sizes: list[int], capacity: int) -> tuple[list[tuple[int, int]], int]:
    """Items of these sizes packed into rows of `capacity`, longest first, each into the first row with room:
    (row, column) where each item starts, and the number of rows."""
    fill: list[int] = []  # tokens placed in each row
    where = [(0, 0)] * len(sizes)
    for b in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        r = next((r for r, used in enumerate(fill) if used + sizes[b] <= capacity), len(fill))
        if r == len(fill):
            fill.append(0)
        where[b] = (r, fill[r])
        fill[r] += sizes[b]
    return where, len(fill)


# --------------------------------------------------------------------------------------------------------------
# Loss functions: (model, batch, loss settings, frozen models) -> LossParts


def cross_entropy(
    model: Any, batch: dict[str, Any], loss: LossConfig, frozen: Frozen = NO_FROZEN
) -> LossParts:
    """CE on the output tokens (targets for sft, teacher outputs for seqkd), EOS included."""
    nll = forward_token_nll(model, batch["main"])  # (B, T-1)
    n = max(batch["n_tokens"], 1)
    return LossParts(tok_sum=nll.sum(), metrics={"ce": nll.sum().detach() / n})


def _regulariser(
    model: Any, batch: dict[str, Any], loss: LossConfig, frozen: Frozen, chosen: dict[str, torch.Tensor]
) -> torch.Tensor | None:
    """lambda's term, as a sum over tokens: CE on the chosen outputs or the targets, or SLiC's token KL to the
    initial student on the chosen outputs. `chosen` holds token_nll (and logits for kl-init) of the chosen rows
    (see _chosen_rows)."""
    if loss.regularizer == "chosen":
        return chosen["token_nll"].sum()
    if loss.regularizer == "target":
        return forward_token_nll(model, batch["reg"]).sum()
    if loss.regularizer == "kl-init":
        rows = {k: v[: len(chosen["token_nll"])] for k, v in batch["main"].items() if k in _SEQ_KEYS}
        with torch.no_grad():
            ref_logits, labels, _ = output_logits(frozen.reference, rows)  # (Mc, V), (Mc,): the same tokens
        return token_kl_to_reference(chosen["logits"], ref_logits, labels).sum()
    return None


def _chosen_rows(out: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The chosen outputs' part of a sequence_logps result, rows [0, B): token_nll (B, T-1) and, when it holds
    logits (kl-init), the logits (Mc, V) of their labelled tokens, the first Mc of the gathered ones (Mc counted
    by make_batch on the host: every chosen token is labelled once)."""
    chosen = {"token_nll": out["token_nll"][: batch["n_examples"]]}
    if "logits" in out:
        chosen["logits"] = out["logits"][: batch["n_chosen_tokens"]]
    return chosen


_SEQ_KEYS = ("input_ids", "attention_mask", "labels", "decoder_input_ids", "decoder_attention_mask")


def _pair_metrics(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, per_example: torch.Tensor
) -> dict:
    return {
        "calibration": per_example.detach().mean(),
        "chosen_logps": chosen_logps.detach().mean(),
        "rejected_logps": rejected_logps.detach().mean(),
        "margin": (chosen_logps - rejected_logps).detach().mean(),
        "rank_acc": ranking_accuracy(chosen_logps, rejected_logps),
    }


def _with_regulariser(
    model: Any, batch: dict[str, Any], loss: LossConfig, frozen: Frozen, chosen: dict, per_example, metrics
) -> LossParts:
    tok_sum = _regulariser(model, batch, loss, frozen, chosen)
    if tok_sum is not None:
        key = "reg_kl" if loss.regularizer == "kl-init" else "reg_ce"  # per regularised token
        metrics[key] = tok_sum.detach() / max(batch["n_tokens"], 1)
    return LossParts(seq_sum=per_example.sum(), tok_sum=tok_sum, tok_weight=loss.reg_weight, metrics=metrics)


def _calibration(kind: str, from_divergence: bool = False) -> Callable[..., LossParts]:
    """PLaD ranking (eq. 3) or margin (eq. 4) calibration over (y+, y-) pairs + lambda * regulariser."""

    def loss_fn(model: Any, batch: dict[str, Any], loss: LossConfig, frozen: Frozen = NO_FROZEN) -> LossParts:
        main, B = batch["main"], batch["n_examples"]
        out = sequence_logps(
            model,
            main,
            reduction=loss.logp,
            count_labels=main["divergence_labels"] if from_divergence else None,
            return_logits=loss.regularizer == "kl-init",
        )
        chosen_logps, rejected_logps = out["logps"][:B], out["logps"][B:]  # (B,), (B,)
        if kind == "rank":
            per_example = rank_calibration_loss(chosen_logps, rejected_logps, loss.beta)
        else:
            per_example = margin_calibration_loss(
                chosen_logps, rejected_logps, main["chosen_scores"], main["rejected_scores"], loss.beta
            )
        chosen = _chosen_rows(out, batch)
        return _with_regulariser(
            model,
            batch,
            loss,
            frozen,
            chosen,
            per_example,
            _pair_metrics(chosen_logps, rejected_logps, per_example),
        )

    return loss_fn


def plad_list(model: Any, batch: dict[str, Any], loss: LossConfig, frozen: Frozen = NO_FROZEN) -> LossParts:
    """SLiC list-wise rank over the teacher output and k student samples + lambda * regulariser."""
    main, B = batch["main"], batch["n_examples"]
    out = sequence_logps(model, main, reduction=loss.logp, return_logits=loss.regularizer == "kl-init")
    K = main["list_mask"].shape[1]
    logps = out["logps"].view(K, B).T  # (B, K)
    per_example = listwise_rank_loss(logps, main["list_ranks"], main["list_mask"], loss.beta)
    chosen = _chosen_rows(out, batch)
    others = logps[:, 1:].masked_fill(~main["list_mask"][:, 1:], float("nan"))
    metrics = {
        "calibration": per_example.detach().mean(),
        "chosen_logps": logps[:, 0].detach().mean(),
        "rejected_logps": others.detach().nanmean(),
        "rank_acc": ((logps[:, :1] > others) & main["list_mask"][:, 1:]).sum()
        / main["list_mask"][:, 1:].sum(),
    }
    return _with_regulariser(model, batch, loss, frozen, chosen, per_example, metrics)


def dpkd(model: Any, batch: dict[str, Any], loss: LossConfig, frozen: Frozen = NO_FROZEN) -> LossParts:
    """DPKD's sequence form with the teacher as reference (Li et al. 2024, eq. 12) + lambda * regulariser."""
    main, B = batch["main"], batch["n_examples"]
    out = sequence_logps(model, main, reduction="sum", return_logits=loss.regularizer == "kl-init")
    lengths = out["n_tokens"].float() if loss.dpkd_length_norm else torch.ones_like(out["logps"])
    teacher = main["teacher_logps"]
    per_example = dpkd_sequence_loss(
        out["logps"][:B], out["logps"][B:], teacher[:B], teacher[B:], lengths[:B], lengths[B:], loss.beta
    )
    chosen = _chosen_rows(out, batch)
    metrics = _pair_metrics(out["logps"][:B], out["logps"][B:], per_example)
    ratio_c, ratio_r = out["logps"][:B] - teacher[:B], out["logps"][B:] - teacher[B:]
    metrics["reward_margin"] = (ratio_c / lengths[:B] - ratio_r / lengths[B:]).detach().mean() * loss.beta
    return _with_regulariser(model, batch, loss, frozen, chosen, per_example, metrics)


def _token_level(kind: str) -> Callable[..., LossParts]:
    """A token-level loss between the student's and the frozen teacher's next-token distributions, on every
    output token of the batch (targets or teacher outputs; on-policy student samples for gkd)."""

    def loss_fn(model: Any, batch: dict[str, Any], loss: LossConfig, frozen: Frozen = NO_FROZEN) -> LossParts:
        main = batch["main"]
        student = output_hidden(model, main)  # the labelled tokens only, before the output layer
        with torch.no_grad():
            teacher = output_hidden(frozen.teacher, main)  # the same tokens
        labels = student.labels  # (M,)

        def per_row(logits: Any, teacher_logits: Any, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
            V = frozen.vocab or logits.shape[-1]
            logits, teacher_logits = logits[..., :V], teacher_logits[..., :V]  # drop embedding padding rows
            nll = token_nll(logits, labels[rows])  # (m,)
            if kind == "dpkd-token":  # released code: (1 - r) * CE + r * per-token preference loss
                pref = dpkd_token_loss(logits, teacher_logits, labels[rows], loss.dpkd_token_beta)
                return (1 - loss.dpkd_token_ratio) * nll + loss.dpkd_token_ratio * pref, nll
            if kind == "gkd":
                return generalized_jsd(logits, teacher_logits, labels[rows], loss.gkd_beta), nll
            return token_divergence(logits, teacher_logits, labels[rows], kind, loss.skew_alpha), nll

        # a chunk of rows at a time: on a 150k vocabulary the (M, V) logits of both models never exist at once
        per_token, nll = chunked_rows(per_row, student, teacher)  # (M,), (M,)
        n = max(labels.numel(), 1)  # every gathered token has a label
        metrics = {"divergence": per_token.detach().sum() / n, "ce": nll.detach().sum() / n}
        return LossParts(tok_sum=per_token.sum(), metrics=metrics)

    return loss_fn


# --------------------------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True, kw_only=True)
class Method(MethodSpec):
    """A row of plad.config.method_specs.METHOD_SPECS (what the method is and needs) with its loss function."""

    loss: Callable[..., LossParts]


# The loss function of every method named in METHOD_SPECS.
LOSSES: dict[str, Callable[..., LossParts]] = {
    "sft": cross_entropy,
    "seqkd": cross_entropy,
    "plad-rank": _calibration("rank"),
    "plad-margin": _calibration("margin"),
    "plad-list": plad_list,
    "plad-rank-div": _calibration("rank", from_divergence=True),
    "plad-margin-div": _calibration("margin", from_divergence=True),
    "dpkd": dpkd,
    **{
        name: _token_level(name)
        for name in ("dpkd-token", "kd", "rkl", "skew-fkl", "skew-rkl", "jsd", "tvd", "gkd")
    },
}
if LOSSES.keys() != METHOD_SPECS.keys():  # a method added to one table and not the other
    raise RuntimeError(f"plad.core.methods.LOSSES and METHOD_SPECS differ: {set(LOSSES) ^ set(METHOD_SPECS)}")

METHODS: dict[str, Method] = {
    name: Method(**{f.name: getattr(spec, f.name) for f in fields(spec)}, loss=LOSSES[name])
    for name, spec in METHOD_SPECS.items()
}
