"""Is the real benchmark's student capacity-limited? Its SFT at k times the steps against the same teacher.

Run: .venv/bin/python benchmarks/real_plateau.py --run runs/bench-debian/seed-0 [--factors 2]
Reuses a `plad bench --config configs/debian-smollm2.yaml` seed folder (its prepared teacher, its SFT student and
their test evaluations) and adds, as stages of that run folder (so a killed run resumes and a finished one is read
back), the student fine-tuned for k x the run's student_sft.max_steps with every other setting equal, evaluated on
the same test prompts. The acceptance of issue 12: the SFT student is competent (ROUGE-L far above 0), clearly
below the teacher (gap >= 0.05 with non-overlapping intervals), and not step-limited: doubling its SFT steps closes
less than a third of the gap. Writes benchmarks/results/debian-smollm2/plateau.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", required=True, help="a finished bench seed folder (e.g. runs/bench-debian/seed-0)"
    )
    ap.add_argument("--factors", type=int, nargs="+", default=[2], help="step multiples of the student's SFT")
    ap.add_argument("--results", default=str(HERE / "results" / "debian-smollm2"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: the run's)")
    args = ap.parse_args()

    from plad.config import RunConfig, SFTConfig, load_config
    from plad.core.models import model_identity
    from plad.experiments.pipeline import _with_seed, eval_stage, prepare
    from plad.experiments.provenance import provenance
    from plad.train.stages import run_sft
    from plad.utils.logs import setup_logging

    setup_logging()  # plad's lines as `plad: `, other libraries' under their own names
    root = Path(args.run)
    cfg = load_config(RunConfig, root / "run_config.yaml")
    if args.threads:  # not part of any stage's fingerprint
        cfg = dataclasses.replace(cfg, threads=args.threads)
    run = prepare(cfg)  # every stage is done: only read back
    baseline = str(root / "eval" / "student-sft" / "outputs.jsonl")
    res = {
        "teacher": eval_stage(run, "teacher", run.teacher_sft, compare_to=baseline),
        f"student-sft x1 ({cfg.student_sft.max_steps} steps)": eval_stage(
            run, "student-sft", run.student_sft
        ),
    }
    for k in args.factors:
        train = _with_seed(
            dataclasses.replace(cfg.student_sft, max_steps=k * cfg.student_sft.max_steps), cfg.seed
        )

        student = (
            run.cfg.student
        )  # the prepared student (run.cfg has the prepared benchmark's paths filled in)

        def sft(d: Path, train=train, student=student) -> dict:
            return run_sft(SFTConfig(
                model=student, train_file=run.files["sft"], output_dir=str(d), train=train, resume=True,
                data=cfg.distill.data, dtype=cfg.distill.dtype, threads=cfg.threads,
            ))  # fmt: skip

        parts = {"student": model_identity(student), "data": run.data_fp, "train": dataclasses.asdict(train)}
        d, _, _ = run.stage(f"plateau/student-sft-x{k}", parts, sft)
        name = f"student-sft x{k} ({train.max_steps} steps)"
        res[name] = eval_stage(
            run, f"student-sft-x{k}", str(d), compare_to=baseline, stage=f"plateau-eval/x{k}"
        )

    def cell(r: dict, key: str) -> dict:
        return {"value": r[key]["value"], "ci95": r[key]["ci95"]}

    rows = {
        name: {"rouge_l": cell(r, "rouge_l"), "exact_match_squad": cell(r, "exact_match_squad")}
        for name, r in res.items()
    }
    teacher, student = rows["teacher"]["rouge_l"], next(iter(list(rows.values())[1:]))["rouge_l"]
    gap = teacher["value"] - student["value"]
    closed = {
        name: (r["rouge_l"]["value"] - student["value"]) / gap if gap else None
        for name, r in list(rows.items())[2:]
    }
    report = {
        **provenance(" ".join(["python", "benchmarks/real_plateau.py", *sys.argv[1:]])),
        "run": str(root),
        "seed": cfg.seed,
        "test_prompts": res["teacher"]["n"],
        "rows": rows,
        "gap_rouge_l": gap,
        "intervals_overlap": teacher["ci95"][0] <= student["ci95"][1],
        "gap_closed": closed,
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plateau.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]

    def fmt(c: dict) -> str:
        return f"{c['value']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"

    lines = [
        "# Is the SFT student capacity-limited? (Debian synopses, SmolLM2-135M teacher, 10-layer student)",
        "",
        f"Date {report['date']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}; command `{report['command']}`; "
        f"run {root} (seed {cfg.seed}); {report['test_prompts']} test prompts, greedy decoding; 95% bootstrap "
        "intervals.",
        "",
        "| system | ROUGE-L | exact match (SQuAD) |",
        "|---|---|---|",
        *(f"| {n} | {fmt(r['rouge_l'])} | {fmt(r['exact_match_squad'])} |" for n, r in rows.items()),
        "",
        f"Teacher minus SFT student: {gap:.3f} ROUGE-L (intervals "
        + ("overlap" if report["intervals_overlap"] else "do not overlap")
        + "). Share of that gap closed by more SFT steps: "
        + ", ".join(f"{n}: {c:.2f}" for n, c in closed.items() if c is not None)
        + ".",
        "",
    ]
    (out / "plateau.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
