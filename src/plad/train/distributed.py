"""What the training loop does differently in several processes (`accelerate launch`): which distributed types
and settings it runs (checked at the start), and how a logged row becomes the whole run's."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
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
    - DDP (and CPU processes, which accelerate runs as DDP): everything.
    - FSDP version 2: everything. It shards the student's parameters, gradients and optimizer state, and a frozen
      teacher or kl-init reference too (prepare_frozen). Iterated rounds sample on the main process from an
      unsharded copy of the gathered student (whole_on_main); gkd's on-policy samples are drawn by every process
      in step (plad.train.stages.make_on_policy).
    - FSDP version 1: the student alone; a frozen model or sampling during training is refused, naming it.
    - DeepSpeed: refused. Its engine takes the optimizer step inside every backward call unless accelerate's own
      accumulation context is used, so plad's accumulation window (train.grad_accum), gradient clipping and
      schedule would not be what they say (accelerate's DeepSpeedEngineWrapper.backward).
    DDP and FSDP 2 are tested on 2 CPU processes (tests/train/test_multiprocess.py, test_fsdp.py)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ConfigError(
            "accelerate's DeepSpeed mode is not supported: plad runs its own accumulation window and optimizer "
            "step, which DeepSpeed's engine replaces; launch with configs/accelerate/ddp.yaml or "
            "configs/accelerate/fsdp.yaml (the student, teacher and reference sharded)"
        )
    if kind != DistributedType.FSDP or accelerator.is_fsdp2:
        return
    needs = [
        *(["a frozen teacher (the method's loss reads its logits)"] if frozen.teacher is not None else []),
        *(
            ["kl-init's frozen reference (loss.regularizer)"]
            if isinstance(frozen.reference, torch.nn.Module)
            else []
        ),
        *(["gkd's on-policy samples (loss.on_policy_frac > 0)"] if data.on_policy is not None else []),
        *(["iterated PLaD's rounds (rounds > 1)"] if data.refresh is not None else []),
    ]
    if needs:
        raise ConfigError(
            f"FSDP version 1 shards the student alone, and this run also needs {'; '.join(needs)}; set "
            "fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp.yaml), or launch with "
            "configs/accelerate/ddp.yaml"
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


def unsharded_copy(model: Any, state: dict) -> Any:
    """A plain copy of a model whose parameters FSDP shards, from its gathered full state dict (generate samples,
    and peft merges, plain weights only): the class it had before fully_shard (for a peft LoRA model, its base's
    class with the same peft config), built on the CPU in the state's dtype, with every key of the state loaded
    (strict). The caller holds it only while it needs it: one whole copy of the model."""
    from plad.core.logprobs import unsharded_class

    dtype = next(v.dtype for v in state.values() if v.is_floating_point())
    peft_config = getattr(model, "peft_config", None)
    base = model if peft_config is None else model.get_base_model()
    with torch.device("cpu"):
        copy = unsharded_class(base)(base.config).to(dtype)
        if peft_config is not None:
            from peft import get_peft_model

            from plad.core.models import quiet_peft

            with quiet_peft():
                copy = get_peft_model(copy, peft_config[model.active_adapter])
    copy.load_state_dict(state)
    return copy


def wait_for_file(path: Path, poll_seconds: float = 1.0) -> None:
    """Wait until `path` exists (written atomically by the main process), without a collective: a barrier fails
    after the process group's timeout (torch.distributed's default_pg_timeout, 30 minutes), and sampling a round
    of a real model may take longer. A main process that dies instead ends the job through torchrun."""
    while not path.is_file():
        time.sleep(poll_seconds)


def whole_on_main(accelerator: Any, model: Any) -> Any:
    """The trained model as the main process can run it alone (iterated rounds sample on the main process while
    the others wait): the model itself, or under FSDP an unsharded copy of its gathered state (a collective: every
    process calls this; the others get None)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return model
    state = accelerator.get_state_dict(model)
    return unsharded_copy(model, state) if accelerator.is_main_process else None
