"""Records, JSONL / Hugging Face datasets IO, prompt formatting, tokenisation and collation.

Bad input is reported with the file, the line and the field before any expensive work starts.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plad.config import DataOptions


class DataError(ValueError):
    """Bad input data; the message names the file, the row and the field."""


@dataclass
class Example:
    id: str
    prompt: str | list  # raw text, or chat messages [{"role", "content"}]
    target: str | None = None
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# JSONL


def read_jsonl(path: str | Path, tolerate_torn_tail: bool = False) -> list[dict]:
    """Rows of a JSONL file. A malformed line is an error naming file and line, except (with
    `tolerate_torn_tail`) an unterminated last line, which a killed writer can leave behind and which is dropped."""
    path = Path(path)
    rows = []
    with path.open("rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if tolerate_torn_tail and i == len(lines):  # no newline after it: an interrupted append
                break
            raise DataError(f"{path}:{i}: not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{i}: each line must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def one_line(error: BaseException) -> str:
    """Another library's error message on one line (plad's errors are one line each)."""
    return " ".join(str(error).split())


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate (e.g. "\\udce9": valid JSON, but an undecodable byte rather than a character, which
    tokenizers refuse) in the text(s) of `value`, as an escape to show; None when every text is proper Unicode."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.object[e.start : e.end].encode("unicode_escape").decode("ascii")


def surrogate_error(where: str, field_name: str, escape: str) -> str:
    return (
        f"{where}: field {field_name!r} holds a lone surrogate ({escape}: a byte that was not valid UTF-8, "
        "not a character); fix the file's text encoding"
    )


def repair_torn_tail(path: Path) -> int:
    """Cut an unterminated last line (an interrupted append) so that the next append starts clean.
    Returns the number of bytes dropped."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def jsonl_line(row: Any) -> bytes:
    """One JSONL line as UTF-8 bytes, for any Python value: text is written as it is (ensure_ascii=False, readable),
    except a row whose text holds a lone surrogate (valid JSON "\\udce9" read back from a file or a server, but not
    a character, so not encodable as UTF-8): that row is written with \\u escapes (ensure_ascii=True), which
    json.loads reads back to exactly the same str. One odd row never costs the rows written with it."""
    text = json.dumps(row, ensure_ascii=False) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row, ensure_ascii=True) + "\n").encode("ascii")


def _name_file(e: OSError, path: Path) -> None:
    """Let `e` name the file written: a failed write (ENOSPC: a full disk) names none, and the user needs to know."""
    if e.filename is None:
        e.filename = str(path)


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append whole rows, then flush and fsync: a crash loses at most the rows of this call."""
    payload = b"".join(jsonl_line(r) for r in rows)
    try:
        with path.open("ab") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        _name_file(e, path)
        raise


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    write_bytes_atomic(path, b"".join(jsonl_line(r) for r in rows))


def _read_umask() -> int:
    """The process's umask, read once at import (before any thread starts: os.umask can only be read by setting
    it, which would race with files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see the old or the new file, never half.
    The file gets the mode a plain open() would give it (0o666 less the umask), not mkstemp's 0o600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        _name_file(e, path)  # the file meant, not the temp file
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`write_bytes_atomic` of UTF-8 text; a lone surrogate (not a character) is written as a \\udcXX escape
    (backslashreplace) rather than failing the whole file."""
    write_bytes_atomic(path, text.encode("utf-8", "backslashreplace"))


def write_json_atomic(path: Path, obj: Any) -> None:
    try:
        data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: \u escapes, read back to the same str (as jsonl_line)
        data = (json.dumps(obj, indent=2, ensure_ascii=True) + "\n").encode("ascii")
    write_bytes_atomic(path, data)


# --------------------------------------------------------------------------------------------------------------
# Loading examples


def _load_rows(source: str, split: str, what: str = "data") -> tuple[list[dict], str]:
    """Rows and a human name of where they came from (for error messages)."""
    p = Path(source)
    if p.suffix in (".jsonl", ".json") or p.is_file():
        if not p.is_file():
            raise DataError(f"data file {p} does not exist")
        return read_jsonl(p), str(p)
    if p.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(p))
        except FileNotFoundError:
            raise DataError(
                f"{what} {p} is a folder but not a dataset saved with datasets' save_to_disk; give a JSONL file or "
                "such a folder"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{p}: no split {split!r} (has {', '.join(ds)}); set data.split")
            ds = ds[split]
        return [dict(r) for r in ds], f"{p}[{split}]"
    import datasets  # a hub dataset name ("name" or "name:split"); only reachable with network access

    if ":" in source:
        source, split = source.rsplit(":", 1)
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; the user needs the name and the cause
        raise DataError(f"could not load dataset {source!r} (split {split!r}): {one_line(e)}") from None
    return [dict(r) for r in ds], f"{source}[{split}]"


def load_examples(source: str, options: DataOptions, need_target: bool, what: str = "data") -> list[Example]:
    """Examples from a JSONL file, a saved dataset folder or a hub dataset, with the column map of `options`."""
    if not source:
        raise DataError(f"no {what} given")
    rows, where = _load_rows(source, options.split, what)
    if not rows:
        raise DataError(f"{where}: the {what} is empty")
    examples, seen = [], set()
    for i, row in enumerate(rows, start=1):
        loc = f"{where}:{i}" if where.endswith((".jsonl", ".json")) else f"{where} row {i}"
        prompt = row.get(options.prompt_field)
        if prompt is None and options.prompt_field in row:
            raise DataError(
                f"{loc}: field {options.prompt_field!r} is null; give the prompt as text or chat messages"
            )
        if prompt is None:
            raise DataError(
                f"{loc}: missing prompt field {options.prompt_field!r} (has {', '.join(row) or 'no fields'}); "
                "set data.prompt_field to the right column"
            )
        if isinstance(prompt, list):
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
                raise DataError(
                    f"{loc}: field {options.prompt_field!r} must be text or [{{role, content}}, ...]"
                )
        elif not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{loc}: field {options.prompt_field!r} must be non-empty text")
        if bad := lone_surrogate(prompt):
            raise DataError(surrogate_error(loc, options.prompt_field, bad))
        target = row.get(options.target_field)
        if isinstance(target, str) and (bad := lone_surrogate(target)):
            raise DataError(surrogate_error(loc, options.target_field, bad))
        if need_target and target is not None and not isinstance(target, str):
            raise DataError(
                f"{loc}: field {options.target_field!r} holds {_kind(target)} ({json.dumps(target)[:40]}), "
                "not text; write the reference as a string"
            )
        if need_target and target is None and options.target_field in row:
            raise DataError(
                f"{loc}: field {options.target_field!r} is null; this stage needs a reference text in every row"
            )
        if need_target and (not isinstance(target, str) or not target.strip()):
            raise DataError(
                f"{loc}: missing or empty target field {options.target_field!r}; this stage needs references"
            )
        ex_id = str(row.get(options.id_field, i - 1))
        if ex_id in seen:
            raise DataError(f"{loc}: duplicate id {ex_id!r} in field {options.id_field!r}")
        seen.add(ex_id)
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        examples.append(Example(ex_id, prompt, target if isinstance(target, str) else None, meta))
    return examples


def _is_prompt(value: Any) -> bool:
    """Non-empty text, or chat messages [{role, content}, ...]."""
    if isinstance(value, list):
        return bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    return isinstance(value, str) and bool(value.strip())


def _kind(value: Any) -> str:
    """A JSON value's kind, for messages: 'a number', 'a list'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {list: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")


def load_pairs(path: str, need_scores: bool = False, need_teacher_logps: bool = False) -> list[dict]:
    """Pair rows of a pairs.jsonl (DESIGN section 6), validated."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"pairs file {p} does not exist; run `plad pairs` first")
    rows = read_jsonl(p)
    if not rows:
        raise DataError(f"{p}: no pairs")
    first_line: dict[str, tuple[int, dict]] = {}
    unique, repeated = [], []
    for i, row in enumerate(rows, start=1):
        for key in ("id", "prompt", "chosen", "rejected"):
            if key not in row:
                raise DataError(f"{p}:{i}: missing field {key!r}")
            if key != "id" and (bad := lone_surrogate(row[key])):
                raise DataError(surrogate_error(f"{p}:{i}", key, bad))
        if not _is_prompt(prompt := row["prompt"]):
            got = "empty text" if isinstance(prompt, str) else _kind(prompt)
            raise DataError(
                f"{p}:{i}: field 'prompt' holds {got}; a prompt is non-empty text or chat messages "
                "[{role, content}, ...]"
            )
        for key in ("chosen", "rejected"):
            if not isinstance(row[key], str):
                raise DataError(f"{p}:{i}: field {key!r} holds {_kind(row[key])}, not the text of an output")
        key = str(row["id"])
        if key in first_line:
            line, other = first_line[key]
            if other != row:
                raise DataError(
                    f"{p}:{i}: pair id {key!r} already used on line {line} with other content; each pair needs its "
                    "own id (were two pairs files joined?)"
                )
            repeated.append(i)
            continue
        first_line[key] = (i, row)
        unique.append(row)
        if need_scores:
            s = row.get("scores") or {}
            if not all(isinstance(s.get(k), int | float) for k in ("chosen", "rejected")):
                raise DataError(
                    f"{p}:{i}: this method needs scores.chosen and scores.rejected; generate the pairs with a "
                    "scorer (`plad pairs --scorer teacher-logp`, `rouge` or a task name)"
                )
        if need_teacher_logps:
            t = row.get("teacher_logps") or {}
            if not all(isinstance(t.get(k), int | float) for k in ("chosen", "rejected")):
                raise DataError(
                    f"{p}:{i}: this method needs the teacher's log-probs of both outputs (teacher_logps.chosen and "
                    "teacher_logps.rejected); generate the pairs with --teacher_logprobs true"
                )
    if repeated:
        lines = ", ".join(map(str, repeated[:5])) + (" ..." if len(repeated) > 5 else "")
        logging.getLogger("plad").warning(
            "%s: %d rows repeat an earlier row exactly (lines %s); each pair is used once",
            p,
            len(repeated),
            lines,
        )
    return unique


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


def encode_prompt(
    tokenizer: Any, prompt: str | list, options: DataOptions, stats: Truncation, where: str = ""
) -> list[int]:
    """Token ids of a prompt: raw text with the tokenizer's own special tokens (e.g. BOS); chat messages through
    the chat template, whose text already holds the special tokens (so none are added: no second BOS)."""
    text = format_prompt(tokenizer, prompt, where)
    ids = tokenizer(text, add_special_tokens=isinstance(prompt, str)).input_ids
    if len(ids) > options.max_prompt_tokens:
        if options.overlong == "error":
            raise DataError(
                f"{where}: prompt has {len(ids)} tokens, over data.max_prompt_tokens={options.max_prompt_tokens}; "
                "raise the limit or set data.overlong=truncate"
            )
        stats.prompts += 1
        ids = ids[-options.max_prompt_tokens :]  # keep the end: the instruction usually sits there
    return ids


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
) -> list[int]:
    """Output tokens + the token that ends an answer to `prompt` (the model must learn to stop): EOS after a text
    prompt, the chat template's end-of-turn token after chat messages (see `end_id`)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids + [end_id(tokenizer, prompt)]
    if len(ids) > options.max_target_tokens:
        if options.overlong == "error":
            raise DataError(
                f"{where}: output has {len(ids)} tokens, over data.max_target_tokens={options.max_target_tokens}; "
                "raise the limit or set data.overlong=truncate"
            )
        stats.targets += 1
        ids = ids[: options.max_target_tokens]
    return ids


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


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts for generation: (input_ids, attention_mask), both (N, T)."""
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, T - len(r) :] = torch.tensor(r)
        attention_mask[i, T - len(r) :] = 1
    return input_ids, attention_mask
