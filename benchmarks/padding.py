"""What train.group_by_length saves: the padding in a step's forward, and the step time, on the demo's data.

1. Padding (exact, the same on every machine): the share of the padded tokens of every micro-batch over three
   epochs of the demo task's SFT split (`plad sft`'s items: prompt + target) and of pairs made from it (a target
   as y+, the next example's target as y-), drawn at random (the default) and grouped by length, at batch sizes
   4, 8 and 16.
2. Step time: `plad sft` for --steps steps at batch 8 on the demo's teacher preset (4 layers, width 128), random
   vs grouped, interleaved --reps times in one run at 1 thread; train_seconds from train_summary.json (no
   start-up), medians and range.

Run: .venv/bin/python benchmarks/padding.py [--steps 40 --reps 3]
Writes benchmarks/results/padding.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def padding_share(items: list, batch_size: int, group: bool, pad_id: int) -> float:
    from plad.config import LossConfig
    from plad.core.methods import make_batch
    from plad.train.batches import BatchStream

    stream = BatchStream(items, batch_size, 0, "main", group)
    real = total = 0
    for g in range(3 * stream.per_epoch):
        mask = make_batch(stream[g], None, pad_id, LossConfig(), None)["main"]["attention_mask"]
        real, total = real + int(mask.sum()), total + mask.numel()
    return 1 - real / total


def build(root: Path) -> tuple[object, list, list]:
    """The demo task's splits, a tokenizer trained on them, a model of the teacher preset; SFT items and
    pair items (teacher output = the target, student output = a corrupted target of another length)."""
    from plad.benchmark.build import build_model, build_tokenizer
    from plad.benchmark.tasks import generate_splits
    from plad.config import SFTConfig
    from plad.core.data import load_examples
    from plad.core.methods import Item
    from plad.train.stages import encode_targets
    from plad.utils.io import write_jsonl_atomic

    splits = generate_splits("count-summary", {"sft": 1000, "distill": 400}, corrupt_frac=0.3, seed=0)
    for name, rows in splits.items():
        write_jsonl_atomic(root / f"{name}.jsonl", rows)
    tok = build_tokenizer([r["prompt"] + r["target"] for r in splits["sft"]], root / "tokenizer", 320)
    build_model("teacher", tok, root / "student", seed=1)
    cfg = SFTConfig()
    sft = encode_targets(load_examples(str(root / "sft.jsonl"), cfg.data, True), tok, cfg.data, "sft")
    pairs = [Item(it.prompt, it.chosen, other.chosen) for it, other in zip(sft, sft[1:], strict=False)]
    return tok, sft, pairs


def timed(root: Path, group: bool, steps: int) -> float:
    out = Path(tempfile.mkdtemp(dir=root))
    cmd = [sys.executable, "-m", "plad.cli", "sft", "--model", str(root / "student"), "--train_file",
           str(root / "sft.jsonl"), "--output_dir", str(out), "--train.max_steps", str(steps), "--train.batch_size",
           "8", "--train.group_by_length", str(group).lower(), "--train.report_to", "none", "--threads", "1"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", OMP_WAIT_POLICY="PASSIVE")
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return json.loads((out / "train_summary.json").read_text())["train_seconds"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok, sft, pairs = build(root)
        share = {
            f"{what} batch {bs} {'grouped' if group else 'random'}": round(padding_share(items, bs, group, tok.pad_token_id), 4)
            for what, items in (("sft", sft), ("pairs", pairs))
            for bs in (4, 8, 16)
            for group in (False, True)
        }  # fmt: skip
        times: dict[str, list[float]] = {"random": [], "grouped": []}
        for _ in range(args.reps):  # interleaved: the machine's load hits both alike
            for group in (False, True):
                times["grouped" if group else "random"].append(timed(root, group, args.steps))
    ratio = [r / g for r, g in zip(times["random"], times["grouped"], strict=True)]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end",
        "command": "python benchmarks/padding.py " + " ".join(sys.argv[1:]),
        "padding_share": share,
        "sft_train_seconds": times,
        "speedup_random_over_grouped": {"median": round(statistics.median(ratio), 3), "range": [round(min(ratio), 3), round(max(ratio), 3)]},
        "steps": args.steps,
    }  # fmt: skip
    (HERE / "results" / "padding.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# train.group_by_length ({result['date']}; {result['machine']})", "",
        f"Command: `{result['command']}`. Padding: share of padded tokens over 3 epochs of the demo task's data "
        "(1000 SFT examples; 999 pairs: a target as y+, the next example's target as y-).", "",
        "| data | batch | random | grouped |", "|---|---:|---:|---:|",
    ]  # fmt: skip
    for what in ("sft", "pairs"):
        for bs in (4, 8, 16):
            r, g = share[f"{what} batch {bs} random"], share[f"{what} batch {bs} grouped"]
            lines.append(f"| {what} | {bs} | {r:.1%} | {g:.1%} |")
    sp = result["speedup_random_over_grouped"]
    lines += [
        "", f"`plad sft`, {args.steps} steps of batch 8, demo teacher preset, 1 thread, {args.reps} interleaved reps:",
        f"random {statistics.median(times['random']):.2f} s, grouped {statistics.median(times['grouped']):.2f} s "
        f"(medians); random / grouped = {sp['median']} (range {sp['range'][0]}-{sp['range'][1]}).",
    ]  # fmt: skip
    (HERE / "results" / "padding.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
