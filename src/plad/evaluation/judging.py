"""Every judge over a system's outputs: the judges `eval.judge` names (judges.py holds the judges themselves),
each one's win rates over the targets and head-to-head against another system with bootstrap intervals, by length
bucket, and the headline judge that tables and `plad bench` read."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from plad.config import EvalConfig
from plad.evaluation.winrate import (
    bucket_labels,
    bucket_of,
    by_bucket,
    mean_with_ci,
    outcomes,
    summarise_outcomes,
)
from plad.scoring.metrics import rouge_l, squad_exact_match


def make_judges(cfg: EvalConfig, scorer: Any, out: Path) -> list[Any]:
    from plad.evaluation.judges import LlmJudge, RewardModelJudge, TaskJudge

    made: list[Any] = []
    for name in cfg.judges():
        if name == "task":
            made.append(TaskJudge(scorer))
        elif name == "reward-model":
            made.append(RewardModelJudge(cfg.reward_model))
        elif name == "llm":
            cache = Path(cfg.llm_judge.cache) if cfg.llm_judge.cache else out / "llm_verdicts.jsonl"
            made.append(LlmJudge(cfg.llm_judge, cache, seed=cfg.seed))
        else:
            made.append(name)  # metric judges: computed for every row anyway
    return made


def _progress(desc: str, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True, disable=None)


METRIC_JUDGES = {
    "rouge": ("rouge_l", "ROUGE-L F (stemmed)"),
    "exact-match": ("exact_match_squad", "SQuAD-normalised exact match"),
}


PAIRWISE_STATS = (
    "position_consistency",
    "first_position_rate",
    "unparsed_replies",
    "request_errors",
    "replies",
    "identical",
)


def _score_judge(j, ids, prompts, texts, targets, others, rows, n: int, seed: int) -> tuple[dict, list]:
    """A score judge: both texts scored, the higher wins; per-row scores go into `rows`."""
    s_out, s_tgt = j.scores(prompts, texts), j.scores(prompts, targets)
    own, tgt = ("score", "target_score") if j.name == "task" else ("rm_score", "rm_target_score")
    for r, a, b in zip(rows, s_out, s_tgt, strict=True):
        r[own], r[tgt] = a, b
    o_tgt = outcomes(s_out, s_tgt).tolist()
    entry: dict[str, Any] = {
        "kind": "score",
        "mean_score": mean_with_ci(s_out, n, seed),
        "target_mean_score": mean_with_ci(s_tgt, n, seed),
        "win_rate_vs_target": summarise_outcomes(o_tgt, n, seed),
    }
    if j.name == "task":
        entry["perfect_rate"] = mean_with_ci([float(x == 1.0) for x in s_out], n, seed)
    if others is not None:
        entry["head_to_head"] = summarise_outcomes(outcomes(s_out, j.scores(prompts, others)), n, seed)
    return entry, o_tgt


def _metric_judge(name, rows, others, targets, lengths, edges, n: int, seed: int) -> dict:
    """A reference metric as a judge: its mean (`mean`, also `mean_score` when it is the headline), by length
    bucket, and with another system's outputs a head-to-head won by the higher value (equal values tie)."""
    key, metric = METRIC_JUDGES[name]
    values = [r[key] for r in rows]
    entry: dict[str, Any] = {"kind": "metric", "metric": metric, "mean": mean_with_ci(values, n, seed)}
    entry["mean_score"] = entry["mean"]
    bucket = bucket_of(lengths, edges)
    entry["by_length"] = [
        {
            "bucket": label,
            "size": int((bucket == b).sum()),
            **mean_with_ci(np.asarray(values)[bucket == b], n, seed),
        }
        for b, label in enumerate(bucket_labels(edges))
    ]
    if others is not None:
        metric_fn = rouge_l if name == "rouge" else squad_exact_match
        other_values = [metric_fn(o, t) for o, t in zip(others, targets, strict=True)]
        entry["head_to_head"] = summarise_outcomes(outcomes(values, other_values), n, seed)
    return entry


def _pairwise_judge(j, ids, prompts, texts, targets, others, rows, n: int, seed: int) -> tuple[dict, list]:
    """The LLM judge: verdicts in both orders; per-row outcomes (None: no verdict) and verdicts go into `rows`."""

    def compare(against: list[str], what: str) -> tuple[dict, list]:
        res = j.compare(ids, prompts, texts, against, what, _progress)
        cell = {**summarise_outcomes(res["outcomes"], n, seed), **{k: res[k] for k in PAIRWISE_STATS}}
        return cell, res

    entry: dict[str, Any] = {"kind": "pairwise"}
    entry["win_rate_vs_target"], res = compare(targets, "vs target")
    for r, o, v in zip(rows, res["outcomes"], res["verdicts"], strict=True):
        r["llm_vs_target"], r["llm_verdicts"] = (None if math.isnan(o) else o), v
    if others is not None:
        entry["head_to_head"], h = compare(others, "head-to-head")
        for r, o in zip(rows, h["outcomes"], strict=True):
            r["llm_vs_other"] = None if math.isnan(o) else o
    return entry, res["outcomes"]


def judge_all(
    cfg: EvalConfig, judges: list, rows: list[dict], others: Any, lengths: list[int], edges: list
) -> dict:
    """Every judge's results: win rates with intervals, head-to-head against compare_to, by length bucket."""
    n, seed = cfg.bootstrap_samples, cfg.seed
    ids, prompts = [r["id"] for r in rows], [r["prompt"] for r in rows]
    texts, targets = [r["output"] for r in rows], [r["target"] for r in rows]
    judged: dict[str, dict] = {}
    for j in judges:
        if isinstance(j, str):  # a metric judge: its per-row values are in every row already
            judged[j] = _metric_judge(j, rows, others, targets, lengths, edges, n, seed)
            if "head_to_head" in judged[j]:
                judged[j]["head_to_head"] = {"against": cfg.compare_to, **judged[j]["head_to_head"]}
            continue
        t0 = time.perf_counter()
        judge_one = _score_judge if j.kind == "score" else _pairwise_judge
        entry, o_tgt = judge_one(j, ids, prompts, texts, targets, others, rows, n, seed)
        if "head_to_head" in entry:
            entry["head_to_head"] = {"against": cfg.compare_to, **entry["head_to_head"]}
        entry["by_length"] = by_bucket(o_tgt, lengths, edges, n, seed)
        entry.update(j.describe())
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        judged[j.name] = entry
    return judged


def headline(results: dict, judged: dict, rows: list[dict]) -> None:
    """The headline judge (the columns of tables, what bench tunes on): the task judge, else the first with win
    rates over targets, else the first metric (ROUGE-L on a task without a scorer: mean and head-to-head, no win
    rate over targets, since a reference scores perfectly against itself). Its numbers go to the top of results,
    and every row's headline value to `score` (and `target_score` when the judge scores the reference), as the
    task judge writes them: what plad bench's length buckets and the calibration pairs read."""
    primary = (
        "task"
        if "task" in judged
        else next((k for k, v in judged.items() if "win_rate_vs_target" in v), None)
        or next((k for k, v in judged.items() if v["kind"] == "metric"), None)
    )
    if primary:
        results["judge"] = primary
        for key in ("mean_score", "perfect_rate", "target_mean_score", "win_rate_vs_target", "head_to_head"):
            if key in judged[primary]:
                results[key] = judged[primary][key]
    for r in rows if primary in METRIC_JUDGES else []:
        r["score"] = r[METRIC_JUDGES[primary][0]]
    for r in rows if primary == "reward-model" else []:
        r["score"], r["target_score"] = r["rm_score"], r["rm_target_score"]
