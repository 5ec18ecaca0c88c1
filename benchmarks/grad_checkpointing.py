"""What train.gradient_checkpointing saves: one training step (plad's sft loss, forward + backward) of a small
Llama with and without it, full fine-tuning and LoRA (r 16), measured three ways:

- peak RSS of the step: ru_maxrss after the step minus the resident size just before it (each setting in its own
  process, so that the peak is that step's; CPU: the allocator returns large blocks, so this tracks activations);
- bytes autograd keeps for the backward pass outside checkpointed regions (torch.autograd.graph.saved_tensors_hooks:
  exact, the same on every machine);
- step time (median of 3 steps after one warm-up step).

Run: .venv/bin/python benchmarks/grad_checkpointing.py [--layers 8 --hidden 512 --seq 512 --batch 8]
Writes benchmarks/results/grad_checkpointing.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(args: argparse.Namespace, lora: bool, checkpointing: bool) -> dict:
    """One setting, in this process: peak RSS of a training step, bytes kept for backward, step time."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from plad.config import LoraOptions, LossConfig
    from plad.core.methods import METHODS, Item, make_batch
    from plad.train.loop import enable_gradient_checkpointing
    from plad.train.lora import add_adapters

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    if lora:
        model = add_adapters(model, LoraOptions(r=16, alpha=32), "benchmark", seed=0)
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    gen = torch.Generator().manual_seed(1)
    out_len = args.seq // 4
    items = [
        Item(
            torch.randint(3, args.vocab, (args.seq - out_len,), generator=gen).tolist(),
            torch.randint(3, args.vocab, (out_len,), generator=gen).tolist(),
        )
        for _ in range(args.batch)
    ]
    batch = make_batch(items, None, 0, LossConfig())
    kept: dict[int, int] = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def step(count: bool) -> float:
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        if count:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
                parts = METHODS["sft"].loss(model, batch, LossConfig())
        else:
            parts = METHODS["sft"].loss(model, batch, LossConfig())
        (parts.tok_sum / batch["n_tokens"]).backward()
        return time.perf_counter() - t

    page = os.sysconf("SC_PAGE_SIZE")
    rss_before = int(Path("/proc/self/statm").read_text().split()[1]) * page
    step(count=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    times = [step(count=False) for _ in range(3)]
    step(count=True)
    return {
        "lora": lora,
        "gradient_checkpointing": checkpointing,
        "step_peak_rss_mib": round((peak - rss_before) / 2**20, 1),
        "kept_for_backward_mib": round(sum(kept.values()) / 2**20, 1),
        "step_seconds": round(statistics.median(times), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # child: lora checkpointing
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one(args, bool(args.one[0]), bool(args.one[1]))))
        return 0
    rows = []
    for lora in (0, 1):
        for ck in (0, 1):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--one", str(lora), str(ck)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    shape = {k: getattr(args, k) for k in ("layers", "hidden", "vocab", "seq", "batch", "threads")}
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "shape": shape,
        "rows": rows,
    }
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / "grad_checkpointing.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# train.gradient_checkpointing: one training step with and without it",
        "",
        f"{record['date']}, {record['machine']}; `{record['command']}`; Llama {shape}",
        "",
        "| training | gradient checkpointing | step peak RSS (MiB) | kept for backward (MiB) | step time (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {'LoRA r 16' if r['lora'] else 'full'} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            f"{r['step_peak_rss_mib']} | {r['kept_for_backward_mib']} | {r['step_seconds']} |"
        )
    (res / "grad_checkpointing.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
