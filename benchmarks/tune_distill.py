"""Small grid over distillation settings, chosen on the VALIDATION split (never on test).

Run after a demo (it reuses the demo's SFT student, pairs and data):
    .venv/bin/python benchmarks/tune_distill.py --run runs/demo
Every method gets the same grid of learning rates; the calibration methods also get the same grid of beta x
log-prob reduction. Writes benchmarks/results/tune_distill.{json,md}. Steps, batch size and the SFT starting
point are those of the run's config, so every point costs the same compute.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--methods", nargs="+", default=["sft", "seqkd", "plad-rank", "plad-margin"])
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    ap.add_argument("--beta", type=float, nargs="+", default=[0.05, 0.2, 0.5])
    ap.add_argument("--logp", nargs="+", default=["mean", "sum"])
    ap.add_argument("--reg-weight", type=float, nargs="+", default=[1.0])
    args = ap.parse_args()

    from plad.config import RunConfig, load_config
    from plad.core.methods import METHODS
    from plad.evaluation.evaluate import run_eval
    from plad.train.stages import run_distill

    run = Path(args.run)
    cfg = load_config(RunConfig, run / "run_config.yaml")
    val = str(run / "data" / "val.jsonl")
    student = str(run / "student-sft")
    base_eval = dataclasses.replace(cfg.eval, test_file=val, scorer=cfg.task, threads=cfg.threads)
    out_root = run / "tune"
    rows = []

    def evaluate(model: str, name: str, out: Path, compare_to: str = "") -> dict:
        return run_eval(
            dataclasses.replace(base_eval, model=model, name=name, output_dir=str(out), compare_to=compare_to)
        )

    base = evaluate(student, "student-sft", out_root / "student-sft" / "eval")
    baseline_outputs = str(out_root / "student-sft" / "eval" / "outputs.jsonl")
    for method in args.methods:
        calib = METHODS[method].uses_regularizer
        grid = itertools.product(
            args.lr,
            args.beta if calib else [None],
            args.logp if calib else [None],
            args.reg_weight if calib else [None],
        )
        for lr, beta, logp, reg in grid:
            key = f"lr{lr:g}" + (f"-b{beta:g}-{logp}-l{reg:g}" if calib else "")
            loss = cfg.distill.loss
            if calib:
                loss = dataclasses.replace(loss, beta=beta, logp=logp, reg_weight=reg)
            d = out_root / method / key
            t0 = time.perf_counter()
            if not (d / "train_summary.json").exists():
                run_distill(
                    dataclasses.replace(
                        cfg.distill,
                        method=method,
                        model=student,
                        pairs_file=str(run / "pairs" / "pairs.jsonl"),
                        train_file=str(run / "data" / "sft.jsonl"),
                        output_dir=str(d),
                        loss=loss,
                        train=dataclasses.replace(
                            cfg.distill.train, lr=lr, seed=cfg.distill.train.seed + cfg.seed
                        ),
                        threads=cfg.threads,
                        resume=True,
                    )
                )
            res = evaluate(str(d), f"{method}/{key}", d / "eval-val", baseline_outputs)
            rows.append(
                {
                    "method": method,
                    "setting": key,
                    "val_mean_score": res["mean_score"]["value"],
                    "val_mean_score_ci95": res["mean_score"]["ci95"],
                    "val_vs_student_sft": res["head_to_head"]["value"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    best = {}
    for r in rows:
        if r["method"] not in best or r["val_mean_score"] > best[r["method"]]["val_mean_score"]:
            best[r["method"]] = r
    report = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/tune_distill.py", *sys.argv[1:]]),
        "run": str(run),
        "student_sft_val_mean_score": base["mean_score"]["value"],
        "rows": rows,
        "best": best,
    }
    res_dir = HERE / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "tune_distill.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Distillation grid on the validation split",
        "",
        f"Date {report['date']}; command `{report['command']}`; SFT student val mean score "
        f"{report['student_sft_val_mean_score']:.3f}.",
        "",
        "| method | setting | val mean score [95% CI] | val vs student-sft | s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["val_mean_score_ci95"]
        mark = " **best**" if best[r["method"]] is r else ""
        lines.append(
            f"| {r['method']} | {r['setting']}{mark} | {r['val_mean_score']:.3f} [{lo:.3f}, {hi:.3f}] | "
            f"{r['val_vs_student_sft']:.3f} | {r['seconds']} |"
        )
    (res_dir / "tune_distill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
