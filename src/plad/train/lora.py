"""LoRA students through `peft` (Hu et al. 2021, https://arxiv.org/abs/2106.09685): the trained model gets low-rank
adapters, only they train, and the frozen base with the adapters switched off is the initial student (kl-init's
reference) at no memory cost.

What a LoRA run writes (`save`): the adapter in `OUTPUT/adapter/` (peft's adapter_config.json and
adapter_model.safetensors: `PeftModel.from_pretrained(base, OUTPUT/adapter)`), and with `lora.merge` the merged
model (base + (alpha / r) B A folded into the weights) at `OUTPUT/` as a plain `save_pretrained` folder, which the
next stages (pairs, eval, calibration, a further distill) load through the Auto classes like any model. The adapter
sits in a subfolder because transformers reads a folder holding adapter_config.json as an adapter on its base.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from plad.config import LoraOptions
from plad.core.models import quiet_peft
from plad.utils.errors import ConfigError
from plad.utils.io import with_default_mode
from plad.utils.seeds import derive_seed

log = logging.getLogger("plad")

ADAPTER_DIR = "adapter"


def lora_config(opts: LoraOptions, model: Any) -> Any:
    """The peft LoraConfig of the settings: from lora.config's JSON file, or from r, alpha, dropout and
    target_modules; the task type follows the model (causal LM or encoder-decoder)."""
    from peft import LoraConfig, TaskType

    task = TaskType.SEQ_2_SEQ_LM if getattr(model.config, "is_encoder_decoder", False) else TaskType.CAUSAL_LM
    if not opts.config:
        targets = opts.target_modules
        return LoraConfig(
            r=opts.r,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            target_modules="all-linear" if targets == ["all-linear"] else list(targets),
            task_type=task,
        )
    try:
        data = json.loads(Path(opts.config).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"lora.config {opts.config}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or data.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"lora.config {opts.config}: not a LoRA config (a JSON object with peft_type LORA)")
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    if unknown := sorted(set(data) - known):
        raise ConfigError(f"lora.config {opts.config}: peft's LoraConfig has no {', '.join(unknown)}")
    for stale in ("base_model_name_or_path", "revision", "inference_mode"):
        data.pop(
            stale, None
        )  # an adapter_config.json names the base it was made on; this run's base is `model`
    data.update(peft_type="LORA", task_type=task)
    try:
        return LoraConfig(**data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"lora.config {opts.config}: {e}") from None


def add_adapters(model: Any, opts: LoraOptions, where: str, seed: int) -> Any:
    """`model` with fresh LoRA adapters (B = 0, so it computes what it computed before); only they train. A's
    random start derives from `seed` alone (not from what the process drew before), so a run and its resumed or
    repeated twin start from the same adapters; the global random state is left as it was."""
    from peft import get_peft_model

    config = lora_config(opts, model)
    try:
        with quiet_peft(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "lora"))
            peft_model = get_peft_model(model, config)
    except ValueError as e:  # target modules that match nothing
        raise ConfigError(f"lora on {where}: {e}") from None
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info(
        "LoRA r %d on %s: %d of %d parameters train (%.2f%%)",
        config.r,
        where,
        trainable,
        total,
        100 * trainable / total,
    )
    return peft_model


class AdaptersOff:
    """The student's base model, called with its adapters switched off and in eval mode: the initial student of
    kl-init, held by the same weights as the student instead of a second copy (the base never trains). Called like
    a model; the training loop neither moves nor freezes it (it is the trained model)."""

    def __init__(self, model: Any):
        self.model = model

    @property
    def config(self) -> Any:
        return self.model.config

    @torch.no_grad()
    def __call__(self, **inputs: Any) -> Any:
        was_training = self.model.training
        self.model.eval()  # no dropout in the reference, as in a frozen copy
        try:
            with self.model.disable_adapter():
                return self.model(**inputs)
        finally:
            self.model.train(was_training)


def save(
    model: Any, tokenizer: Any, output_dir: Path, merge: bool, sharded_state: dict | None = None
) -> None:
    """The adapter to OUTPUT/adapter/, and with `merge` the merged model and its tokenizer at OUTPUT/ (the model
    is merged in place: call this last). `sharded_state`: the full state dict gathered from a model whose
    parameters FSDP shards; the adapter is read from it, and the merge runs on an unsharded copy built from it.
    A base given as a relative folder is recorded in adapter_config.json as an absolute one, so that peft's
    AutoPeftModel finds it from any directory."""
    for adapter in getattr(model, "peft_config", {}).values():
        base = adapter.base_model_name_or_path
        if base and Path(base).is_dir():
            adapter.base_model_name_or_path = str(Path(base).resolve())
    model.save_pretrained(output_dir / ADAPTER_DIR, state_dict=sharded_state)
    if merge:
        from plad.train.distributed import unsharded_copy

        merged = (model if sharded_state is None else unsharded_copy(model, sharded_state)).merge_and_unload()
        merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    with_default_mode(output_dir)


def save_plain(model: Any, folder: Path) -> None:
    """`model` as a plain transformers folder that any loader reads (vLLM's engine for iterated rounds): a peft
    LoRA model is merged into a copy (the training model keeps its adapters; the copy lives only while it is
    written), anything else is saved as it is."""
    if not hasattr(model, "merge_and_unload"):
        model.save_pretrained(folder)
        return
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(folder)
    del merged


def with_saved_adapter(base: str, output_dir: Path, tokenizer: Any, dtype: str) -> Any:
    """The base model `base` with the adapter a LoRA run saved in output_dir (a run without lora.merge)."""
    from peft import PeftModel

    from plad.core.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(base, tok=tokenizer, dtype=dtype)
    with quiet_peft():
        return PeftModel.from_pretrained(model, str(output_dir / ADAPTER_DIR))


def checkpoint_trained_only(accelerator: Any, model: Any) -> bool:
    """Resumable checkpoints of a model with frozen parameters (a LoRA student) hold its trained parameters only,
    as peft's and TRL's checkpoints hold the adapter: accelerate's save_state would write the whole model each time
    (a 1.7B-parameter base: 6.8 GB per checkpoint in float32, `keep_checkpoints` of them), while --resume reads the
    frozen base from the model folder anyway. Under FSDP and DeepSpeed accelerate saves the model its own way
    (sharded) and this does nothing. Returns whether it applies: the checkpoint is then loaded with strict=False
    and checked with check_trained_in_checkpoint."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return False
    if all(p.requires_grad for p in model.parameters()):
        return False

    def trained_only(models: list, weights: list, output_dir: str) -> None:
        for i, (model, state) in enumerate(zip(models, weights, strict=True)):
            trained = {name for name, p in model.named_parameters() if p.requires_grad}
            weights[i] = {k: v for k, v in state.items() if k in trained}

    accelerator.register_save_state_pre_hook(trained_only)
    return True


def check_trained_in_checkpoint(model: Any, folder: Path) -> None:
    """After a strict=False load of `model` (unwrapped from DDP: accelerate saves and loads the model it was given)
    from checkpoint `folder`: the checkpoint held every trained parameter (one made for another adapter layout is
    refused rather than resumed with fresh adapters)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        held = set(f.keys())
    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in held)
    if missing:
        raise ConfigError(
            f"--resume: the checkpoint {folder} lacks {len(missing)} of the trained parameters (e.g. "
            f"{missing[0]}): it was made with other lora settings; resume with the same settings, or start a new "
            "output_dir"
        )
