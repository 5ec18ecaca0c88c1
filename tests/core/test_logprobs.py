"""The output layer computed only at the labelled positions (plad.core.logprobs.output_logits) against the full forward
that computes logits everywhere: sequence log-probs, token NLL, and for every method of the table the loss parts and
the parameter gradients, on tiny Llama (also with a biased output layer), Qwen2, GPT-2, GPT-NeoX, OPT and Gemma-3
models (a fast path checked against its reference path).

The reference is the same code with gathered_output_layer answering None, i.e. the fallback every model the table
does not know takes: the model's own forward with logits at every position, from which the labelled ones are
picked. The sequence log-probs are also checked against log_softmax of the model's own logits, one row at a time,
and the token-level losses on gathered (M, V) logits against the same losses on (B, T, V) logits with a mask.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import plad.core.logprobs as logprobs
from plad.config import LossConfig
from plad.core.batching import collate_sequences
from plad.core.logprobs import (
    aligned_labels,
    forward_logits,
    forward_token_nll,
    gathered_output_layer,
    output_logits,
    score_outputs,
    sequence_logps,
)
from plad.core.losses import (
    TOKEN_DIVERGENCES,
    dpkd_token_loss,
    generalized_jsd,
    token_divergence,
    token_kl_to_reference,
    token_nll,
)
from plad.core.methods import METHODS, Frozen, Item, make_batch

VOCAB = 300  # "a few hundred": several output-layer rows per hidden unit, as in a real model
PAD, EOS = 0, 1
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _config(family: str):
    """A 2-layer, 32-wide model of `family`, dropout off (the two paths must see the same network)."""
    import transformers as tf

    common = {"vocab_size": VOCAB, "pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": EOS}
    if family == "gpt2":  # tied output layer
        return tf.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            **common,
        )  # fmt: skip
    sizes = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    if family in ("llama", "llama-bias"):
        return tf.LlamaConfig(**sizes, **common)
    if family == "qwen2":
        return tf.Qwen2Config(**sizes, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(**sizes, hidden_dropout=0.0, attention_dropout=0.0, **common)
    if family == "opt":  # word_embed_proj_dim < hidden: the body ends in project_out, which must run
        return tf.OPTConfig(
            hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
            word_embed_proj_dim=16, dropout=0.0, attention_dropout=0.0, **common,
        )  # fmt: skip
    if family == "gemma3":  # tied output layer, softcapped logits; cap 2 so that the cap bends these logits
        return tf.Gemma3TextConfig(
            **sizes,
            head_dim=8,
            final_logit_softcapping=2.0,
            sliding_window=4,
            query_pre_attn_scalar=8,
            **common,
        )
    raise ValueError(family)


def build(family: str, seed: int) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(seed)
    cls = {
        "gpt2": tf.GPT2LMHeadModel,
        "llama": tf.LlamaForCausalLM,
        "llama-bias": tf.LlamaForCausalLM,
        "qwen2": tf.Qwen2ForCausalLM,
        "gpt_neox": tf.GPTNeoXForCausalLM,
        "opt": tf.OPTForCausalLM,
        "gemma3": tf.Gemma3ForCausalLM,
    }[family]
    model = cls(_config(family))
    if family == "llama-bias":  # an output layer with a bias: the gathered path must add it too
        head = torch.nn.Linear(32, VOCAB, bias=True)
        torch.nn.init.normal_(head.bias, std=1.0)
        model.set_output_embeddings(head)
    with torch.no_grad():  # peaked distributions: near-uniform ones make every loss and gradient near 0
        model.get_output_embeddings().weight.mul_(8.0)
    return model.train()


FAMILIES = ["llama", "llama-bias", "qwen2", "gpt2", "gpt_neox", "opt", "gemma3"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def models(family: str) -> dict[str, torch.nn.Module]:
    """The student, a teacher of the same vocabulary, and the kl-init reference (another init, so that the KL
    to it is not 0); the frozen ones as train.train() leaves them."""
    return {
        "student": build(family, 0),
        "teacher": build(family, 1).eval().requires_grad_(False),
        "reference": build(family, 2).eval().requires_grad_(False),
    }


def _ids(g: torch.Generator, n: int) -> list[int]:
    return torch.randint(2, VOCAB, (n,), generator=g).tolist()


def _items() -> dict[str, list[Item]]:
    """Rows of very different lengths (right padding); pairs share a prefix of 0-2 tokens (divergence-aware
    labels cut it); lists of 1-3 outputs (a padding slot)."""
    g = torch.Generator().manual_seed(0)
    prompts = [_ids(g, n) for n in (3, 9, 5)]
    chosen = [_ids(g, n) + [EOS] for n in (2, 6, 1)]
    rejected = [c[:k] + _ids(g, n) + [EOS] for c, k, n in zip(chosen, (1, 2, 0), (4, 1, 3), strict=True)]
    lists = [[c, r, _ids(g, 3) + [EOS]][:k] for c, r, k in zip(chosen, rejected, (3, 2, 1), strict=True)]
    return {
        "single": [Item(p, c) for p, c in zip(prompts, chosen, strict=True)],
        "pairs": [
            Item(p, c, r, 0.9 - 0.2 * i, 0.1 * i, -4.0 - i, -7.0 + i)
            for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected, strict=True))
        ],
        "lists": [
            Item(p, o[0], outputs=o, ranks=list(range(len(o)))) for p, o in zip(prompts, lists, strict=True)
        ],
        "reg": [Item(p[::-1], _ids(g, n) + [EOS]) for p, n in zip(prompts, (4, 1, 2), strict=True)],
    }


ITEMS = _items()


def _loss_cases() -> list[tuple[str, str]]:
    """(method, regulariser) for every method of the table; every regulariser for the ones that take it."""
    cases = []
    for name, method in METHODS.items():
        regs = ("none", "chosen", "target", "kl-init") if method.uses_regularizer else ("none",)
        cases += [(name, reg) for reg in regs]
    return cases


def _full_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on every model takes the fallback: its own forward, logits at every position."""
    monkeypatch.setattr(logprobs, "gathered_output_layer", lambda model: None)


def _record_output_layer_inputs(model: torch.nn.Module) -> tuple[list[torch.Size], Callable[[], None]]:
    shapes: list[torch.Size] = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: shapes.append(args[0].shape)
    )
    return shapes, handle.remove


# ----------------------------------------------------------------------------------------------------------------
# Which models take the gathered path


def test_known_families_gather_and_others_fall_back(models) -> None:
    student = models["student"]
    assert gathered_output_layer(student) is not None

    class Subclass(type(student)):  # may override forward: plad cannot know, so the full forward runs
        pass

    assert gathered_output_layer(Subclass(student.config)) is None
    if student.config.model_type == "gemma3_text":  # the softcap must bend these logits to be tested at all
        batch = _batch()
        with torch.no_grad():
            logits, _, _ = output_logits(student, batch)
            raw = student.lm_head(
                student.model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
            )
        cap = student.config.final_logit_softcapping
        assert float(logits.abs().max()) < cap < float(raw.abs().max())


def test_encoder_decoder_falls_back() -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=VOCAB, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, decoder_start_token_id=0
        )
    )
    assert gathered_output_layer(t5) is None


# ----------------------------------------------------------------------------------------------------------------
# Sequence log-probs and token NLL


def _batch() -> dict[str, torch.Tensor]:
    items = ITEMS["pairs"]
    batch = collate_sequences(
        [it.prompt for it in items] * 2, [it.chosen for it in items] + [it.rejected for it in items], PAD
    )
    assert (batch["attention_mask"] == 0).any(), "the test needs right padding"
    return batch


def _reference_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Independent of plad: each row alone (no padding), log_softmax of the model's own logits at its labels."""
    out = []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        n = int(mask.sum())
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[None, :n]).logits[0].double(), -1)  # (n, V)
        out.append(sum(float(logp[t - 1, labels[t]]) for t in range(1, n) if labels[t] != -100))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sequence_logps_gathered_equal_full(models, monkeypatch, reduction: str) -> None:
    model, batch = models["student"], _batch()
    shapes, stop = _record_output_layer_inputs(model)
    with torch.no_grad():
        fast = sequence_logps(model, batch, reduction=reduction)
    stop()
    M = int((aligned_labels(batch) != -100).sum())
    assert len(shapes) == 1 and shapes[0][0] == M, "the output layer must see the labelled positions only"
    ref = _reference_logps(model, batch)
    n = (batch["labels"] != -100).sum(-1)
    if reduction == "mean":
        ref = ref / n
    torch.testing.assert_close(fast["logps"].double(), ref, **TOL)
    assert len({round(float(v), 3) for v in ref}) == len(ref), (
        "rows must differ for the check to mean anything"
    )

    _full_forward(monkeypatch)
    with torch.no_grad():
        full = sequence_logps(model, batch, reduction=reduction)
    assert fast.keys() == full.keys() == {"logps", "token_nll", "n_tokens"}
    for key in fast:
        torch.testing.assert_close(fast[key], full[key], **TOL)
    assert fast["n_tokens"].tolist() == n.tolist()
    assert torch.equal(fast["token_nll"] != 0, aligned_labels(batch) != -100)  # nothing on prompt or padding


def test_sequence_logps_counted_tokens_and_logits_equal_full(models, monkeypatch) -> None:
    """The divergence-aware count (a subset of the labels) and return_logits: the same values both ways."""
    model = models["student"]
    cfg = LossConfig(regularizer="none")
    main = make_batch(ITEMS["pairs"], None, PAD, cfg, divergence=True)["main"]
    counted = main["divergence_labels"]
    assert ((counted != -100).sum() < (main["labels"] != -100).sum()) and (counted != -100).any()
    batch = {k: main[k] for k in ("input_ids", "attention_mask", "labels")}

    def run() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return sequence_logps(model, batch, reduction="mean", count_labels=counted, return_logits=True)

    fast = run()
    _full_forward(monkeypatch)
    full = run()
    assert fast.keys() == full.keys()
    for key in fast:
        torch.testing.assert_close(fast[key], full[key], **TOL)
    assert fast["n_tokens"].tolist() == (counted[:, 1:] != -100).sum(-1).tolist()
    # the logits are the full forward's at the labelled positions, in row-major order
    all_logits, labels = forward_logits(model, batch)
    mask = labels != -100
    torch.testing.assert_close(fast["logits"], all_logits[mask].detach(), **TOL)
    assert torch.equal(fast["labels"], labels[mask]) and torch.equal(fast["label_mask"], mask)


def test_token_nll_and_score_outputs_gathered_equal_full(models, monkeypatch) -> None:
    model, batch = models["student"], _batch()
    items = ITEMS["pairs"]
    prompts, outputs = [it.prompt for it in items], [it.rejected for it in items]

    def run():
        with torch.no_grad():
            return forward_token_nll(model, batch), score_outputs(model, PAD, prompts, outputs, batch_size=2)

    fast_nll, fast_scores = run()
    assert model.training, "score_outputs restores the training mode"
    _full_forward(monkeypatch)
    full_nll, full_scores = run()
    assert fast_nll.shape == aligned_labels(batch).shape
    torch.testing.assert_close(fast_nll, full_nll, **TOL)
    assert [n for _, n in fast_scores] == [len(o) for o in outputs]
    assert [lp for lp, _ in fast_scores] == pytest.approx([lp for lp, _ in full_scores], abs=1e-5, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Every method: loss parts and gradients


def _loss_and_grads(method: str, loss: LossConfig, models, batch) -> tuple[dict, dict, list[torch.Size]]:
    model = models["student"]
    model.zero_grad(set_to_none=True)
    frozen = Frozen(teacher=models["teacher"], reference=models["reference"], vocab=VOCAB)
    shapes, stop = _record_output_layer_inputs(model)
    parts = METHODS[method].loss(model, batch, loss, frozen)
    stop()
    total = sum(
        (w * s for w, s in ((1.0, parts.seq_sum), (parts.tok_weight, parts.tok_sum)) if s is not None),
        torch.zeros(()),
    )
    total.backward()
    values = {
        k: v.detach().clone()
        for k, v in (("seq_sum", parts.seq_sum), ("tok_sum", parts.tok_sum))
        if v is not None
    }
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return values, grads, shapes


@torch.no_grad()
def _tok_sum_from_all_logits(method: str, loss: LossConfig, models, batch) -> torch.Tensor | None:
    """The token-level part as the code before gathering computed it: losses over the (B, T-1, V) logits of the
    full forward, masked by the labels; None where the method has no token-level part."""
    main, B = batch["main"], batch["n_examples"]
    logits, labels = forward_logits(models["student"], main)  # (N, T-1, V), (N, T-1)
    if METHODS[method].needs_teacher_model:
        teacher, _ = forward_logits(models["teacher"], main)
        if method == "dpkd-token":
            r = loss.dpkd_token_ratio
            per_token = (1 - r) * token_nll(logits, labels) + r * dpkd_token_loss(
                logits, teacher, labels, loss.dpkd_token_beta
            )
        elif method == "gkd":
            per_token = generalized_jsd(logits, teacher, labels, loss.gkd_beta)
        else:
            per_token = token_divergence(logits, teacher, labels, method, loss.skew_alpha)
        return per_token.sum()
    if not METHODS[method].uses_regularizer:  # sft, seqkd: CE on every output token
        return token_nll(logits, labels).sum()
    if loss.regularizer == "chosen":
        return token_nll(logits[:B], labels[:B]).sum()
    if loss.regularizer == "target":
        return token_nll(*forward_logits(models["student"], batch["reg"])).sum()
    if loss.regularizer == "kl-init":
        reference, _ = forward_logits(models["reference"], main)
        return token_kl_to_reference(logits[:B], reference[:B], labels[:B]).sum()
    return None


@pytest.mark.parametrize(("method", "regularizer"), _loss_cases())
def test_every_method_gathered_equals_full(models, monkeypatch, method: str, regularizer: str) -> None:
    m = METHODS[method]
    loss = LossConfig(beta=0.5, regularizer=regularizer, reg_weight=0.7, logp="mean", dpkd_token_beta=1.0)
    source = m.data_source(loss)
    items = ITEMS[{"targets": "single", "teacher": "single"}.get(source, source)]
    batch = make_batch(
        items, ITEMS["reg"] if regularizer == "target" else None, PAD, loss, None, m.from_divergence
    )

    fast, fast_grads, shapes = _loss_and_grads(method, loss, models, batch)
    assert shapes and all(len(s) == 2 for s in shapes), "the student's output layer must run on (M, H) only"
    _full_forward(monkeypatch)
    full, full_grads, full_shapes = _loss_and_grads(method, loss, models, batch)
    assert all(len(s) == 3 for s in full_shapes)

    assert fast.keys() == full.keys() and fast, "the method returned no loss"
    # The reference path shares the method's code: check the token-level part independently too.
    expected = _tok_sum_from_all_logits(method, loss, models, batch)
    assert ("tok_sum" in fast) == (expected is not None)
    if expected is not None:
        torch.testing.assert_close(fast["tok_sum"], expected, **TOL)
        assert float(expected) > 1e-2
    for key in fast:
        torch.testing.assert_close(fast[key], full[key], **TOL, msg=lambda s, k=key: f"{k}: {s}")
    assert fast_grads.keys() == full_grads.keys()
    scale = max(float(g.abs().max()) for g in full_grads.values())
    assert scale > 1e-3, f"gradients too small ({scale:.1e}) for the comparison to mean anything"
    for name in full_grads:
        torch.testing.assert_close(
            fast_grads[name], full_grads[name], **TOL, msg=lambda s, n=name: f"{n}: {s}"
        )


# ----------------------------------------------------------------------------------------------------------------
# The token-level losses: gathered (M, V) logits give the values the (B, T, V) form gives at the labelled tokens


def test_token_losses_on_gathered_logits_equal_masked_full_logits() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 11, generator=g, dtype=torch.float64).float() * 3  # (B, T, V)
    teacher = torch.randn(3, 5, 11, generator=g, dtype=torch.float64).float() * 3
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, :2] = labels[2, 3:] = labels[1, 4] = -100  # prompt and padding positions
    mask = labels != -100

    losses: dict[str, Callable[..., torch.Tensor]] = {
        "nll": lambda s, t, y: token_nll(s, y),
        "dpkd-token": lambda s, t, y: dpkd_token_loss(s, t, y, 1.0),
        "gkd": lambda s, t, y: generalized_jsd(s, t, y, 0.3),
    }
    losses.update({k: lambda s, t, y, k=k: token_divergence(s, t, y, k, 0.2) for k in TOKEN_DIVERGENCES})
    for name, fn in losses.items():
        s_full = student.clone().requires_grad_(True)
        full = fn(s_full, teacher, labels)  # (B, T), 0 off the labels
        full.sum().backward()
        s_gathered = student[mask].clone().requires_grad_(True)  # (M, V)
        gathered = fn(s_gathered, teacher[mask], labels[mask])  # (M,)
        gathered.sum().backward()
        assert gathered.shape == (int(mask.sum()),), name
        torch.testing.assert_close(gathered, full[mask], **TOL, msg=name)
        assert float(gathered.detach().abs().sum()) > 1e-2, name
        torch.testing.assert_close(s_gathered.grad, s_full.grad[mask], **TOL, msg=name)
        assert float(s_full.grad[~mask].abs().sum()) == 0.0, name


def test_output_logits_labels_follow_the_mask(models) -> None:
    batch = _batch()
    with torch.no_grad():
        logits, labels, mask = output_logits(models["student"], batch)
    assert logits.dtype == torch.float32 and logits.shape == (int(mask.sum()), VOCAB)
    assert torch.equal(labels, aligned_labels(batch)[mask]) and (labels != -100).all()


# ----------------------------------------------------------------------------------------------------------------
# Chunked output layer (logprobs.chunked_rows): a few rows of logits at a time give the values and gradients of all
# rows at once, and backward keeps no (M, V) tensor


@pytest.fixture(scope="module")
def llama_models() -> dict[str, torch.nn.Module]:
    return {
        "student": build("llama", 0),
        "teacher": build("llama", 1).eval().requires_grad_(False),
        "reference": build("llama", 2).eval().requires_grad_(False),
    }


@pytest.mark.parametrize(("method", "regularizer"), _loss_cases())
@pytest.mark.parametrize("path", ["gathered", "full-forward"])
def test_every_method_chunked_equals_one_chunk(
    llama_models, monkeypatch, method: str, regularizer: str, path: str
) -> None:
    m = METHODS[method]
    loss = LossConfig(beta=0.5, regularizer=regularizer, reg_weight=0.7, logp="mean", dpkd_token_beta=1.0)
    source = m.data_source(loss)
    items = ITEMS[{"targets": "single", "teacher": "single"}.get(source, source)]
    batch = make_batch(
        items, ITEMS["reg"] if regularizer == "target" else None, PAD, loss, None, m.from_divergence
    )
    if path == "full-forward":
        _full_forward(monkeypatch)
    monkeypatch.setattr(logprobs, "CHUNK_VALUES", 1 << 40)
    one, one_grads, one_shapes = _loss_and_grads(method, loss, llama_models, batch)
    monkeypatch.setattr(logprobs, "CHUNK_VALUES", 3 * VOCAB)  # 3 rows of logits at a time
    chunked, chunked_grads, shapes = _loss_and_grads(method, loss, llama_models, batch)
    if path == "gathered" and regularizer != "kl-init":  # kl-init's KL needs the chosen rows' logits at once
        assert max(s[0] for s in shapes) <= 3 and len(shapes) > len(one_shapes), shapes
    assert one.keys() == chunked.keys() and one
    for key in one:
        torch.testing.assert_close(chunked[key], one[key], **TOL, msg=lambda s, k=key: f"{k}: {s}")
    assert chunked_grads.keys() == one_grads.keys() and one_grads
    for name in one_grads:
        torch.testing.assert_close(
            chunked_grads[name], one_grads[name], **TOL, msg=lambda s, n=name: f"{n}: {s}"
        )


@pytest.mark.parametrize("method", ["kd", "gkd", "sft", "plad-rank"])
def test_chunked_backward_keeps_no_full_logits(llama_models, monkeypatch, method: str) -> None:
    """What autograd saves for backward outside the checkpointed chunks: with one chunk the (M, V) logits and
    their log-softmax; with chunks, nothing as wide as the vocabulary beyond a chunk's rows."""
    loss = LossConfig(regularizer="none")
    source = METHODS[method].data_source(loss)
    items = ITEMS[{"targets": "single", "teacher": "single"}.get(source, source)]
    batch = make_batch(items, None, PAD, loss)
    frozen = Frozen(teacher=llama_models["teacher"], reference=None, vocab=VOCAB)
    M = int((aligned_labels(batch["main"]) != -100).sum())

    def widest_saved(chunk_values: int) -> int:
        monkeypatch.setattr(logprobs, "CHUNK_VALUES", chunk_values)
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel() if t.dim() and t.shape[-1] == VOCAB else 0)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            parts = METHODS[method].loss(llama_models["student"], batch, loss, frozen)
        total = sum(s for s in (parts.seq_sum, parts.tok_sum) if s is not None)
        total.backward()
        llama_models["student"].zero_grad(set_to_none=True)
        return max(sizes)

    assert widest_saved(1 << 40) >= M * VOCAB > 3 * VOCAB
    assert widest_saved(3 * VOCAB) <= 0  # the chunks keep their hidden states only (the weight's are (V, H))


# ----------------------------------------------------------------------------------------------------------------
# The shared-prompt forward of pair batches


@pytest.mark.parametrize(
    ("method", "regularizer"),
    [("plad-rank", "chosen"), ("plad-margin-div", "none"), ("dpkd", "chosen"), ("plad-rank", "kl-init"),
     ("plad-list", "chosen")],
)  # fmt: skip
def test_shared_prompt_equals_prompt_plus_output_rows(models, method: str, regularizer: str) -> None:
    """Each prompt once, its outputs after it in one row under a tree mask (train.shared_prompt), against prompt +
    output rows: the same loss parts (to 1e-5) and parameter gradients (to 1e-4), for pairs and lists (1-3
    outputs, a 1-token stand-in where a prompt has fewer), on prompts of 3-9 tokens and on every family,
    Gemma-3's sliding-window layers (window 4, shorter than a prompt + output row) included; the student's body
    reads the prompts once, in one call."""
    m = METHODS[method]
    loss = LossConfig(beta=0.5, regularizer=regularizer, reg_weight=0.7, logp="mean")
    items = ITEMS[m.data_source(loss)]
    body = gathered_output_layer(models["student"])[0]
    tokens: list[int] = []
    hook = body.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: tokens.append(args[0].numel())
    )
    try:
        results, batches = {}, {}
        for shared in (False, True):
            batches[shared] = make_batch(items, None, PAD, loss, None, m.from_divergence, shared)
            assert ("shared_prompt" in batches[shared]["main"]) == shared
            tokens.clear()
            results[shared] = _loss_and_grads(method, loss, models, batches[shared])
            results[shared] += (sum(tokens),)
    finally:
        hook.remove()
    (values, grads, _, read), (s_values, s_grads, _, s_read) = results[False], results[True]
    assert values.keys() == s_values.keys() and grads.keys() == s_grads.keys()
    for k in values:
        torch.testing.assert_close(s_values[k], values[k], **TOL)
    for (
        k
    ) in grads:  # the attention runs on other shapes: float32 rounding differs by ~1e-7 in the hidden states
        torch.testing.assert_close(s_grads[k], grads[k], atol=1e-4, rtol=1e-4)
    rows = batches[True]["main"]["shared_prompt"]
    assert (
        read == batches[False]["main"]["input_ids"].numel()
    )  # the student's body (kl-init's reference apart)
    assert s_read == rows["ids"].numel() < read


@pytest.mark.parametrize("kind", ["pairs", "lists"])
def test_shared_prompt_packs_short_groups_into_shared_rows(models, kind: str) -> None:
    """A long prompt + outputs group and short ones: the short groups share rows (fewer rows, none longer than the
    longest group), each seeing only its own prompt, and the loss and gradients equal prompt + output rows' on
    every family (Gemma-3's window too)."""
    g = torch.Generator().manual_seed(3)
    prompts = [_ids(g, n) for n in (10, 3, 2, 4, 3)]
    outs = [[_ids(g, a) + [EOS], _ids(g, b) + [EOS]] for a, b in ((5, 4), (1, 2), (2, 1), (1, 1), (3, 2))]
    if kind == "pairs":
        items = [
            Item(p, o[0], o[1], 0.9, 0.1, -4.0 - i, -6.0)
            for i, (p, o) in enumerate(zip(prompts, outs, strict=True))
        ]
        method = "plad-rank"
    else:
        items = [
            Item(p, o[0], outputs=o[: 1 + i % 2], ranks=[0, 1][: 1 + i % 2])
            for i, (p, o) in enumerate(zip(prompts, outs, strict=True))
        ]
        method = "plad-list"
    loss = LossConfig(beta=0.5, regularizer="chosen", reg_weight=0.7, logp="mean")
    batches = {shared: make_batch(items, None, PAD, loss, None, False, shared) for shared in (False, True)}
    rows = batches[True]["main"]["shared_prompt"]
    per_row = [len({x for x in r if x >= 0}) for r in rows["groups"].tolist()]
    assert len(per_row) < len(items) and max(per_row) >= 2  # packed
    K = max(
        len(it.outputs or [it.chosen, it.rejected]) for it in items
    )  # a list's stand-ins take 1 token each
    sizes = [len(p) + sum(len(o) for o in it.outputs or [it.chosen, it.rejected]) + K - len(it.outputs or "xx")
             for p, it in zip(prompts, items, strict=True)]  # fmt: skip
    assert rows["ids"].shape[1] == max(sizes)  # no row longer than the longest group
    values, grads, _ = _loss_and_grads(method, loss, models, batches[False])
    s_values, s_grads, _ = _loss_and_grads(method, loss, models, batches[True])
    for k in values:
        torch.testing.assert_close(s_values[k], values[k], **TOL)
    for k in grads:
        torch.testing.assert_close(s_grads[k], grads[k], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("variant", ["eager", "gradient-checkpointing", "flash"])
def test_shared_prompt_other_attention(family: str, variant: str) -> None:
    """The shared-prompt rows under eager attention (an additive float mask instead of sdpa's boolean one) and
    under gradient checkpointing give what prompt + output rows give; an attention implementation that takes no
    4D mask (flash_attention_2, which needs a GPU: only its name is set) runs prompt + output rows."""
    loss = LossConfig(beta=0.5, regularizer="chosen", reg_weight=0.7, logp="mean")
    models = {"student": build(family, 0), "teacher": None, "reference": None}
    student = models["student"]
    if variant == "gradient-checkpointing":
        student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        student.config._attn_implementation = "eager" if variant == "eager" else "flash_attention_2"
    batches = {
        shared: make_batch(ITEMS["pairs"], None, PAD, loss, None, False, shared) for shared in (False, True)
    }
    body = gathered_output_layer(student)[0]
    shapes: list[torch.Size] = []
    hook = body.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: shapes.append(args[0].shape)
    )
    try:
        if variant == "flash":  # never computed (no flash kernels here): which rows the body is given
            with pytest.raises((ImportError, RuntimeError)):
                _loss_and_grads("plad-rank", loss, models, batches[True])
            assert shapes == [batches[False]["main"]["input_ids"].shape]
            return
        values, grads, _ = _loss_and_grads("plad-rank", loss, models, batches[False])
        s_values, s_grads, _ = _loss_and_grads("plad-rank", loss, models, batches[True])
    finally:
        hook.remove()
    assert shapes[-1] == batches[True]["main"]["shared_prompt"]["ids"].shape
    for k in values:
        torch.testing.assert_close(s_values[k], values[k], **TOL)
    for k in grads:
        torch.testing.assert_close(s_grads[k], grads[k], atol=1e-4, rtol=1e-4)
