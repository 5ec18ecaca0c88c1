"""`plad bench`: every method on one benchmark, trained the same way, in one table with intervals across seeds.

Per seed (one run folder each, so every stage is skipped when done and resumed when killed):
1. the pipeline's data, models, SFT of teacher and student, and pairs (`pipeline.prepare`);
2. for every method and every learning rate of the grid: distil from the same SFT student for the same steps,
   evaluate on the validation split; the best learning rate (validation mean score) is evaluated on the test split,
   head-to-head against the SFT student. Every method gets the same grid: the same tuning budget;
3. ablations: plad-rank on real preference pairs (the same samples ranked by the task scorer), win rate over
   targets by target-length bucket, and win rate at fractions of the training data for a few methods.
Then bench.json and bench.md at the top: mean over seeds with a 95% t-interval, the machine, date and command.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from plad.config import BenchConfig, ConfigError, save_yaml
from plad.data import read_jsonl, write_json_atomic, write_text_atomic
from plad.evaluation.winrate import across_seeds, outcomes
from plad.pipeline import Run, distill_stage, eval_stage, fraction_key, fraction_stage, pairs_stage, prepare

log = logging.getLogger("plad")

METRICS = ("mean_score", "win_rate_vs_target", "head_to_head", "exact_match")


def _lr_name(lr: str) -> str:
    return f"lr-{float(lr):g}"


def _tune(
    run: Run, method: str, label: str, grid: list[str], pairs=None, changes: dict | None = None
) -> dict:
    """Every learning rate of the grid, scored on the validation split; returns the trials and the winner.
    changes: distill settings that define the variant (e.g. rounds)."""
    trials, base = {}, dataclasses.replace(run.cfg.distill, **(changes or {}))
    for lr in grid:
        dcfg = dataclasses.replace(base, train=dataclasses.replace(base.train, lr=float(lr)))
        model = distill_stage(run, method, name=f"tune/{label}/{_lr_name(lr)}", dcfg=dcfg, pairs=pairs)
        res = eval_stage(run, f"{label}@{lr}", model, split="val", stage=f"tune-eval/{label}/{_lr_name(lr)}")
        trials[lr] = {"val_mean_score": res["mean_score"]["value"], "model": model}
    best = max(grid, key=lambda lr: trials[lr]["val_mean_score"])  # ties: the first in grid order
    return {"trials": trials, "lr": best, "model": trials[best]["model"]}


def _metrics(res: dict) -> dict:
    return {m: res[m]["value"] for m in METRICS if m in res}


def _length_buckets(run: Run, systems: dict[str, str], n_buckets: int) -> dict:
    """Win rate over targets per quantile bucket of the test targets' length in student tokens."""
    from plad.models import load_tokenizer

    tok = load_tokenizer(run.student_sft)
    first = read_jsonl(run.root / "eval" / "student-sft" / "outputs.jsonl")
    lengths = np.array([len(tok(r["target"], add_special_tokens=False).input_ids) for r in first])
    edges = np.quantile(lengths, np.linspace(0, 1, n_buckets + 1)[1:-1]) if n_buckets > 1 else np.array([])
    bucket = np.searchsorted(edges, lengths, side="right")  # 0 .. n_buckets-1
    out: dict[str, Any] = {
        "edges_tokens": edges.tolist(),
        "sizes": [int((bucket == b).sum()) for b in range(n_buckets)],
        "win_rate": {},
    }
    for name in systems:
        rows = read_jsonl(run.root / "eval" / name / "outputs.jsonl")
        if [r["id"] for r in rows] != [r["id"] for r in first]:
            raise ConfigError(
                f"eval/{name}/outputs.jsonl does not hold the same test prompts as eval/student-sft"
            )
        o = outcomes([r["score"] for r in rows], [r["target_score"] for r in rows])
        out["win_rate"][name] = [
            float(o[bucket == b].mean()) if (bucket == b).any() else None for b in range(n_buckets)
        ]
    return out


def bench_seed(cfg: BenchConfig, seed: int, force: bool) -> dict:
    t0 = time.perf_counter()
    rcfg = dataclasses.replace(
        cfg.run, output_dir=str(Path(cfg.output_dir) / f"seed-{seed}"), seed=seed, methods=list(cfg.methods)
    )
    if not rcfg.task:  # checked before any training (run.val_file is checked by BenchConfig)
        raise ConfigError("plad bench needs a judge: set run.task to a task scorer (`plad tasks`)")
    run = prepare(rcfg, force)
    baseline = str(run.root / "eval" / "student-sft" / "outputs.jsonl")
    result: dict[str, Any] = {"seed": seed, "methods": {}, "systems": {}}
    result["systems"]["student-sft"] = _metrics(eval_stage(run, "student-sft", run.student_sft))
    result["systems"]["teacher"] = _metrics(eval_stage(run, "teacher", run.teacher_sft, compare_to=baseline))
    systems = {"student-sft": run.student_sft, "teacher": run.teacher_sft}

    for method in cfg.methods:
        tuned = _tune(run, method, method, cfg.grid_lr)
        res = eval_stage(run, method, tuned["model"], compare_to=baseline)
        systems[method] = tuned["model"]
        result["methods"][method] = {
            "lr": tuned["lr"],
            "val": {lr: t["val_mean_score"] for lr, t in tuned["trials"].items()},
            **_metrics(res),
        }

    if cfg.real_pairs:
        from plad.generation.pairs import NoPairsError

        real_cfg = dataclasses.replace(run.pairs_cfg, rank_by=rcfg.task, scorer=rcfg.task)
        try:
            real_dir, real_fp, real_info = pairs_stage(run, "pairs-real", real_cfg, reuse_from=run.pairs_dir)
        except NoPairsError as e:
            log.warning("bench seed %d: real-pairs ablation skipped: %s", seed, e)
            result["real_pairs"] = {"skipped": str(e)}
        else:
            tuned = _tune(run, "plad-rank", "plad-rank-real", cfg.grid_lr, pairs=(real_dir, real_fp))
            res = eval_stage(run, "plad-rank-real", tuned["model"], compare_to=baseline)
            systems["plad-rank-real"] = tuned["model"]
            result["real_pairs"] = {
                "lr": tuned["lr"],
                "pairs": {k: real_info.get(k) for k in ("pairs", "pairs_dropped_ties", "pairs_swapped")},
                **_metrics(res),
            }

    # Variants measured like every method: plad-list with k > 1 student samples, iterated PLaD.
    variants: dict[str, tuple[str, tuple | None, dict | None]] = {}
    if cfg.list_k > 1 and "plad-list" in cfg.methods:
        k_cfg = dataclasses.replace(run.pairs_cfg, num_student_samples=cfg.list_k, teacher_logprobs=False)
        k_dir, k_fp, _ = pairs_stage(run, f"pairs-k{cfg.list_k}", k_cfg, reuse_from=run.pairs_dir)
        variants[f"plad-list-k{cfg.list_k}"] = ("plad-list", (k_dir, k_fp), None)
    if cfg.rounds > 1 and "plad-rank" in cfg.methods:
        # fresh negatives sampled like the stored ones
        sampling = dataclasses.replace(run.pairs_cfg.student.sampling, seed=0)
        variants[f"plad-rank-rounds{cfg.rounds}"] = (
            "plad-rank",
            None,
            {"rounds": cfg.rounds, "on_policy": sampling},
        )
    result["variants"] = {}
    for label, (method, pairs, changes) in variants.items():
        tuned = _tune(run, method, label, cfg.grid_lr, pairs=pairs, changes=changes)
        res = eval_stage(run, label, tuned["model"], compare_to=baseline)
        systems[label] = tuned["model"]
        result["variants"][label] = {"lr": tuned["lr"], **_metrics(res)}

    result["length_buckets"] = _length_buckets(run, systems, cfg.length_buckets)

    scaling: dict[str, dict] = {}
    for method in [m for m in cfg.fraction_methods if m in cfg.methods]:
        lr = result["methods"][method]["lr"]
        base = cfg.run.distill
        scaling[method] = {
            "1.0": {k: result["methods"][method][k] for k in ("win_rate_vs_target", "mean_score")}
        }
        dcfg = dataclasses.replace(base, train=dataclasses.replace(base.train, lr=float(lr)))
        for frac in cfg.fractions:
            _, res = fraction_stage(run, method, frac, dcfg, compare_to=baseline)
            scaling[method][fraction_key(frac)] = {
                k: res[k]["value"] for k in ("win_rate_vs_target", "mean_score")
            }
    result["scaling"] = scaling
    result["pairs"] = {
        k: (run.pairs_info or {}).get(k)
        for k in ("pairs", "mean_chosen_score", "mean_rejected_score", "pairs_inverted")
    }
    result["seconds_this_invocation"] = round(time.perf_counter() - t0, 1)
    result["stage_seconds_total"] = run.seconds_total()
    write_json_atomic(run.root / "bench_seed.json", result)
    return result


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def provenance(command: str) -> dict:
    """Date, machine and command line of this invocation (`command` when not started from the plad CLI)."""
    from_cli = Path(sys.argv[0]).name in ("plad", "cli.py")
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": " ".join(["plad", *sys.argv[1:]]) if from_cli else command,
    }


def aggregate(cfg: BenchConfig, per_seed: list[dict]) -> dict:
    def over(get) -> dict | None:
        vals = [v for r in per_seed if (v := get(r)) is not None]
        return across_seeds(vals) if len(vals) == len(per_seed) else None

    table: dict[str, dict] = {}
    for name in ["student-sft", "teacher"]:
        table[name] = {m: over(lambda r, n=name, m=m: r["systems"][n].get(m)) for m in METRICS}
    for name in cfg.methods:
        table[name] = {m: over(lambda r, n=name, m=m: r["methods"][n].get(m)) for m in METRICS}
        table[name]["lr"] = [r["methods"][name]["lr"] for r in per_seed]
    if cfg.real_pairs and all("lr" in r.get("real_pairs", {}) for r in per_seed):
        table["plad-rank-real"] = {m: over(lambda r, m=m: r["real_pairs"].get(m)) for m in METRICS}
        table["plad-rank-real"]["lr"] = [r["real_pairs"]["lr"] for r in per_seed]
    for label in per_seed[0].get("variants", {}):
        if all(label in r.get("variants", {}) for r in per_seed):
            table[label] = {m: over(lambda r, n=label, m=m: r["variants"][n].get(m)) for m in METRICS}
            table[label]["lr"] = [r["variants"][label]["lr"] for r in per_seed]
    buckets = {
        name: [
            over(lambda r, n=name, b=b: r["length_buckets"]["win_rate"][n][b])
            for b in range(cfg.length_buckets)
        ]
        for name in per_seed[0]["length_buckets"]["win_rate"]
    }
    scaling = {
        m: {
            f: over(lambda r, m=m, f=f: r["scaling"][m][f]["win_rate_vs_target"])
            for f in per_seed[0]["scaling"][m]
        }
        for m in per_seed[0]["scaling"]
    }
    return {
        **provenance("plad bench"),
        "seeds": [r["seed"] for r in per_seed],
        "grid_lr": cfg.grid_lr,
        "steps": cfg.run.distill.train.max_steps,
        "table": table,
        "length_buckets": {
            "edges_tokens_per_seed": [r["length_buckets"]["edges_tokens"] for r in per_seed],
            "win_rate": buckets,
        },
        "scaling": scaling,
        "pairs_per_seed": [r["pairs"] for r in per_seed],
        "real_pairs_per_seed": [r.get("real_pairs", {}).get("pairs") for r in per_seed],
        "seconds_per_seed": [r["stage_seconds_total"] for r in per_seed],
    }


def interval_text(d: dict | None) -> str:
    """`value [low, high]` of a cell across seeds (mean, ci95) or of one evaluation (value, ci95)."""
    return "-" if not d else f"{d.get('mean', d.get('value')):.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"


def to_markdown(summary: dict) -> str:
    from plad.report import markdown_table

    m = summary["machine"]
    head = ["system", "mean score", "win rate vs target", "vs student-sft", "exact match", "lr per seed"]
    rows = [
        [
            name,
            interval_text(row.get("mean_score")),
            interval_text(row.get("win_rate_vs_target")),
            interval_text(row.get("head_to_head")),
            interval_text(row.get("exact_match")),
            ", ".join(f"{float(x):g}" for x in row.get("lr", [])) or "-",
        ]
        for name, row in summary["table"].items()
    ]
    n_b = len(next(iter(summary["length_buckets"]["win_rate"].values())))
    bucket_rows = [
        [name, *(interval_text(c) for c in cells)]
        for name, cells in summary["length_buckets"]["win_rate"].items()
    ]
    fracs = sorted({f for v in summary["scaling"].values() for f in v}, key=float)
    scaling_rows = [
        [name, *(interval_text(v.get(f)) for f in fracs)] for name, v in summary["scaling"].items()
    ]
    parts = [
        "# plad bench: every method, the same budget",
        "",
        f"Date {summary['date']}; machine: {m['cpu']}, {m['cores']} cores"
        + (f", {m['gpu']}" if m.get("gpu") else "")
        + f", torch {m['torch']}, Python {m['python']}.",
        f"Command: `{summary['command']}`; seeds {summary['seeds']}; {summary['steps']} distillation steps for every "
        f"method from the same SFT student; learning rate chosen per method and seed from {summary['grid_lr']} on the "
        "validation split; compute time per seed (s, sum of its stages): "
        + ", ".join(f"{s:g}" for s in summary["seconds_per_seed"])
        + ".",
        "",
        "Test split, task scorer as judge. Mean over seeds with a 95% t-interval across seeds. `vs student-sft`: "
        "head-to-head win rate against the initial (SFT) student; ties count 1/2. `plad-rank-real`: plad-rank on "
        "real preference pairs (the same samples ordered by the scorer, ties dropped) instead of pseudo pairs. "
        "`plad-list-kK`: plad-list over K student samples per prompt; `plad-rank-roundsN`: iterated PLaD, N rounds "
        "of fresh student samples.",
        "",
        markdown_table(head, rows),
        "",
        "## Win rate over targets by target length",
        "",
        f"{n_b} quantile buckets of the test targets' length in student tokens (edges per seed: "
        + "; ".join(
            ", ".join(f"{e:g}" for e in edges) for edges in summary["length_buckets"]["edges_tokens_per_seed"]
        )
        + ").",
        "",
        markdown_table(["system", *(f"bucket {b + 1}" for b in range(n_b))], bucket_rows),
        "",
        "## Data scaling: win rate over targets vs fraction of the training data",
        "",
        "Each method at its chosen learning rate, trained on the first fraction of its training prompts "
        "(distillation prompts; labeled data for sft), same steps.",
        "",
        markdown_table(["method", *fracs], scaling_rows),
        "",
    ]
    return "\n".join(parts)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="plad bench: test set, mean over seeds [95% t-interval]")
    for c in ("system", "mean score", "win rate vs target", "vs student-sft"):
        table.add_column(c, justify="left" if c == "system" else "right")
    for name, row in summary["table"].items():
        table.add_row(
            name,
            interval_text(row.get("mean_score")),
            interval_text(row.get("win_rate_vs_target")),
            interval_text(row.get("head_to_head")),
        )
    Console(width=140).print(table)


def write_results(cfg: Any, name: str, summary: dict, markdown: str) -> None:
    """NAME_config.yaml, NAME.json and NAME.md at the top of cfg.output_dir (plad bench, plad sweep)."""
    root = Path(cfg.output_dir)
    save_yaml(cfg, root / f"{name}_config.yaml")
    write_json_atomic(root / f"{name}.json", summary)
    write_text_atomic(root / f"{name}.md", markdown)


def run_bench(cfg: BenchConfig, force: bool = False) -> int:
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    per_seed = [bench_seed(cfg, int(seed), force) for seed in cfg.seeds]
    summary = aggregate(cfg, per_seed)
    write_results(cfg, "bench", summary, to_markdown(summary))
    print_summary(summary)
    log.info("bench: %s", root / "bench.md")
    return 0
