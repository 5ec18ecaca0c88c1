"""Prompt formatting (chat templates), end-of-turn tokens, tokenisation with length limits, and collation."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from plad.config import DataOptions
from plad.core.data import Example
from plad.utils.errors import DataError

# --------------------------------------------------------------------------------------------------------------
# Formatting and tokenisation


def format_prompt(tokenizer: Any, prompt: str | list, where: str = "") -> str:
    """Raw text as is; chat messages through the model's chat template with the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{where or 'data'}: the prompt is chat messages but the tokenizer "
            f"{getattr(tokenizer, 'name_or_path', '')} has no chat template; use text prompts or a chat model"
        )
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


_ANSWER = "PLADANSWERMARK"  # the assistant message of the probe conversation: a word templates leave as it is
_END_OF_TURN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (template, eos, id)


def end_of_turn_id(tokenizer: Any) -> int:
    """The token the chat template puts right after an assistant message (Llama-3's <|eot_id|>, Gemma's
    <end_of_turn>, ChatML's <|im_end|>), read off a rendered conversation: the longest special token the text
    after the answer starts with. EOS when the tokenizer has no template or the template ends answers with no
    special token (e.g. "Assistant: ...\n")."""
    template = getattr(tokenizer, "chat_template", None)
    key = (str(template), tokenizer.eos_token_id)
    cached = _END_OF_TURN.get(tokenizer)
    if cached is not None and cached[0] == key:
        return cached[1]
    found = tokenizer.eos_token_id
    if template:
        conversation = [
            {"role": "user", "content": "PLADQUESTION"},
            {"role": "assistant", "content": _ANSWER},
        ]
        try:
            text = tokenizer.apply_chat_template(conversation, tokenize=False)
        except Exception as e:  # noqa: BLE001 - a template may refuse the probe in any way (raise_exception)
            logging.getLogger("plad").warning(
                "tokenizer %s: its chat template cannot render a user/assistant exchange (%s); answers to chat "
                "prompts end with EOS",
                getattr(tokenizer, "name_or_path", ""),
                e,
            )
            text = ""
        after = text[text.rfind(_ANSWER) + len(_ANSWER) :].lstrip() if _ANSWER in text else ""
        special = set(tokenizer.all_special_tokens) | {
            t.content for t in tokenizer.added_tokens_decoder.values() if t.special
        }
        starts = [t for t in special if t and after.startswith(t)]
        if starts:
            found = tokenizer.convert_tokens_to_ids(max(starts, key=len))
    _END_OF_TURN[tokenizer] = (key, found)
    return found


def end_id(tokenizer: Any, prompt: str | list) -> int:
    """The token that ends an answer to `prompt`: the template's end-of-turn token after chat messages, EOS after
    raw text."""
    return end_of_turn_id(tokenizer) if isinstance(prompt, list) else tokenizer.eos_token_id


def stop_ids(tokenizer: Any) -> list[int]:
    """Tokens generation stops at: EOS, and the chat template's end-of-turn token where it is another token."""
    return list(dict.fromkeys([tokenizer.eos_token_id, end_of_turn_id(tokenizer)]))


@dataclass
class Truncation:
    """Counts of over-long prompts/targets, reported once per stage."""

    prompts: int = 0
    targets: int = 0

    def report(self) -> str:
        return f"truncated {self.prompts} prompts and {self.targets} outputs over the length limits"


_TEXT_ON_CHAT: weakref.WeakSet = weakref.WeakSet()  # tokenizers already warned about


def _say_text_on_a_chat_model(tokenizer: Any, where: str) -> None:
    """Once per tokenizer: a text prompt for a model with a chat template is used as it is, without the template,
    which a chat model often answers poorly (a file may mix text and chat rows)."""
    if tokenizer in _TEXT_ON_CHAT:
        return
    _TEXT_ON_CHAT.add(tokenizer)
    logging.getLogger("plad").warning(
        "%s: a text prompt for %s, which has a chat template: text prompts are used as they are, without the "
        'template; give chat messages ({"prompt": [{"role": "user", "content": ...}]}) to use it',
        where or "data", getattr(tokenizer, "name_or_path", "the model"),
    )  # fmt: skip


def encode_prompt(
    tokenizer: Any, prompt: str | list, options: DataOptions, stats: Truncation, where: str = ""
) -> list[int]:
    """Token ids of a prompt: raw text with the tokenizer's own special tokens (e.g. BOS); chat messages through
    the chat template, whose text already holds the special tokens (so none are added: no second BOS)."""
    text = format_prompt(tokenizer, prompt, where)
    if isinstance(prompt, str) and getattr(tokenizer, "chat_template", None):
        _say_text_on_a_chat_model(tokenizer, where)
    ids = tokenizer(text, add_special_tokens=isinstance(prompt, str)).input_ids
    if len(ids) > options.max_prompt_tokens:
        if options.overlong == "error":
            raise DataError(
                f"{where}: prompt has {len(ids)} tokens, over data.max_prompt_tokens={options.max_prompt_tokens}; "
                "raise the limit or set data.overlong=truncate"
            )
        stats.prompts += 1
        limit = options.max_prompt_tokens
        shortened = _shortened_chat(tokenizer, prompt, limit) if isinstance(prompt, list) else None
        if shortened is not None:
            return shortened
        # keep the end (the instruction usually sits there), and a text prompt's BOS
        bos = tokenizer.bos_token_id
        head = ids[:1] if isinstance(prompt, str) and bos is not None and ids[0] == bos and limit > 1 else []
        ids = head + ids[len(ids) - (limit - len(head)) :]
    return ids


def _shortened_chat(tokenizer: Any, messages: list, limit: int) -> list[int] | None:
    """An over-long chat prompt cut to `limit` tokens inside its longest message: that message keeps the start and
    the end of its text (where instructions sit) and loses the middle, so the template's headers, the other
    messages and the generation prompt stay whole (a cut of the rendered tokens would drop the system and user
    headers). None when even an empty longest message does not fit: the caller cuts the tokens."""
    i = max(range(len(messages)), key=lambda k: len(str(messages[k].get("content", ""))))
    content = messages[i].get("content")
    if not isinstance(content, str) or not content:
        return None

    def keeping(
        n: int,
    ) -> list[int]:  # n characters of the message kept: its first n - n // 2 and last n // 2
        kept = content[: n - n // 2] + content[len(content) - n // 2 :]
        shortened = [*messages[:i], {**messages[i], "content": kept}, *messages[i + 1 :]]
        return tokenizer(format_prompt(tokenizer, shortened), add_special_tokens=False).input_ids

    if len(keeping(0)) > limit:
        return None
    lo, hi = 0, len(content)  # keeping(lo) fits, keeping(hi) (the whole prompt) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if len(keeping(mid)) <= limit else (lo, mid)
    return keeping(lo)


def encode_prompts(
    tokenizer: Any, examples: list[Example], options: DataOptions, source: str
) -> list[list[int]]:
    """Formatted, tokenised prompts of `examples` (generation input); truncations are counted and reported."""
    stats = Truncation()
    ids = [encode_prompt(tokenizer, ex.prompt, options, stats, f"{source} id {ex.id}") for ex in examples]
    if stats.prompts:
        logging.getLogger("plad").warning("%s: %s", source, stats.report())
    return ids


def encode_output(
    tokenizer: Any,
    text: str,
    options: DataOptions,
    stats: Truncation,
    where: str = "",
    prompt: str | list = "",
    ended: bool = True,
) -> list[int]:
    """Output tokens + the token that ends an answer to `prompt` (the model must learn to stop): EOS after a text
    prompt, the chat template's end-of-turn token after chat messages (see `end_id`). ended=False: an output that
    was cut (a sample stopped by max_new_tokens, finish "length") gets no end token: it did not end there (unless
    its text has no tokens at all: an output needs one)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if ended or not ids:
        ids.append(end_id(tokenizer, prompt))
    if len(ids) > options.max_target_tokens:
        if options.overlong == "error":
            raise DataError(
                f"{where}: output has {len(ids)} tokens, over data.max_target_tokens={options.max_target_tokens}; "
                "raise the limit or set data.overlong=truncate"
            )
        stats.targets += 1
        ids = ids[: options.max_target_tokens]
    return ids


def pad_rows(rows: Sequence[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded token rows, at the end or at the start (left: prompts for generation, shared prompts): ids (N, T)
    and attention mask (N, T)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(T - len(r), T) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def collate_sequences(
    prompts: Sequence[list[int]],
    outputs: Sequence[list[int]],
    pad_id: int,
    decoder_start_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """A padded batch of (prompt, output) rows for one forward pass.

    Decoder-only (decoder_start_id None): right-padded prompt+output rows; input_ids, attention_mask and labels
    (the output tokens, -100 elsewhere) are all (N, T) and aligned (the caller shifts).
    Encoder-decoder: input_ids/attention_mask (N, Tp) hold the prompts; labels (N, To) the outputs (-100 padding);
    decoder_input_ids/decoder_attention_mask (N, To) are the outputs shifted right behind decoder_start_id, so
    logits[:, t] already score labels[:, t].
    """
    n = len(prompts)
    if decoder_start_id is not None:
        Tp, To = max(len(p) for p in prompts), max(len(o) for o in outputs)
        input_ids = torch.full((n, Tp), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, Tp), dtype=torch.long)
        labels = torch.full((n, To), -100, dtype=torch.long)
        decoder_input_ids = torch.full((n, To), pad_id, dtype=torch.long)
        decoder_attention_mask = torch.zeros((n, To), dtype=torch.long)
        for i, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
            input_ids[i, : len(p)] = torch.tensor(p)
            attention_mask[i, : len(p)] = 1
            labels[i, : len(o)] = torch.tensor(o)
            decoder_input_ids[i, : len(o)] = torch.tensor([decoder_start_id] + o[:-1])
            decoder_attention_mask[i, : len(o)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_attention_mask,
        }
    rows = [p + o for p, o in zip(prompts, outputs, strict=True)]
    T = max(len(r) for r in rows)
    input_ids = torch.full((n, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, T), dtype=torch.long)
    labels = torch.full((n, T), -100, dtype=torch.long)
    for i, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        L = len(p) + len(o)
        input_ids[i, :L] = torch.tensor(p + o)
        attention_mask[i, :L] = 1
        labels[i, len(p) : L] = torch.tensor(o)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
