"""`plad heal`: repair a pruned model (prune.py) by training it on unlabeled text, through plad's training loop.

A model with a third of its layers removed is not a small model but a broken one (held-out NLL 11-18 against 3.8
for SmolLM2-135M); a few hundred thousand tokens of language modelling bring most of it back (Minitron, Sreenivas
et al. 2024, heal by distillation; DistilBERT, Sanh et al. 2019, initialise from the teacher's layers). Two
objectives: `lm`, next-token cross-entropy on the text (no teacher needed, the cheapest step), or `kd`, forward
KL(teacher || student) at every position (the teacher's full next-token distribution: more signal per token, a
teacher forward per step). Each text is one training row: its first token is the "prompt", the rest the output,
so every later token is predicted. Checkpoints, resume and accumulation invariance are the training loop's.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from plad.config import HealConfig, LossConfig, require, save_yaml
from plad.core.methods import METHODS, Frozen, Item
from plad.core.models import load_model_and_tokenizer, load_tokenizer, set_threads
from plad.utils.errors import ConfigError, DataError
from plad.utils.io import read_jsonl, write_json_atomic

log = logging.getLogger("plad")


def text_items(path: str, field: str, tokenizer: Any) -> list[list[int]]:
    """The token ids of every text of the file (no special tokens), in file order."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"text_file {p} does not exist")
    texts = []
    for i, row in enumerate(read_jsonl(p), start=1):
        text = row.get(field)
        if not isinstance(text, str):
            raise DataError(f"{p}:{i}: field {field!r} must be text (has {', '.join(row) or 'no fields'})")
        if text.strip():
            texts.append(tokenizer(text, add_special_tokens=False).input_ids)
    if not texts:
        raise DataError(f"{p}: no text in field {field!r}")
    return texts


def pack(texts: list[list[int]], eos_id: int, length: int) -> list[Item]:
    """Texts joined by EOS and cut into rows of `length` tokens (the last, shorter row kept): no padding, as in LM
    pre-training. A row's first token is its prompt, so each later token is predicted."""
    stream = [t for ids in texts for t in ids + [eos_id]]
    rows = [stream[i : i + length] for i in range(0, len(stream), length)]
    return [Item(r[:1], r[1:]) for r in rows if len(r) >= 2]


def heldout_nll(model: Any, pad_id: int, items: list[Item]) -> float:
    """Mean next-token NLL per token over the items (no gradient)."""
    from plad.core.logprobs import score_outputs

    scored = score_outputs(
        model, pad_id, [it.prompt for it in items], [it.chosen for it in items], batch_size=8
    )
    return -sum(lp for lp, _ in scored) / max(1, sum(n for _, n in scored))


def _heal_data(cfg: HealConfig, tok: Any) -> tuple[list, list, list]:
    """The texts in tokens; held out: the last val_texts, each alone and cut at max_tokens; the rest packed into
    training rows of max_tokens."""
    texts = text_items(cfg.text_file, cfg.text_field, tok)
    if len(texts) <= cfg.val_texts:
        raise DataError(f"{cfg.text_file}: {len(texts)} texts, not more than val_texts={cfg.val_texts}")
    val = [Item(ids[:1], ids[1 : cfg.max_tokens]) for ids in texts[-cfg.val_texts :] if len(ids) >= 2]
    return texts, val, pack(texts[: -cfg.val_texts], tok.eos_token_id, cfg.max_tokens)


def _teacher_tokenizer(cfg: HealConfig, tok: Any) -> Any:
    """With objective kd: the teacher's tokenizer, refused unless its vocabulary is the student's."""
    if cfg.objective != "kd":
        return None
    from plad.train.stages import check_same_vocab

    teacher_tok = load_tokenizer(cfg.teacher, "teacher")
    check_same_vocab(tok, teacher_tok, f"heal objective kd: student {cfg.model}, teacher {cfg.teacher}")
    return teacher_tok


def _healed(cfg: HealConfig, out: Path, tok: Any) -> Any:
    """The saved healed model (also when resumed after the end): the model folder, or with LoRA and no merged
    model the base with the saved adapter."""
    if cfg.lora.enabled and not cfg.lora.merge:
        from plad.train.lora import with_saved_adapter

        return with_saved_adapter(cfg.model, out, tok, cfg.dtype)
    healed, _ = load_model_and_tokenizer(str(out), tok=tok, dtype=cfg.dtype)
    return healed


def _already_healed(cfg: HealConfig, summary_path: Path) -> dict | None:
    """heal.json of a finished heal with the same settings (--resume), or None. It is written last."""
    from plad.train.stages import resume_fingerprint

    if cfg.resume and summary_path.is_file():
        finished = json.loads(summary_path.read_text())
        if finished.get("fingerprint") == resume_fingerprint(cfg):
            log.info("heal: %s is healed already with the same settings", summary_path.parent)
            return finished
    return None


def _train(cfg: HealConfig, model: Any, tok: Any, items: list, teacher: Any) -> dict:
    """The heal's training run: sft's loss on the texts (objective lm) or kd from the teacher."""
    from plad.train.batches import TrainData
    from plad.train.loop import train
    from plad.train.stages import resume_fingerprint

    return train(
        model=model,
        tokenizer=tok,
        method=METHODS["sft" if cfg.objective == "lm" else "kd"],
        data=TrainData(
            items, cfg.train.batch_size, cfg.train.seed, group_by_length=cfg.train.group_by_length
        ),
        loss_cfg=LossConfig(),
        cfg=cfg.train,
        output_dir=Path(cfg.output_dir),
        config_fingerprint=resume_fingerprint(cfg),
        resume=cfg.resume,
        frozen=Frozen(teacher=teacher, vocab=len(tok)),
        lora=cfg.lora if cfg.lora.enabled else None,
    )


def run_heal(cfg: HealConfig) -> dict:
    """`plad heal`: train a pruned model on unlabeled text (LM loss, or KD from the teacher), with the held-out NLL
    before and after; resumable, and a finished heal with the same settings is not run again."""
    from plad.train.loop import check_trackers
    from plad.train.lora import add_adapters
    from plad.train.model_card import write_card
    from plad.train.precision import resolve_mixed_precision
    from plad.train.stages import resume_fingerprint
    from plad.utils.outputs import check_output_dir

    require(cfg, "model", "text_file", "output_dir", *(["teacher"] if cfg.objective == "kd" else []))
    check_trackers(cfg.train)
    set_threads(cfg.threads)
    cfg = resolve_mixed_precision(cfg)
    out = Path(cfg.output_dir)
    tok = load_tokenizer(cfg.model, "model")
    texts, val, items = _heal_data(cfg, tok)
    # the vocabularies before anything is written or any weight read
    teacher_tok = _teacher_tokenizer(cfg, tok)
    check_output_dir(out, cfg.resume, resume_fingerprint(cfg))
    summary_path = out / "heal.json"
    if (finished := _already_healed(cfg, summary_path)) is not None:
        return finished
    teacher = None
    if teacher_tok is not None:
        teacher, _ = load_model_and_tokenizer(cfg.teacher, tok=teacher_tok, dtype=cfg.teacher_dtype)
    model, tok = load_model_and_tokenizer(cfg.model, tok=tok, dtype=cfg.dtype)
    before = heldout_nll(model, tok.pad_token_id, val)
    if cfg.lora.enabled:
        model = add_adapters(model, cfg.lora, cfg.model, cfg.train.seed)
    if not math.isfinite(before):
        raise ConfigError(f"{cfg.model}: held-out NLL is {before} before healing; the model is broken")
    save_yaml(cfg, out / "plad_config.yaml")
    n_tokens = sum(len(it.chosen) for it in items)
    log.info(
        "heal %s (%s): %d texts in %d rows (%d tokens), held-out NLL %.3f before",
        cfg.model, cfg.objective, len(texts) - cfg.val_texts, len(items), n_tokens, before,
    )  # fmt: skip
    result = _train(cfg, model, tok, items, teacher)
    after = heldout_nll(_healed(cfg, out, tok), tok.pad_token_id, val)
    info = {
        **result,
        "objective": cfg.objective,
        "heldout_nll_before": round(before, 4),
        "heldout_nll_after": round(after, 4),
        "heldout_texts": len(val),
        "train_texts": len(texts) - cfg.val_texts,
        "train_rows": len(items),
        "tokens_per_epoch": n_tokens,
        **({"teacher_heldout_nll": round(heldout_nll(teacher, tok.pad_token_id, val), 4)} if teacher else {}),
    }
    write_json_atomic(summary_path, info)
    write_card(out)  # after heal.json: the card shows the held-out NLL
    log.info("heal: held-out NLL %.3f -> %.3f", before, after)
    return info
