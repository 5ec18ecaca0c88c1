"""`plad prune`: a smaller student cut from a decoder-only model by keeping some of its layers.

The first step of the DistilBERT / Minitron recipe (keep k of the teacher's layers, then heal the pruned model by
distillation on unlabeled text; see heal.py). Works on any decoder-only Hugging Face model whose decoder layers
sit in one ModuleList (Llama, Qwen2, Gemma-3, Mistral, GPT-2, GPT-NeoX, ...): the new model is built from the
config with `num_hidden_layers` = k and every per-layer list of the config (e.g. Gemma-3's and Qwen2's
`layer_types`) cut to the kept layers, so each attention gets its new `layer_idx` by construction; then the kept
layers' weights are copied exactly (embeddings, final norm and output layer too).
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import torch

from plad.config import PruneConfig, require
from plad.core.models import load_model_config, load_tokenizer
from plad.utils.errors import ConfigError, ModelError
from plad.utils.io import with_default_mode

log = logging.getLogger("plad")

_LAYER_KEY = re.compile(r"^(.*?\.)(layers|h|blocks)\.(\d+)\.(.*)$")


def evenly_spaced(n_layers: int, keep: int) -> list[int]:
    """`keep` layer indices spread evenly over 0..n_layers-1, first and last included (Minitron's depth pruning
    keeps both ends: the first layers build features, the last ones map to the vocabulary)."""
    if keep == 1:
        return [0]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def layers_to_keep(cfg: PruneConfig, n_layers: int, where: str) -> list[int]:
    if cfg.keep_layers:
        try:
            keep = [int(v) for v in cfg.keep_layers]
        except ValueError:
            raise ConfigError(f"keep_layers must be layer numbers, got {','.join(cfg.keep_layers)}") from None
        bad = [k for k in keep if not 0 <= k < n_layers]
        if bad:
            raise ConfigError(
                f"keep_layers: layer {bad[0]} is out of range; {where} has layers 0..{n_layers - 1}"
            )
        if keep != sorted(set(keep)):
            raise ConfigError(f"keep_layers must increase without repeats (got {','.join(cfg.keep_layers)})")
    else:
        if not 1 <= cfg.num_layers <= n_layers:
            raise ConfigError(f"num_layers must be in 1..{n_layers} ({where} has {n_layers} layers)")
        keep = evenly_spaced(n_layers, cfg.num_layers)
    if len(keep) >= n_layers:
        raise ConfigError(
            f"keeping {len(keep)} of {n_layers} layers is not a smaller student; keep fewer layers"
        )
    return keep


def pruned_config(config: Any, keep: list[int]) -> Any:
    """The config with len(keep) layers; every per-layer list (length = the old layer count) cut to `keep`."""
    n = config.num_hidden_layers
    new = copy.deepcopy(config)
    for name, value in vars(config).items():
        if (
            isinstance(value, list | tuple)
            and len(value) == n
            and name != "architectures"
            and not name.endswith(("token_id", "token_ids"))  # e.g. 3 EOS ids of a 3-layer model
        ):
            setattr(new, name, type(value)(value[i] for i in keep))
    new.num_hidden_layers = len(keep)
    if isinstance(
        getattr(new, "max_window_layers", None), int
    ):  # Qwen2: the first N layers use full attention
        new.max_window_layers = sum(1 for i in keep if i < config.max_window_layers)
    return new


def prune_state_dict(
    state: dict[str, torch.Tensor], n_layers: int, keep: list[int]
) -> dict[str, torch.Tensor]:
    """Weights of the kept layers renumbered 0..k-1; everything outside the layer list copied as it is."""
    new_index = {old: new for new, old in enumerate(keep)}
    prefixes = {m.group(1) + m.group(2) for k in state if (m := _LAYER_KEY.match(k))}
    layer_prefixes = [
        p for p in prefixes if {int(_LAYER_KEY.match(k).group(3)) for k in state if k.startswith(p + ".")}
        == set(range(n_layers))
    ]  # fmt: skip
    if len(layer_prefixes) != 1:
        raise ModelError(
            f"could not find the model's one list of {n_layers} decoder layers in its weights (found "
            f"{sorted(prefixes) or 'none'}); plad prune supports decoder-only models with one layer list"
        )
    prefix = layer_prefixes[0] + "."
    out = {}
    for k, v in state.items():
        if k.startswith(prefix):
            old, rest = k[len(prefix) :].split(".", 1)
            if int(old) in new_index:
                out[f"{prefix}{new_index[int(old)]}.{rest}"] = v
        else:
            out[k] = v
    return out


def run_prune(cfg: PruneConfig) -> dict:
    """Keep some layers of cfg.model; write the smaller model (and the tokenizer) to cfg.output_dir."""
    from transformers import AutoModelForCausalLM

    require(cfg, "model", "output_dir")
    config = load_model_config(cfg.model)
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"{cfg.model} is an encoder-decoder model; plad prune cuts decoder-only models")
    if type(config) not in AutoModelForCausalLM._model_mapping:  # an encoder (BERT): no LM head to keep
        raise ModelError(
            f"{cfg.model} holds a {type(config).__name__} ({config.model_type}) model, which is not a decoder-only "
            "language model; plad prune cuts causal LMs (Llama, Qwen2, GPT-2...)"
        )
    n_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(n_layers, int):
        raise ModelError(
            f"{cfg.model}: its config has no num_hidden_layers; plad prune cannot count its layers"
        )
    keep = layers_to_keep(cfg, n_layers, cfg.model)
    out = Path(cfg.output_dir)
    if (out / "config.json").exists():
        raise ConfigError(
            f"output_dir {out} already holds a model; choose another folder (nothing was changed)"
        )
    tok = load_tokenizer(cfg.tokenizer or cfg.model, "tokenizer" if cfg.tokenizer else "model")
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype="auto")
    new_config = pruned_config(model.config, keep)
    small = AutoModelForCausalLM.from_config(new_config, dtype=model.dtype)
    state = prune_state_dict(model.state_dict(), n_layers, keep)
    missing, unexpected = small.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k and small.config.tie_word_embeddings}
    if set(missing) - tied or unexpected:
        raise ModelError(
            f"pruning {cfg.model} left weights unmatched (missing {sorted(set(missing) - tied)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}); this architecture is not supported by plad prune"
        )
    small.tie_weights()
    if model.generation_config is not None:  # the teacher's decoding defaults and EOS ids
        small.generation_config = copy.deepcopy(model.generation_config)
    out.mkdir(parents=True, exist_ok=True)
    small.save_pretrained(out)
    tok.save_pretrained(out)
    with_default_mode(out)
    info = {
        "model": cfg.model,
        "kept_layers": keep,
        "layers": f"{len(keep)} of {n_layers}",
        "parameters": small.num_parameters(),
        "teacher_parameters": model.num_parameters(),
        "output_dir": str(out),
    }
    log.info("pruned %s: kept layers %s (%d of %d parameters)", cfg.model, keep, info["parameters"],
             info["teacher_parameters"])  # fmt: skip
    return info
