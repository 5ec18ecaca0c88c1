"""JSONL reading (malformed lines and torn tails named) and atomic writes: temp file, fsync, rename."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from plad.utils.errors import DataError

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


def with_default_mode(folder: Path) -> None:
    """The safetensors files under `folder` (written by save_pretrained, or accelerate's save_state) given the
    mode a plain open() gives (0o666 less the umask): safetensors writes them 0o600, which other users of a shared
    machine cannot read."""
    for path in Path(folder).rglob("*.safetensors"):
        path.chmod(0o666 & ~_UMASK)


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
