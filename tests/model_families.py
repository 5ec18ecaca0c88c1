"""Tiny models of each architecture family plad supports (test helpers: configs small enough for CPU tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def family_config(family: str, tokenizer: Any, max_positions: int = 256) -> Any:
    """A tiny config of one model family, decoder-only or encoder-decoder (T5), for tests that every family trains,
    samples and saves."""
    import transformers as tf

    common = dict(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    if family == "llama":
        return tf.LlamaConfig(max_position_embeddings=max_positions, **small, **common)
    if family == "qwen2":
        return tf.Qwen2Config(max_position_embeddings=max_positions, num_key_value_heads=1, **small, **common)
    if family == "gpt-neox":
        return tf.GPTNeoXConfig(max_position_embeddings=max_positions, **small, **common)
    if family == "gpt2":
        return tf.GPT2Config(n_positions=max_positions, n_embd=32, n_layer=1, n_head=2, **common)
    if family == "opt":
        return tf.OPTConfig(
            max_position_embeddings=max_positions, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
            num_attention_heads=2, word_embed_proj_dim=32, **common,
        )  # fmt: skip
    if family == "t5":  # dropout off like the other tiny configs: same data order, same gradients
        return tf.T5Config(
            d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, dropout_rate=0.0,
            decoder_start_token_id=tokenizer.pad_token_id, **{k: v for k, v in common.items() if k != "bos_token_id"},
        )  # fmt: skip
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


FAMILIES = ("llama", "qwen2", "gpt-neox", "gpt2", "opt", "t5")


def build_family_model(family: str, tokenizer: Any, out_dir: str | Path, seed: int = 0) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(seed)
    config = family_config(family, tokenizer)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_config(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return model
