"""train.mixed_precision auto: bf16 autocast where it is measured to be faster, float32 elsewhere.

A stage resolves `auto` before anything is fingerprinted or written, so its plad_config.yaml, its fingerprint and
its --resume check hold what ran (`no` or `bf16`); with --resume, `auto` takes what the run chose, so that it
resumes as it ran on other hardware too. The stages of `plad run`, `plad bench`, `plad sweep` and `plad prepare`
resolve it the same way before their own fingerprints (resolve_train) and pass the result down, so a stage made
under bf16 is never taken for one made in float32. The rule, from benchmarks/bf16_cpu.py (one plad-rank step, bf16
autocast over float32 weights, results/bf16_cpu.md) and benchmarks/trl_compare.py:

- a CUDA device that supports bf16: bf16 (tensor cores; TRL 1.16's default, bf16=True);
- a CPU with native bf16 (AVX512-BF16 or AMX) and a model of at least AUTO_BF16_MIN_PARAMETERS: bf16 (on an
  AVX512-BF16 CPU, 1.40-1.46x float32's speed at 15-41M parameters in bf16_cpu.md, 1.43-1.57x at 25-64M in
  trl_compare.md; 1.00x at 3M; 0.59-0.66x below 1M, where casting each call's inputs outweighs the matmuls; the
  first step's loss within 3e-5 of float32's);
- otherwise float32 (`no`): a CPU without native bf16 emulates it, slower than float32; weights already in
  bfloat16 or float16 (`dtype`) gain nothing from autocast.

fp16 is never chosen: it needs loss scaling and overflows where bf16 does not.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from plad.core.models import load_model_config
from plad.utils.errors import ConfigError

log = logging.getLogger("plad")

AUTO_BF16_MIN_PARAMETERS = 10_000_000


def auto_mixed_precision(model: str | Any, dtype: str) -> tuple[str, str]:
    """What `auto` means for `model` (a model folder, or a loaded model) with weights in `dtype` on this machine:
    (`no` or `bf16`, why)."""
    import torch

    if dtype == "auto" and isinstance(model, str):
        dtype = stored_dtype(model) or "float32"
    if dtype in ("bfloat16", "float16"):
        return "no", f"the weights are {dtype} already"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"CUDA device {torch.cuda.get_device_name()} supports bf16"
        return "no", f"CUDA device {torch.cuda.get_device_name()} has no bf16"
    if not _cpu_has_native_bf16():
        return "no", "this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 would be emulated, slower"
    if isinstance(model, str):
        n = stored_parameters(model)
    else:
        n = sum(p.numel() for p in model.parameters())
    if n is None:
        return "no", f"the parameter count of {model} is unknown (its config is not a language model's)"
    if n < AUTO_BF16_MIN_PARAMETERS:
        return "no", f"{n:,} parameters: below {AUTO_BF16_MIN_PARAMETERS:,}, bf16 autocast is slower on a CPU"
    return "bf16", f"{n:,} parameters on a CPU with native bf16"


def _cpu_has_native_bf16() -> bool:
    import torch

    probes = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return any(probe() for probe in probes if probe is not None)


def stored_parameters(model: str) -> int | None:
    """The number of parameters of a model folder or hub id, without loading its weights: from its safetensors
    files' headers, or else (a hub id, .bin weights) from its config, the model built on the meta device (None for
    a config that is not a language model's: its stage says so). A model whose config cannot be read raises the
    ModelError its stage would."""
    from safetensors import safe_open

    files = sorted(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []
    if not files:
        return _parameters_from_config(model)
    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                n = 1
                for d in handle.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def _parameters_from_config(model: str) -> int | None:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = load_model_config(model)  # a config it cannot read: the ModelError its stage would stop with
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    try:
        with torch.device("meta"):  # no memory; tied weights counted once, as loaded
            built = auto.from_config(config)
    except ValueError:  # not a language model: the stage says so when it loads it
        return None
    return sum(p.numel() for p in built.parameters())


_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def stored_dtype(model: str) -> str | None:
    """The dtype `dtype: auto` loads a model in: its first floating-point safetensors weight's (from the header),
    or else (a hub id, .bin weights) its config's dtype; None where neither says. A model whose config cannot be
    read raises the ModelError its stage would."""
    from safetensors import safe_open

    files = sorted(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                name = _SAFETENSORS_DTYPES.get(handle.get_slice(key).get_dtype())
                if name:
                    return name
    config = None if files else load_model_config(model)
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(value).removeprefix("torch.") if value is not None else None


def for_loaded_model(setting: str, model: Any) -> str:
    """train.mixed_precision for a loaded model: `auto` resolved from its parameters and their dtype (for callers
    of plad.train.loop.train that pass a TrainConfig as it is; the stages resolve it earlier), anything else as
    it is."""
    if setting != "auto":
        return setting
    import torch

    dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(
        next(model.parameters()).dtype, "float32"
    )
    value, why = auto_mixed_precision(model, dtype)
    log.info("train.mixed_precision auto: %s (%s)", value, why)
    return value


def resolve_train(train: Any, model: str, dtype: str) -> Any:
    """A TrainConfig with mixed_precision `auto` replaced by what it means for `model` (a folder) with weights in
    `dtype` here; anything else comes back unchanged."""
    if train.mixed_precision != "auto":
        return train
    value, why = auto_mixed_precision(model, dtype)
    log.info("train.mixed_precision auto: %s for %s (%s)", value, model, why)
    return dataclasses.replace(train, mixed_precision=value)


def resolve_mixed_precision(cfg: Any) -> Any:
    """A stage's config (with `model`, `dtype`, `train`, `output_dir`, `resume`) with train.mixed_precision `auto`
    replaced by what it means here, or, with --resume, by what the run in output_dir chose (its plad_config.yaml),
    so that a run resumes as it ran on other hardware too; anything else comes back unchanged. fp16 without a
    GPU is refused: accelerate autocasts to float16 on GPUs only, so on a CPU it would train in float32 unsaid."""
    if cfg.train.mixed_precision == "fp16" and not _has_gpu():
        raise ConfigError(
            "train.mixed_precision fp16 needs a GPU (on a CPU accelerate trains in float32 and would call it fp16); "
            "use bf16 (faster on a CPU with AVX512-BF16 or AMX), no, or auto"
        )
    if cfg.train.mixed_precision != "auto":
        return cfg
    recorded = _recorded_choice(Path(cfg.output_dir) / "plad_config.yaml") if cfg.resume else None
    if recorded is None:
        return dataclasses.replace(
            cfg, train=resolve_train(cfg.train, cfg.model, getattr(cfg, "dtype", "float32"))
        )
    log.info("train.mixed_precision auto: %s (as the run in %s chose)", recorded, cfg.output_dir)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixed_precision=recorded))


def _has_gpu() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


def _recorded_choice(path: Path) -> str | None:
    """train.mixed_precision as a stage's plad_config.yaml records it (never `auto`: resolved before writing)."""
    import yaml

    if not path.is_file():
        return None
    try:
        value = (yaml.safe_load(path.read_text()) or {}).get("train", {}).get("mixed_precision")
    except (yaml.YAMLError, AttributeError):
        return None
    return value if value in ("no", "bf16", "fp16") else None
