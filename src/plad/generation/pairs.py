"""`plad pairs`: the resumable pair-generation job.

Store layout (one folder):
- samples.jsonl: append-only, one row per generated sample, keyed by (id, side, index, fingerprint), with the
  model, the sampling settings and the seed that made it. Written a whole batch at a time with flush + fsync; a
  torn last line left by a kill is cut before appending again. Rows of other fingerprints are kept, never deleted.
- pairs.jsonl: the pseudo-preference pairs (teacher sample = chosen, each student sample = rejected), rebuilt from
  samples.jsonl at the end of every run (write-temp-then-rename).
- summary.json: counts, scores, pair agreement with the scorer, timing.

Batches are planned over the whole prompt set and each batch has its own seed, so a resumed run regenerates a
missing batch exactly as an uninterrupted run would have: the final store is identical.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from plad.config import ConfigError, ModelSide, PairsConfig, fingerprint, require, to_dict
from plad.data import (
    append_jsonl,
    encode_prompts,
    load_examples,
    read_jsonl,
    repair_torn_tail,
    write_json_atomic,
    write_jsonl_atomic,
)
from plad.generation.hf import derive_seed, generate, plan_batches
from plad.models import load_model_and_tokenizer, model_identity, set_threads
from plad.train import check_output_dir

log = logging.getLogger("plad")

SAMPLES, PAIRS, SUMMARY = "samples.jsonl", "pairs.jsonl", "summary.json"


def side_fingerprint(side: ModelSide, num_samples: int, cfg: PairsConfig) -> str:
    """Everything that changes what a side generates. The batch size is part of it: batch composition changes
    padding, and padding can change sampled text."""
    return fingerprint(
        {
            "model": model_identity(side.model),
            "tokenizer": model_identity(side.tokenizer) if side.tokenizer else "",
            "sampling": to_dict(side.sampling),
            "num_samples": num_samples,
            "max_prompt_tokens": cfg.data.max_prompt_tokens,
            "overlong": cfg.data.overlong,
        }
    )


def run_pairs(cfg: PairsConfig) -> dict:
    require(cfg, "prompts_file", "output_dir", "teacher.model", "student.model")
    scorer = None
    if cfg.scorer:
        from plad.scorers import get_scorer

        scorer = get_scorer(cfg.scorer)
    set_threads(cfg.threads)
    examples = load_examples(cfg.prompts_file, cfg.data, need_target=False, what="distillation prompts")
    if cfg.limit:
        examples = examples[: cfg.limit]
    out = Path(cfg.output_dir)
    check_output_dir(out, resume=True)  # only checks that it is writable: the store is resumable by design
    samples_path = out / SAMPLES
    dropped = repair_torn_tail(samples_path)
    if dropped:
        log.warning(
            "%s: dropped an interrupted last line (%d bytes); its batch is regenerated", samples_path, dropped
        )

    sides = {"teacher": (cfg.teacher, 1), "student": (cfg.student, cfg.num_student_samples)}
    fps = {name: side_fingerprint(side, k, cfg) for name, (side, k) in sides.items()}
    stored = read_jsonl(samples_path) if samples_path.exists() else []
    done = {(r["id"], r["side"], r["index"], r["fingerprint"]): r for r in stored}
    t0, generated_tokens, generated_rows = time.perf_counter(), 0, 0

    for name, (side, k) in sides.items():
        fp = fps[name]
        pending = [ex for ex in examples if any((ex.id, name, j, fp) not in done for j in range(k))]
        if not pending:
            log.info("pairs: %s samples all stored (%d prompts x %d)", name, len(examples), k)
            continue
        model, tok = load_model_and_tokenizer(side.model, side.tokenizer)
        prompt_ids = encode_prompts(tok, examples, cfg.data, cfg.prompts_file)
        batches = plan_batches([len(p) for p in prompt_ids], side.sampling.batch_size)
        todo = [
            b for b in batches if any((examples[i].id, name, j, fp) not in done for i in b for j in range(k))
        ]
        rows_total = sum(len(b) for b in todo) * k
        bar = _progress(f"pairs {name}", rows_total)
        for batch in todo:
            seed = derive_seed(side.sampling.seed, fp, examples[batch[0]].id, len(batch))
            results = generate(model, tok, [prompt_ids[i] for i in batch], side.sampling, k, seed)
            rows = []
            for i, samples in zip(batch, results, strict=True):
                for j, s in enumerate(samples):
                    key = (examples[i].id, name, j, fp)
                    if key in done:
                        continue
                    row = {
                        "id": examples[i].id,
                        "side": name,
                        "index": j,
                        "fingerprint": fp,
                        "text": s.text,
                        "n_tokens": s.n_tokens,
                        "finish": s.finish,
                        "model": side.model,
                        "sampling": to_dict(side.sampling),
                        "seed": seed,
                    }
                    rows.append(row)
                    done[key] = row
                    generated_tokens += s.n_tokens
            append_jsonl(samples_path, rows)
            generated_rows += len(rows)
            bar.update(len(rows))
            bar.set_postfix(
                tok_s=f"{generated_tokens / max(time.perf_counter() - t0, 1e-9):.0f}", refresh=False
            )
        bar.close()
        del model

    pairs, scores = _materialize(examples, done, fps, cfg, scorer)
    write_jsonl_atomic(out / PAIRS, pairs)
    summary = {
        "prompts": len(examples),
        "pairs": len(pairs),
        "num_student_samples": cfg.num_student_samples,
        "generated_rows_this_run": generated_rows,
        "generated_tokens_this_run": generated_tokens,
        "seconds_this_run": round(time.perf_counter() - t0, 2),
        "fingerprints": fps,
        "teacher": {"model": cfg.teacher.model, "sampling": to_dict(cfg.teacher.sampling)},
        "student": {"model": cfg.student.model, "sampling": to_dict(cfg.student.sampling)},
        **scores,
    }
    write_json_atomic(out / SUMMARY, summary)
    return summary


def _materialize(
    examples: list, done: dict, fps: dict, cfg: PairsConfig, scorer: Any
) -> tuple[list[dict], dict[str, Any]]:
    pairs, chosen_scores, rejected_scores, agree, ties = [], [], [], 0, 0
    for ex in examples:
        chosen = done[(ex.id, "teacher", 0, fps["teacher"])]
        for j in range(cfg.num_student_samples):
            rejected = done[(ex.id, "student", j, fps["student"])]
            row: dict[str, Any] = {
                "id": ex.id if cfg.num_student_samples == 1 else f"{ex.id}#{j}",
                "prompt_id": ex.id,
                "prompt": ex.prompt,
                "chosen": chosen["text"],
                "rejected": rejected["text"],
                "chosen_from": cfg.teacher.model,
                "rejected_from": cfg.student.model,
                "meta": {
                    "sample_index": j,
                    "chosen_finish": chosen["finish"],
                    "rejected_finish": rejected["finish"],
                    "chosen_seed": chosen["seed"],
                    "rejected_seed": rejected["seed"],
                    "fingerprints": fps,
                },
            }
            if scorer is not None and isinstance(ex.prompt, str):
                sc, sr = scorer.score(ex.prompt, chosen["text"]), scorer.score(ex.prompt, rejected["text"])
                row["scores"] = {"chosen": sc, "rejected": sr, "scorer": scorer.name}
                chosen_scores.append(sc)
                rejected_scores.append(sr)
                agree += sc > sr
                ties += sc == sr
            pairs.append(row)
    stats: dict[str, Any] = {}
    if chosen_scores:
        n = len(chosen_scores)
        stats = {
            "scorer": scorer.name,
            "mean_chosen_score": sum(chosen_scores) / n,
            "mean_rejected_score": sum(rejected_scores) / n,
            "pairs_teacher_better": agree / n,
            "pairs_tied": ties / n,
            "pairs_inverted": (n - agree - ties) / n,
        }
    elif cfg.scorer:
        raise ConfigError("scorer is set but the prompts are chat messages; task scorers need text prompts")
    return pairs, stats


def _progress(desc: str, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True, mininterval=1.0)
