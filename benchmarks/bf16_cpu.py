"""bf16 autocast against float32 for one plad-rank training step, by model size: where is bf16 faster on this CPU?

The step is plad's own: make_batch over random pairs (prompts of 40-80 tokens, outputs of 5-15, batch 8, the
shared-prompt rows), METHODS["plad-rank"].loss (CE regulariser on y+), backward, AdamW; under
`torch.autocast("cpu", torch.bfloat16)` around the loss as accelerate's `mixed_precision: bf16` puts it, float32
weights either way. Llama models from 53k to 41M parameters (untied output layers) (random init), fp32 and bf16 interleaved over --reps
repetitions of --steps steps after one warm-up step, 1 thread. Reported: seconds per step (median), bf16 / fp32
speed, and the first step's loss in bf16 against fp32 (relative difference).

Run: .venv/bin/python benchmarks/bf16_cpu.py [--reps 3 --steps 5]
Writes benchmarks/results/bf16_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> (hidden, layers, heads, vocabulary)
SIZES = {
    "53k": (32, 2, 4, 320),
    "0.5M": (64, 4, 4, 2048),
    "3M": (128, 4, 4, 8192),
    "15M": (256, 6, 4, 16384),
    "41M": (320, 6, 5, 49152),
}


def build(hidden: int, layers: int, heads: int, vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256,
                      tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(cfg).train()


def pairs(vocab: int, n: int):
    import torch

    from plad.core.methods import Item

    g = torch.Generator().manual_seed(1)

    def ids(lo: int, hi: int) -> list[int]:
        return torch.randint(3, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return [Item(ids(40, 80), ids(5, 15), ids(5, 15)) for _ in range(n)]


def timed_steps(model, batches: list, precision: str) -> tuple[float, float]:
    """Seconds per step over the batches after the first (a warm-up), and the first step's loss."""
    import torch

    from plad.config import LossConfig
    from plad.core.methods import METHODS, NO_FROZEN

    loss_cfg = LossConfig()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    first, t0 = None, 0.0
    for i, batch in enumerate(batches):
        if i == 1:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            parts = METHODS["plad-rank"].loss(model, batch, loss_cfg, NO_FROZEN)
        total = sum(p for p in (parts.seq_sum, parts.tok_sum) if p is not None)
        total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if first is None:
            first = float(total.detach())
    return (time.perf_counter() - t0) / (len(batches) - 1), first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--sizes", default=",".join(SIZES))
    args = ap.parse_args()
    import torch

    from plad.config import LossConfig
    from plad.core.methods import make_batch

    torch.set_num_threads(1)
    rows: dict[str, dict] = {}
    for name in args.sizes.split(","):
        hidden, layers, heads, vocab = SIZES[name]
        items = pairs(vocab, 8 * (args.steps + 1))
        batches = [make_batch(items[i : i + 8], None, 0, LossConfig(), shared_prompt=True)
                   for i in range(0, len(items), 8)]  # fmt: skip
        seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
        losses: dict[str, float] = {}
        for rep in range(args.reps):
            for precision in ("fp32", "bf16") if rep % 2 == 0 else ("bf16", "fp32"):
                model = build(hidden, layers, heads, vocab)  # the same weights every time
                s, loss = timed_steps(model, batches, precision)
                seconds[precision].append(s)
                losses[precision] = loss
        params = sum(p.numel() for p in build(hidden, layers, heads, vocab).parameters())
        ratios = [f / b for f, b in zip(seconds["fp32"], seconds["bf16"], strict=True)]
        rows[name] = {
            "parameters": params, "hidden": hidden, "layers": layers, "vocab": vocab,
            "seconds_per_step": {k: [round(x, 4) for x in v] for k, v in seconds.items()},
            "bf16_speed_over_fp32": [round(r, 3) for r in ratios],
            "first_loss": losses, "loss_rel_diff": abs(losses["bf16"] - losses["fp32"]) / abs(losses["fp32"]),
        }  # fmt: skip
        print(name, rows[name], flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 thread; AVX512-BF16: "
        f"{torch.cpu._is_avx512_bf16_supported()}, AMX: {torch.cpu._is_amx_tile_supported()}",
        "versions": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}",
        "command": "python benchmarks/bf16_cpu.py " + " ".join(sys.argv[1:]),
        "reps": args.reps, "steps": args.steps, "sizes": rows,
    }  # fmt: skip
    (HERE / "results" / "bf16_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# bf16 autocast against float32, one plad-rank step by model size ({result['date']})", "",
        f"- machine: {result['machine']}; {result['versions']}", f"- command: `{result['command']}`",
        f"- batch 8 pairs (prompts 40-80 tokens, outputs 5-15, shared-prompt rows), AdamW, float32 weights; "
        f"{args.reps} interleaved repetitions of {args.steps} steps after a warm-up step", "",
        "| model | parameters | s/step fp32 | s/step bf16 | bf16 speed / fp32 (median, range) | first loss: bf16 vs fp32, relative |",
        "|---|---:|---:|---:|---|---:|",
    ]  # fmt: skip
    for name, r in rows.items():
        ratios = r["bf16_speed_over_fp32"]
        lines.append(f"| {name} (width {r['hidden']}, {r['layers']} layers, vocab {r['vocab']}) | {r['parameters']:,} | "
                     f"{statistics.median(r['seconds_per_step']['fp32']):.4f} | {statistics.median(r['seconds_per_step']['bf16']):.4f} | "
                     f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | {r['loss_rel_diff']:.0e} |")  # fmt: skip
    (HERE / "results" / "bf16_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
