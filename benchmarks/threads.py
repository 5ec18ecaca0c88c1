"""Which torch thread count is fastest for the demo's work: teacher/student training steps and generation.

Run: .venv/bin/python benchmarks/threads.py [--threads 1 2 4] [--steps 60]
Writes benchmarks/results/threads.{json,md}. Each setting runs in a fresh process (torch fixes its thread pool at
start), on the demo's models (built-in presets, count-summary data), after a warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

WORKER = r"""
import json, sys, time, torch
from pathlib import Path
from plad.benchmark.build import build_model, build_tokenizer
from plad.benchmark.tasks import generate_splits
from plad.config import LossConfig, SamplingConfig
from plad.generation.hf import generate
from plad.core.methods import METHODS, Item, make_batch
from plad.train.loop import _to_device

threads, steps, work = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(threads)
rows = generate_splits("count-summary", {"sft": 2000}, 0.0, 0)["sft"]
tok = build_tokenizer([r["prompt"] + r["target"] for r in rows], work / "tok", 320)
items = [Item(tok(r["prompt"]).input_ids, tok(r["target"]).input_ids + [tok.eos_token_id]) for r in rows]
out = {"threads": threads}
for preset in ("teacher", "student"):
    model = build_model(preset, tok, work / preset)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    def step(i):
        batch = make_batch(items[(i * 32) % 1900 : (i * 32) % 1900 + 32], None, tok.pad_token_id, LossConfig())
        parts = METHODS["sft"].loss(model, batch, LossConfig())
        (parts.tok_sum / batch["n_tokens"]).backward()
        opt.step(); opt.zero_grad()
    for i in range(5):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    out[f"{preset}_train_steps_per_s"] = steps / (time.perf_counter() - t0)
    prompts = [it.prompt for it in items[:256]]
    sampling = SamplingConfig(temperature=0.5, max_new_tokens=32)
    generate(model, tok, prompts[:64], sampling, 1, 0)
    t0 = time.perf_counter()
    for i in range(0, 256, 64):
        generate(model, tok, prompts[i : i + 64], sampling, 1, i)
    out[f"{preset}_generate_prompts_per_s"] = 256 / (time.perf_counter() - t0)
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    results = []
    for t in args.threads:
        with tempfile.TemporaryDirectory() as work:
            env = {**os.environ, "OMP_NUM_THREADS": str(t), "TQDM_DISABLE": "1"}
            proc = subprocess.run(
                [sys.executable, "-c", WORKER, str(t), str(args.steps), work],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
    sys.path.insert(0, str(HERE))
    from demo_seeds import machine

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": " ".join(["python", "benchmarks/threads.py", *sys.argv[1:]]),
        "results": results,
    }
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / "threads.json").write_text(json.dumps(report, indent=2) + "\n")
    keys = [k for k in results[0] if k != "threads"]
    lines = [
        "# Torch threads vs speed",
        "",
        f"Date {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"torch {report['machine']['torch']}. Command: `{report['command']}`.",
        "",
        "| threads | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    lines += [f"| {r['threads']} | " + " | ".join(f"{r[k]:.1f}" for k in keys) + " |" for r in results]
    (res / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
