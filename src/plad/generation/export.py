"""`plad pairs --export DIR`: the pairs store's pairs.jsonl as a `datasets` data set (`Dataset.save_to_disk`).

The columns are TRL's preference format (the data sets its DPOTrainer reads): `prompt`, `chosen`, `rejected`, as
text (TRL's "standard" format), or, when the prompts are chat messages, as messages (TRL's "conversational" format:
the prompt's messages, and each output as one assistant message). plad's own columns follow: the pair and prompt
ids, which model and side each output came from, why its sampling ended, the sample index, the ranking scorer,
and, when the store has them, the scores (`score_chosen` / `score_rejected`, the names of UltraFeedback-binarized)
and the teacher's summed log-probs with their token counts (dpkd's reference log-probs).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from plad.config import PairsConfig, require
from plad.core.data import load_pairs
from plad.utils.errors import ConfigError, DataError

log = logging.getLogger("plad")

PAIRS_FILE = "pairs.jsonl"
DESCRIPTION = "plad pairs export"  # the start of an export's description: what --export may replace


def export_rows(pairs: list[dict], where: str) -> tuple[list[dict], str]:
    """The data set's rows (one per pair) and its format: standard (text prompts) or conversational (chat
    prompts). A store mixing both has no one column type for its prompts: a DataError names the first row of the
    other kind."""
    chat = isinstance(pairs[0]["prompt"], list)
    rows = []
    for i, pair in enumerate(pairs, start=1):
        if isinstance(pair["prompt"], list) != chat:
            raise DataError(
                f"{where}: pair {pair['id']!r} (row {i}) has a {'text' if chat else 'chat'} prompt, the first pair a "
                f"{'chat' if chat else 'text'} prompt; one data set holds one kind: export the two kinds from "
                "separate stores"
            )
        rows.append(_row(pair, chat))
    return rows, "conversational" if chat else "standard"


def _row(pair: dict, chat: bool) -> dict[str, Any]:
    meta = pair.get("meta") or {}
    scores = pair.get("scores")
    logps = pair.get("teacher_logps")

    def output(text: str) -> Any:
        return [{"role": "assistant", "content": text}] if chat else text

    row: dict[str, Any] = {
        "prompt": pair["prompt"],
        "chosen": output(pair["chosen"]),
        "rejected": output(pair["rejected"]),
        "id": str(pair["id"]),
        "prompt_id": str(pair.get("prompt_id", pair["id"])),
        "chosen_from": pair.get("chosen_from"),
        "rejected_from": pair.get("rejected_from"),
        "chosen_side": meta.get("chosen_side"),
        "rejected_side": meta.get("rejected_side"),
        "chosen_finish": meta.get("chosen_finish"),
        "rejected_finish": meta.get("rejected_finish"),
        "sample_index": meta.get("sample_index"),
        "ranked_by": meta.get("ranked_by"),
    }
    if scores is not None:
        row.update(
            score_chosen=float(scores["chosen"]),
            score_rejected=float(scores["rejected"]),
            scorer=scores.get("scorer"),
        )
    if logps is not None:
        row.update(
            teacher_logp_chosen=float(logps["chosen"]),
            teacher_logp_rejected=float(logps["rejected"]),
            teacher_tokens_chosen=logps.get("chosen_tokens"),
            teacher_tokens_rejected=logps.get("rejected_tokens"),
        )
    return row


def _fill(rows: list[dict]) -> list[dict]:
    """Every row with every column (None where a pair has no score or log-prob): one schema for the table."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k) for k in columns} for r in rows]


def _check_destination(dest: Path) -> None:
    """dest is new, empty, or an earlier export of plad's (replaced); anything else is refused untouched."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise ConfigError(f"--export {dest} is a file; give a folder for the data set")
    if not any(dest.iterdir()):
        return
    try:
        info = json.loads((dest / "dataset_info.json").read_text())
    except (OSError, ValueError):
        info = {}
    if not str(info.get("description", "")).startswith(DESCRIPTION):
        raise ConfigError(
            f"--export {dest} holds files that are not a plad pairs export; give a new or empty folder"
        )


def export_pairs(cfg: PairsConfig, dest: str) -> dict[str, Any]:
    """Write the store's pairs as a `datasets` data set to `dest` (built in a folder beside it, then renamed in
    place, so a kill leaves the old export or none, never half of one). Loads no model."""
    require(cfg, "output_dir")
    from datasets import Dataset, DatasetInfo

    store = Path(cfg.output_dir)
    path = store / PAIRS_FILE
    if not path.is_file():
        raise ConfigError(
            f"output_dir {store} holds no {PAIRS_FILE}; run `plad pairs` with it first (or give the store's folder)"
        )
    pairs = load_pairs(str(path))
    rows, fmt = export_rows(pairs, str(path))
    out = Path(dest)
    _check_destination(out)
    info = DatasetInfo(description=f"{DESCRIPTION} of {path.resolve()} ({fmt} preference format)")
    data = Dataset.from_list(_fill(rows), info=info)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"  # os.mkdir's mode: what a plain folder gets
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        data.save_to_disk(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %d pairs (%s format) to %s", len(rows), fmt, out)
    return {"export": str(out), "rows": len(rows), "format": fmt, "columns": data.column_names}
