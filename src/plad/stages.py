"""The training stages: `plad sft` and `plad distill`. Both check every input, then call the one loop."""

from __future__ import annotations

import logging
from pathlib import Path

from plad.config import (
    ConfigError,
    DistillConfig,
    LossConfig,
    SFTConfig,
    fingerprint,
    require,
    save_yaml,
    to_dict,
)
from plad.config import _suggest as suggest
from plad.data import (
    DataError,
    Example,
    Truncation,
    encode_output,
    encode_prompt,
    format_prompt,
    load_examples,
    load_pairs,
)
from plad.methods import METHODS, Item
from plad.models import load_model_and_tokenizer, load_tokenizer, set_threads
from plad.train import check_output_dir, train

log = logging.getLogger("plad")


def _resume_fingerprint(cfg: object) -> str:
    """Settings that must not change across --resume (not the flag itself, not the thread count)."""
    d = to_dict(cfg)
    d.pop("resume", None)
    d.pop("threads", None)
    return fingerprint(d)


def encode_targets(examples: list[Example], tokenizer: object, cfg_data, where: str) -> list[Item]:
    stats, items = Truncation(), []
    for ex in examples:
        loc = f"{where} id {ex.id}"
        prompt = encode_prompt(tokenizer, format_prompt(tokenizer, ex.prompt, loc), cfg_data, stats, loc)
        items.append(Item(prompt, encode_output(tokenizer, ex.target or "", cfg_data, stats, loc)))
    if stats.prompts or stats.targets:
        log.warning("%s: %s", where, stats.report())
    return items


def run_sft(cfg: SFTConfig) -> dict:
    require(cfg, "model", "train_file", "output_dir")
    set_threads(cfg.threads)
    out = Path(cfg.output_dir)
    examples = load_examples(cfg.train_file, cfg.data, need_target=True, what="training data")
    check_output_dir(out, cfg.resume, _resume_fingerprint(cfg))
    tok = load_tokenizer(cfg.tokenizer or cfg.model)
    # Over-long input fails here, before the weights are read.
    items = encode_targets(examples, tok, cfg.data, cfg.train_file)
    model, tok = load_model_and_tokenizer(cfg.model, tok=tok)
    save_yaml(cfg, out / "plad_config.yaml")
    log.info("sft: %d examples, %d steps", len(items), cfg.train.max_steps)
    return train(
        model=model,
        tokenizer=tok,
        method=METHODS["sft"],
        items=items,
        reg_items=None,
        loss_cfg=LossConfig(),
        cfg=cfg.train,
        output_dir=out,
        config_fingerprint=_resume_fingerprint(cfg),
        resume=cfg.resume,
    )


def pair_items(pairs: list[dict], tokenizer: object, cfg_data, where: str, source: str) -> list[Item]:
    """Pairs -> Items: one per pair (calibration), or one per prompt with the teacher output (seqkd)."""
    stats, items, seen = Truncation(), [], set()
    for row in pairs:
        key = row.get("prompt_id", row["id"])
        if source == "teacher":
            if key in seen:  # k student samples share one teacher output: learn it once
                continue
            seen.add(key)
        loc = f"{where} id {row['id']}"
        prompt = encode_prompt(tokenizer, format_prompt(tokenizer, row["prompt"], loc), cfg_data, stats, loc)
        chosen = encode_output(tokenizer, row["chosen"], cfg_data, stats, loc)
        if source == "teacher":
            items.append(Item(prompt, chosen))
            continue
        scores = row.get("scores") or {}
        items.append(
            Item(
                prompt,
                chosen,
                encode_output(tokenizer, row["rejected"], cfg_data, stats, loc),
                float(scores.get("chosen", 0.0)),
                float(scores.get("rejected", 0.0)),
            )
        )
    if stats.prompts or stats.targets:
        log.warning("%s: %s", where, stats.report())
    return items


def run_distill(cfg: DistillConfig) -> dict:
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}{suggest(cfg.method, METHODS)}")
    method = METHODS[cfg.method]
    needs_targets = method.source == "targets" or (
        method.uses_regularizer and cfg.loss.regularizer == "target"
    )
    require(cfg, "model", "output_dir", *(["train_file"] if needs_targets else []))
    if method.source != "targets":
        require(cfg, "pairs_file")
    set_threads(cfg.threads)
    out = Path(cfg.output_dir)
    pairs = load_pairs(cfg.pairs_file, need_scores=method.needs_scores) if method.source != "targets" else []
    examples = (
        load_examples(cfg.train_file, cfg.data, need_target=True, what="training data")
        if needs_targets
        else []
    )
    check_output_dir(out, cfg.resume, _resume_fingerprint(cfg))
    tok = load_tokenizer(cfg.tokenizer or cfg.model)
    if method.source == "targets":
        items, reg_items = encode_targets(examples, tok, cfg.data, cfg.train_file), None
    else:
        items = pair_items(pairs, tok, cfg.data, cfg.pairs_file, method.source)
        reg_items = encode_targets(examples, tok, cfg.data, cfg.train_file) if examples else None
    if not items:
        raise DataError(f"method {cfg.method}: no training items")
    model, tok = load_model_and_tokenizer(cfg.model, tok=tok)
    save_yaml(cfg, out / "plad_config.yaml")
    log.info("distill %s: %d items, %d steps", cfg.method, len(items), cfg.train.max_steps)
    return train(
        model=model,
        tokenizer=tok,
        method=method,
        items=items,
        reg_items=reg_items,
        loss_cfg=cfg.loss,
        cfg=cfg.train,
        output_dir=out,
        config_fingerprint=_resume_fingerprint(cfg),
        resume=cfg.resume,
    )
