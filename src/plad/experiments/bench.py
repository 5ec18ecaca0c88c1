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
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from plad.config import BenchConfig, save_yaml
from plad.evaluation.winrate import across_seeds, bucket_labels, bucket_of, outcomes, quantile_edges
from plad.experiments.cache import Run
from plad.experiments.pipeline import (
    calibration_pairs,
    calibration_stage,
    distill_stage,
    eval_stage,
    fraction_key,
    fraction_stage,
    pairs_stage,
    prepare,
)
from plad.experiments.provenance import prepared_provenance, provenance
from plad.utils.errors import ConfigError
from plad.utils.io import read_jsonl, write_json_atomic, write_text_atomic

log = logging.getLogger("plad")

# the headline judge's cells (mean score, win rate over targets: a task scorer only, head-to-head vs student-sft),
# then the reference metrics every eval computes
METRICS = ("mean_score", "win_rate_vs_target", "head_to_head", "rouge_l", "exact_match_squad", "exact_match")
SCALING_KEYS = ("mean_score", "win_rate_vs_target", "head_to_head")


def _lr_name(lr: str) -> str:
    return f"lr-{float(lr):g}"


def _tune_point(run: Run, method: str, label: str, lr: str, pairs=None, changes: dict | None = None) -> dict:
    """One learning rate of a method's grid: distilled, then scored on the validation split."""
    base = dataclasses.replace(run.cfg.distill, **(changes or {}))
    dcfg = dataclasses.replace(base, train=dataclasses.replace(base.train, lr=float(lr)))
    model = distill_stage(run, method, name=f"tune/{label}/{_lr_name(lr)}", dcfg=dcfg, pairs=pairs)
    res = eval_stage(run, f"{label}@{lr}", model, split="val", stage=f"tune-eval/{label}/{_lr_name(lr)}")
    return {"val_mean_score": res["mean_score"]["value"], "model": model}


def _tune(
    run: Run, method: str, label: str, grid: list[str], pairs=None, changes: dict | None = None
) -> dict:
    """Every learning rate of the grid, scored on the validation split; returns the trials and the winner.
    changes: distill settings that define the variant (e.g. rounds)."""
    trials = {lr: _tune_point(run, method, label, lr, pairs, changes) for lr in grid}
    best = max(grid, key=lambda lr: trials[lr]["val_mean_score"])  # ties: the first in grid order
    return {"trials": trials, "lr": best, "model": trials[best]["model"]}


def _worker_init(quiet: bool = False) -> None:
    """A worker logs like plad with its pid, and stops on SIGINT / SIGTERM as plad does: a training run finishes
    its step and writes a checkpoint first (Ctrl-C reaches every process of the terminal's group)."""
    import signal

    from plad.utils import signals
    from plad.utils.logs import setup_logging

    setup_logging(quiet, tag=f"[{os.getpid()}]")  # the parent's -q
    for s in signals.SIGNALS:
        signal.signal(s, signals._handler)


def _run_task(fn, run: Run, args: tuple) -> None:
    fn(run, *args)


def run_parallel(run: Run, jobs: int, tasks: list[tuple]) -> None:
    """Run stages ahead of the sequential pass, `jobs` at a time in worker processes (spawned, each with
    run.threads // jobs torch threads); their results land in their stage folders, from which the sequential pass
    reads them back (a finished stage is skipped), so the bench's results do not depend on `jobs`. tasks: (module-
    level function, args) with function(run, *args). The first failure stops the bench with its error."""
    if jobs <= 1 or len(tasks) <= 1:
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    threads = max(1, (run.cfg.threads or os.cpu_count() or 1) // jobs)
    worker_run = dataclasses.replace(run, cfg=dataclasses.replace(run.cfg, threads=threads))
    with cf.ProcessPoolExecutor(
        jobs,
        mp_context=mp.get_context("spawn"),
        initializer=_worker_init,
        initargs=(not log.isEnabledFor(logging.INFO),),
    ) as pool:
        futures = [pool.submit(_run_task, fn, worker_run, args) for fn, args in tasks]
        try:
            for f in cf.as_completed(futures):
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _metrics(res: dict) -> dict:
    """Each metric's value, and its 95% bootstrap interval over the test prompts as METRIC_ci95 (what a
    one-seed table shows: an interval across one seed says nothing)."""
    out = {m: res[m]["value"] for m in METRICS if m in res}
    out |= {f"{m}_ci95": res[m]["ci95"] for m in METRICS if isinstance(res.get(m), dict) and "ci95" in res[m]}
    return out


def _length_buckets(run: Run, systems: dict[str, str], n_buckets: int) -> dict:
    """Per quantile bucket of the test targets' length in student tokens: each system's win rate over the targets
    when the headline judge scores references (a task scorer), else its head-to-head win rate against the SFT
    student (a reference metric cannot score the reference itself); and its mean headline score. Bucket edges
    follow `plad eval`'s rule: a length equal to an edge goes to the lower bucket."""
    from plad.core.models import load_tokenizer

    tok = load_tokenizer(run.student_sft)
    first = read_jsonl(run.root / "eval" / "student-sft" / "outputs.jsonl")
    lengths = [len(tok(r["target"], add_special_tokens=False).input_ids) for r in first]
    edges = quantile_edges(lengths, n_buckets)
    bucket = bucket_of(lengths, edges)
    n = len(edges) + 1
    vs_target = "target_score" in first[0]
    out: dict[str, Any] = {
        "edges_tokens": edges,
        "labels": bucket_labels(edges),
        "sizes": [int((bucket == b).sum()) for b in range(n)],
        "against": "target" if vs_target else "student-sft",
        "win_rate": {},
        "mean_score": {},
    }
    for name in systems:
        rows = read_jsonl(run.root / "eval" / name / "outputs.jsonl")
        if [r["id"] for r in rows] != [r["id"] for r in first]:
            raise ConfigError(
                f"eval/{name}/outputs.jsonl does not hold the same test prompts as eval/student-sft"
            )
        score = np.array([r["score"] for r in rows])
        out["mean_score"][name] = [
            float(score[bucket == b].mean()) if (bucket == b).any() else None for b in range(n)
        ]
        if not vs_target and name == "student-sft":
            continue
        other = [r["target_score"] for r in rows] if vs_target else [r["score"] for r in first]
        o = outcomes(score, other)
        out["win_rate"][name] = [
            float(o[bucket == b].mean()) if (bucket == b).any() else None for b in range(n)
        ]
    return out


def _calibration(run: Run, systems: dict[str, str], limit: int) -> dict:
    """How often each system's likelihood ranks the better output of held-out pairs first (pipeline's
    calibration pairs from the test prompts, the first `limit`)."""
    pairs = calibration_pairs(run, limit)
    if pairs is None:
        return {}
    out = {}
    for name, model in systems.items():
        if name == "teacher":
            continue
        res = calibration_stage(run, name, model, pairs)
        out[name] = {k: res[k]["value"] for k in ("summed", "per_token")} | {"pairs": res["pairs"]}
    return out


def _at_lr(cfg: BenchConfig, lr: str) -> Any:
    base = cfg.run.distill
    return dataclasses.replace(base, train=dataclasses.replace(base.train, lr=float(lr)))


def _cost_rank(method: str) -> int:
    """Longest runs first, so that parallel workers finish together: the token-level methods hold a teacher."""
    from plad.core.methods import METHODS

    m = METHODS[method]
    return 0 if m.on_policy else 1 if m.needs_teacher_model else 2 if m.source in ("pairs", "lists") else 3


def _real_pairs_point(cfg: BenchConfig, run: Run) -> dict:
    """plad-rank on real preference pairs (the same samples ranked by the task scorer): its pairs stage, made
    here, and its tuning point; none when the ablation is off or every pair is a tie."""
    if not cfg.real_pairs:
        return {}
    from plad.generation.pairs import NoPairsError

    real_cfg = dataclasses.replace(run.pairs_cfg, rank_by=run.cfg.task, scorer=run.cfg.task)
    try:
        real_dir, real_fp, _ = pairs_stage(run, "pairs-real", real_cfg, reuse_from=run.pairs_dir)
    except NoPairsError as e:
        log.warning("bench %s: real-pairs ablation skipped: %s", run.root, e)
        run.notes["real_pairs"] = str(e)
        return {}
    return {"plad-rank-real": ("plad-rank", (real_dir, real_fp), None)}


def run_real_pairs_skip(run: Run) -> str:
    return run.notes.get("real_pairs", "no real preference pairs")


def _variants(cfg: BenchConfig, run: Run) -> dict[str, tuple[str, tuple | None, dict | None]]:
    """Variants measured like every method: plad-list with k > 1 student samples (its pairs made here), iterated
    PLaD. label -> (method, pairs, distill changes)."""
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
    return variants


def bench_seed(cfg: BenchConfig, seed: int, force: bool) -> dict:
    """One seed of the bench in its run folder seed-N: the shared stages, every tuning run and the test-time stages
    in parallel (`cfg.jobs` workers), then everything read back in order into bench_seed.json."""
    t0 = time.perf_counter()
    run = _seed_run(cfg, seed, force)
    baseline = str(run.root / "eval" / "student-sft" / "outputs.jsonl")
    result: dict[str, Any] = {"seed": seed, "methods": {}, "systems": {}}
    first = eval_stage(run, "student-sft", run.student_sft)
    result["systems"]["student-sft"] = _metrics(first)
    result["judge"] = first.get("judge")

    # The variants' own pairs first (sequential: one pairs store each), then every tuning run in parallel.
    variants = _variants(cfg, run)
    points = _tune_points(cfg, run, variants)
    run_parallel(
        run,
        cfg.jobs,
        [(eval_stage, ("teacher", run.teacher_sft, "test", baseline))]
        + sorted([(_tune_point, p) for p in points], key=lambda t: _cost_rank(t[1][0])),
    )
    result["systems"]["teacher"] = _metrics(eval_stage(run, "teacher", run.teacher_sft, compare_to=baseline))
    tuned_all = {
        label: _tune(run, method, label, cfg.grid_lr, pairs=pairs, changes=changes)
        for method, label, _, pairs, changes in {p[1]: p for p in points}.values()
    }
    _run_test_stages(cfg, run, tuned_all, baseline)  # in parallel as well
    systems = {"student-sft": run.student_sft, "teacher": run.teacher_sft}
    systems.update(_read_tuned(cfg, run, tuned_all, variants, baseline, result))
    result["length_buckets"] = _length_buckets(run, systems, cfg.length_buckets)
    result["calibration"] = _calibration(run, systems, cfg.calibration_pairs) if cfg.calibration_pairs else {}
    result["scaling"] = _scaling(cfg, run, result, baseline)
    result["pairs"] = {
        k: (run.pairs_info or {}).get(k)
        for k in ("pairs", "mean_chosen_score", "mean_rejected_score", "pairs_inverted")
    }
    result["seconds_this_invocation"] = round(time.perf_counter() - t0, 1)
    # wall time of every invocation that worked on this seed (a rerun that only reads stages back adds seconds)
    previous = run.root / "bench_seed.json"
    before = json.loads(previous.read_text()) if previous.is_file() else {}
    result["wall_seconds"] = round(
        before.get("wall_seconds", before.get("seconds_this_invocation", 0.0))
        + result["seconds_this_invocation"],
        1,
    )
    result["stage_seconds_total"] = run.seconds_total()
    write_json_atomic(run.root / "bench_seed.json", result)
    return result


def _seed_run(cfg: BenchConfig, seed: int, force: bool) -> Run:
    """The seed's run folder with its shared stages done (data, models, SFT, pairs)."""
    rcfg = dataclasses.replace(
        cfg.run, output_dir=str(Path(cfg.output_dir) / f"seed-{seed}"), seed=seed, methods=list(cfg.methods)
    )
    if not rcfg.eval.generation_cache:  # a fixed teacher (skip_teacher_sft, prepared) is generated for once
        gen_cache = str(Path(cfg.output_dir) / "generations")
        rcfg = dataclasses.replace(rcfg, eval=dataclasses.replace(rcfg.eval, generation_cache=gen_cache))
    return prepare(rcfg, force)


def _tune_points(cfg: BenchConfig, run: Run, variants: dict) -> list[tuple]:
    """(method, label, lr, pairs, changes) of every tuning run: each method, the real-pairs point and the
    variants, at each learning rate of the grid."""
    return [
        (method, label, lr, pairs, changes)
        for label, (method, pairs, changes) in {
            **{m: (m, None, None) for m in cfg.methods},
            **_real_pairs_point(cfg, run),
            **variants,
        }.items()
        for lr in cfg.grid_lr
    ]


def _run_test_stages(cfg: BenchConfig, run: Run, tuned_all: dict, baseline: str) -> None:
    """Test evaluations at the chosen learning rates, data scaling and calibration, `cfg.jobs` at a time."""
    later = [(eval_stage, (label, t["model"], "test", baseline)) for label, t in tuned_all.items()]
    later += [
        (fraction_stage, (method, frac, _at_lr(cfg, tuned_all[method]["lr"]), baseline))
        for method in cfg.fraction_methods
        if method in cfg.methods
        for frac in cfg.fractions
    ]
    if cfg.calibration_pairs and (held_out := calibration_pairs(run, cfg.calibration_pairs)) is not None:
        models = {"student-sft": run.student_sft, **{label: t["model"] for label, t in tuned_all.items()}}
        later += [(calibration_stage, (name, model, held_out)) for name, model in models.items()]
    run_parallel(run, cfg.jobs, later)


def _read_tuned(
    cfg: BenchConfig, run: Run, tuned_all: dict, variants: dict, baseline: str, result: dict
) -> dict[str, str]:
    """Each tuned system's test results into `result` (methods, real pairs, variants); returns their models."""
    systems: dict[str, str] = {}
    for method in cfg.methods:
        tuned = tuned_all[method]
        res = eval_stage(run, method, tuned["model"], compare_to=baseline)
        systems[method] = tuned["model"]
        result["methods"][method] = {
            "lr": tuned["lr"],
            "val": {lr: t["val_mean_score"] for lr, t in tuned["trials"].items()},
            **_metrics(res),
        }
    if cfg.real_pairs:
        if "plad-rank-real" not in tuned_all:
            result["real_pairs"] = {"skipped": run_real_pairs_skip(run)}
        else:
            tuned = tuned_all["plad-rank-real"]
            res = eval_stage(run, "plad-rank-real", tuned["model"], compare_to=baseline)
            systems["plad-rank-real"] = tuned["model"]
            real_info = json.loads((run.root / "pairs-real" / "stage.json").read_text())["info"]
            result["real_pairs"] = {
                "lr": tuned["lr"],
                "pairs": {k: real_info.get(k) for k in ("pairs", "pairs_dropped_ties", "pairs_swapped")},
                **_metrics(res),
            }
    result["variants"] = {}
    for label in variants:
        tuned = tuned_all[label]
        res = eval_stage(run, label, tuned["model"], compare_to=baseline)
        systems[label] = tuned["model"]
        result["variants"][label] = {"lr": tuned["lr"], **_metrics(res)}
    return systems


def _scaling(cfg: BenchConfig, run: Run, result: dict, baseline: str) -> dict[str, dict]:
    """Data scaling: each fraction method's test metrics on fractions of its training prompts (1.0: the full
    run), at its chosen learning rate."""
    scaling: dict[str, dict] = {}
    for method in [m for m in cfg.fraction_methods if m in cfg.methods]:
        dcfg = _at_lr(cfg, result["methods"][method]["lr"])
        scaling[method] = {"1.0": {k: v for k, v in result["methods"][method].items() if k in SCALING_KEYS}}
        for frac in cfg.fractions:
            _, res = fraction_stage(run, method, frac, dcfg, compare_to=baseline)
            scaling[method][fraction_key(frac)] = {k: res[k]["value"] for k in SCALING_KEYS if k in res}
    return scaling


def aggregate(cfg: BenchConfig, per_seed: list[dict]) -> dict:
    """bench.json: every seed's results as means with 95% t-intervals across seeds (one seed: the evaluation's
    bootstrap interval over the prompts), with how and where they were made."""
    lengths = per_seed[0]["length_buckets"]
    return {
        **provenance("plad bench"),
        "seeds": [r["seed"] for r in per_seed],
        "grid_lr": cfg.grid_lr,
        "steps": cfg.run.distill.train.max_steps,
        "table": _table(cfg, per_seed),
        "judge": per_seed[0].get("judge"),
        "length_buckets": {
            "edges_tokens_per_seed": [r["length_buckets"]["edges_tokens"] for r in per_seed],
            "labels": lengths.get("labels"),
            "against": lengths.get("against", "target"),
            "win_rate": _bucket_cells(per_seed, "win_rate"),
            "mean_score": _bucket_cells(per_seed, "mean_score") if "mean_score" in lengths else {},
        },
        "scaling": {
            m: {
                f: {
                    k: _over(per_seed, lambda r, m=m, f=f, k=k: r["scaling"][m].get(f, {}).get(k))
                    for k in SCALING_KEYS
                    if k in per_seed[0]["scaling"][m][f]
                }
                for f in per_seed[0]["scaling"][m]
            }
            for m in per_seed[0]["scaling"]
        },
        "calibration": {
            name: {
                k: _over(per_seed, lambda r, n=name, k=k: r.get("calibration", {}).get(n, {}).get(k))
                for k in ("summed", "per_token")
            }
            | {
                "pairs": [
                    r["calibration"][name]["pairs"] for r in per_seed if name in r.get("calibration", {})
                ]
            }
            for name in per_seed[0].get("calibration", {})
        },
        "pairs_per_seed": [r["pairs"] for r in per_seed],
        "real_pairs_per_seed": [r.get("real_pairs", {}).get("pairs") for r in per_seed],
        "seconds_per_seed": [r["stage_seconds_total"] for r in per_seed],
        "wall_seconds_per_seed": [r.get("wall_seconds") for r in per_seed],
        **({"prepared": prepared_provenance(cfg.run)} if cfg.run.prepared else {}),
    }


def _over(per_seed: list[dict], get: Any) -> dict | None:
    """`get` of every seed across seeds (mean, 95% t-interval); None unless every seed has it."""
    vals = [v for r in per_seed if (v := get(r)) is not None]
    return across_seeds(vals) if len(vals) == len(per_seed) else None


def _table(cfg: BenchConfig, per_seed: list[dict]) -> dict[str, dict]:
    """The main table: each system's metrics across seeds, and each tuned one's chosen learning rates."""

    def cell(row: Any, m: str) -> dict | None:
        """A table cell: across seeds, or with one seed the evaluation's bootstrap interval over the prompts."""
        out = _over(per_seed, lambda r: row(r).get(m))
        if out is not None and len(per_seed) == 1 and (ci := row(per_seed[0]).get(f"{m}_ci95")):
            out = {**out, "ci95": ci, "interval": "bootstrap over the test prompts (one seed)"}
        return out

    table: dict[str, dict] = {}
    for name in ["student-sft", "teacher"]:
        table[name] = {m: cell(lambda r, n=name: r["systems"][n], m) for m in METRICS}
    for name in cfg.methods:
        table[name] = {m: cell(lambda r, n=name: r["methods"][n], m) for m in METRICS}
        table[name]["lr"] = [r["methods"][name]["lr"] for r in per_seed]
    if cfg.real_pairs and all("lr" in r.get("real_pairs", {}) for r in per_seed):
        table["plad-rank-real"] = {m: _over(per_seed, lambda r, m=m: r["real_pairs"].get(m)) for m in METRICS}
        table["plad-rank-real"]["lr"] = [r["real_pairs"]["lr"] for r in per_seed]
    for label in per_seed[0].get("variants", {}):
        if all(label in r.get("variants", {}) for r in per_seed):
            table[label] = {
                m: _over(per_seed, lambda r, n=label, m=m: r["variants"][n].get(m)) for m in METRICS
            }
            table[label]["lr"] = [r["variants"][label]["lr"] for r in per_seed]
    return table


def _bucket_cells(per_seed: list[dict], key: str) -> dict[str, list]:
    """Per system, each length bucket's `key` (win_rate, mean_score) across seeds."""
    n_b = max(len(r["length_buckets"]["sizes"]) for r in per_seed)
    return {
        name: [
            _over(per_seed, lambda r, k=key, n=name, b=b: (r["length_buckets"][k].get(n) or [None] * n_b)[b]
                  if b < len(r["length_buckets"]["sizes"]) else None)
            for b in range(n_b)
        ]
        for name in per_seed[0]["length_buckets"][key]
    }  # fmt: skip


def write_results(cfg: Any, name: str, summary: dict, markdown: str) -> None:
    """NAME_config.yaml, NAME.json and NAME.md at the top of cfg.output_dir (plad bench, plad sweep)."""
    root = Path(cfg.output_dir)
    save_yaml(cfg, root / f"{name}_config.yaml")
    write_json_atomic(root / f"{name}.json", summary)
    write_text_atomic(root / f"{name}.md", markdown)


def run_bench(cfg: BenchConfig, *, force: bool = False) -> dict:
    """`plad bench`: every seed's stages (reused when finished), then bench.json / bench.md. Returns bench.json's
    content."""
    from plad.reporting.bench_report import to_markdown

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    per_seed = [bench_seed(cfg, int(seed), force) for seed in cfg.seeds]
    summary = aggregate(cfg, per_seed)
    write_results(cfg, "bench", summary, to_markdown(summary))
    log.info("bench: %s", root / "bench.md")
    return summary
