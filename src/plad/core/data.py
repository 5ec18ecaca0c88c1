"""Records from JSONL or Hugging Face datasets: examples (prompt, target) and preference pairs.

Bad input is reported with the file, the line and the field before any expensive work starts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plad.config import DataOptions
from plad.utils.errors import DataError
from plad.utils.io import lone_surrogate, one_line, read_jsonl, surrogate_error


@dataclass
class Example:
    id: str
    prompt: str | list  # raw text, or chat messages [{"role", "content"}]
    target: str | None = None
    meta: dict = field(default_factory=dict)


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
    """Pair rows of a pairs.jsonl (the README's "What the stages write"), validated."""
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
