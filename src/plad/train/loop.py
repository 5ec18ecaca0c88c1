"""The one training loop, used by `plad sft` and every `plad distill` method. Read it top to bottom.

- accelerate runs it on CPU, one GPU, or many processes (DDP/FSDP/DeepSpeed via `accelerate launch`).
- Data order is a pure function of (seed, step), so a resumed run sees exactly the batches it would have seen.
- Losses are normalised by the number of examples/tokens of the whole accumulation window (all processes).
- Checkpoints (model, optimizer, scheduler, RNG) are written to a temp folder and renamed; `--resume` continues
  from the newest one and refuses a changed config.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from plad.config import LossConfig, TrainConfig
from plad.core.logprobs import decoder_start_id
from plad.core.methods import NO_FROZEN, Frozen, Item, Method, make_batch
from plad.utils import signals
from plad.utils.errors import ConfigError
from plad.utils.io import append_jsonl, read_jsonl, write_json_atomic, write_jsonl_atomic
from plad.utils.outputs import STATE_FILE, SUMMARY_FILE, saved_checkpoints
from plad.utils.seeds import derive_seed

log = logging.getLogger("plad")


def _lr_lambda(cfg: TrainConfig):
    warmup = min(cfg.warmup_steps, cfg.max_steps)

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, cfg.max_steps - warmup)
        progress = min(progress, 1.0)
        if cfg.schedule == "linear":
            return 1.0 - 0.9 * progress
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine down to 10% of the peak

    return f


class BatchStream:
    """Micro-batch number g -> the items in it: epochs of seeded permutations, no state to save."""

    def __init__(self, items: list[Item], batch_size: int, seed: int, name: str):
        self.items, self.batch_size, self.seed, self.name = items, batch_size, seed, name
        self.per_epoch = math.ceil(len(items) / batch_size)
        self._perm_epoch, self._perm = -1, None

    def __getitem__(self, g: int) -> list[Item]:
        epoch, j = divmod(g, self.per_epoch)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.name, epoch))
            self._perm, self._perm_epoch = torch.randperm(len(self.items), generator=gen).tolist(), epoch
        return [self.items[i] for i in self._perm[j * self.batch_size : (j + 1) * self.batch_size]]


def train(
    *,
    model: Any,
    tokenizer: Any,
    method: Method,
    items: list[Item],
    reg_items: list[Item] | None,
    loss_cfg: LossConfig,
    cfg: TrainConfig,
    output_dir: Path,
    config_fingerprint: str,
    resume: bool,
    frozen: Frozen = NO_FROZEN,
    on_policy: Callable[[Any, list[Item], int], list[Item]] | None = None,
    refresh: Callable[[Any, Any, int], list[Item] | None] | None = None,
    data_used: dict | None = None,
) -> dict:
    """Train `model` with `method` for cfg.max_steps optimizer steps and save it to output_dir.

    frozen: models held fixed (teacher logits, the initial student of kl-init), moved to the training device.
    on_policy: (model, items, micro-batch number) -> items whose outputs may be replaced by fresh samples of the
    current model (gkd); it must be deterministic in the micro-batch number for resumed runs to repeat.
    refresh: (accelerator, model, step) -> new training items or None, called before every step (iterated PLaD's
    rounds); a resumed run must get the same items for the same step (store them in output_dir).
    data_used: counts of the training data (prompts, pairs, examples, items), recorded in the summary.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    summary_path = output_dir / SUMMARY_FILE
    if resume and not saved_checkpoints(output_dir) and summary_path.is_file():
        finished = json.loads(summary_path.read_text())
        if finished.get("fingerprint") == config_fingerprint:  # --resume of a finished run: nothing to redo
            log.info("%s: training already finished with the same settings", output_dir)
            return finished

    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
    )
    set_seed(cfg.seed)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, cfg.adam_beta2)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    for fixed in (frozen.teacher, frozen.reference):
        if fixed is not None:
            fixed.to(accelerator.device).eval().requires_grad_(False)

    step = 0
    metrics_path = output_dir / "metrics.jsonl"
    if resume and (ckpts := saved_checkpoints(output_dir)):
        state = json.loads((ckpts[-1] / STATE_FILE).read_text())
        if state["fingerprint"] != config_fingerprint:
            raise ConfigError(
                f"--resume: the checkpoint in {ckpts[-1]} was made with a different config; resume with the same "
                "settings, or start a new output_dir"
            )
        accelerator.load_state(str(ckpts[-1]))
        step = state["step"]
        if accelerator.is_main_process and metrics_path.exists():  # drop rows logged after the checkpoint
            kept = [r for r in read_jsonl(metrics_path, tolerate_torn_tail=True) if r["step"] <= step]
            write_jsonl_atomic(metrics_path, kept)
        log.info("resumed from %s (step %d of %d)", ckpts[-1], step, cfg.max_steps)
    else:
        if resume:
            log.debug("--resume: no checkpoint in %s, starting from step 0", output_dir)
        if accelerator.is_main_process:  # rows of a run killed before its first checkpoint: it restarts
            metrics_path.unlink(missing_ok=True)

    world, rank = accelerator.num_processes, accelerator.process_index
    main_stream = BatchStream(items, cfg.batch_size, cfg.seed, "main")
    reg_stream = BatchStream(reg_items, cfg.batch_size, cfg.seed, "reg") if reg_items else None
    pad_id = tokenizer.pad_token_id
    start_id = decoder_start_id(accelerator.unwrap_model(model))  # None for decoder-only models
    accelerator.init_trackers("plad")

    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        desc=f"{method.name}",
        unit="step",
        # TQDM_DISABLE=1 is honoured on the main process: an explicit disable=False would override it.
        **({} if accelerator.is_local_main_process else {"disable": True}),
        dynamic_ncols=True,
        mininterval=1.0,
    )
    window_log: dict[str, list[float]] = {}
    t_log, tokens_log, t_start = time.perf_counter(), 0, time.perf_counter()
    last_loss = float("nan")
    saved_step = step  # the newest checkpoint (or the resumed one)
    with signals.deferred("the step in progress ends and a checkpoint of it is written"):
        while step < cfg.max_steps:
            if refresh is not None and (fresh := refresh(accelerator, accelerator.unwrap_model(model), step)):
                main_stream = BatchStream(fresh, cfg.batch_size, cfg.seed, "main")
            # One optimizer step = grad_accum micro-batches; build them all first to know the window's normalisers.
            micro = []
            for a in range(cfg.grad_accum):
                g = (step * cfg.grad_accum + a) * world + rank
                reg = reg_stream[g] if reg_stream else None
                batch_items = main_stream[g]
                if on_policy is not None:
                    batch_items = on_policy(accelerator.unwrap_model(model), batch_items, g)
                micro.append(make_batch(batch_items, reg, pad_id, loss_cfg, start_id))
            counts = torch.tensor(
                [sum(b["n_examples"] for b in micro), sum(b["n_tokens"] for b in micro)],
                dtype=torch.float64,
                device=accelerator.device,
            )
            n_examples, n_tokens = accelerator.reduce(counts, reduction="sum").tolist()
            step_loss = 0.0
            for a, batch in enumerate(micro):
                batch = _to_device(batch, accelerator.device)
                sync = a == len(micro) - 1
                ctx = accelerator.no_sync(model) if not sync and world > 1 else contextlib.nullcontext()
                with ctx, accelerator.autocast():
                    parts = method.loss(model, batch, loss_cfg, frozen)
                    loss = torch.zeros((), device=accelerator.device)
                    if parts.seq_sum is not None:
                        loss = loss + parts.seq_sum / max(n_examples, 1)
                    if parts.tok_sum is not None:
                        loss = loss + parts.tok_weight * parts.tok_sum / max(n_tokens, 1)
                    # DDP averages gradients over processes; the normalisers above are global sums already.
                    accelerator.backward(loss * world)
                step_loss += float(loss.detach())
                for k, v in parts.metrics.items():
                    window_log.setdefault(k, []).append(v)
                tokens_log += int(batch["main"]["attention_mask"].sum())
                tokens_log += int(batch["main"].get("decoder_attention_mask", torch.zeros(())).sum())
            grad_norm = (
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                if cfg.max_grad_norm
                else None
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last_loss = step_loss
            window_log.setdefault("loss", []).append(step_loss)
            if grad_norm is not None:
                window_log.setdefault("grad_norm", []).append(float(grad_norm))
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", refresh=False)

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                elapsed = time.perf_counter() - t_log
                row = {k: sum(v) / len(v) for k, v in window_log.items()}
                row.update(
                    step=step,
                    lr=scheduler.get_last_lr()[0],
                    tokens_per_s=tokens_log * world / max(elapsed, 1e-9),
                )
                accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=step)
                if accelerator.is_main_process:
                    append_jsonl(metrics_path, [row])
                window_log, t_log, tokens_log = {}, time.perf_counter(), 0

            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                _save_checkpoint(accelerator, output_dir, step, config_fingerprint, cfg.keep_checkpoints)
                saved_step = step
            if step < cfg.max_steps and (signum := signals.take_pending()) is not None:
                # every process got the signal (a terminal's Ctrl-C, a scheduler's SIGTERM): all save, then stop
                if saved_step != step:
                    _save_checkpoint(accelerator, output_dir, step, config_fingerprint, cfg.keep_checkpoints)
                bar.close()
                accelerator.end_training()
                log.warning(
                    "stopped at step %d of %d; checkpoint %s written: --resume continues from it",
                    step,
                    cfg.max_steps,
                    output_dir / "checkpoints" / f"step-{step:07d}",
                )
                raise signals.Interrupted(signum)
    bar.close()
    accelerator.end_training()

    accelerator.wait_for_everyone()
    summary = {
        "method": method.name,
        "steps": step,
        "final_loss": last_loss,
        "train_seconds": round(time.perf_counter() - t_start, 2),
        "fingerprint": config_fingerprint,
        **({"data_used": data_used} if data_used is not None else {}),
    }
    if accelerator.is_main_process:
        with signals.deferred("the final model is written"):
            unwrapped = accelerator.unwrap_model(model)
            unwrapped.save_pretrained(output_dir, state_dict=accelerator.get_state_dict(model))
            tokenizer.save_pretrained(output_dir)
            write_json_atomic(output_dir / SUMMARY_FILE, summary)
            shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)  # the final model supersedes them
    signals.raise_pending()  # a signal in the last step or the final save: the run is done, then it stops
    return summary


def _save_checkpoint(accelerator: Any, output_dir: Path, step: int, fingerprint: str, keep: int) -> None:
    """Write to checkpoints/.tmp-step-N, then rename: a kill mid-save leaves the previous checkpoint intact. A save
    that fails (a full disk) removes its partial folder, so the space it took is free again."""
    root = output_dir / "checkpoints"
    tmp, final = root / f".tmp-step-{step:07d}", root / f"step-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            write_json_atomic(tmp / STATE_FILE, {"step": step, "fingerprint": fingerprint})
    except Exception as e:
        full = disk_nearly_full(root)  # measured before the partial checkpoint is removed
        shutil.rmtree(tmp, ignore_errors=True)
        if full and not isinstance(e, OSError):  # torch.save says only "unexpected pos ..." on a full disk
            raise OSError(errno.ENOSPC, "No space left on device", str(final)) from e
        raise
    if accelerator.is_main_process:
        tmp.rename(final)
        for old in saved_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def disk_nearly_full(path: Path, margin: int = 16 << 20) -> bool:
    """Less than `margin` bytes free for this user on the file system of `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: _to_device(v, device) if isinstance(v, dict) else v.to(device) if torch.is_tensor(v) else v
        for k, v in batch.items()
    }
