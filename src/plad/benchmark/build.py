"""Tokenizer and tiny models of the offline benchmark, saved exactly like a user's checkpoint.

The tokenizer is a byte-level BPE trained locally on the task text (a real `tokenizers` fast tokenizer with
EOS and PAD); the models are transformers architectures built from configs and written with `save_pretrained`,
so every later stage loads them through the same Auto classes as a hub model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

EOS, PAD = "<|endoftext|>", "<|pad|>"

# Llama-architecture presets: the teacher has ~25x the student's parameters (0.89M vs 36k). Measured on
# count-summary (benchmarks/README.md): both are step-limited, not size-limited: the student reaches the teacher's
# level (~0.97) after ~10000 SFT steps, so the demo's gap between them comes from the SFT budget (teacher 4000
# steps, student 3000), and the equal-compute `sft` control is the baseline every method must beat.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "teacher": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    "student": dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
}


def build_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 320) -> Any:
    """Train a byte-level BPE on `texts` and save it as a transformers fast tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    fast.save_pretrained(str(out_dir))
    return fast


def build_model(
    preset: str, tokenizer: Any, out_dir: str | Path, seed: int = 0, max_positions: int = 256
) -> Any:
    """A randomly initialised causal LM of a preset, saved with `save_pretrained` (model + tokenizer)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(MODEL_PRESETS)}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **MODEL_PRESETS[preset],
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return model


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
