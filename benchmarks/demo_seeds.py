"""The demo over several seeds: every method's test metrics with 95% intervals across seeds, and the wall time.

Run: .venv/bin/python benchmarks/demo_seeds.py [--seeds 0 1 2] [--out runs/bench-demo] [--threads 0]
Writes benchmarks/results/demo_seeds.{json,md} (machine, date, command, per-seed and aggregated numbers).
Each seed re-seeds everything (data, model init, data order, sampling): `plad demo --seed S`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench-demo")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args()
    import torch

    from plad.evaluation.winrate import across_seeds
    from plad.experiments.provenance import machine

    plad = str(Path(sys.executable).with_name("plad"))

    per_seed, walls = {}, {}
    for seed in args.seeds:
        out = Path(args.out) / f"seed-{seed}"
        cmd = [
            plad,
            "demo",
            "--seed",
            str(seed),
            "--output_dir",
            str(out),
            "--threads",
            str(args.threads),
            "--force",
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
        walls[seed] = round(time.perf_counter() - t0, 1)
        per_seed[seed] = json.loads((out / "results.json").read_text())

    systems = list(next(iter(per_seed.values()))["results"])
    metrics = ("mean_score", "win_rate_vs_target", "head_to_head", "exact_match")
    table = {}
    for name in systems:
        table[name] = {}
        for m in metrics:
            vals = [r["results"][name][m]["value"] for r in per_seed.values() if m in r["results"][name]]
            if vals:
                table[name][m] = across_seeds(vals)
    pairs = {s: r["pairs"] for s, r in per_seed.items()}
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": {**machine(), "torch_threads": args.threads or torch.get_num_threads()},
        "command": " ".join([Path(sys.executable).name, "benchmarks/demo_seeds.py", *sys.argv[1:]]),
        "seeds": args.seeds,
        "wall_seconds_per_seed": walls,
        "table": table,
        "pairs": {
            s: {k: p.get(k) for k in ("mean_chosen_score", "mean_rejected_score", "pairs_inverted")}
            for s, p in pairs.items()
        },
    }
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / "demo_seeds.json").write_text(json.dumps(report, indent=2) + "\n")
    (res / "demo_seeds.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


def to_markdown(report: dict) -> str:
    def cell(d: dict | None) -> str:
        if not d:
            return "-"
        return f"{d['mean']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"

    m = report["machine"]
    lines = [
        "# Demo over seeds",
        "",
        f"Date {report['date']}; machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}.",
        f"Command: `{report['command']}`; seeds {report['seeds']}; wall time per seed (s): "
        + ", ".join(f"{s}: {w}" for s, w in report["wall_seconds_per_seed"].items())
        + ".",
        "",
        "Mean over seeds with a 95% t-interval across seeds (test set, count-summary scorer as judge).",
        "",
        "| system | mean score | win rate vs target | vs student-sft | exact match |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["table"].items():
        lines.append(
            f"| {name} | {cell(row.get('mean_score'))} | {cell(row.get('win_rate_vs_target'))} | "
            f"{cell(row.get('head_to_head'))} | {cell(row.get('exact_match'))} |"
        )
    lines += ["", "Pairs per seed (teacher/student mean score, inverted pairs):", ""]
    for s, p in report["pairs"].items():
        if p.get("mean_chosen_score") is not None:
            lines.append(
                f"- seed {s}: {p['mean_chosen_score']:.3f} / {p['mean_rejected_score']:.3f}, "
                f"inverted {p['pairs_inverted']:.1%}"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
