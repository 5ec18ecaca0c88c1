"""The samples store of `plad pairs`: samples.jsonl, appended per batch, read back as one row per key."""

from __future__ import annotations

import logging
from pathlib import Path

from plad.utils.io import append_jsonl

log = logging.getLogger("plad")


def stored_samples(rows: list[dict], path: Path) -> dict[tuple, dict]:
    """The store's rows by key (id, side, index, fingerprint). A key stored twice (e.g. by two writers before
    plad locked its folders) is used once: its first row, with a warning."""
    done: dict[tuple, dict] = {}
    for r in rows:
        done.setdefault((r["id"], r["side"], r["index"], r["fingerprint"]), r)
    if len(done) < len(rows):
        log.warning(
            "%s: %d rows repeat a stored key (id, side, index, settings); the first row of each key is used",
            path,
            len(rows) - len(done),
        )
    return done


def store_rows(path: Path, rows: list[dict], done: dict) -> None:
    """Append a unit's rows (flush + fsync), then count them as done."""
    append_jsonl(path, rows)
    for r in rows:
        done[(r["id"], r["side"], r["index"], r["fingerprint"])] = r
