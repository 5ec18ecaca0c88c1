"""train.gradient_checkpointing: the same loss and gradients as without it, with fewer activations kept for the
backward pass (counted exactly through torch's saved-tensor hooks), and wired into the real `plad sft`."""

from __future__ import annotations

import pytest
import torch
from conftest import Bench, load_safetensors, main_inprocess

from plad.config import LoraOptions, LossConfig
from plad.core.methods import METHODS, Item, make_batch
from plad.train import loop
from plad.train.lora import add_adapters
from plad.utils.errors import ConfigError


def _model() -> torch.nn.Module:
    """A Llama of 4 layers (checkpointing saves per layer: one layer would show little)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2
    )
    return LlamaForCausalLM(config)


def _batch() -> dict:
    gen = torch.Generator().manual_seed(1)
    items = [
        Item(
            torch.randint(3, 96, (40,), generator=gen).tolist(),
            torch.randint(3, 96, (12,), generator=gen).tolist(),
        )
        for _ in range(4)
    ]
    return make_batch(items, None, 0, LossConfig())


def _loss_grads_saved(model: torch.nn.Module, batch: dict) -> tuple[float, dict, int]:
    """The sft loss, the gradient of every trained parameter, and the bytes of the distinct storages autograd keeps
    for the backward pass outside checkpointed regions (the regions keep only their inputs)."""
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        parts = METHODS["sft"].loss(model, batch, LossConfig())
    loss = parts.tok_sum / batch["n_tokens"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads, sum(kept.values())


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_same_loss_and_gradients_with_fewer_activations_kept(lora_r: int) -> None:
    model = _model()
    if lora_r:
        model = add_adapters(model, LoraOptions(r=lora_r), "a test model", seed=0)
    model.train()
    batch = _batch()
    loss, grads, kept = _loss_grads_saved(model, batch)
    loop.enable_gradient_checkpointing(model)
    ck_loss, ck_grads, ck_kept = _loss_grads_saved(model, batch)
    assert ck_loss == pytest.approx(loss, abs=1e-6)
    assert grads.keys() == ck_grads.keys() and len(grads) > (0 if not lora_r else 8)
    assert all(torch.allclose(grads[n], ck_grads[n], atol=1e-6, rtol=0) for n in grads)
    assert ck_kept < 0.6 * kept, (ck_kept, kept)


def test_a_model_that_cannot_is_refused() -> None:
    with pytest.raises(ConfigError, match="set train.gradient_checkpointing false"):
        loop.enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_sft_with_gradient_checkpointing_trains_the_same_weights(
    bench: Bench, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = loop.enable_gradient_checkpointing
    monkeypatch.setattr(loop, "enable_gradient_checkpointing", lambda m: (calls.append(m), real(m)))

    def sft(out, *extra):
        return main_inprocess(
            "sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", out, "--train.max_steps", 2,
            "--train.batch_size", 4, "--train.lr", 1e-2, "--threads", 1, *extra,
        )  # fmt: skip

    assert sft(tmp_path / "plain") == 0 and not calls
    assert sft(tmp_path / "ckpt", "--train.gradient_checkpointing", "true") == 0 and len(calls) == 1
    plain = load_safetensors(tmp_path / "plain" / "model.safetensors")
    ckpt = load_safetensors(tmp_path / "ckpt" / "model.safetensors")
    assert plain.keys() == ckpt.keys()
    assert all(torch.allclose(plain[k], ckpt[k], atol=1e-6, rtol=0) for k in plain)
    assert any(
        not torch.equal(plain[k], before)
        for k, before in load_safetensors(bench.student / "model.safetensors").items()
    )
