"""Is the demo's SFT student at its plateau? Student SFT at several step budgets against the same teacher.

Run: .venv/bin/python benchmarks/student_plateau.py --run runs/bench-demo/seed-1 [--steps 3000 6000 10000]
Reuses the finished run's fine-tuned teacher (skip_teacher_sft) and re-trains only the student, one process per
budget in parallel (1 torch thread each), with every other setting of `plad demo --seed S`. Writes
benchmarks/results/student_plateau.{json,md} with the test mean score of teacher and student per budget.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--run", required=True, help="a finished `plad demo` run folder (its teacher-sft is reused)"
    )
    ap.add_argument("--steps", type=int, nargs="+", default=[3000, 6000, 10000])
    ap.add_argument("--out", default="runs/student-plateau")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args()
    run = Path(args.run)
    seed = yaml.safe_load((run / "run_config.yaml").read_text())["seed"]
    plad = str(Path(sys.executable).with_name("plad"))
    procs = {}
    for n in args.steps:
        out = Path(args.out) / f"seed-{seed}-steps-{n}"
        cmd = [
            plad, "demo", "--seed", str(seed), "--teacher", str(run / "teacher-sft"), "--skip_teacher_sft", "true",
            "--student_sft.max_steps", str(n), "--methods", "", "--threads", "1", "--output_dir", str(out),
        ]  # fmt: skip
        log = out.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        procs[n] = (
            subprocess.Popen(
                cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"}
            ),
            out,
        )
    rows = {}
    for n, (proc, out) in procs.items():
        if proc.wait() != 0:
            print(f"budget {n} failed; see {out.with_suffix('.log')}", file=sys.stderr)
            return 1
        res = json.loads((out / "results.json").read_text())["results"]
        rows[n] = {name: res[name]["mean_score"]["value"] for name in ("student-sft", "teacher")}
    report = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/student_plateau.py", *sys.argv[1:]]),
        "seed": seed,
        "mean_score": rows,
    }
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "student_plateau.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Student SFT budget vs score (count-summary test set)",
        "",
        f"Date {report['date']}; command `{report['command']}`; seed {seed}; teacher: the run's fine-tuned teacher.",
        "",
        "| student SFT steps | student mean score | teacher mean score |",
        "|---|---|---|",
        *(f"| {n} | {r['student-sft']:.3f} | {r['teacher']:.3f} |" for n, r in rows.items()),
        "",
    ]
    (res_dir / "student_plateau.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
