"""The GPU check prepared for a lent device (issue: LoRA, precision, several processes): sft, plad pairs,
plad-rank and gkd with LoRA and bfloat16 weights on a Qwen2-0.5B-shaped student, through the real CLI, recording
per command its wall time, training tokens/s and peak GPU memory; with 2 or more GPUs also plad-rank in 2
processes through `accelerate launch --config_file configs/accelerate/ddp.yaml`.

The model is built from a config (random weights, Qwen2-0.5B's shapes and 151,936-entry vocabulary; a device
machine cannot download one) with a small tokenizer trained locally: only low token ids occur, but every output
layer and softmax runs over the whole vocabulary, which is what memory and speed depend on. No quality figure
comes from it.

Run: python benchmarks/gpu_check.py --out DIR [--steps 20 --batch 8 --dtype bfloat16]
     python benchmarks/gpu_check.py --tiny --dtype float32 --out /tmp/gc   # a CPU smoke run of the script itself
Writes DIR/gpu_check.{json,md}; --record copies them to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

QWEN05 = dict(  # Qwen2.5-0.5B's config.json
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, max_position_embeddings=2048, rope_theta=1000000.0, tie_word_embeddings=True,
)  # fmt: skip
TINY = dict(QWEN05, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def build(root: Path, tiny: bool) -> dict[str, Path]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from plad.benchmark.build import build_tokenizer
    from plad.benchmark.tasks import generate_splits
    from plad.utils.io import write_jsonl_atomic

    splits = generate_splits(
        "count-summary", {"sft": 400, "distill": 128, "test": 8}, corrupt_frac=0.3, seed=0
    )
    for name, rows in splits.items():
        write_jsonl_atomic(root / f"{name}.jsonl", rows)
    tok = build_tokenizer([r["prompt"] + r["target"] for r in splits["sft"]], root / "tokenizer", 1000)
    config = Qwen2Config(
        **(TINY if tiny else QWEN05), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    import torch

    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return {"model": root / "model", **{n: root / f"{n}.jsonl" for n in splits}}


def measure(name: str, argv: list[str], out: Path) -> dict:
    """One plad command in this process: wall time, peak GPU memory (allocated by torch), training tokens/s."""
    import torch

    from plad.cli import main

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = main([str(a) for a in argv])
    wall = time.perf_counter() - t0
    row = {"name": name, "rc": rc, "wall_s": round(wall, 2), "argv": " ".join(map(str, argv))}
    if cuda:
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        speeds = [json.loads(x)["tokens_per_s"] for x in metrics.read_text().splitlines()[1:] if x.strip()]
        if speeds:  # the first row holds the first step's warm-up
            row["tokens_per_s_median"] = round(statistics.median(speeds))
            row["tokens_per_s_range"] = [round(min(speeds)), round(max(speeds))]
    print(json.dumps(row), flush=True)
    return row


def launch_two(argv: list[str]) -> dict:
    """plad in 2 GPU processes through accelerate launch (only where there are 2 GPUs)."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs/accelerate/ddp.yaml"),
    ]
    cmd += ["--num_processes", "2", "-m", "plad.cli", *map(str, argv)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    row = {"name": "plad-rank-ddp-2gpu", "rc": done.returncode, "wall_s": round(time.perf_counter() - t0, 2)}
    if done.returncode:
        row["stderr_tail"] = done.stderr[-2000:]
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--lora_r", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=64, help="prompts that plad pairs samples")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, width-64 model (still 151,936 entries)")
    ap.add_argument("--record", action="store_true", help="copy the results to benchmarks/results/")
    args = ap.parse_args()
    import torch

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    data = build(args.out / "bench", args.tiny)
    m, dt, o = data["model"], args.dtype, args.out
    train = ["--train.max_steps", args.steps, "--train.batch_size", args.batch, "--train.log_every", 1]
    train += ["--train.save_every", 0, "--train.report_to", "none"]
    lora = ["--lora.r", args.lora_r, "--lora.alpha", 2 * args.lora_r]
    sides = ["--teacher.dtype", dt, "--student.dtype", dt, "--teacher.sampling.max_new_tokens", 32]
    sides += ["--student.sampling.max_new_tokens", 32]
    plad_rank = [
        "distill",
        "--method",
        "plad-rank",
        "--model",
        m,
        "--pairs_file",
        o / "pairs" / "pairs.jsonl",
    ]
    plad_rank += ["--dtype", dt, *train, *lora]
    runs = [
        ("sft-full", ["sft", "--model", m, "--train_file", data["sft"], "--output_dir", o / "sft-full", "--dtype", dt, *train]),
        ("sft-lora", ["sft", "--model", m, "--train_file", data["sft"], "--output_dir", o / "sft-lora", "--dtype", dt, *train, *lora]),
        ("pairs", ["pairs", "--prompts_file", data["distill"], "--teacher.model", m, "--student.model", m,
                   "--output_dir", o / "pairs", "--limit", args.prompts, "--num_student_samples", 1, *sides]),
        ("plad-rank-lora", [*plad_rank, "--output_dir", o / "plad-rank-lora"]),
        ("gkd-lora", ["distill", "--method", "gkd", "--model", m, "--teacher", m, "--train_file", data["sft"],
                      "--output_dir", o / "gkd-lora", "--dtype", dt, "--frozen_dtype", dt, "--loss.on_policy_frac", 0.5,
                      "--on_policy.max_new_tokens", 32, *train, *lora]),
    ]  # fmt: skip
    rows = [measure(name, argv, o / name) for name, argv in runs]
    if torch.cuda.device_count() >= 2:
        rows.append(launch_two([*plad_rank, "--output_dir", o / "plad-rank-lora-ddp"]))
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "model": "Qwen2 shapes, random init: "
        + ("tiny (2 layers, width 64)" if args.tiny else "Qwen2.5-0.5B"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": rows,
    }
    (o / "gpu_check.json").write_text(json.dumps(info, indent=1) + "\n")
    lines = [
        f"# GPU check ({info['date']}, {info['device']} x {info['gpus']}, torch {info['torch']})", "",
        f"{info['model']}; dtype {args.dtype}, LoRA r {args.lora_r}, {args.steps} steps of batch {args.batch}. "
        "Command: `python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]) + "`.", "",
        "| run | rc | wall s | train tokens/s (median, range) | peak GPU MiB |", "|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        speed = (
            f"{r['tokens_per_s_median']} ({r['tokens_per_s_range'][0]}-{r['tokens_per_s_range'][1]})"
            if "tokens_per_s_median" in r
            else "-"
        )
        lines.append(f"| {r['name']} | {r['rc']} | {r['wall_s']} | {speed} | {r.get('peak_gpu_mib', '-')} |")
    (o / "gpu_check.md").write_text("\n".join(lines) + "\n")
    if args.record:
        for ext in ("json", "md"):
            shutil.copy(o / f"gpu_check.{ext}", HERE / "results" / f"gpu_check.{ext}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
