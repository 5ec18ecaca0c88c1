"""Loading a user's model and tokenizer through the Auto classes, with errors that say what to do."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers

from plad.utils.errors import ModelError
from plad.utils.io import one_line

log = logging.getLogger("plad")

# plad shows its own progress (every model plad loads comes through here): weight-loading bars are noise
transformers.utils.logging.disable_progress_bar()


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def _check_folder(name: str, what: str) -> None:
    """A local model / tokenizer folder exists and holds something. A name that is no folder here is a hub id; when
    a folder beside it has a close name (a typo), a warning says so at once, before the Hub is asked (offline, that
    takes most of a minute to fail)."""
    if not _looks_local(name):
        _say_if_a_typo(name, what)
        return
    p = Path(name).expanduser()
    if not p.is_dir():
        raise ModelError(f"{what} folder {name} does not exist")
    if not any(p.iterdir()):
        raise ModelError(
            f"{what} folder {name} is empty; give a folder that a model was saved to (save_pretrained)"
        )


def _say_if_a_typo(name: str, what: str) -> None:
    import difflib

    where = Path(name).parent
    try:
        near = [p.name for p in where.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return
    if close := difflib.get_close_matches(Path(name).name, near, n=1, cutoff=0.8):
        log.warning(
            "%s %s is not a folder here (did you mean %s?); looking it up on the Hugging Face Hub",
            what, name, where / close[0] if str(where) != "." else close[0],
        )  # fmt: skip


def load_model_config(name: str, what: str = "model") -> Any:
    """The AutoConfig of a folder or hub id; a missing folder or an unreadable config names `what` and `name`."""
    from transformers import AutoConfig

    _check_folder(name, what)
    adapter = Path(name).expanduser() / "adapter" / "adapter_config.json"
    if adapter.is_file() and not (Path(name).expanduser() / "config.json").is_file():
        raise ModelError(
            f"{what} {name} holds only a LoRA adapter ({adapter.parent}, trained with lora.merge false), not a "
            "model: train it again with lora.merge true for a model folder, or load the adapter on its base "
            "(peft's PeftModel.from_pretrained(base, adapter folder)) and save the merged model"
        )
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{what} {name} is not a model folder or hub id with a config.json: {one_line(e)}"
        ) from None


def position_limit(config: Any) -> int | None:
    """How many positions a decoder-only model reads (prompt + output together): its config's
    max_position_embeddings (n_positions / n_ctx in GPT-2 style configs). None for an encoder-decoder (the prompt
    and the output have their own positions) or a config that names no limit."""
    if getattr(config, "is_encoder_decoder", False):
        return None
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_positions(options: Any, models: list[Any], output_tokens: int, output_setting: str) -> Any:
    """The data options with prompt and output limits that fit the positions of every model in `models` (folders
    or hub ids, or loaded models' configs): a row over a learned position table fails mid-run (`IndexError: index
    out of range in self`). When
    data.max_prompt_tokens + `output_tokens` (the setting `output_setting`) exceeds a model's limit, the output
    keeps min(output_tokens, max(limit - prompt limit, limit // 2)) tokens and prompts the rest; this is logged once
    and the rows actually cut are counted as truncated (or refused, with data.overlong=error). Reads only configs."""
    import dataclasses

    limits = {}
    for m in models:
        if m:  # a model folder / hub id, or a loaded model's config
            config = load_model_config(m) if isinstance(m, str) else m
            name = m if isinstance(m, str) else getattr(config, "_name_or_path", "") or config.model_type
            if (n := position_limit(config)) is not None:
                limits[name] = n
    if not limits:
        return options
    name, limit = min(limits.items(), key=lambda kv: kv[1])
    prompt = options.max_prompt_tokens
    if prompt + output_tokens <= limit:
        return options
    if limit < 2:
        raise ModelError(
            f"model {name} reads only {limit} position(s); it cannot hold a prompt and an output"
        )
    output = min(output_tokens, max(limit - prompt, limit // 2))
    fitted = dataclasses.replace(
        options, max_prompt_tokens=limit - output, max_target_tokens=min(options.max_target_tokens, output)
    )
    (log.warning if options.overlong == "error" else log.info)(
        "model %s reads %d positions: data.max_prompt_tokens=%d + %s=%d do not fit, so prompts keep at most %d "
        "tokens and outputs %d",
        name,
        limit,
        prompt,
        output_setting,
        output_tokens,
        fitted.max_prompt_tokens,
        output,
    )
    return fitted


def fit_output(ids: list[int], prompt_len: int, limit: int | None, stats: Any) -> list[int]:
    """An output's ids cut where prompt + output would pass `limit` positions (counted in stats.targets)."""
    if limit is None or prompt_len + len(ids) <= limit:
        return ids
    stats.targets += 1
    return ids[: max(1, limit - prompt_len)]


def load_tokenizer(name: str, what: str = "tokenizer") -> Any:
    """The tokenizer of a folder or hub id; `what` names it in errors ("model" where the tokenizer is read from
    the model's own folder)."""
    from transformers import AutoTokenizer

    _check_folder(name, what)
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load a tokenizer from {what} {name}: {one_line(e)}") from None
    if tok.eos_token_id is None:
        raise ModelError(
            f"tokenizer {name} has no EOS token; outputs could never end. Set eos_token in its "
            "tokenizer_config.json (or save the tokenizer with eos_token=...)"
        )
    if tok.pad_token_id is None:
        # Padding positions are masked by the attention mask, never by id, so EOS is safe as pad.
        log.warning(
            "tokenizer %s has no pad token; using its EOS token (%r) for padding", name, tok.eos_token
        )
        tok.pad_token = tok.eos_token
    return tok


def torch_dtype(name: str) -> Any:
    """A dtype setting as transformers takes it: a torch dtype, or "auto" (the checkpoint's own dtype)."""
    return "auto" if name == "auto" else getattr(torch, name)


def torch_dtype_of(name: str, model: Any) -> torch.dtype:
    """The torch dtype a setting names; "auto" keeps `model`'s."""
    return model.dtype if name == "auto" else getattr(torch, name)


def _not_a_lm(name: str, config: Any) -> str:
    return (
        f"{name} holds a {type(config).__name__} ({config.model_type}) model, which is not a language model that "
        "generates text; plad trains causal LMs (Llama, Qwen2, GPT-2...) and encoder-decoders (T5)"
    )


def load_causal_lm(name: str, dtype: str = "float32", config: Any = None) -> Any:
    """A decoder-only LM (AutoModelForCausalLM) or an encoder-decoder one (AutoModelForSeq2SeqLM, e.g. T5),
    chosen by the folder's config, with weights in `dtype` (float32, bfloat16, float16, or auto: as stored)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = config if config is not None else load_model_config(name)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    if type(config) not in auto._model_mapping:  # before the weights are read
        raise ModelError(_not_a_lm(name, config))
    try:
        model = auto.from_pretrained(name, dtype=torch_dtype(dtype))
    except ValueError as e:
        if "Unrecognized configuration class" in str(e) or auto.__name__ in str(e):
            raise ModelError(_not_a_lm(name, config)) from None
        raise
    except OSError as e:
        raise ModelError(f"could not load model weights from {name}: {one_line(e)}") from None
    return model


def check_vocab(tok: Any, embedded: Any, tokenizer: str, model: str) -> None:
    """A tokenizer with more tokens than the model embeds (`embedded`: its embedding rows, or its config's
    vocab_size; None when unknown) does not belong to it."""
    if isinstance(embedded, int) and embedded < len(tok):
        raise ModelError(
            f"tokenizer {tokenizer} has {len(tok)} tokens but model {model} embeds only {embedded}; they do not "
            "belong together"
        )


def load_model_and_tokenizer(
    model: str, tokenizer: str = "", tok: Any = None, dtype: str = "float32"
) -> tuple[Any, Any]:
    """Model (weights in `dtype`) and tokenizer, checked to belong together. Pass `tok` when it was loaded already
    (stages load the tokenizer first, so that bad data fails before the weights are read), with `tokenizer`, the
    setting it came from, to name it in errors (default: the model's folder)."""
    tok = (
        tok if tok is not None else load_tokenizer(tokenizer or model, "tokenizer" if tokenizer else "model")
    )
    config = load_model_config(model)
    # before the weights are read
    check_vocab(tok, getattr(config, "vocab_size", None), tokenizer or model, model)
    lm = load_causal_lm(model, dtype, config)
    check_vocab(tok, lm.get_input_embeddings().num_embeddings, tokenizer or model, model)
    if lm.generation_config is not None:
        lm.generation_config.pad_token_id = tok.pad_token_id
    return lm, tok


def model_identity(name: str) -> str:
    """What identifies a model's weights: for a local folder its config and a digest of each weight file's size
    and ends (cheap even for large models); for a hub id, the id."""
    p = Path(name)
    if not p.is_dir():
        return name
    h = hashlib.sha256((p / "config.json").read_bytes() if (p / "config.json").exists() else b"")
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        size = f.stat().st_size
        with f.open("rb") as fh:
            head = fh.read(1 << 20)
            fh.seek(max(0, size - (1 << 20)))
            tail = fh.read()
        h.update(f"{f.name}:{size}".encode() + head + tail)
    return h.hexdigest()[:16]


def for_inference(model: Any) -> Any:
    """The model in eval mode on the fastest local device (the first GPU when there is one; training places its
    models through accelerate instead)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft 0.21 asks transformers 5 `is_gradient_checkpointing`, which warns that it is deprecated: not the user's
    business."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield
