"""`plad eval`: generate on the test prompts, score with the judge, write outputs.jsonl and results.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from plad.config import EvalConfig, require, to_dict
from plad.data import (
    DataError,
    encode_prompts,
    load_examples,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)
from plad.evaluation.metrics import rouge_l, squad_exact_match
from plad.evaluation.winrate import mean_with_ci, win_rate
from plad.generation.hf import derive_seed, generate, plan_batches
from plad.models import for_inference, load_model_and_tokenizer, set_threads
from plad.scorers import get_scorer
from plad.train import check_output_dir

log = logging.getLogger("plad")


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _load_other(path: str, ids: list[str], need_scores: bool) -> dict[str, dict]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"compare_to: {p} does not exist; give another system's outputs.jsonl")
    rows = {r["id"]: r for r in read_jsonl(p)}
    missing = [i for i in ids if i not in rows]
    extra = [i for i in rows if i not in set(ids)]
    if missing or extra:
        raise DataError(
            f"compare_to: {p} was made on other prompts ({len(missing)} test ids missing, e.g. "
            f"{missing[:3]}; {len(extra)} unknown ids, e.g. {extra[:3]}); compare systems on the same test set"
        )
    for i in ids if need_scores else []:
        if "score" not in rows[i]:
            raise DataError(
                f"compare_to: {p} row id {i} has no 'score'; it must be a plad eval outputs.jsonl"
            )
    return rows


def run_eval(cfg: EvalConfig) -> dict:
    require(cfg, "model", "test_file", "output_dir")
    scorer = get_scorer(cfg.scorer) if cfg.scorer else None
    set_threads(cfg.threads)
    examples = load_examples(cfg.test_file, cfg.data, need_target=True, what="test data")
    for ex in examples if scorer else []:
        if not isinstance(ex.prompt, str):
            raise DataError(f"{cfg.test_file} id {ex.id}: task scorers need text prompts, not chat messages")
    other = (
        _load_other(cfg.compare_to, [ex.id for ex in examples], scorer is not None)
        if cfg.compare_to
        else None
    )
    out = Path(cfg.output_dir)
    check_output_dir(out, resume=True)
    name = cfg.name or out.name

    model, tok = load_model_and_tokenizer(cfg.model, cfg.tokenizer)
    model = for_inference(model)
    prompt_ids = encode_prompts(tok, examples, cfg.data, cfg.test_file)
    t0 = time.perf_counter()
    outputs: list = [None] * len(examples)
    for batch in plan_batches(
        [len(p) for p in prompt_ids],
        cfg.generation.batch_size,
        cfg.generation.max_batch_tokens,
        cfg.generation.max_new_tokens,
    ):
        seed = derive_seed(cfg.generation.seed, examples[batch[0]].id, len(batch))
        results = generate(model, tok, [prompt_ids[i] for i in batch], cfg.generation, 1, seed)
        for i, samples in zip(batch, results, strict=True):
            outputs[i] = samples[0]
    gen_seconds = time.perf_counter() - t0

    rows, scores, target_scores, exact, rouge, squad_em = [], [], [], [], [], []
    for ex, s in zip(examples, outputs, strict=True):
        exact.append(float(_normalise(s.text) == _normalise(ex.target)))
        rouge.append(rouge_l(s.text, ex.target))
        squad_em.append(squad_exact_match(s.text, ex.target))
        row = {
            "id": ex.id,
            "prompt": ex.prompt,
            "output": s.text,
            "target": ex.target,
            "rouge_l": rouge[-1],
            "exact_match_squad": squad_em[-1],
        }
        if scorer:
            row["score"], row["target_score"] = (
                scorer.score(ex.prompt, s.text),
                scorer.score(ex.prompt, ex.target),
            )
            scores.append(row["score"])
            target_scores.append(row["target_score"])
        rows.append({**row, "n_tokens": s.n_tokens, "finish": s.finish})
    write_jsonl_atomic(out / "outputs.jsonl", rows)
    n, seed = cfg.bootstrap_samples, cfg.seed
    results = {
        "name": name,
        "model": cfg.model,
        "test_file": cfg.test_file,
        "scorer": scorer.name if scorer else None,
        "n": len(rows),
        "exact_match": mean_with_ci(exact, n, seed),
        "exact_match_squad": mean_with_ci(squad_em, n, seed),
        "rouge_l": mean_with_ci(rouge, n, seed),
        "mean_output_tokens": sum(s.n_tokens for s in outputs) / len(outputs),
        "generation": to_dict(cfg.generation),
        "generation_seconds": round(gen_seconds, 2),
    }
    if scorer:
        results["mean_score"] = mean_with_ci(scores, n, seed)
        results["perfect_rate"] = mean_with_ci([float(x == 1.0) for x in scores], n, seed)
        results["target_mean_score"] = mean_with_ci(target_scores, n, seed)
        results["win_rate_vs_target"] = win_rate(scores, target_scores, n, seed)
    if other is not None and scorer:
        other_scores = [other[ex.id]["score"] for ex in examples]
        results["head_to_head"] = {"against": cfg.compare_to, **win_rate(scores, other_scores, n, seed)}
    write_json_atomic(out / "results.json", results)
    return results
