"""The training stages: `plad sft` and `plad distill`. Both check every input, then call the one loop."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from plad.config import (
    DistillConfig,
    LossConfig,
    SFTConfig,
    fingerprint,
    require,
    result_settings,
    save_yaml,
    suggest,
)
from plad.core.batching import Truncation, encode_output, encode_prompt
from plad.core.data import Example, load_examples, load_pairs
from plad.core.methods import METHODS, Frozen, Item
from plad.core.models import (
    fit_positions,
    load_model_and_tokenizer,
    load_model_config,
    load_tokenizer,
    set_threads,
    torch_dtype_of,
)
from plad.train.batches import TrainData
from plad.train.distributed import wait_for_file, whole_on_main
from plad.train.loop import check_trackers, train
from plad.train.lora import AdaptersOff, add_adapters, save_plain
from plad.train.model_card import write_card
from plad.train.precision import resolve_mixed_precision
from plad.utils.errors import ConfigError, DataError
from plad.utils.outputs import check_output_dir

log = logging.getLogger("plad")


def resume_settings(cfg: object) -> dict:
    """Settings that must not change across --resume (not the flag itself, not the thread count)."""
    d = result_settings(cfg)
    d.pop("resume", None)
    d.pop("threads", None)
    return d


def resume_fingerprint(cfg: object) -> str:
    return fingerprint(resume_settings(cfg))


def encode_targets(examples: list[Example], tokenizer: object, cfg_data, where: str) -> list[Item]:
    stats, items = Truncation(), []
    for ex in examples:
        loc = f"{where} id {ex.id}"
        prompt = encode_prompt(tokenizer, ex.prompt, cfg_data, stats, loc)
        items.append(Item(prompt, encode_output(tokenizer, ex.target or "", cfg_data, stats, loc, ex.prompt)))
    if stats.prompts or stats.targets:
        log.warning("%s: %s", where, stats.report())
    return items


def run_sft(cfg: SFTConfig) -> dict:
    require(cfg, "model", "train_file", "output_dir")
    check_trackers(cfg.train)
    set_threads(cfg.threads)
    cfg = resolve_mixed_precision(cfg)
    out = Path(cfg.output_dir)
    examples = load_examples(cfg.train_file, cfg.data, need_target=True, what="training data")
    check_output_dir(out, cfg.resume, resume_fingerprint(cfg), resume_settings(cfg))
    tok = load_tokenizer(cfg.tokenizer or cfg.model, "tokenizer" if cfg.tokenizer else "model")
    data = fit_positions(cfg.data, [cfg.model], cfg.data.max_target_tokens, "data.max_target_tokens")
    # Over-long input fails here, before the weights are read.
    items = encode_targets(examples, tok, data, cfg.train_file)
    model, tok = load_model_and_tokenizer(cfg.model, cfg.tokenizer, tok=tok, dtype=cfg.dtype)
    if cfg.lora.enabled:
        model = add_adapters(model, cfg.lora, cfg.model, cfg.train.seed)
    save_yaml(cfg, out / "plad_config.yaml")
    log.info("sft: %d examples, %d steps", len(items), cfg.train.max_steps)
    summary = train(
        model=model,
        tokenizer=tok,
        method=METHODS["sft"],
        data=TrainData(
            items, cfg.train.batch_size, cfg.train.seed, group_by_length=cfg.train.group_by_length
        ),
        loss_cfg=LossConfig(),
        cfg=cfg.train,
        output_dir=out,
        config_fingerprint=resume_fingerprint(cfg),
        resume=cfg.resume,
        lora=cfg.lora if cfg.lora.enabled else None,
    )
    write_card(out)
    return summary


def pair_items(pairs: list[dict], tokenizer: object, cfg_data, where: str, source: str) -> list[Item]:
    """Pairs -> Items: one per pair (calibration, dpkd), or one per prompt with the teacher output (seqkd and the
    token-level methods on teacher outputs)."""
    stats, items, seen = Truncation(), [], set()
    for row in pairs:
        key = row.get("prompt_id", row["id"])
        if source == "teacher":
            if key in seen:  # k student samples share one teacher output: learn it once
                continue
            seen.add(key)
        loc = f"{where} id {row['id']}"
        prompt = encode_prompt(tokenizer, row["prompt"], cfg_data, stats, loc)
        if source == "teacher":
            text, ended = row[_teacher_key(row)], _ended(row, _teacher_key(row))
            items.append(
                Item(prompt, encode_output(tokenizer, text, cfg_data, stats, loc, row["prompt"], ended))
            )
            continue
        scores = row.get("scores") or {}
        teacher = row.get("teacher_logps") or {}
        items.append(
            Item(
                prompt,
                encode_output(
                    tokenizer, row["chosen"], cfg_data, stats, loc, row["prompt"], _ended(row, "chosen")
                ),
                encode_output(
                    tokenizer, row["rejected"], cfg_data, stats, loc, row["prompt"], _ended(row, "rejected")
                ),
                float(scores.get("chosen", 0.0)),
                float(scores.get("rejected", 0.0)),
                float(teacher.get("chosen", 0.0)),
                float(teacher.get("rejected", 0.0)),
                prompt_text=row["prompt"] if isinstance(row["prompt"], str) else "",
            )
        )
    if stats.prompts or stats.targets:
        log.warning("%s: %s", where, stats.report())
    return items


def _ended(row: dict, key: str) -> bool:
    """Whether a pair row's `chosen` / `rejected` output ended (an end token follows it in training); False for a
    sample that max_new_tokens cut (finish "length" in the row's meta). Pairs of other sources end."""
    return (row.get("meta") or {}).get(f"{key}_finish") != "length"


def _check_teacher_logps(row: dict, loc: str) -> None:
    """Teacher log-probs of a cut sample that counted an end token (pairs made before plad scored cut samples
    without one) do not match the student's log-prob of the same output: refused for a method that reads them,
    saying how to update them."""
    teacher = row.get("teacher_logps") or {}
    if teacher and not teacher.get("cut_unended") and not (_ended(row, "chosen") and _ended(row, "rejected")):
        raise DataError(
            f"{loc}: the teacher log-probs of this pair's cut output (finish length) count an end token that "
            "training no longer adds (pairs made by an older plad): run the same `plad pairs` command again on "
            "its store (only the teacher log-probs are recomputed)"
        )


def _teacher_key(row: dict) -> str:
    """Where a pair row holds the teacher's output: `chosen`, unless a real-preference ranking put it on the other
    side."""
    return "rejected" if (row.get("meta") or {}).get("chosen_side") == "student" else "chosen"


def _teacher_text(row: dict) -> str:
    """The teacher's output of a pair row."""
    return row[_teacher_key(row)]


def list_items(pairs: list[dict], tokenizer: object, cfg_data, where: str) -> list[Item]:
    """Pairs grouped by prompt -> one ranked list per prompt: the teacher output first (rank 0), then the student
    samples ordered by score (equal scores tie; without scores all students tie). Real preference pairs (ranked
    by a scorer) order every output, the teacher's included, by score."""
    groups: dict[str, list[dict]] = {}
    for row in pairs:
        groups.setdefault(str(row.get("prompt_id", row["id"])), []).append(row)
    stats, items = Truncation(), []
    for rows in groups.values():
        loc = f"{where} id {rows[0]['id']}"
        scored = all(r.get("scores") for r in rows)
        ranked = (rows[0].get("meta") or {}).get("ranked_by")
        teacher_text, teacher_score, students = _teacher_text(rows[0]), None, []
        teacher_ended = True
        for r in rows:
            teacher_side = _teacher_key(r)
            student_side = "rejected" if teacher_side == "chosen" else "chosen"
            if scored:
                teacher_score = r["scores"][teacher_side]
            teacher_ended = _ended(r, teacher_side)
            students.append(
                (r[student_side], r["scores"][student_side] if scored else 0.0, _ended(r, student_side))
            )
        outputs = [(teacher_text, teacher_score if scored else 1.0, teacher_ended)] + students
        if ranked and scored:
            outputs.sort(key=lambda o: -o[1])
            levels = sorted({o[1] for o in outputs}, reverse=True)
            ranks = [levels.index(o[1]) for o in outputs]
        else:
            head, tail = outputs[:1], sorted(outputs[1:], key=lambda o: -o[1])
            outputs = head + tail
            levels = sorted({o[1] for o in tail}, reverse=True)
            ranks = [0] + [1 + levels.index(o[1]) for o in tail]
        prompt = encode_prompt(tokenizer, rows[0]["prompt"], cfg_data, stats, loc)
        ids = [
            encode_output(tokenizer, text, cfg_data, stats, loc, rows[0]["prompt"], ended)
            for text, _, ended in outputs
        ]
        text = rows[0]["prompt"] if isinstance(rows[0]["prompt"], str) else ""
        items.append(Item(prompt, ids[0], outputs=ids, ranks=ranks, prompt_text=text))
    if stats.prompts or stats.targets:
        log.warning("%s: %s", where, stats.report())
    if all(len(it.outputs) <= 2 for it in items):
        log.warning(
            "plad-list: one student sample per prompt, so the list loss is plad-rank's; generate the pairs "
            "with num_student_samples > 1"
        )
    return items


def check_same_vocab(student_tok: object, teacher_tok: object, what: str) -> None:
    """Token-level losses compare distributions over the same token ids: refuse two different vocabularies."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        same_size = len(teacher_tok) == len(student_tok)
        raise ConfigError(
            f"{what}: compares teacher and student next-token distributions, so both must use one vocabulary: the "
            f"student tokenizer has {len(student_tok)} tokens, the teacher tokenizer has {len(teacher_tok)}"
            + (" with other token ids" if same_size else "")
        )


def load_frozen_teacher(cfg: DistillConfig, student_tok: object) -> Any:
    """The frozen teacher of the token-level methods, after checking (before reading weights) that it shares the
    student's vocabulary: token-level losses compare distributions over the same token ids."""
    teacher_tok = load_tokenizer(
        cfg.teacher_tokenizer or cfg.teacher, "teacher tokenizer" if cfg.teacher_tokenizer else "teacher"
    )
    try:
        check_same_vocab(
            student_tok,
            teacher_tok,
            f"method {cfg.method} (student tokenizer {cfg.tokenizer or cfg.model}, teacher tokenizer "
            f"{cfg.teacher_tokenizer or cfg.teacher})",
        )
    except ConfigError as e:
        raise ConfigError(
            f"{e}; use a text-only method (seqkd, plad-rank, plad-margin, plad-list, dpkd) for this pair"
        ) from None
    teacher, _ = load_model_and_tokenizer(
        cfg.teacher, cfg.teacher_tokenizer, tok=teacher_tok, dtype=cfg.frozen_dtype
    )
    return teacher


def make_on_policy(cfg: DistillConfig, tokenizer: Any) -> Any:
    """gkd's on-policy data: with probability lambda a micro-batch's outputs are replaced by samples of the current
    student. The coin and the sampling seed derive from (seed, micro-batch number): a resumed run repeats them.

    Under FSDP every generation step is a collective: a process samples whenever any process of the same window
    slot does (the coins of all are known to each: they derive from the micro-batch numbers), keeping its samples
    only if its own coin says so, and samples its micro-batch in one generate call, in step with the others
    (generate's synced_gpus)."""
    from plad.generation.backend import Prompt, collect
    from plad.generation.hf import HfBackend, sharded_world
    from plad.utils.seeds import derive_seed

    frac, seed = cfg.loss.on_policy_frac, cfg.train.seed

    def heads(g: int) -> bool:
        coin = torch.Generator().manual_seed(derive_seed(seed, "on-policy", g))
        return float(torch.rand((), generator=coin)) < frac

    def on_policy(model: Any, items: list[Item], g: int) -> list[Item]:
        world = sharded_world(model)  # 1 unless FSDP shards the model
        if not any(heads(g - g % world + r) for r in range(world)):
            return items
        sampling = cfg.on_policy
        if world > 1:  # one generate call on every process, whatever the batching settings
            sampling = dataclasses.replace(sampling, batch_size=max(len(items), 1), max_batch_tokens=0)
        prompts = [Prompt(str(n), ids=it.prompt) for n, it in enumerate(items)]
        samples = collect(HfBackend(model, tokenizer), prompts, sampling, 1, (seed, "on-policy-sample", g))
        if not heads(g):  # drawn only to keep step with the other processes
            return items
        return [
            Item(it.prompt, s.ids or [tokenizer.eos_token_id])
            for it, (s,) in zip(items, samples, strict=True)
        ]

    return on_policy


def make_rounds(cfg: DistillConfig, tokenizer: Any, items: list[Item], output_dir: Path) -> Any:
    """Iterated PLaD: the steps split into cfg.rounds rounds; at the start of round r > 0 every item's student
    samples are replaced by fresh ones from the current student (scored when a scorer is set). A round's samples
    are written to output_dir/rounds/round-R.jsonl before its first step, so a resumed run reuses them."""
    from plad.generation.backend import Prompt
    from plad.scoring.scorers import get_scorer
    from plad.utils.io import read_jsonl, write_jsonl_atomic

    scorer = get_scorer(cfg.scorer) if cfg.scorer else None
    per_round = math.ceil(cfg.train.max_steps / cfg.rounds)
    state = {"round": 0}

    def sample_round(model: Any, r: int) -> list[dict]:
        k = [len(it.outputs) - 1 if it.outputs is not None else 1 for it in items]
        prompts = [Prompt(str(i), ids=it.prompt) for i, it in enumerate(items)]
        drawn: list[list[Any]] = [[None] * max(k) for _ in items]

        def emit(part: list[Any]) -> None:
            for d in part:
                drawn[d.prompt][d.index] = d.sample

        with _round_backend(cfg, model, tokenizer, output_dir / "rounds" / "student") as backend:
            backend.sample(
                prompts, cfg.on_policy, max(k), (cfg.train.seed, "round", r), emit, want=lambda i, j: j < k[i]
            )
        rows = []
        for i, samples in enumerate(drawn):
            rows.append({"item": i, "samples": [
                {
                    "text": s.text,
                    "ids": s.ids or [tokenizer.eos_token_id],
                    "score": scorer.score(items[i].prompt_text, s.text) if scorer else 0.0,
                }
                for s in samples[: k[i]]
            ]})  # fmt: skip
        return rows

    def refresh(accelerator: Any, model: Any, step: int) -> list[Item] | None:
        r = min(step // per_round, cfg.rounds - 1)
        if r == state["round"]:
            return None
        state["round"] = r
        path = output_dir / "rounds" / f"round-{r}.jsonl"
        accelerator.wait_for_everyone()  # every process sees the file before the main process may write it
        if not path.is_file():
            # under FSDP every process gathers the student; the main one samples
            student = whole_on_main(accelerator, model)
            if accelerator.is_main_process:
                log.info("iterated PLaD: round %d of %d, sampling %d prompts", r + 1, cfg.rounds, len(items))
                path.parent.mkdir(parents=True, exist_ok=True)
                write_jsonl_atomic(path, sample_round(student, r))
            else:  # no collective in flight while the main process samples: a round may outlast its timeout
                wait_for_file(path)
            accelerator.wait_for_everyone()
        rows = read_jsonl(path)
        return [_with_samples(it, row["samples"]) for it, row in zip(items, rows, strict=True)]

    return refresh


@contextlib.contextmanager
def _round_backend(cfg: DistillConfig, model: Any, tokenizer: Any, folder: Path) -> Iterator[Any]:
    """The backend that samples a round: the student in memory (hf), or vLLM's engine on the current student's
    weights, saved to `folder` for it and removed after the round (vLLM loads models from folders; the engine is
    closed before training goes on)."""
    from plad.generation.hf import HfBackend

    if cfg.rounds_backend == "hf":
        yield HfBackend(model, tokenizer)
        return
    from plad.generation.vllm import VllmBackend

    shutil.rmtree(folder, ignore_errors=True)
    save_plain(model, folder)  # a LoRA student merged into a copy: vLLM loads plain folders
    tokenizer.save_pretrained(folder)
    backend = VllmBackend(str(folder), str(folder), tokenizer, cfg.vllm)
    try:
        yield backend
    finally:
        backend.close()
        gc.collect()
        shutil.rmtree(folder, ignore_errors=True)


def _with_samples(it: Item, samples: list[dict]) -> Item:
    """An item of iterated PLaD with a round's fresh student samples: the rejected output of a pair, or a list's
    outputs after the teacher's, ranked by their scores (equal scores share a rank)."""
    if it.outputs is None:
        s = samples[0]
        return dataclasses.replace(it, rejected=s["ids"], rejected_score=s["score"])
    students = sorted(samples, key=lambda s: -s["score"])
    levels = sorted({s["score"] for s in students}, reverse=True)
    return dataclasses.replace(
        it,
        outputs=[it.chosen] + [s["ids"] for s in students],
        ranks=[0] + [1 + levels.index(s["score"]) for s in students],
    )


def _prompt_key(row: Any) -> str:
    """The prompt a pair (dict: its prompt_id) or an example (its id) belongs to."""
    return str(row.get("prompt_id", row["id"])) if isinstance(row, dict) else row.id


def _prompts(rows: list) -> list[str]:
    """The distinct prompts of the rows, in file order."""
    return list(dict.fromkeys(_prompt_key(r) for r in rows))


def _fraction(rows: list, fraction: float) -> list:
    """The rows of the first ceil(fraction * prompts) prompts, in file order (pairs: grouped by prompt_id)."""
    prompts = _prompts(rows)
    keep = set(prompts[: math.ceil(fraction * len(prompts))])
    return [r for r in rows if _prompt_key(r) in keep]


def _is_seq2seq(model: Any) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def run_distill(cfg: DistillConfig) -> dict:
    """`plad distill`: check the settings and the data, encode the training items, load the student (and the
    frozen teacher or reference copy the method needs), then train."""
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}{suggest(cfg.method, METHODS)}")
    method = METHODS[cfg.method]
    source = method.data_source(cfg.loss)
    regularizer = cfg.loss.regularizer if method.uses_regularizer else "none"
    needs_targets = source == "targets" or regularizer == "target"
    _check_distill(cfg, method, source, needs_targets)
    set_threads(cfg.threads)
    cfg = resolve_mixed_precision(cfg)
    out = Path(cfg.output_dir)
    pairs, examples = _distill_data(cfg, method, source, needs_targets)
    check_output_dir(out, cfg.resume, resume_fingerprint(cfg), resume_settings(cfg))
    tok = load_tokenizer(cfg.tokenizer or cfg.model, "tokenizer" if cfg.tokenizer else "model")
    items, reg_items = _distill_items(cfg, method, source, regularizer, pairs, examples, tok)
    teacher = load_frozen_teacher(cfg, tok) if method.needs_teacher_model else None
    model, tok = load_model_and_tokenizer(cfg.model, cfg.tokenizer, tok=tok, dtype=cfg.dtype)
    if teacher is not None and _is_seq2seq(teacher) != _is_seq2seq(model):
        raise ConfigError(
            f"method {cfg.method} compares teacher and student token by token, so both must be decoder-only or both "
            f"encoder-decoder: teacher {cfg.teacher} is {teacher.config.model_type}, student {cfg.model} is "
            f"{model.config.model_type}; use a text-only method for this pair"
        )
    model, reference = _student(cfg, model, regularizer)
    frozen = Frozen(teacher=teacher, reference=reference, vocab=len(tok))
    on_policy = make_on_policy(cfg, tok) if method.on_policy and cfg.loss.on_policy_frac > 0 else None
    refresh = make_rounds(cfg, tok, items, out) if cfg.rounds > 1 else None
    save_yaml(cfg, out / "plad_config.yaml")
    log.info("distill %s: %d items, %d steps", cfg.method, len(items), cfg.train.max_steps)
    data = TrainData(
        items,
        cfg.train.batch_size,
        cfg.train.seed,
        reg_items,
        on_policy,
        refresh,
        cfg.train.group_by_length,
        cfg.train.shared_prompt,
    )
    summary = train(
        model=model,
        tokenizer=tok,
        method=method,
        data=data,
        loss_cfg=cfg.loss,
        cfg=cfg.train,
        output_dir=out,
        config_fingerprint=resume_fingerprint(cfg),
        resume=cfg.resume,
        frozen=frozen,
        data_used=_data_used(cfg, source, pairs, examples, items),
        lora=cfg.lora if cfg.lora.enabled else None,
    )
    write_card(out)
    return summary


def _data_used(cfg: DistillConfig, source: str, pairs: list, examples: list, items: list[Item]) -> dict:
    """What the run trained on after data_fraction (data scaling reads it from train_summary.json)."""
    return {
        "data_fraction": cfg.data_fraction,
        "prompts": len(_prompts(pairs if source != "targets" else examples)),
        "pairs": len(pairs),
        "examples": len(examples),
        "items": len(items),
    }


def _student(cfg: DistillConfig, model: Any, regularizer: str) -> tuple[Any, Any]:
    """The model that trains (with LoRA adapters when lora is on) and kl-init's reference, the initial student:
    a frozen copy in the frozen models' dtype, or with LoRA the student's own base with its adapters off (no copy:
    the base does not train)."""
    if cfg.lora.enabled:
        model = add_adapters(model, cfg.lora, cfg.model, cfg.train.seed)
        return model, AdaptersOff(model) if regularizer == "kl-init" else None
    if regularizer == "kl-init":
        return model, copy.deepcopy(model).to(torch_dtype_of(cfg.frozen_dtype, model))
    return model, None


def _check_distill(cfg: DistillConfig, method: Any, source: str, needs_targets: bool) -> None:
    """The files the method needs are set, and iterated rounds go with a method and scorer that allow them."""
    require(cfg, "model", "output_dir", *(["train_file"] if needs_targets else []))
    check_trackers(cfg.train)
    if source != "targets":
        require(cfg, "pairs_file")
    if method.needs_teacher_model:
        require(cfg, "teacher")
    if cfg.rounds > 1:
        if source not in ("pairs", "lists") or method.needs_teacher_logps:
            raise ConfigError(
                f"rounds = {cfg.rounds}: iterated PLaD regenerates the student samples of (teacher, student) pairs; "
                f"it works with the plad-* methods, not {cfg.method}"
            )
        if (method.needs_scores or source == "lists") and not cfg.scorer:
            raise ConfigError(
                f"rounds = {cfg.rounds} with {cfg.method}: set scorer to score the fresh samples"
            )
        if cfg.rounds_backend == "vllm":
            from plad.generation.vllm import import_vllm

            import_vllm()  # a missing vLLM fails before anything is read or trained, not after the first round


def _distill_data(cfg: DistillConfig, method: Any, source: str, needs_targets: bool) -> tuple[list, list]:
    """The pairs (or lists) and the labeled examples the method reads, checked, cut to data_fraction."""
    pairs = (
        load_pairs(
            cfg.pairs_file, need_scores=method.needs_scores, need_teacher_logps=method.needs_teacher_logps
        )
        if source != "targets"
        else []
    )
    if method.needs_teacher_logps:
        for row in pairs:
            _check_teacher_logps(row, f"{cfg.pairs_file} id {row['id']}")
    examples = (
        load_examples(cfg.train_file, cfg.data, need_target=True, what="training data")
        if needs_targets
        else []
    )
    if cfg.rounds > 1 and any((p.get("meta") or {}).get("ranked_by") for p in pairs):
        raise ConfigError(
            "rounds > 1 needs pseudo pairs (teacher first); these pairs were ranked by a scorer"
        )
    if cfg.rounds > 1 and cfg.scorer:  # it scores each round's samples: it must read these prompts
        from plad.scoring.scorers import check_prompts, get_scorer

        prompts = {str(p.get("prompt_id", p["id"])): p["prompt"] for p in pairs}
        check_prompts(get_scorer(cfg.scorer), [Example(i, q) for i, q in prompts.items()], cfg.pairs_file)
    if cfg.data_fraction < 1:
        pairs, examples = _fraction(pairs, cfg.data_fraction), _fraction(examples, cfg.data_fraction)
    return pairs, examples


def _distill_items(
    cfg: DistillConfig, method: Any, source: str, regularizer: str, pairs: list, examples: list, tok: Any
) -> tuple[list, list | None]:
    """The training items in the student's tokens and positions (the teacher's too, for token-level methods),
    and the regulariser's target items."""
    # the teacher of the token-level methods reads the same rows (on-policy samples are fitted in generation)
    models: list = [cfg.model]
    if method.needs_teacher_model:
        models.append(load_model_config(cfg.teacher, "teacher"))
    data = fit_positions(cfg.data, models, cfg.data.max_target_tokens, "data.max_target_tokens")
    if source == "targets":
        items = encode_targets(examples, tok, data, cfg.train_file)
    elif source == "lists":
        items = list_items(pairs, tok, data, cfg.pairs_file)
    else:
        items = pair_items(pairs, tok, data, cfg.pairs_file, source)
    reg_items = encode_targets(examples, tok, data, cfg.train_file) if regularizer == "target" else None
    if not items:
        raise DataError(f"method {cfg.method}: no training items")
    return items, reg_items
