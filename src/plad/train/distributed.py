"""What the training loop does differently in several processes (`accelerate launch`): which distributed types
and settings it runs (checked at the start), and how a logged row becomes the whole run's."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from plad.core.methods import Frozen
from plad.train.batches import TrainData
from plad.utils.errors import ConfigError

log = logging.getLogger("plad")


def window_means(accelerator: Any, window: dict[str, list], tokens: int) -> dict[str, float]:
    """The means of a log window's metrics over this process's steps, then over the processes (the loss summed:
    each process holds its share of the global loss), and the tokens of every process. One all-reduce of a
    vector; the metric names are gathered first, so a metric that only some processes logged in this window is
    averaged over those that did."""
    # the window's values stay on the device until here: one copy to the host per log row, not one per value
    means = [
        torch.stack([torch.as_tensor(x, dtype=torch.float64, device=accelerator.device) for x in v]).mean()
        for v in window.values()
    ]
    local = dict(zip(window, torch.stack(means).tolist() if means else [], strict=True))
    if accelerator.num_processes == 1:
        return {**local, "tokens": float(tokens)}
    from accelerate.utils import gather_object

    names = sorted({k for keys in gather_object([sorted(local)]) for k in keys})
    vec = [x for k in names for x in ((local[k], 1.0) if k in local else (0.0, 0.0))] + [tokens]
    total = accelerator.reduce(
        torch.tensor(vec, dtype=torch.float64, device=accelerator.device), reduction="sum"
    ).tolist()
    row = {k: total[2 * i] / (1 if k == "loss" else max(total[2 * i + 1], 1)) for i, k in enumerate(names)}
    return {**row, "tokens": total[-1]}


def check_sharding(accelerator: Any, frozen: Frozen, data: TrainData) -> None:
    """What plad runs under each of accelerate's distributed types, checked at the start:
    - DDP (and CPU processes, which accelerate runs as DDP): everything; tested in make test.
    - FSDP (version 2) shards the student's parameters, gradients and optimizer state, and a frozen teacher or
      kl-init reference too (prepare_frozen). Sampling during training (gkd's on-policy outputs, iterated rounds)
      is refused, naming the setting: under sharded parameters every generation step is a collective, and the
      processes sample different prompts (or the main process alone). FSDP version 1 runs the student alone.
    - DeepSpeed: refused. Its engine takes the optimizer step inside every backward call unless accelerate's own
      accumulation context is used, so plad's accumulation window (train.grad_accum), gradient clipping and
      schedule would not be what they say (accelerate's DeepSpeedEngineWrapper.backward)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ConfigError(
            "accelerate's DeepSpeed mode is not supported: plad runs its own accumulation window and optimizer "
            "step, which DeepSpeed's engine replaces; launch with configs/accelerate/ddp.yaml (every method) or "
            "configs/accelerate/fsdp.yaml (the student, teacher and reference sharded)"
        )
    if kind != DistributedType.FSDP:
        return
    frozen_models = [
        *(["a frozen teacher (the method's loss reads its logits)"] if frozen.teacher is not None else []),
        *(
            ["kl-init's frozen reference (loss.regularizer)"]
            if isinstance(frozen.reference, torch.nn.Module)
            else []
        ),
    ]
    needs = [
        *(frozen_models if not accelerator.is_fsdp2 else []),
        *(["gkd's on-policy samples (loss.on_policy_frac > 0)"] if data.on_policy is not None else []),
        *(["iterated PLaD's rounds (rounds > 1)"] if data.refresh is not None else []),
    ]
    if needs:
        raise ConfigError(
            f"FSDP shards the models' parameters, and this run also needs {'; '.join(needs)}, which plad does "
            "not run on sharded parameters; launch with configs/accelerate/ddp.yaml, or use a method without "
            "them"
            + (
                " (FSDP version 1 shards the student alone: fsdp_version 2 shards a frozen teacher and reference too)"
                if frozen_models and not accelerator.is_fsdp2
                else ""
            )
        )


def prepare_frozen(accelerator: Any, frozen: Frozen) -> Frozen:
    """The frozen teacher and kl-init reference on the training device, in eval mode, without gradients. Under FSDP
    (version 2) each is sharded over the processes as the student is (accelerate's fsdp2_prepare_model, what
    accelerator.prepare runs for the student), so a process holds its share of each; their forwards then run on
    every process together, as the student's does. A LoRA student's reference (its own base with the adapters
    off, not a module) stays as it is."""
    from accelerate.utils import DistributedType

    def prepare(model: Any) -> Any:
        if not isinstance(model, torch.nn.Module):
            return model
        model = model.to(accelerator.device).eval().requires_grad_(False)
        if accelerator.distributed_type == DistributedType.FSDP:
            from accelerate.utils.fsdp_utils import fsdp2_prepare_model

            model = fsdp2_prepare_model(accelerator, model)
        return model

    prepared = dataclasses.replace(
        frozen, teacher=prepare(frozen.teacher), reference=prepare(frozen.reference)
    )
    if accelerator.distributed_type == DistributedType.FSDP:
        for name in ("teacher", "reference"):
            if isinstance(model := getattr(prepared, name), torch.nn.Module):
                local, whole = _shard_size(model)
                log.info(
                    "FSDP: the frozen %s's parameters sharded, %d of %d on this process", name, local, whole
                )
    return prepared


def _shard_size(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this process holds, elements of the whole model) of a model's parameters; a DTensor (FSDP2's
    sharded parameter) holds its local shard."""
    params = list(model.parameters())
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in params)
    return local, sum(p.numel() for p in params)
