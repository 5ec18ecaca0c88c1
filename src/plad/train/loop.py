"""The one training loop, used by `plad sft` and every `plad distill` method. Read it top to bottom.

- accelerate runs it on CPU, one GPU, or many processes (DDP or FSDP via `accelerate launch`; train/distributed.py
  says what runs under each).
- Data order is a pure function of (seed, step), so a resumed run sees exactly the batches it would have seen.
- Losses are normalised by the number of examples/tokens of the whole accumulation window (all processes).
- Checkpoints (model, optimizer, scheduler, RNG) are written to a temp folder and renamed; `--resume` continues
  from the newest one and refuses a changed config.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import logging
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from plad.config import LoraOptions, LossConfig, TrainConfig, to_dict
from plad.core.logprobs import decoder_start_id
from plad.core.methods import NO_FROZEN, Frozen, Method, make_batch
from plad.train.batches import TrainData
from plad.train.distributed import check_sharding, prepare_frozen, window_means
from plad.train.lora import check_trained_in_checkpoint, checkpoint_trained_only
from plad.train.precision import for_loaded_model
from plad.utils import signals
from plad.utils.errors import ConfigError
from plad.utils.io import append_jsonl, read_jsonl, with_default_mode, write_json_atomic, write_jsonl_atomic
from plad.utils.outputs import STATE_FILE, SUMMARY_FILE, saved_checkpoints

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


class Trainer:
    """One training run in named steps, in the order they happen: `setup` (accelerator, optimizer, schedule),
    `resume` (the newest checkpoint, or a clean start), then per optimizer step `window` (the micro-batches of one
    accumulation window and its normalisers), `optimizer_step`, `log` and `save`; finally `finish` (the model and
    train_summary.json). `run` strings them together; `train()` below is the entry point."""

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        method: Method,
        data: TrainData,
        loss_cfg: LossConfig,
        cfg: TrainConfig,
        output_dir: Path,
        fingerprint: str,
        frozen: Frozen,
        data_used: dict | None,
        lora: LoraOptions | None = None,
    ):
        self.model, self.tokenizer, self.method, self.data = model, tokenizer, method, data
        self.loss_cfg, self.cfg, self.output_dir, self.fingerprint = loss_cfg, cfg, output_dir, fingerprint
        self.frozen, self.data_used, self.lora = frozen, data_used, lora
        self.metrics_path = output_dir / "metrics.jsonl"
        self.step = 0
        self.saved_step = 0  # the newest checkpoint (or the resumed one)
        self.last_loss = float("nan")
        self.step_lr = 0.0
        self.window_log: dict[str, list[torch.Tensor]] = {}  # metrics since the last log row, on the device
        self.tokens_log = 0
        self.t_log = self.t_start = time.perf_counter()

    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import ProjectConfiguration, set_seed

        cfg = self.cfg
        # accelerate keeps one process-wide state and refuses a second Accelerator with another mixed_precision:
        # `plad run` trains its stages in one process, each with its own train.mixed_precision. The process part
        # of the state (rank, world, device) stays.
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = accelerator = Accelerator(
            mixed_precision=for_loaded_model(cfg.mixed_precision, self.model),
            log_with=[t for t in cfg.report_to if t != "none"] or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
        )
        set_seed(cfg.seed)
        self.model.train()
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        trained = [p for p in self.model.parameters() if p.requires_grad]  # a LoRA model: its adapters only
        optimizer = torch.optim.AdamW(
            trained, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, cfg.adam_beta2)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
        self.model, self.optimizer = accelerator.prepare(self.model, optimizer)
        accelerator.register_for_checkpointing(self.scheduler)
        self.trained_only = checkpoint_trained_only(accelerator, self.model)
        check_sharding(accelerator, self.frozen, self.data)
        self.frozen = prepare_frozen(accelerator, self.frozen)
        self.world, self.rank = accelerator.num_processes, accelerator.process_index

    def resume(self, resume: bool) -> None:
        """Continue from the newest checkpoint (refusing one made with other settings), dropping metrics rows
        logged after it; or start at step 0, dropping the rows of a run killed before its first checkpoint."""
        accelerator = self.accelerator
        if resume and (ckpts := saved_checkpoints(self.output_dir)):
            state = json.loads((ckpts[-1] / STATE_FILE).read_text())
            if state["fingerprint"] != self.fingerprint:
                raise ConfigError(
                    f"--resume: the checkpoint in {ckpts[-1]} was made with a different config; resume with the "
                    "same settings, or start a new output_dir"
                )
            # a LoRA checkpoint holds the adapters; the frozen base came from the model folder
            if self.trained_only:
                accelerator.load_state(str(ckpts[-1]), strict=False)
                check_trained_in_checkpoint(accelerator.unwrap_model(self.model), ckpts[-1])
            else:
                accelerator.load_state(str(ckpts[-1]))
            self.step = self.saved_step = state["step"]
            if accelerator.is_main_process and self.metrics_path.exists():
                kept = [
                    r
                    for r in read_jsonl(self.metrics_path, tolerate_torn_tail=True)
                    if r["step"] <= self.step
                ]
                write_jsonl_atomic(self.metrics_path, kept)
            log.info("resumed from %s (step %d of %d)", ckpts[-1], self.step, self.cfg.max_steps)
        else:
            if resume:
                log.debug("--resume: no checkpoint in %s, starting from step 0", self.output_dir)
            if accelerator.is_main_process:
                self.metrics_path.unlink(missing_ok=True)

    def window(self) -> tuple[list[dict], float, float]:
        """The grad_accum micro-batches of this optimizer step, built first to know the window's normalisers: the
        examples and tokens of the whole window over every process."""
        accelerator, cfg = self.accelerator, self.cfg
        model = accelerator.unwrap_model(self.model)
        self.data.start_step(accelerator, model, self.step)
        micro = []
        for a in range(cfg.grad_accum):
            g = (self.step * cfg.grad_accum + a) * self.world + self.rank
            items, reg = self.data.micro_batch(model, g)
            micro.append(
                make_batch(
                    items,
                    reg,
                    self.tokenizer.pad_token_id,
                    self.loss_cfg,
                    self.start_id,
                    self.method.from_divergence,
                    cfg.shared_prompt,  # output_hidden runs prompt + output rows where the attention takes no tree mask
                )
            )
        for b in micro:  # the forward's tokens, counted on the host before the batches go to the device
            self.tokens_log += int(b["main"]["attention_mask"].sum())
            self.tokens_log += int(b["main"].get("decoder_attention_mask", torch.zeros(())).sum())
        counts = [float(sum(b["n_examples"] for b in micro)), float(sum(b["n_tokens"] for b in micro))]
        if self.world > 1:  # one all-reduce; one process needs no round trip through the device
            counts = accelerator.reduce(
                torch.tensor(counts, dtype=torch.float64, device=accelerator.device), reduction="sum"
            ).tolist()
        n_examples, n_tokens = counts
        return micro, n_examples, n_tokens

    def optimizer_step(self, micro: list[dict], n_examples: float, n_tokens: float) -> torch.Tensor:
        """Forward and backward over the window's micro-batches (gradients synchronised on the last), then one
        optimizer and schedule step. Returns the window's loss (a 0-dim tensor on the device)."""
        accelerator, model = self.accelerator, self.model
        step_loss = torch.zeros((), device=accelerator.device)  # read at log time: no host sync per step
        for a, batch in enumerate(micro):
            batch = _to_device(batch, accelerator.device)
            sync = a == len(micro) - 1
            ctx = accelerator.no_sync(model) if not sync and self.world > 1 else contextlib.nullcontext()
            with ctx:
                with accelerator.autocast():  # the forward only: backward runs in the forward's dtypes anyway
                    parts = self.method.loss(model, batch, self.loss_cfg, self.frozen)
                    loss = torch.zeros((), device=accelerator.device)
                    if parts.seq_sum is not None:
                        loss = loss + parts.seq_sum / max(n_examples, 1)
                    if parts.tok_sum is not None:
                        loss = loss + parts.tok_weight * parts.tok_sum / max(n_tokens, 1)
                # DDP averages gradients over processes; the normalisers above are global sums already.
                accelerator.backward(loss * self.world)
            step_loss = step_loss + loss.detach()
            for k, v in parts.metrics.items():
                self.window_log.setdefault(k, []).append(v)
        grad_norm = (
            accelerator.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
            if self.cfg.max_grad_norm
            else None
        )
        self.optimizer.step()
        # the rate this step used (what its metrics row logs), read before the schedule moves on
        self.step_lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.window_log.setdefault("loss", []).append(step_loss)
        if grad_norm is not None:
            # FSDP2's norm over sharded gradients is a DTensor (one value, replicated): its plain tensor
            full = getattr(grad_norm, "full_tensor", None)
            self.window_log.setdefault("grad_norm", []).append(full() if full else grad_norm)
        return step_loss

    def log(self) -> dict | None:
        """Every log_every steps and at the end: the means since the last row, to metrics.jsonl and the tracker.
        With several processes the row is the whole run's: the loss summed over processes (each holds its share
        of the global loss), the other metrics averaged over them, the tokens of all."""
        if self.step % self.cfg.log_every and self.step != self.cfg.max_steps:
            return None
        elapsed = time.perf_counter() - self.t_log
        row = window_means(self.accelerator, self.window_log, self.tokens_log)
        row.update(
            step=self.step,
            lr=self.step_lr,
            tokens_per_s=row.pop("tokens") / max(elapsed, 1e-9),
        )
        self.accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=self.step)
        if self.accelerator.is_main_process:
            append_jsonl(self.metrics_path, [row])  # a non-finite row too: it shows where training diverged
        self.window_log, self.t_log, self.tokens_log = {}, time.perf_counter(), 0
        self.stop_if_diverged(row["loss"])
        return row

    def stop_if_diverged(self, loss: float) -> None:
        """A loss that is NaN or infinite (the same on every process: a whole-run value) stops training before
        anything is saved from the diverged weights: an error that says what to change, not a model of NaNs."""
        if math.isfinite(loss):
            return
        hint = (
            "Weights in float16 train without loss scaling and overflow: use dtype float32 (or bfloat16), or "
            "train.mixed_precision bf16"
            if next(self.accelerator.unwrap_model(self.model).parameters()).dtype == torch.float16
            else "Lower train.lr, keep train.max_grad_norm on, or check the data"
        )
        raise ConfigError(
            f"training diverged: the loss is {loss} at step {self.step} ({self.metrics_path}); nothing was saved "
            f"after step {self.saved_step}. {hint}"
        )

    def whole_loss(self) -> float:
        """The last step's loss over every process (each holds its share), on the host."""
        last = torch.as_tensor(self.last_loss, dtype=torch.float64, device=self.accelerator.device).reshape(1)
        if self.world > 1:
            last = self.accelerator.reduce(last, "sum")
        return float(last)

    def save(self) -> None:
        """A checkpoint every save_every steps (not at the end: the final model supersedes it)."""
        cfg = self.cfg
        if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
            self.stop_if_diverged(self.whole_loss())
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        _save_checkpoint(
            self.accelerator, self.output_dir, self.step, self.fingerprint, self.cfg.keep_checkpoints
        )
        self.saved_step = self.step

    def stop_if_signalled(self, bar: Any) -> None:
        """SIGINT / SIGTERM during the step: every process got it (a terminal's Ctrl-C, a scheduler's SIGTERM);
        all save a checkpoint of this step, then stop."""
        if self.step >= self.cfg.max_steps or (signum := signals.take_pending()) is None:
            return
        if self.saved_step != self.step:
            self.save_checkpoint()
        bar.close()
        self.end()
        log.warning(
            "stopped at step %d of %d; checkpoint %s written: --resume continues from it",
            self.step,
            self.cfg.max_steps,
            self.output_dir / "checkpoints" / f"step-{self.step:07d}",
        )
        raise signals.Interrupted(signum)

    def start_trackers(self) -> None:
        """The trackers of train.report_to (none: no logs folder at all). wandb writes under OUTPUT/logs (offline
        runs too, WANDB_MODE=offline); wandb and trackio also get the run's settings as its configuration."""
        names = [t for t in self.cfg.report_to if t != "none"]
        if not names:
            return
        logs = self.output_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        kwargs = {
            "wandb": {"dir": str(logs), "name": self.output_dir.name},
            "trackio": {"name": self.output_dir.name},
        }
        if "wandb" in names:  # a resumed run goes on in the wandb run its first start made, not in a new one
            kwargs["wandb"].update(id=self.wandb_run_id(logs), resume="allow")
        self.accelerator.init_trackers("plad", init_kwargs={k: v for k, v in kwargs.items() if k in names})
        settings = {"method": self.method.name, "output_dir": str(self.output_dir)}
        for section, values in (("train", to_dict(self.cfg)), ("loss", to_dict(self.loss_cfg))):
            settings.update(
                {f"{section}.{k}": v for k, v in values.items() if isinstance(v, str | int | float)}
            )
        for tracker in self.accelerator.trackers:
            if tracker.name in ("wandb", "trackio"):
                tracker.store_init_configuration(settings)

    def wandb_run_id(self, logs: Path) -> str:
        """The id of this output_dir's wandb run: a run resumed from a checkpoint keeps the id its first start wrote
        to logs/wandb_run_id; a run from step 0 gets a new one."""
        path = logs / "wandb_run_id"
        if self.step > 0 and path.is_file():
            return path.read_text().strip()
        run_id = uuid.uuid4().hex[:12]
        if self.accelerator.is_main_process:
            path.write_text(run_id + "\n")
        return run_id

    def run(self) -> dict:
        from tqdm.auto import tqdm

        accelerator = self.accelerator
        self.start_id = decoder_start_id(accelerator.unwrap_model(self.model))  # None for decoder-only models
        self.start_trackers()
        bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.step,
            desc=f"{self.method.name}",
            unit="step",
            # TQDM_DISABLE=1 is honoured on the main process: an explicit disable=False would override it.
            **({} if accelerator.is_local_main_process else {"disable": True}),
            dynamic_ncols=True,
            mininterval=1.0,
        )
        self.t_log = self.t_start = time.perf_counter()
        with signals.deferred("the step in progress ends and a checkpoint of it is written"):
            while self.step < self.cfg.max_steps:
                self.last_loss = self.optimizer_step(*self.window())
                bar.update(1)
                if row := self.log():  # the log window's mean loss: the host waits for the device only here
                    bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                self.save()
                self.stop_if_signalled(bar)
        bar.close()
        summary = self.finish()
        self.end()
        return summary

    def end(self) -> None:
        """Stop the trackers and end the process group, after every process let go of its DDP-wrapped model. The
        wrapper's gradient reducer holds the process group: freed after the group was destroyed (when train()
        returns), its gloo threads wait for a peer that has exited, and the process hangs (seen under `accelerate
        launch`, tests/train/test_multiprocess.py)."""
        accelerator = self.accelerator
        if self.world > 1:
            self.model = accelerator.unwrap_model(self.model)
            self.optimizer = None
            accelerator.free_memory()  # its own references to the prepared model and optimizer; collects garbage
            accelerator.wait_for_everyone()
        accelerator.end_training()

    def finish(self) -> dict:
        """The trained model, its tokenizer and train_summary.json; the checkpoints go (the model supersedes them)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        last = self.whole_loss()
        self.stop_if_diverged(last)
        summary = {
            "method": self.method.name,
            "steps": self.step,
            "final_loss": last,
            "train_seconds": round(time.perf_counter() - self.t_start, 2),
            "fingerprint": self.fingerprint,
            **({"data_used": self.data_used} if self.data_used is not None else {}),
        }
        from accelerate.utils import DistributedType

        # every process: under FSDP gathering the full state dict is a collective (a LoRA model's too: its adapter
        # and merged model are written from it)
        sharded = accelerator.distributed_type == DistributedType.FSDP
        state = accelerator.get_state_dict(self.model) if self.lora is None or sharded else None
        if accelerator.is_main_process:
            with signals.deferred("the final model is written"):
                unwrapped = accelerator.unwrap_model(self.model)
                if self.lora is not None:
                    from plad.train import lora

                    lora.save(unwrapped, self.tokenizer, self.output_dir, self.lora.merge, state)
                else:
                    _save_model(unwrapped, self.tokenizer, self.output_dir, state)
                write_json_atomic(self.output_dir / SUMMARY_FILE, summary)
                shutil.rmtree(self.output_dir / "checkpoints", ignore_errors=True)
        accelerator.wait_for_everyone()  # no process returns (and reads the folder) before the model is there
        signals.raise_pending()  # a signal in the last step or the final save: the run is done, then it stops
        return summary


def check_trackers(cfg: TrainConfig, where: str = "train") -> None:
    """Every tracker of report_to is installed: checked when a stage starts, before any weight is read (accelerate
    would drop a missing one without a word)."""
    for name in cfg.report_to:
        if name != "none" and importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"{where}.report_to {name}: the {name} package is not installed; pip install 'plad[{name}]' (or pip "
                f"install {name}), or log to tensorboard or none"
            )


def train(
    *,
    model: Any,
    tokenizer: Any,
    method: Method,
    data: TrainData,
    loss_cfg: LossConfig,
    cfg: TrainConfig,
    output_dir: Path,
    config_fingerprint: str,
    resume: bool,
    frozen: Frozen = NO_FROZEN,
    data_used: dict | None = None,
    lora: LoraOptions | None = None,
) -> dict:
    """Train `model` with `method` for cfg.max_steps optimizer steps on `data` and save it to output_dir.

    frozen: models held fixed (teacher logits, the initial student of kl-init), moved to the training device.
    data_used: counts of the training data (prompts, pairs, examples, items), recorded in the summary.
    lora: the settings of a model given with LoRA adapters (plad.train.lora.add_adapters): the adapters are saved,
    and the merged model when lora.merge.
    """
    summary_path = output_dir / SUMMARY_FILE
    if resume and not saved_checkpoints(output_dir) and summary_path.is_file():
        finished = json.loads(summary_path.read_text())
        if finished.get("fingerprint") == config_fingerprint:  # --resume of a finished run: nothing to redo
            log.info("%s: training already finished with the same settings", output_dir)
            return finished
    trainer = Trainer(
        model=model,
        tokenizer=tokenizer,
        method=method,
        data=data,
        loss_cfg=loss_cfg,
        cfg=cfg,
        output_dir=output_dir,
        fingerprint=config_fingerprint,
        frozen=frozen,
        data_used=data_used,
        lora=lora,
    )
    trainer.setup()
    trainer.resume(resume)
    return trainer.run()


def _save_model(model: Any, tokenizer: Any, output_dir: Path, state: dict | None) -> None:
    """The trained model and its tokenizer, from `state` (the state dict gathered over the processes). A gathered
    FSDP state dict holds a copy per tied weight; tied again, transformers saves the weight once, as from one
    process."""
    for tied, source in getattr(model, "all_tied_weights_keys", {}).items():
        if state is not None and tied in state and source in state:
            state[tied] = state[source]
    model.save_pretrained(output_dir, state_dict=state)
    tokenizer.save_pretrained(output_dir)
    with_default_mode(output_dir)


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
        # every process writes into tmp (its random state; under FSDP its shards): all done before the rename
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with_default_mode(tmp)
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


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in the backward pass (transformers' gradient checkpointing with
    non-reentrant torch.utils.checkpoint: the same gradients; a LoRA model's frozen embeddings need nothing extra).
    A model whose class cannot is refused, saying which setting to change."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"train.gradient_checkpointing: {type(model).__name__} does not support gradient checkpointing; set "
            "train.gradient_checkpointing false"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(
        model, "activation_checkpointing_enable"
    ):  # transformers >= 5.x's name; the old one warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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
