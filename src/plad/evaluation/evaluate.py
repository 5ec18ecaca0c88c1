"""`plad eval`: generate on the test prompts (or read given outputs), judge them, write outputs.jsonl and results.json.

Every input is checked before any work: the test data, the given outputs and the other system's outputs (same
prompt ids), the judges (scorer, reward-model folder, LLM template and endpoint), the calibration pairs. Generated
outputs are kept with a fingerprint of what made them, so a re-run after a judge stopped (endpoint down) reuses them
and the LLM judge's cache answers every verdict already paid for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from plad.config import EvalConfig, require, to_dict
from plad.core.batching import encode_prompts
from plad.core.data import load_examples
from plad.core.models import (
    fit_positions,
    for_inference,
    load_model_and_tokenizer,
    load_model_config,
    load_tokenizer,
    model_identity,
    set_threads,
)
from plad.evaluation.judging import headline, judge_all, make_judges
from plad.evaluation.winrate import (
    bucket_labels,
    bucket_of,
    mean_with_ci,
    quantile_edges,
)
from plad.generation.backend import Prompt, collect
from plad.generation.registry import open_backend
from plad.scoring.metrics import rouge_l, squad_exact_match
from plad.scoring.scorers import check_prompts, get_scorer
from plad.train.model_card import record_eval
from plad.utils.errors import ConfigError, DataError
from plad.utils.io import lone_surrogate, read_jsonl, surrogate_error, write_json_atomic, write_jsonl_atomic
from plad.utils.outputs import check_output_dir

log = logging.getLogger("plad")

GENERATION_STAMP = "generation.json"


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _load_outputs(path: str, examples: list, what: str, limited: bool = False) -> dict[str, dict]:
    """Rows {id, output} of another system (or the given outputs), one per test prompt id. `limited`: the test set
    is the first eval.limit prompts, so rows of the prompts after them are left out (a full run's outputs)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what}: {p} does not exist; give a JSONL with id and output per test prompt")
    try:
        rows = read_jsonl(p)
    except (ValueError, DataError) as e:
        raise DataError(f"{what}: {p} is not valid JSONL: {e}") from None
    by_id: dict[str, dict] = {}
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict) or not isinstance(r.get("output"), str) or "id" not in r:
            raise DataError(
                f"{what}: {p}:{i} needs an 'id' and a text 'output' (like plad eval's outputs.jsonl)"
            )
        if str(r["id"]) in by_id:
            raise DataError(f"{what}: {p}:{i} repeats id {r['id']}")
        if bad := lone_surrogate(r["output"]):
            raise DataError(f"{what}: {surrogate_error(f'{p}:{i}', 'output', bad)}")
        by_id[str(r["id"])] = r
    ids = [ex.id for ex in examples]
    missing = [i for i in ids if i not in by_id]
    extra = [] if limited else [i for i in by_id if i not in set(ids)]
    if missing or extra:
        raise DataError(
            f"{what}: {p} was made on other prompts ({len(missing)} test ids missing, e.g. {missing[:3]}; "
            f"{len(extra)} unknown ids, e.g. {extra[:3]}); compare systems on the same test set"
        )
    for ex in examples:  # ids are row numbers when the data has none: the prompts themselves must agree too
        if "prompt" in by_id[ex.id] and by_id[ex.id]["prompt"] != ex.prompt:
            raise DataError(
                f"{what}: {p} id {ex.id} has another prompt than the test data; compare systems on the same test set"
            )
    return by_id


def _generation_fp(cfg: EvalConfig, examples: list) -> str:
    h = hashlib.sha256()
    parts: dict[str, Any] = {
        "model": model_identity(cfg.model),
        "dtype": cfg.dtype,
        "tokenizer": cfg.tokenizer,
        "generation": to_dict(cfg.generation),
        "data": to_dict(cfg.data),
        "prompts": [[ex.id, ex.prompt] for ex in examples],
    }
    if cfg.backend == "vllm":  # (hf keeps the parts it had before backends were a setting: caches stay valid)
        parts.update(backend="vllm", dtype=cfg.vllm.dtype)
    elif cfg.backend == "openai":
        from plad.generation.openai import endpoint_identity

        parts.update(endpoint_identity(cfg.api, cfg.model), model=cfg.model, dtype=None)
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _generate(
    cfg: EvalConfig, backend: Any, examples: list, prompt_ids: list | None, out: Path
) -> tuple[list[dict], float]:
    """[{output, n_tokens, finish}] per example, sampled by `backend` (`prompt_ids`: the prompts encoded, for a
    local backend); reused from out/outputs.jsonl (or the shared generation_cache) when made the same way."""
    fp = _generation_fp(cfg, examples)
    stamp, saved = out / GENERATION_STAMP, out / "outputs.jsonl"
    if stamp.is_file() and saved.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fp:
        rows = read_jsonl(saved)
        if [r.get("id") for r in rows] == [ex.id for ex in examples]:
            log.info(
                "eval: outputs of %s reused from %s (same model, prompts and decoding)", cfg.model, saved
            )
            info = json.loads(stamp.read_text())
            return [{k: r[k] for k in ("output", "n_tokens", "finish")} for r in rows], info["seconds"]
    shared = Path(cfg.generation_cache) / f"{fp}.jsonl" if cfg.generation_cache else None
    if shared is not None and shared.is_file():
        rows = read_jsonl(shared)
        if [r.get("id") for r in rows] == [ex.id for ex in examples]:
            log.info(
                "eval: outputs of %s taken from %s (same model, prompts and decoding)", cfg.model, shared
            )
            write_jsonl_atomic(saved, rows)
            write_json_atomic(
                stamp, {"fingerprint": fp, "model": cfg.model, "seconds": 0.0, "from": str(shared)}
            )
            return [{k: r[k] for k in ("output", "n_tokens", "finish")} for r in rows], 0.0
    t0 = time.perf_counter()
    ids = prompt_ids or [None] * len(examples)
    prompts = [Prompt(ex.id, ex.prompt, p) for ex, p in zip(examples, ids, strict=True)]
    bar = _progress(f"eval {cfg.name or out.name}", len(prompts))
    try:
        samples = collect(backend, prompts, cfg.generation, 1, (cfg.generation.seed,), bar)
    finally:
        bar.close()
    outputs = [{"output": s.text, "n_tokens": s.n_tokens, "finish": s.finish} for (s,) in samples]
    seconds = round(time.perf_counter() - t0, 2)
    # kept before any judge runs: a judge that stops (endpoint down) does not cost the generation again
    rows = [{"id": ex.id, **o} for ex, o in zip(examples, outputs, strict=True)]
    write_jsonl_atomic(saved, rows)
    write_json_atomic(stamp, {"fingerprint": fp, "model": cfg.model, "seconds": seconds})
    if shared is not None:
        write_jsonl_atomic(shared, rows)
    return outputs, seconds


def _progress(desc: str, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True, disable=None)


def _same_path(a: str | None, b: str | None) -> bool:
    """Two settings name the same file or model: equal, or the same existing path."""
    if (a or "") == (b or ""):
        return True
    return bool(a and b and Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def check_results_owner(cfg: EvalConfig, out: Path, force: bool) -> None:
    """Refuse an output_dir holding the results (or generated outputs) of another model, test file or outputs file:
    they would be overwritten. The same ones are re-judged (outputs reused when made the same way); --force
    replaces them."""
    if force:
        return
    made: dict[str, Any] = {}
    for name in ("results.json", GENERATION_STAMP):
        try:
            info = json.loads((out / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict):
            made = {**info, **made}  # results.json says the most
            made.setdefault("source", name)
    if not made:
        return
    if "test_file" not in made:  # only generation.json: outputs of a model, on test data not recorded there
        made["test_file"] = cfg.test_file
    was = {"model": made.get("model") or "", "test_file": made.get("test_file") or "", "outputs_file": ""}
    was["outputs_file"] = made.get("outputs_file") or ""
    now = {"model": cfg.model, "test_file": cfg.test_file, "outputs_file": cfg.outputs_file}
    differ = [k for k in now if not _same_path(was[k], now[k])]
    if differ:
        held = ", ".join(
            f"{k} {was[k] or '(none)'}" for k in ("model", "outputs_file", "test_file") if was[k]
        )
        raise ConfigError(
            f"output_dir {out} holds the results of {held} ({made['source']}), not of this {', '.join(differ)}; "
            "choose another output_dir, or pass --force to replace them (nothing was changed)"
        )


def _check_inputs(cfg: EvalConfig, examples: list, scorer: Any, judges_wanted: list[str]) -> None:
    """What can be refused from the settings and the prompts alone, before any output is generated or judged."""
    if scorer is not None:  # a scorer of another task fails on these prompts
        check_prompts(
            scorer,
            examples,
            cfg.test_file,
            hint="leave scorer empty (ROUGE-L is the headline) or use another judge",
        )
    if "reward-model" in judges_wanted and any(not isinstance(ex.prompt, str) for ex in examples):
        rm_tok = load_tokenizer(
            cfg.reward_model.tokenizer or cfg.reward_model.model,
            "tokenizer" if cfg.reward_model.tokenizer else "reward model",
        )
        if not getattr(rm_tok, "chat_template", None):
            raise DataError(
                f"{cfg.test_file}: the prompts are chat messages but the reward model's tokenizer has no chat "
                "template; set reward_model.tokenizer to one that has"
            )


def _encode(cfg: EvalConfig, examples: list, given: Any, pairs: Any) -> tuple[Any, Any, Any]:
    """The tokenizer, the prompts to generate from (when no outputs are given) and the calibration pairs in the
    model's tokenizer and positions: over-long rows fail here, before any weights are read."""
    from plad.evaluation.calibration import encode_pairs

    tok = prompt_ids = encoded_pairs = None
    if (
        cfg.backend == "openai"
    ):  # the model is behind an endpoint: prompts go as text; a tokenizer only counts
        return (load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None), None, None
    if cfg.model:
        tok = load_tokenizer(cfg.tokenizer or cfg.model, "tokenizer" if cfg.tokenizer else "model")
        config = load_model_config(cfg.model)
        if given is None:
            data = fit_positions(
                cfg.data, [config], cfg.generation.max_new_tokens, "generation.max_new_tokens"
            )
            prompt_ids = encode_prompts(tok, examples, data, cfg.test_file)
        if pairs is not None:
            encoded_pairs = encode_pairs(tok, pairs, cfg.data, config, cfg.calibration_file)
    return tok, prompt_ids, encoded_pairs


def _outputs(
    cfg: EvalConfig, backend: Any, examples: list, prompt_ids: Any, given: Any, out: Path
) -> tuple[list[dict], float]:
    """The outputs to judge: generated by the model (cached per prompt), or read from outputs_file."""
    if given is None:
        return _generate(cfg, backend, examples, prompt_ids, out)
    (out / GENERATION_STAMP).unlink(missing_ok=True)  # outputs.jsonl no longer holds the model's outputs
    outputs = [
        {
            "output": given[ex.id]["output"],
            "n_tokens": given[ex.id].get("n_tokens"),
            "finish": given[ex.id].get("finish"),
        }
        for ex in examples
    ]
    return outputs, 0.0


def _length_buckets(
    cfg: EvalConfig, tok: Any, targets: list[str], texts: list[str]
) -> tuple[list[int], list, dict]:
    """Target (or output) lengths, in tokens of the evaluated model's tokenizer (else words), and their buckets."""
    measured = targets if cfg.length_by == "target" else texts
    if tok is not None:
        lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in measured]
        unit = "tokens"
    else:
        lengths = [len(t.split()) for t in measured]
        unit = "words"
    edges = (
        [float(e) for e in cfg.length_edges]
        if cfg.length_edges
        else quantile_edges(lengths, cfg.length_buckets)
    )
    buckets = {
        "by": f"{cfg.length_by} length",
        "unit": unit,
        "edges": edges,
        "labels": bucket_labels(edges),
        "sizes": np.bincount(bucket_of(lengths, edges), minlength=len(edges) + 1).tolist(),
    }
    return lengths, edges, buckets


def run_eval(cfg: EvalConfig, *, force: bool = False) -> dict:
    """`plad eval`: check everything that can be checked, load, generate (or read outputs_file), judge, write
    outputs.jsonl and results.json (and the calibration analysis with calibration_file)."""
    require(cfg, "test_file", "output_dir")
    if not cfg.model and not cfg.outputs_file:
        raise ConfigError("eval needs model (to generate outputs) or outputs_file (outputs to judge)")
    from plad.evaluation.calibration import load_calibration_pairs
    from plad.evaluation.judges import check_judges

    judges_wanted = cfg.judges()
    check_judges(cfg)
    scorer = get_scorer(cfg.scorer) if "task" in judges_wanted else None
    set_threads(cfg.threads)
    examples = load_examples(cfg.test_file, cfg.data, need_target=True, what="test data")
    if cfg.limit:
        examples = examples[: cfg.limit]
    _check_inputs(cfg, examples, scorer, judges_wanted)
    limited = bool(cfg.limit)
    given = _load_outputs(cfg.outputs_file, examples, "outputs_file", limited) if cfg.outputs_file else None
    other = _load_outputs(cfg.compare_to, examples, "compare_to", limited) if cfg.compare_to else None
    if cfg.calibration_file and not cfg.model:
        raise ConfigError("calibration_file needs model: calibration measures a model's log-probs")
    pairs = load_calibration_pairs(cfg.calibration_file) if cfg.calibration_file else None
    cache = Path(cfg.generation_cache) if cfg.generation_cache else None
    if cache is not None and cache.exists() and not cache.is_dir():
        raise ConfigError(f"generation_cache {cfg.generation_cache} is a file; give a folder (or nothing)")
    tok, prompt_ids, encoded_pairs = _encode(cfg, examples, given, pairs)
    out = Path(cfg.output_dir)
    check_output_dir(out, resume=True)
    check_results_owner(cfg, out, force)
    judges = make_judges(cfg, scorer, out)  # loads a reward model; opens the LLM judge's cache
    for j in judges:
        if getattr(j, "kind", "") == "pairwise":
            j.endpoint.check_reachable()

    backend = _backend(cfg, tok, given is not None)
    if backend is None and cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    try:
        outputs, gen_seconds = _outputs(cfg, backend, examples, prompt_ids, given, out)
    finally:
        if backend is not None and not (pairs is not None and backend.name == "hf"):
            backend.close()  # (an hf model that also measures calibration stays loaded for it)
    rows = _rows(examples, outputs)
    texts, targets = [r["output"] for r in rows], [r["target"] for r in rows]
    lengths, edges, buckets = _length_buckets(cfg, tok, targets, texts)
    others = [other[ex.id]["output"] for ex in examples] if other is not None else None
    judged = judge_all(cfg, judges, rows, others, lengths, edges)
    results = _results(cfg, out.name, scorer, rows, outputs, judged, buckets, gen_seconds, given is not None)
    headline(results, judged, rows)
    write_jsonl_atomic(
        out / "outputs.jsonl",
        [{**r, "n_tokens": o["n_tokens"], "finish": o["finish"]} for r, o in zip(rows, outputs, strict=True)],
    )
    if pairs is not None:
        results["calibration"] = _calibration(cfg, backend, tok, pairs, encoded_pairs)
    results = _no_nan(results)
    write_json_atomic(out / "results.json", results)
    if cfg.model and not cfg.outputs_file:  # the model's own outputs: a plad-trained folder's card shows them
        record_eval(cfg.model, results, out, cfg.compare_to)
    return results


def _backend(cfg: EvalConfig, tok: Any, outputs_given: bool) -> Any:
    """The evaluated model's backend, nothing heavy loaded until its first sample (reused outputs cost none); with
    outputs given, an hf backend whose weights only measure calibration; None without a model."""
    if not cfg.model:
        return None
    if outputs_given:
        return open_backend("hf", cfg.model, "evaluated model", tok, cfg.tokenizer, cfg.dtype)
    what = f"evaluated model (backend {cfg.backend})"
    return open_backend(cfg.backend, cfg.model, what, tok, cfg.tokenizer, cfg.dtype, cfg.api, cfg.vllm)


def _rows(examples: list, outputs: list[dict]) -> list[dict]:
    """A row per test prompt: its output, the target and the reference metrics (every judge adds its own)."""
    return [
        {
            "id": ex.id,
            "prompt": ex.prompt,
            "output": o["output"],
            "target": ex.target,
            "rouge_l": rouge_l(o["output"], ex.target),
            "exact_match_squad": squad_exact_match(o["output"], ex.target),
        }
        for ex, o in zip(examples, outputs, strict=True)
    ]


def _results(
    cfg: EvalConfig,
    default_name: str,
    scorer: Any,
    rows: list[dict],
    outputs: list[dict],
    judged: dict,
    buckets: dict,
    gen_seconds: float,
    given: bool,
) -> dict[str, Any]:
    """results.json but for the headline (`headline`) and calibration."""
    n, seed = cfg.bootstrap_samples, cfg.seed
    texts, targets = [r["output"] for r in rows], [r["target"] for r in rows]
    known = [o["n_tokens"] for o in outputs if o["n_tokens"] is not None]
    return {
        "name": cfg.name or default_name,
        "model": cfg.model,
        **({"backend": cfg.backend} if cfg.backend != "hf" and not given else {}),
        "outputs_file": cfg.outputs_file or None,
        "test_file": cfg.test_file,
        "scorer": scorer.name if scorer else None,
        "n": len(rows),
        "judges": judged,
        "exact_match": mean_with_ci(
            [float(_normalise(a) == _normalise(b)) for a, b in zip(texts, targets, strict=True)], n, seed
        ),
        "exact_match_squad": mean_with_ci([r["exact_match_squad"] for r in rows], n, seed),
        "rouge_l": mean_with_ci([r["rouge_l"] for r in rows], n, seed),
        "length_buckets": buckets,
        "generation": None if given else to_dict(cfg.generation),
        "generation_seconds": gen_seconds,
        "mean_output_tokens": sum(known) / len(known) if known else None,
    }


def _calibration(cfg: EvalConfig, backend: Any, tok: Any, pairs: Any, encoded_pairs: Any) -> dict:
    """How often the model's log-prob ranks the better output of each held-out pair first: with the hf backend's
    weights, or (vllm) the same weights loaded through transformers."""
    from plad.evaluation.calibration import calibration

    if backend.name == "hf":
        model = backend.model
        backend.close()
    else:
        model, _ = load_model_and_tokenizer(cfg.model, cfg.tokenizer, tok=tok, dtype=cfg.dtype)
        model = for_inference(model)
    return calibration(
        model,
        tok,
        pairs,
        cfg.data,
        cfg.calibration_file,
        cfg.generation.batch_size,
        cfg.bootstrap_samples,
        cfg.seed,
        encoded_pairs,
    )


def _no_nan(obj: Any) -> Any:
    """NaN (an empty bucket, no verdict at all) as null: results.json stays valid JSON for jq and browsers."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return obj
