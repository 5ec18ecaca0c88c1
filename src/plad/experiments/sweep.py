"""`plad sweep`: data scaling. Each method distilled on several fractions of its training data, every point
evaluated on the test split: win rate over targets (and mean score, head-to-head) against the fraction.

Per seed one run folder output_dir/seed-N, as in `plad bench`, so every stage is skipped when done with the same
settings and resumed when killed:
1. the pipeline's data, models, SFT of teacher and student, and pairs (`pipeline.prepare`);
2. the SFT student on the test split (eval/student-sft): the fraction-0 reference and the head-to-head baseline;
3. for every method and fraction: distillation from the SFT student on the first fraction of the training prompts
   (scaling/METHOD/frac-F; 1.0 is the full-data run) and its evaluation (scaling-eval/METHOD/frac-F). Every method
   trains at run.distill.train.lr for the same steps: no learning-rate tuning (`plad bench` tunes).
Then sweep.json and sweep.md at the top: with one seed, 95% bootstrap intervals over the test prompts; with
several, the mean over seeds with a 95% t-interval across seeds (and the per-seed values).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from plad.config import SweepConfig
from plad.evaluation.winrate import across_seeds
from plad.experiments.bench import write_results
from plad.experiments.pipeline import eval_stage, fraction_key, fraction_stage, prepare
from plad.experiments.provenance import provenance
from plad.reporting.bench_report import interval_text
from plad.utils.io import write_json_atomic
from plad.utils.outputs import SUMMARY_FILE

log = logging.getLogger("plad")

METRICS = ("win_rate_vs_target", "mean_score", "head_to_head")
METRIC_NAMES = {
    "win_rate_vs_target": "Win rate over targets",
    "mean_score": "Mean score",
    "head_to_head": "Head-to-head vs student-sft",
}


def _percent(key: str) -> str:
    return f"{100 * float(key):g}%"


def _cells(res: dict) -> dict:
    return {m: res[m] for m in METRICS if m in res}


def sweep_seed(cfg: SweepConfig, seed: int, force: bool) -> dict:
    t0 = time.perf_counter()
    rcfg = dataclasses.replace(
        cfg.run, output_dir=str(Path(cfg.output_dir) / f"seed-{seed}"), seed=seed, methods=list(cfg.methods)
    )
    run = prepare(rcfg, force)
    reference = eval_stage(run, "student-sft", run.student_sft)
    baseline = str(run.root / "eval" / "student-sft" / "outputs.jsonl")
    points: dict[str, dict] = {}
    for method in cfg.methods:
        points[method] = {}
        for fraction in cfg.fractions:
            model, res = fraction_stage(run, method, fraction, rcfg.distill, compare_to=baseline)
            trained = json.loads((Path(model) / SUMMARY_FILE).read_text())
            points[method][fraction_key(fraction)] = {**_cells(res), "data_used": trained.get("data_used")}
    result = {
        "seed": seed,
        "judge": reference.get("judge"),
        "reference": {"student-sft": _cells(reference)},
        "points": points,
        "pairs": (run.pairs_info or {}).get("pairs"),
        "stage_seconds_this_invocation": run.timings,
        "seconds_this_invocation": round(time.perf_counter() - t0, 1),
        "stage_seconds_total": run.seconds_total(),
    }
    write_json_atomic(run.root / "sweep_seed.json", result)
    return result


def aggregate(cfg: SweepConfig, per_seed: list[dict]) -> dict:
    """One cell per metric: the evaluation's bootstrap interval with one seed, a t-interval across several."""

    def cell(cells: list[dict]) -> dict:
        if len(cells) == 1:
            return {k: cells[0][k] for k in ("value", "ci95", "n")}
        return across_seeds([c["value"] for c in cells])

    def cells_of(rows: list[dict]) -> dict:
        return {m: cell([r[m] for r in rows]) for m in METRICS if all(m in r for r in rows)}

    fractions = sorted({fraction_key(f) for f in cfg.fractions}, key=float)
    scaling = {
        method: {
            f: {
                **cells_of([r["points"][method][f] for r in per_seed]),
                "data_used": [r["points"][method][f]["data_used"] for r in per_seed],
            }
            for f in fractions
        }
        for method in cfg.methods
    }
    several = len(per_seed) > 1
    return {
        **provenance("plad sweep"),
        "seeds": [r["seed"] for r in per_seed],
        "judge": per_seed[0].get("judge"),
        "methods": list(cfg.methods),
        "fractions": fractions,
        "lr": cfg.run.distill.train.lr,
        "steps": cfg.run.distill.train.max_steps,
        "interval": f"mean over {len(per_seed)} seeds, 95% t-interval across seeds"
        if several
        else "one seed, 95% bootstrap interval over the test prompts",
        "reference": {"student-sft": cells_of([r["reference"]["student-sft"] for r in per_seed])},
        "scaling": scaling,
        "pairs_per_seed": [r["pairs"] for r in per_seed],
        "seconds_per_seed": [r["stage_seconds_total"] for r in per_seed],
    }


def _data_text(used: list[dict | None]) -> str:
    """What one point trained on, e.g. `5 prompts, 5 pairs` (per seed, `/`-separated, where seeds differ)."""

    def one(u: dict | None) -> str:
        if not u:
            return "?"
        parts = [f"{u['prompts']} prompts"]
        parts += [f"{u[k]} {k}" for k in ("pairs", "examples") if u.get(k)]
        return ", ".join(parts)

    texts = [one(u) for u in used]
    return texts[0] if len(set(texts)) == 1 else " / ".join(texts)


def to_markdown(summary: dict) -> str:
    from plad.reporting.tables import markdown_table

    m = summary["machine"]
    fracs = summary["fractions"]
    head = ["method", *(_percent(f) for f in fracs)]
    parts = [
        "# plad sweep: data scaling",
        "",
        f"Date {summary['date']}; machine: {m['cpu']}, {m['cores']} cores"
        + (f", {m['gpu']}" if m.get("gpu") else "")
        + f", torch {m['torch']}, Python {m['python']}.",
        f"Command: `{summary['command']}`; seeds {summary['seeds']}; every method trained from the same SFT student "
        f"for {summary['steps']} steps at learning rate {summary['lr']:g} (no tuning) on the first fraction of its "
        "training prompts (distillation prompts; labeled data for sft); compute time per seed (s, sum of its "
        "stages): " + ", ".join(f"{s:g}" for s in summary["seconds_per_seed"]) + ".",
        "",
        f"Test split, judge `{summary.get('judge') or 'task'}`; ties count 1/2. Intervals: {summary['interval']}. "
        "student-sft (the initial student, no distillation) is the fraction-0 reference.",
        "",
    ]
    for metric, title in METRIC_NAMES.items():
        rows = [
            [name, *(interval_text(by_frac[f].get(metric)) for f in fracs)]
            for name, by_frac in summary["scaling"].items()
        ]
        ref = summary["reference"]["student-sft"].get(metric)
        if ref:
            rows.append(["student-sft (0%)", *([interval_text(ref)] * len(fracs))])
        if all(c == "-" for r in rows for c in r[1:]):  # a judge without this metric (ROUGE-L: no win rate)
            continue
        parts += [f"## {title}", "", markdown_table(head, rows), ""]
    used = [
        [name, *(_data_text(by_frac[f]["data_used"]) for f in fracs)]
        for name, by_frac in summary["scaling"].items()
    ]
    parts += [
        "## Training data used",
        "",
        "Prompts, pairs (teacher/student) and labeled examples each point trained on, per seed where they differ.",
        "",
        markdown_table(head, used),
        "",
    ]
    return "\n".join(parts)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ref = summary["reference"]["student-sft"]
    metric = "win_rate_vs_target" if ref.get("win_rate_vs_target") else "mean_score"
    what = (
        "win rate over targets" if metric == "win_rate_vs_target" else f"mean score ({summary.get('judge')})"
    )
    table = Table(title=f"plad sweep: {what} vs fraction of the data [{summary['interval']}]")
    table.add_column("method")
    for f in summary["fractions"]:
        table.add_column(_percent(f), justify="right")
    for name, by_frac in summary["scaling"].items():
        table.add_row(name, *(interval_text(by_frac[f].get(metric)) for f in summary["fractions"]))
    ref = ref.get(metric)
    table.add_row("student-sft (0%)", *([interval_text(ref)] * len(summary["fractions"])))
    Console(width=160).print(table)


def run_sweep(cfg: SweepConfig, *, force: bool = False) -> dict:
    """`plad sweep`: every seed's fractions (reused when finished), then sweep.json / sweep.md. Returns sweep.json's
    content."""
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    per_seed = [sweep_seed(cfg, int(seed), force) for seed in cfg.seeds]
    summary = aggregate(cfg, per_seed)
    write_results(cfg, "sweep", summary, to_markdown(summary))
    log.info("sweep: %s (plot it with `plad report %s`)", root / "sweep.md", root / "sweep.json")
    return summary
