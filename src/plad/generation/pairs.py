"""`plad pairs`: the resumable pair-generation job.

Store layout (one folder):
- samples.jsonl: append-only, one row per generated sample, keyed by (id, side, index, fingerprint), with the
  model, the sampling settings and the seed that made it. Written a whole batch at a time with flush + fsync; a
  torn last line left by a kill is cut before appending again. Rows of other fingerprints are kept, never deleted.
- teacher_logps.jsonl (with `teacher_logprobs`): append-only, the teacher's summed log-prob of every sample in its
  own tokenizer, keyed by (id, side, index, sample fingerprint, teacher fingerprint); resumable the same way.
- pairs.jsonl: the pseudo-preference pairs (teacher sample = chosen, each student sample = rejected), or with
  `rank_by` real preference pairs ordered by score (ties dropped), rebuilt from the files above at the end of every
  run (write-temp-then-rename).
- summary.json: counts, scores, pair agreement with the scorer, timing; for endpoint sides the requests, retries,
  tokens and cost of this run and of everything stored.
- failures.jsonl: requests that ran out of retries (endpoint sides); `plad pairs --status` counts them.

Each side samples with its backend: hf (local transformers, batched here), vllm (generation/vllm.py) or openai
(an OpenAI-compatible endpoint, generation/openai.py: concurrent requests, each stored as soon as it is paid for).

Batches are planned over the whole prompt set and each batch has its own seed, so a resumed run regenerates a
missing batch exactly as an uninterrupted run would have: the final store is identical.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from plad.config import ModelSide, PairsConfig, fingerprint, require, to_dict
from plad.core.batching import Truncation, encode_output, encode_prompts
from plad.core.data import load_examples
from plad.core.models import (
    check_vocab,
    fit_output,
    fit_positions,
    for_inference,
    load_model_and_tokenizer,
    load_model_config,
    load_tokenizer,
    model_identity,
    position_limit,
    set_threads,
)
from plad.endpoint.client import ApiStopped
from plad.generation.backend import Drawn, Prompt, wanted_rows
from plad.generation.openai import (
    FAILURES,
    SamplingStopped,
    endpoint_identity,
    record_failures,
    stopped_message,
    usage_from_rows,
)
from plad.generation.registry import backend_class, side_backend
from plad.generation.store import store_rows, stored_samples
from plad.scoring.samples import SampleScorer
from plad.utils.errors import ConfigError
from plad.utils.io import append_jsonl, read_jsonl, repair_torn_tail, write_json_atomic, write_jsonl_atomic
from plad.utils.outputs import check_output_dir

log = logging.getLogger("plad")


class NoPairsError(ConfigError):
    """Real preference ranking left no pair (every pair a tie)."""


SAMPLES, PAIRS, SUMMARY, TEACHER_LOGPS = "samples.jsonl", "pairs.jsonl", "summary.json", "teacher_logps.jsonl"


def side_fingerprint(side: ModelSide, num_samples: int, cfg: PairsConfig) -> str:
    """Everything that changes what a side generates: what its backend says changes its samples (`identity`: for
    hf the batch settings too, since batch composition changes padding, and padding can change sampled text; for an
    endpoint its model and request settings, not its address, concurrency, retries or prices), and k."""
    ident = backend_class(side.backend).identity(side, cfg.data)
    return fingerprint({**ident, "num_samples": num_samples})


def run_pairs(cfg: PairsConfig, *, status: bool = False, export: str = "") -> dict:
    """`plad pairs`: every side's missing samples through its backend, the teacher's log-probs of them when asked,
    then pairs.jsonl and summary.json rebuilt from the store. status: generate nothing, return `pairs_status`;
    export DIR: generate nothing, write the store's pairs to DIR as a `datasets` data set (generation/export.py)."""
    if status:
        return pairs_status(cfg)
    if export:
        from plad.generation.export import export_pairs

        return export_pairs(cfg, export)
    require(cfg, "prompts_file", "output_dir", "teacher.model", "student.model")
    set_threads(cfg.threads)
    examples = load_examples(cfg.prompts_file, cfg.data, need_target=False, what="distillation prompts")
    if cfg.limit:
        examples = examples[: cfg.limit]
    scorer = SampleScorer(cfg.scorer, examples, cfg.prompts_file) if cfg.scorer else None
    sides = {"teacher": (cfg.teacher, 1), "student": (cfg.student, cfg.num_student_samples)}
    encoded, backends = _open_sides(cfg, sides, examples)
    out = Path(cfg.output_dir)
    check_output_dir(out, resume=True)  # only checks that it is writable: the store is resumable by design
    samples_path = out / SAMPLES
    fps = {name: side_fingerprint(side, k, cfg) for name, (side, k) in sides.items()}
    done = _read_store(samples_path)
    t0, generated_tokens, generated_rows = time.perf_counter(), 0, 0

    usage: dict[str, Any] = {}
    for name, (side, k) in sides.items():
        prompt_ids = encoded[name][1] if name in encoded else [None] * len(examples)
        prompts = [Prompt(ex.id, ex.prompt, ids) for ex, ids in zip(examples, prompt_ids, strict=True)]
        before = len(done)
        used = _sample_side(name, side, k, fps[name], backends[name], prompts, done, samples_path)
        if used:
            usage[name] = used
        new_rows = list(done.values())[before:]
        generated_rows += len(new_rows)
        generated_tokens += sum(r.get("n_tokens") or 0 for r in new_rows)
        if (
            name == "student" or not cfg.teacher_logprobs
        ):  # a local teacher that scores the samples stays loaded
            backends[name].close()

    teacher_logps: dict = {}
    if cfg.teacher_logprobs:
        teacher_logps = _teacher_logprobs(cfg, examples, done, fps, out, usage, backends["teacher"])
        backends["teacher"].close()
    if scorer is not None:
        scorer.teacher_logps = teacher_logps
    pairs, scores = _materialize(examples, done, fps, cfg, scorer, teacher_logps)
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
    if any(side.backend == "openai" for side, _ in sides.values()):
        summary["api_usage_this_run"] = usage
        summary["api_usage_stored"] = _stored_usage(cfg, done, fps)
    write_json_atomic(out / SUMMARY, summary)
    return summary


def _open_sides(cfg: PairsConfig, sides: dict, examples: list) -> tuple[dict, dict]:
    """Every local side's tokenizer, positions and prompts (encoded), and each side's backend (a missing vLLM, an
    endpoint's key): all before any weights are read, so that a bad student (a missing folder, chat prompts without
    a template) costs nothing, not even the teacher's samples."""
    encoded = {
        name: _encode_side(side, name, examples, cfg)
        for name, (side, _) in sides.items()
        if side.backend != "openai"
    }
    backends = {
        name: side_backend(side, f"{name} (backend {side.backend})", encoded.get(name, (None, None))[0])
        for name, (side, _) in sides.items()
    }
    return encoded, backends


def _read_store(samples_path: Path) -> dict[tuple, dict]:
    """The stored samples by key, after cutting a torn last line left by a kill (its unit is sampled again)."""
    dropped = repair_torn_tail(samples_path)
    if dropped:
        log.warning(
            "%s: dropped an interrupted last line (%d bytes); its batch is regenerated", samples_path, dropped
        )
    stored = read_jsonl(samples_path) if samples_path.exists() else []
    return stored_samples(stored, samples_path)


def pairs_status(cfg: PairsConfig) -> dict[str, Any]:
    """Done / pending / failed rows per side for this config's store, without loading a model or calling an
    endpoint. `failed`: pending rows of prompts whose last request ran out of retries (see failures.jsonl)."""
    require(cfg, "prompts_file", "output_dir", "teacher.model", "student.model")
    examples = load_examples(cfg.prompts_file, cfg.data, need_target=False, what="distillation prompts")
    if cfg.limit:
        examples = examples[: cfg.limit]
    out = Path(cfg.output_dir)
    samples_path = out / SAMPLES
    stored = read_jsonl(samples_path, tolerate_torn_tail=True) if samples_path.exists() else []
    failures = read_jsonl(out / FAILURES, tolerate_torn_tail=True) if (out / FAILURES).exists() else []
    sides = {"teacher": (cfg.teacher, 1), "student": (cfg.student, cfg.num_student_samples)}
    fps = {name: side_fingerprint(side, k, cfg) for name, (side, k) in sides.items()}
    done = stored_samples(stored, samples_path)
    status: dict[str, Any] = {"store": str(out), "prompts": len(examples)}
    usage = _stored_usage(cfg, done, fps)
    for name, (side, k) in sides.items():
        fp = fps[name]
        failed_ids = {f["id"] for f in failures if f.get("side") == name and f.get("fingerprint") == fp}
        n_done = sum((ex.id, name, j, fp) in done for ex in examples for j in range(k))
        n_failed = sum(
            (ex.id, name, j, fp) not in done for ex in examples if ex.id in failed_ids for j in range(k)
        )
        other = sum(1 for key in done if key[1] == name and key[3] != fp)
        status[name] = {
            "backend": side.backend,
            "model": side.model,
            "fingerprint": fp,
            "rows": len(examples) * k,
            "done": n_done,
            "pending": len(examples) * k - n_done,
            "failed": n_failed,
            "rows_of_other_settings": other,
        }
        if name in usage:
            status[name]["usage"] = usage[name]
    if cfg.teacher_logprobs:
        path = out / TEACHER_LOGPS
        rows = read_jsonl(path, tolerate_torn_tail=True) if path.exists() else []
        have = {(r["id"], r["side"], r["index"]) for r in rows if r["sample_fingerprint"] == fps[r["side"]]}
        total = len(examples) * (1 + cfg.num_student_samples)
        status["teacher_logprobs"] = {"rows": total, "done": len(have), "pending": total - len(have)}
    status["pairs_file"] = str(out / PAIRS) if (out / PAIRS).exists() else None
    return status


def _stored_usage(cfg: PairsConfig, done: dict, fps: dict) -> dict[str, Any]:
    """Requests, tokens and cost behind the stored rows of each endpoint side (all runs together)."""
    from plad.endpoint.client import cost

    result: dict[str, Any] = {}
    for name, side in (("teacher", cfg.teacher), ("student", cfg.student)):
        if side.backend != "openai":
            continue
        rows = [r for k, r in done.items() if k[1] == name and k[3] == fps[name]]
        u = usage_from_rows(rows)
        result[name] = {**u, "cost": cost(side.api, u["prompt_tokens"], u["completion_tokens"])}
    return result


def _encode_side(side: ModelSide, name: str, examples: list, cfg: PairsConfig) -> tuple[Any, list[list[int]]]:
    """A local side's tokenizer and its token ids of the prompts, fitted to the model's positions (read from its
    config): everything about the side that can be wrong, without reading its weights."""
    tok = load_tokenizer(
        side.tokenizer or side.model, f"{name} tokenizer" if side.tokenizer else f"{name} model"
    )
    config = load_model_config(side.model, f"{name} model")
    check_vocab(tok, getattr(config, "vocab_size", None), side.tokenizer or side.model, side.model)
    data = fit_positions(cfg.data, [config], side.sampling.max_new_tokens, f"{name}.sampling.max_new_tokens")
    return tok, encode_prompts(tok, examples, data, cfg.prompts_file)


def _sample_side(
    name: str, side: ModelSide, k: int, fp: str, backend: Any, prompts: list[Prompt], done: dict, path: Path
) -> dict[str, Any]:
    """A side's missing samples through its backend, each finished unit (batch, chunk, request) appended to the
    store at once; returns the endpoint usage of this run ({} for local backends)."""

    def want(i: int, j: int) -> bool:
        return (prompts[i].id, name, j, fp) not in done

    rows_wanted = wanted_rows(len(prompts), k, want)
    if not rows_wanted:
        log.info("pairs: %s samples all stored (%d prompts x %d)", name, len(prompts), k)
        return {}
    sampling = to_dict(side.sampling)  # once: every row of this side shares it

    def emit(drawn: list[Drawn]) -> None:
        rows = [
            {
                "id": prompts[d.prompt].id,
                "side": name,
                "index": d.index,
                "fingerprint": fp,
                "text": d.sample.text,
                "n_tokens": d.sample.n_tokens,
                "finish": d.sample.finish,
                "model": side.model,
                "sampling": sampling,
                "seed": d.seed,
                **d.extra,
            }
            for d in drawn
        ]
        store_rows(path, rows, done)

    shown = {"hf": "", "vllm": " (vllm)", "openai": " (api)"}[side.backend]
    bar = _progress(f"pairs {name}{shown}", rows_wanted)
    try:
        return backend.sample(prompts, side.sampling, k, (side.sampling.seed, fp), emit, want, bar)
    except SamplingStopped as e:
        record_failures(path.parent, [(prompts[i].id, err) for i, err in e.failed], name, fp)
        raise ApiStopped(stopped_message(str(e.failed[0][1]), len(e.failed), name, path, e.usage)) from None
    finally:
        bar.close()


def _teacher_logprobs(
    cfg: PairsConfig, examples: list, done: dict, fps: dict, out: Path, usage: dict[str, Any], teacher: Any
) -> dict:
    """The teacher's summed log-prob (and token count) of every sample, in the teacher's own tokenizer, so that a
    teacher with another vocabulary works. Stored append-only; a resumed run scores only what is missing.
    `teacher`: the teacher side's backend (an hf teacher scores with the weights it sampled with).

    An endpoint teacher scores through completions with echo + logprobs: the tokens of the sample text are summed
    (the end-of-text token is not part of a text, so it is not counted, unlike a local teacher's score)."""
    path = out / TEACHER_LOGPS
    if dropped := repair_torn_tail(path):
        log.warning("%s: dropped an interrupted last line (%d bytes)", path, dropped)
    scorer_fp = _logp_fingerprint(cfg)
    stored = {
        (r["id"], r["side"], r["index"], r["sample_fingerprint"]): r
        for r in (read_jsonl(path) if path.exists() else [])
        if r["teacher_fingerprint"] == scorer_fp
    }
    wanted = [(ex, "teacher", 0) for ex in examples] + [
        (ex, "student", j) for ex in examples for j in range(cfg.num_student_samples)
    ]
    todo = [(ex, side, j) for ex, side, j in wanted if (ex.id, side, j, fps[side]) not in stored]

    def text_of(ex: Any, side: str, j: int) -> str:
        return done[(ex.id, side, j, fps[side])]["text"]

    def row_of(ex: Any, side: str, j: int, logp: float, n: int) -> dict:
        row = {
            "id": ex.id,
            "side": side,
            "index": j,
            "sample_fingerprint": fps[side],
            "teacher_fingerprint": scorer_fp,
            "logp": logp,
            "n_tokens": n,
        }
        stored[(ex.id, side, j, fps[side])] = row
        return row

    if todo and cfg.teacher.backend == "openai":
        from plad.generation.openai import teacher_logprobs_api

        usage["teacher_logprobs"] = teacher_logprobs_api(cfg.teacher, todo, text_of, row_of, path, _progress)
    elif todo:
        if cfg.teacher.backend == "vllm":
            log.info("teacher log-probs of a vllm teacher: scored with transformers (same weights)")
            model, tok = load_model_and_tokenizer(
                cfg.teacher.model, cfg.teacher.tokenizer, dtype=cfg.teacher.dtype
            )
            model = for_inference(model)
        else:
            model, tok = teacher.model, teacher.tokenizer
        _score_locally(cfg, examples, todo, text_of, row_of, path, model, tok)
    return {(k[0], k[1], k[2]): v for k, v in stored.items() if v["sample_fingerprint"] == fps[k[1]]}


def _logp_fingerprint(cfg: PairsConfig) -> str:
    """What changes the teacher's log-prob of a sample: its endpoint and model (echo scoring), or its weights,
    dtype, tokenizer and the data settings that cut prompts and outputs (a local teacher)."""
    if cfg.teacher.backend == "openai":
        scorer_ident: dict[str, Any] = {
            **endpoint_identity(cfg.teacher.api, cfg.teacher.model),
            "what": "echo-logprobs",
        }
    else:
        scorer_ident = {
            "model": model_identity(cfg.teacher.model),
            "dtype": cfg.teacher.dtype,
            "tokenizer": model_identity(cfg.teacher.tokenizer) if cfg.teacher.tokenizer else "",
            "data": to_dict(cfg.data),
        }
    return fingerprint(scorer_ident)


def _score_locally(
    cfg: PairsConfig, examples: list, todo: list, text_of: Any, row_of: Any, path: Path, model: Any, tok: Any
) -> None:
    """Score the `todo` samples with a local teacher, appending rows to `path` per chunk."""
    from plad.core.logprobs import score_outputs

    stats = Truncation()
    longest = max(cfg.teacher.sampling.max_new_tokens, cfg.student.sampling.max_new_tokens)
    data = fit_positions(cfg.data, [model.config], longest, "sampling.max_new_tokens")
    limit = position_limit(model.config)
    prompts = dict(
        zip([ex.id for ex in examples], encode_prompts(tok, examples, data, cfg.prompts_file), strict=True)
    )
    bar = _progress("pairs teacher log-probs", len(todo))
    chunk = max(cfg.teacher.sampling.batch_size, 1) * 4
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        # outputs as the user limits them (data.max_target_tokens): a sample of max_new_tokens student (or API)
        # tokens can be longer in the teacher's tokens; only a row past the positions loses its end
        outputs = [
            fit_output(
                encode_output(tok, text_of(ex, side, j), cfg.data, stats, f"{ex.id}", ex.prompt),
                len(prompts[ex.id]),
                limit,
                stats,
            )
            for ex, side, j in part
        ]
        scored = score_outputs(
            model,
            tok.pad_token_id,
            [prompts[ex.id] for ex, _, _ in part],
            outputs,
            cfg.teacher.sampling.batch_size,
        )
        rows = [row_of(ex, side, j, logp, n) for (ex, side, j), (logp, n) in zip(part, scored, strict=True)]
        append_jsonl(path, rows)
        bar.update(len(rows))
    bar.close()


def _materialize(
    examples: list, done: dict, fps: dict, cfg: PairsConfig, scorer: SampleScorer | None, teacher_logps: dict
) -> tuple[list[dict], dict[str, Any]]:
    """pairs.jsonl's rows from the stored samples: the teacher's sample chosen over each student sample (pseudo
    pairs), or with rank_by the higher-scored one (real pairs, ties dropped); and the scorer's statistics."""
    pairs, chosen_scores, rejected_scores, agree, ties, swapped = [], [], [], 0, 0, 0
    for ex in examples:
        teacher_row = done[(ex.id, "teacher", 0, fps["teacher"])]
        for j in range(cfg.num_student_samples):
            student_row = done[(ex.id, "student", j, fps["student"])]
            # (side, sample row, model) of the preferred and the other output
            chosen, rejected = (
                ("teacher", teacher_row, cfg.teacher.model),
                ("student", student_row, cfg.student.model),
            )
            scores = None
            if scorer is not None:
                sc, sr = scorer.score(ex, "teacher", teacher_row), scorer.score(ex, "student", student_row)
                chosen_scores.append(sc)
                rejected_scores.append(sr)
                agree += sc > sr
                ties += sc == sr
                if cfg.rank_by:
                    if sc == sr:
                        continue  # real preference pairs: a tie says nothing about which is better
                    if sr > sc:
                        chosen, rejected, sc, sr = rejected, chosen, sr, sc
                        swapped += 1
                scores = {"chosen": sc, "rejected": sr, "scorer": scorer.name}
            pairs.append(_pair_row(ex, j, chosen, rejected, scores, fps, cfg, teacher_logps))
    if not pairs:
        raise NoPairsError(
            f"rank_by={cfg.rank_by}: every pair was a tie, no preference pair is left; use pseudo pairs (rank_by "
            "empty) or another scorer"
        )
    if not chosen_scores:
        return pairs, {}
    n = len(chosen_scores)
    stats: dict[str, Any] = {
        "scorer": scorer.name,
        "mean_chosen_score": sum(chosen_scores) / n,
        "mean_rejected_score": sum(rejected_scores) / n,
        "pairs_teacher_better": agree / n,
        "pairs_tied": ties / n,
        "pairs_inverted": (n - agree - ties) / n,
    }
    if cfg.rank_by:
        stats.update(ranked_by=cfg.rank_by, pairs_dropped_ties=ties, pairs_swapped=swapped)
    return pairs, stats


def _pair_row(
    ex: Any,
    j: int,
    chosen: tuple,
    rejected: tuple,
    scores: dict | None,
    fps: dict,
    cfg: PairsConfig,
    teacher_logps: dict,
) -> dict[str, Any]:
    """One row of pairs.jsonl; `chosen` / `rejected`: (side, stored sample row, model)."""
    row: dict[str, Any] = {
        "id": ex.id if cfg.num_student_samples == 1 else f"{ex.id}#{j}",
        "prompt_id": ex.id,
        "prompt": ex.prompt,
        "chosen": chosen[1]["text"],
        "rejected": rejected[1]["text"],
        "chosen_from": chosen[2],
        "rejected_from": rejected[2],
        "meta": {
            "sample_index": j,
            "chosen_side": chosen[0],
            "rejected_side": rejected[0],
            "chosen_finish": chosen[1]["finish"],
            "rejected_finish": rejected[1]["finish"],
            "chosen_seed": chosen[1]["seed"],
            "rejected_seed": rejected[1]["seed"],
            "ranked_by": cfg.rank_by or None,
            "fingerprints": fps,
        },
    }
    if scores is not None:
        row["scores"] = scores
    if teacher_logps:
        tc = teacher_logps[(ex.id, chosen[0], chosen[1]["index"])]
        tr = teacher_logps[(ex.id, rejected[0], rejected[1]["index"])]
        row["teacher_logps"] = {
            "chosen": tc["logp"],
            "rejected": tr["logp"],
            "chosen_tokens": tc["n_tokens"],
            "rejected_tokens": tr["n_tokens"],
            "model": cfg.teacher.model,
        }
    return row


def _progress(desc: str, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True, mininterval=1.0)
