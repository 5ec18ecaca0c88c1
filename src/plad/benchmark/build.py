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
