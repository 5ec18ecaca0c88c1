"""Sequence and token log-probs of outputs given prompts, from one forward pass of a causal LM.

The loss covers only the output tokens (about 10 of 130 positions per row on the real benchmark), and the output
layer (hidden -> vocabulary) is about half of a small student's FLOPs. So for the decoder-only families whose
forward plad knows (see _GATHERED_OUTPUT_LAYER) the model's decoder body runs to hidden states, the hidden states
at the M labelled positions are gathered, and the output layer runs there only: logits (M, V) instead of (N, T, V).
A model wrapped in DistributedDataParallel is read through its module and an FSDP2-sharded one through the class
it had before sharding, the body running inside the model's own forward. Every other model (encoder-decoder, an
unknown class, another wrapper) runs its full forward and the same M positions are picked from its logits: same
values, more work. Pair and list batches run each prompt once, its outputs after it in the same row under a tree
attention mask (train.shared_prompt).

The losses then apply the output layer a chunk of rows at a time (chunked_rows, under activation checkpointing once
there is more than one chunk): on a 150k vocabulary the float32 (M, V) logits of student and teacher, their
log-softmax and gradients never exist for all M rows at once (benchmarks/output_layer.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from plad.core.losses import token_nll


def decoder_start_id(model: Any) -> int | None:
    """The decoder start token of an encoder-decoder model (which decides the batch layout), None otherwise."""
    cfg = model.config
    if not getattr(cfg, "is_encoder_decoder", False):
        return None
    start = cfg.decoder_start_token_id
    return cfg.pad_token_id if start is None else start


def aligned_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The labels aligned with the logits of forward_logits: (N, T-1) decoder-only (shifted: position t predicts
    token t+1), (N, To) encoder-decoder (already aligned)."""
    return batch["labels"] if "decoder_input_ids" in batch else batch["labels"][:, 1:]


def forward_logits(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The full forward: logits at every position and labels aligned for the loss (logits[:, t] scores label t).

    Decoder-only batch (input_ids, attention_mask, labels all (N, T)): the shift is done here, giving
    (N, T-1, V) and (N, T-1). Encoder-decoder batch (with decoder_input_ids): already aligned, (N, To, V), (N, To).
    The losses use output_logits, which computes logits only where there is a label; this is its fallback and the
    reference its tests compare with.
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
    return logits[:, :-1], aligned_labels(batch)


def _final_logit_softcapping(model: Any, logits: torch.Tensor) -> torch.Tensor:
    """Gemma-3: cap * tanh(logits / cap), applied by its forward after the output layer."""
    cap = model.config.final_logit_softcapping
    return logits if cap is None else torch.tanh(logits / cap) * cap


# The causal LMs whose forward is exactly `logits = transform(output_layer(body(input_ids, attention_mask)
# .last_hidden_state))`, read in transformers' modeling code (5.24; the same structure in the 4.x releases):
# class name -> (the attribute holding the decoder body, the transform after the output layer or None). A class
# that is not listed (Cohere's logit_scale, Granite's logits_scaling, Gemma-2, ...) runs its full forward until
# its forward has been read and added here; tests/core/test_logprobs.py checks every listed family it can build.
_GATHERED_OUTPUT_LAYER: dict[str, tuple[str, Callable[[Any, torch.Tensor], torch.Tensor] | None]] = {
    "LlamaForCausalLM": ("model", None),
    "Qwen2ForCausalLM": ("model", None),
    "GPT2LMHeadModel": ("transformer", None),
    "GPTNeoXForCausalLM": ("gpt_neox", None),
    # OPT's forward calls model.decoder; OPTModel returns exactly its decoder's output (final norm, project_out).
    "OPTForCausalLM": ("model", None),
    "Gemma3ForCausalLM": ("model", _final_logit_softcapping),
}


def _lora_base(model: Any) -> Any:
    """A peft causal LM with LoRA adapters (FSDP2-sharded or not) -> its base model, whose layers hold the adapters
    (peft injects them in place): PeftModelForCausalLM's forward calls the base's forward with the same inputs
    (peft 0.13-0.21, peft_model.py), so the base's body and output layer compute what it computes, adapters and
    their on/off state included. Anything else (prompt learning, which adds virtual tokens; another wrapper) comes
    back as it is."""
    cls = unsharded_class(model)  # FSDP2 shards a peft model as a whole
    if cls.__name__ != "PeftModelForCausalLM" or not cls.__module__.startswith("peft."):
        return model
    config = getattr(model, "active_peft_config", None)
    if config is None or getattr(config, "peft_type", None) != "LORA" or config.is_prompt_learning:
        return model
    return model.get_base_model()


def gathered_output_layer(
    model: Any,
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None:
    """(decoder body, hidden (M, H) -> logits (M, V)) computing exactly what the model's own forward computes, or
    None when the model must run its full forward.

    The check is by exact class, from transformers itself: a subclass may override forward, and a wrapper
    (DistributedDataParallel, a compiled model) must see its own forward called (DDP syncs gradients there); a peft
    LoRA model is read through its base (_lora_base). The output layer is called as a module, so a bias and tied
    embeddings (the same Parameter as the input embeddings: its gradient gets both uses) work as in the full
    forward.
    """
    model = _lora_base(model)
    cls = unsharded_class(model)
    known = _GATHERED_OUTPUT_LAYER.get(cls.__name__)
    if known is None or not cls.__module__.startswith("transformers.models."):
        return None
    body_name, transform = known
    body, head = getattr(model, body_name, None), model.get_output_embeddings()
    if not isinstance(body, torch.nn.Module) or not isinstance(head, torch.nn.Linear):
        return None
    if transform is None:
        return body, head
    return body, lambda hidden: transform(model, head(hidden))


@dataclass(frozen=True)
class Gathered:
    """The M labelled positions of a batch before the output layer: `values` are hidden states (M, H) with `head`
    the output layer (hidden -> logits, as the model's forward computes them), or float32 logits (M, V) with head
    None where the model ran its full forward. labels (M,) and mask (N, T') as output_logits returns them."""

    values: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor] | None
    labels: torch.Tensor
    mask: torch.Tensor
    vocab: int  # V: the width of the logits

    def logits(self, rows: slice = slice(None)) -> torch.Tensor:
        """float32 logits (m, V) of the positions `rows`."""
        values = self.values[rows]
        return values if self.head is None else self.head(values).float()


def output_hidden(model: Any, batch: dict[str, torch.Tensor]) -> Gathered:
    """The labelled positions of `batch` before the output layer (see Gathered): what output_logits computes,
    without the (M, V) logits, so that a loss can apply the output layer a few rows at a time.

    A model wrapped in DistributedDataParallel or sharded by FSDP2 runs the body inside its own forward
    (_in_forward_of), where DDP prepares the gradients' all-reduce and FSDP gathers the parameters."""
    labels = aligned_labels(batch)  # (N, T')
    mask = labels != -100  # (N, T')
    inner = _wrapped_module(model)
    # An encoder-decoder batch needs the model's own forward (encoder, then decoder): no table entry covers it.
    known = gathered_output_layer(inner or model) if "decoder_input_ids" not in batch else None
    if known is None:
        logits, _ = forward_logits(model, batch)  # (N, T', V)
        return Gathered(logits[mask].float(), None, labels[mask], mask, logits.shape[-1])
    body, output_layer = known
    vocab = (inner or model).get_output_embeddings().out_features

    def values() -> torch.Tensor:
        if "shared_prompt" in batch:
            shared = _shared_prompt_hidden(body, batch["shared_prompt"])
            if shared is not None:
                return shared
        hidden = body(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state  # (N, T, H)
        # position t predicts token t+1, as in forward_logits; the transform (softcapping) runs in the output
        # layer's dtype, as in the model's forward, and Gathered.logits casts to float32 after it
        return hidden[:, :-1][mask]

    gathered = values() if inner is None else _in_forward_of(model, values)
    return Gathered(gathered, output_layer, labels[mask], mask, vocab)


def _wrapped_module(model: Any) -> Any:
    """The module whose forward a wrapper runs, where the body must run inside the wrapper's own forward:
    DistributedDataParallel's module, or an FSDP2-sharded model itself (fully_shard makes its class FSDP<Class>,
    whose forward hooks gather the parameters the root holds and prepare the backward's reduce-scatter). None for
    anything else."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model.module
    return model if isinstance(model, FSDPModule) else None


def unsharded_class(model: Any) -> type:
    """The model's class; for an FSDP2-sharded model, the class it had before fully_shard (FSDP<Class> only adds
    the sharding methods and hooks: the forward is the class's own)."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if isinstance(model, FSDPModule):
        return next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
    return cls


def _in_forward_of(wrapper: Any, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """fn() run as the forward of the wrapped module, through the wrapper's own call: DDP's forward prepares the
    gradients' all-reduce for the backward that follows, then calls module(...), which runs fn; an FSDP2 model's
    hooks gather the root's parameters before fn and register the backward's hooks after it. The output layer runs
    after it, outside the forward, as in one process: its parameters' gradients are reduced all the same (DDP
    reduces every parameter that gets a gradient; under FSDP2 the output layer is its own sharded unit, called as
    a module)."""
    module = _wrapped_module(wrapper)
    module.forward = lambda *args, **kwargs: fn()  # an instance attribute: Module.__call__ calls it
    try:
        return wrapper()
    finally:
        del module.forward


def _shared_prompt_hidden(body: torch.nn.Module, rows: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The hidden states (M, H) at the labelled positions of a pair or list batch, each prompt computed once: a
    group per prompt holding the prompt and then each of its outputs, groups packed into rows no longer than the
    longest group (methods._shared_prompt_rows), one forward with a tree attention mask per group (tree_mask) and
    each token at its position in its prompt + output row, so that every output sees exactly its prompt and its
    own earlier tokens, as in that row. No padding between a prompt and its outputs; the rows are padded at the
    end. Rows of the gathered states in the order of labels[mask] of the prompt + output rows. None when the
    body's attention cannot take the mask (the caller then runs prompt + output rows)."""
    mask = tree_mask(body.config, rows, body.get_input_embeddings().weight.dtype)
    if mask is None:
        return None
    hidden = body(
        input_ids=rows["ids"], attention_mask=mask, position_ids=rows["positions"], use_cache=False
    ).last_hidden_state  # (R, G, H)
    return hidden.flatten(0, 1)[rows["gather"]]


def tree_mask(
    config: Any, rows: dict[str, torch.Tensor], dtype: torch.dtype
) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """The 4D attention mask (R, 1, G, G) of shared-prompt rows: position q sees position k <= q of the same row
    and the same group (prompt) when k is in the prompt or in q's own output, and (sliding-window layers) when
    their positions differ by less than the window; padding sees itself only (no empty row). transformers (5.x, masking_utils) takes a 4D mask as
    it is: a boolean one (True = attend) for sdpa, an additive float one for eager; other attention implementations
    (flash, flex) take no such mask: None. A config with sliding-window layers (Gemma-3) gets one mask per layer
    type, which its model reads by layer."""
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager"):
        return None
    segments, positions, groups = rows["segments"], rows["positions"], rows["groups"]  # (R, G)
    G = segments.shape[1]
    index = torch.arange(G, device=segments.device)
    q, k = segments[:, :, None], segments[:, None, :]  # (R, G, 1), (R, 1, G)
    same_group = groups[:, :, None] == groups[:, None, :]
    allowed = (index[None, :] <= index[:, None]) & same_group & (k >= 0) & ((k == 0) | (k == q))  # (R, G, G)
    allowed |= torch.eye(G, dtype=torch.bool, device=segments.device)

    def form(mask: torch.Tensor) -> torch.Tensor:
        mask = mask[:, None]  # (B, 1, G, G)
        if implementation == "sdpa":
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )

    if "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        return form(allowed)
    distance = positions[:, :, None] - positions[:, None, :]  # (R, G, G)
    windowed = allowed & (distance < config.sliding_window)
    windowed |= torch.eye(G, dtype=torch.bool, device=segments.device)
    return {"full_attention": form(allowed), "sliding_attention": form(windowed)}


def output_logits(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 logits (M, V) and labels (M,) at the M positions that have a label, and where they are: the mask
    (N, T') over the aligned labels (N, T') of forward_logits. Rows come in row-major order of the mask
    (all of row 0's labelled tokens, then row 1's, ...), so logits[m] scores labels[m] = aligned[mask][m].

    Only the M positions go through the output layer where gathered_output_layer knows the model; otherwise the full
    forward runs and the same positions are picked from its logits.
    """
    g = output_hidden(model, batch)
    return g.logits(), g.labels, g.mask


# Rows of logits a chunked loss computes at once: 2^25 float32 values (128 MiB) per logits tensor, e.g. 220 rows of
# Qwen2's 151,936-token vocabulary; with a small vocabulary every batch is one chunk.
CHUNK_VALUES = 1 << 25


def chunked_rows(
    fn: Callable[[torch.Tensor, torch.Tensor | None, slice], tuple[torch.Tensor, ...]],
    student: Gathered,
    teacher: Gathered | None = None,
    chunk_values: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """`fn(student_logits (m, V), teacher_logits (m, V') or None, rows)` -> per-row tensors (m,), where `rows` is
    the slice of the M rows that the m rows are (to pick their labels), over the rows of `student` (and the same
    rows of `teacher`) a chunk at a time, concatenated: equal to fn on all M rows at once.

    With more than one chunk each runs under activation checkpointing: backward keeps the chunk's hidden states,
    not its logits, and computes them again, so at most one chunk's logits (and their log-softmax) exist at a time
    instead of all M rows' (on a 150k vocabulary, 500 output tokens in fp32 are 300 MB per tensor). The teacher's
    logits are computed without gradient."""
    import torch.utils.checkpoint

    m = student.values.shape[0]
    rows = max(
        1,
        (chunk_values or CHUNK_VALUES) // max(student.vocab, teacher.vocab if teacher is not None else 0, 1),
    )

    def piece(s_values: torch.Tensor, t_values: torch.Tensor | None, start: int) -> tuple[torch.Tensor, ...]:
        sl = slice(start, start + s_values.shape[0])
        s_logits = s_values if student.head is None else student.head(s_values).float()
        t_logits = None
        if teacher is not None:
            with torch.no_grad():
                t_logits = t_values if teacher.head is None else teacher.head(t_values).float()
        return fn(s_logits, t_logits, sl)

    if m <= rows:
        return piece(student.values, teacher.values if teacher is not None else None, 0)
    parts = [
        torch.utils.checkpoint.checkpoint(
            piece,
            student.values[i : i + rows],
            teacher.values[i : i + rows] if teacher is not None else None,
            i,
            use_reentrant=False,
        )
        for i in range(0, m, rows)
    ]
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))


def _scatter_rows(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(M,) values at the True positions of mask (N, T') -> (N, T'), 0 elsewhere (differentiable in values)."""
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


def forward_token_nll(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token NLL of `labels` under `model`, shifted so that position t predicts token t+1.

    Returns (N, T-1), 0 where there is no label.
    """
    g = output_hidden(model, batch)
    (nll,) = chunked_rows(lambda logits, _, rows: (token_nll(logits, g.labels[rows]),), g)  # (M,)
    return _scatter_rows(nll, g.mask)


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
    Returns logps (N,), token_nll (N, T-1) over all of batch["labels"] (0 where there is no label), n_tokens (N,)
    counted tokens, and with return_logits the logits (M, V) and labels (M,) of the labelled tokens with their
    mask (N, T-1) (see output_logits: row by row, so rows [0, B) own the first label_mask[:B].sum() of them).
    """
    g = output_hidden(model, batch)
    if return_logits:
        logits = g.logits()  # (M, V)
        nll_rows = token_nll(logits, g.labels)  # (M,)
    else:  # a chunk of rows at a time (see chunked_rows)
        (nll_rows,) = chunked_rows(lambda lg, _, rows: (token_nll(lg, g.labels[rows]),), g)
    labels, mask = g.labels, g.mask  # (M,), (N, T-1)
    nll = _scatter_rows(nll_rows, mask)  # (N, T-1)
    if count_labels is not None and "decoder_input_ids" not in batch:
        count_labels = count_labels[:, 1:]  # decoder-only: shifted like the labels
    counted = mask if count_labels is None else count_labels != -100  # (N, T-1)
    n_tokens = counted.sum(-1)  # (N,)
    logps = -(nll * counted).sum(-1)
    if reduction == "mean":
        logps = logps / n_tokens.clamp(min=1)
    out = {"logps": logps, "token_nll": nll, "n_tokens": n_tokens}
    if return_logits:
        out.update(logits=logits, labels=labels, label_mask=mask)
    return out


@torch.no_grad()
def score_outputs(
    model: Any, pad_id: int, prompts: list[list[int]], outputs: list[list[int]], batch_size: int = 32
) -> list[tuple[float, int]]:
    """(summed log P(output | prompt), output length) of each row, in batches grouped by length (no gradient)."""
    from plad.core.batching import collate_sequences

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
