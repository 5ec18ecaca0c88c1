"""The model card (README.md) of every folder plad trains: `plad sft`, `plad distill`, `plad heal`.

Written with `huggingface_hub.ModelCard`: Hub YAML metadata (base model, data sets, library, tags, `model-index`
with the evaluations), then a body that says what made the model: the command and method with its loss settings,
the teacher (of the pairs, and the frozen one of the token-level methods), the data and how much of it was used,
the training settings, and the evaluations with their 95% intervals. The card is rendered from the folder's own
files (plad_config.yaml, train_summary.json, heal.json, plad_evals.json), so it can be written again at any time:
`plad eval` of the folder records its results in plad_evals.json and rewrites the card.

Writing a card never fails a run: a card that cannot be written is a warning, and the folder keeps its model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plad.config import METHOD_SPECS
from plad.utils.io import write_json_atomic, write_text_atomic
from plad.utils.outputs import SUMMARY_FILE

log = logging.getLogger("plad")

CARD_FILE, CONFIG_FILE, EVALS_FILE, CARD_LOCK = (
    "README.md",
    "plad_config.yaml",
    "plad_evals.json",
    ".plad-card.lock",
)
CELLS = (
    "mean_score",
    "win_rate_vs_target",
    "head_to_head",
)  # what an evaluation's judges report, {value, ci95, n}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_plad_model(folder: str | Path) -> bool:
    """A folder a plad training command finished: its settings, its summary and the saved model."""
    p = Path(folder)
    return all((p / f).is_file() for f in (CONFIG_FILE, SUMMARY_FILE, "config.json"))


def hub_id(name: str) -> str | None:
    """`name` when it reads as a Hub id (a model or data set there) rather than a local path."""
    if not name or Path(name).exists() or not _HUB_ID.match(name) or name.endswith((".json", ".jsonl")):
        return None
    return name


def base_model(model: str, depth: int = 0) -> str | None:
    """The Hub model a plad-trained folder descends from: its `model`, followed through plad-trained folders
    (a distilled student -> its SFT folder -> the hub id it was fine-tuned from)."""
    if depth < 8 and is_plad_model(model):
        return base_model(str(_config(Path(model)).get("model", "")), depth + 1)
    return hub_id(model)


def _config(folder: Path) -> dict:
    import yaml

    return yaml.safe_load((folder / CONFIG_FILE).read_text()) or {}


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def kind_of(cfg: dict) -> str:
    """Which command trained the folder, from its settings."""
    return "distill" if "method" in cfg else "heal" if "objective" in cfg else "sft"


# --------------------------------------------------------------------------------------------------------------
# What the card says


def gather(folder: Path) -> dict[str, Any]:
    """Everything the card shows, read from the folder (and from the pairs store a distillation read)."""
    cfg = _config(folder)
    kind = kind_of(cfg)
    summary = _json(folder / SUMMARY_FILE)
    pairs = _json(Path(cfg["pairs_file"]).parent / "summary.json") if cfg.get("pairs_file") else {}
    method = cfg.get("method") or ("sft" if kind == "sft" else f"heal-{cfg.get('objective', 'lm')}")
    data = [cfg.get(k) for k in ("train_file", "pairs_file", "text_file") if cfg.get(k)]
    model_type = _json(folder / "config.json")
    return {
        "name": folder.resolve().name,
        "kind": kind,
        "method": method,
        "cfg": cfg,
        "summary": summary,
        "heal": _json(folder / "heal.json") if kind == "heal" else {},
        "pairs": pairs,
        "pairs_teacher": (pairs.get("teacher") or {}).get("model"),
        "frozen_teacher": cfg.get("teacher") or None,
        "data": data,
        "base_model": base_model(str(cfg.get("model", ""))),
        "seq2seq": bool(model_type.get("is_encoder_decoder")),
        "evals": list(_json(folder / EVALS_FILE).values()),
    }


def _eval_results(info: dict) -> list:
    """model-index entries: one per data set, judge and measure, of the newest evaluation that has it (the Hub
    shows one value for each; the body lists every evaluation, and the intervals are in the body and in the `plad`
    metadata)."""
    from huggingface_hub import EvalResult

    out: dict[tuple, Any] = {}
    for ev in info["evals"]:
        data = Path(ev["test_file"]).stem if not hub_id(ev["test_file"]) else ev["test_file"]
        for judge, cells in ev["judges"].items():
            for cell, v in cells.items():
                out[(data, judge, cell)] = EvalResult(
                    task_type="text2text-generation" if info["seq2seq"] else "text-generation",
                    dataset_type=data,
                    dataset_name=data,
                    metric_type=f"{judge}/{cell}",
                    metric_name=f"{judge} {cell.replace('_', ' ')}",
                    metric_value=round(v["value"], 4),
                )
    return list(out.values())


def card_data(info: dict) -> Any:
    from huggingface_hub import ModelCardData

    cfg = info["cfg"]
    tags = ["plad", "distillation" if info["kind"] == "distill" else info["kind"], info["method"]]
    plad_meta = {
        "command": f"plad {info['kind']}",
        "method": info["method"],
        **({"loss": cfg["loss"]} if info["kind"] == "distill" and "loss" in cfg else {}),
        "teacher": info["pairs_teacher"] or info["frozen_teacher"] or cfg.get("teacher") or None,
        "student_init": cfg.get("model"),
        "data_used": info["summary"].get("data_used"),
        "steps": info["summary"].get("steps"),
        "evaluations": [
            {k: ev[k] for k in ("name", "test_file", "n", "judges", "compare_to") if ev.get(k) is not None}
            for ev in info["evals"]
        ],
    }
    datasets = [d for d in (hub_id(str(x)) for x in info["data"]) if d]
    results = _eval_results(info)
    return ModelCardData(
        base_model=info["base_model"],
        datasets=datasets or None,
        library_name="transformers",
        pipeline_tag="text2text-generation" if info["seq2seq"] else "text-generation",
        tags=list(dict.fromkeys(tags)),
        model_name=info["name"] if results else None,
        eval_results=results or None,
        plad={k: v for k, v in plad_meta.items() if v not in (None, [], {})},
    )


def _cell(v: dict) -> str:
    low, high = v.get("ci95") or [None, None]
    interval = f"[{low:.3f}, {high:.3f}]" if low is not None and high is not None else "-"
    return f"{v['value']:.3f} | {interval} | {v.get('n', '')}"


def _settings(d: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(f"`{k}` {d[k]}" for k in keys if k in d)


def body(info: dict) -> str:
    """The card's Markdown body."""
    cfg, summary, kind = info["cfg"], info["summary"], info["kind"]
    made = {
        "distill": f"distilled with plad's method `{info['method']}`",
        "sft": "fine-tuned on (prompt, target) pairs with `plad sft`",
        "heal": f"healed with `plad heal` (objective `{cfg.get('objective')}`) after pruning",
    }[kind]
    lines = [f"# {info['name']}", "", f"This model was {made}, starting from `{cfg.get('model')}`."]
    lines += ["", "## Method", ""]
    spec = METHOD_SPECS.get(info["method"])
    lines.append(
        f"- command: `plad {kind}`; method: `{info['method']}`" + (f": {spec.summary}" if spec else "")
    )
    if kind == "distill" and cfg.get("loss"):
        lines.append(f"- loss settings: {_settings(cfg['loss'], tuple(cfg['loss']))}")
    if kind == "distill":
        lines.append(f"- `data_fraction` {cfg.get('data_fraction')}, `rounds` {cfg.get('rounds')}")
    lines += ["", "## Teacher", ""] + _teacher_lines(info)
    lines += ["", "## Data", ""] + [
        f"- `{k}`: `{cfg[k]}`" for k in ("train_file", "pairs_file", "text_file") if cfg.get(k)
    ]
    if used := summary.get("data_used"):
        lines.append(f"- used: {_settings(used, tuple(used))}")
    lines += ["", "## Training", ""]
    train = cfg.get("train") or {}
    keys = ("max_steps", "batch_size", "grad_accum", "lr", "schedule", "warmup_steps", "weight_decay", "seed",
            "mixed_precision")  # fmt: skip
    lines.append(f"- {_settings(train, keys)}; weights `{cfg.get('dtype')}`")
    if (lora := cfg.get("lora") or {}) and (lora.get("r") or lora.get("config")):
        what = (
            f"`lora.config` {lora['config']}"
            if lora.get("config")
            else _settings(lora, ("r", "alpha", "dropout"))
        )
        merged = "merged into the weights" if lora.get("merge", True) else "the adapter only, in `adapter/`"
        lines.append(f"- LoRA: {what}, target modules {lora.get('target_modules')}; {merged}")
    lines.append(
        f"- finished {summary.get('steps')} steps in {summary.get('train_seconds')} s, final loss "
        f"{summary.get('final_loss')}"
    )
    if heal := info["heal"]:
        lines.append(
            f"- held-out NLL {heal.get('heldout_nll_before')} before, {heal.get('heldout_nll_after')} after"
        )
    lines += ["", "## Evaluation", ""] + _eval_lines(info)
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
    ]
    lines += ['tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")']
    lines += ['model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")', "```", ""]
    lines += [
        f"Every setting is in `{CONFIG_FILE}` (`plad {kind} --config {CONFIG_FILE} --output_dir NEW` trains it again)."
    ]
    return "\n".join(lines) + "\n"


def _teacher_lines(info: dict) -> list[str]:
    pairs, out = info["pairs"], []
    if info["pairs_teacher"]:
        t, s = pairs.get("teacher") or {}, pairs.get("student") or {}
        out.append(
            f"- pairs: teacher `{t.get('model')}` (chosen, temperature {_temperature(t)}) against student `{s.get('model')}` "
            f"(rejected, temperature {_temperature(s)}), {pairs.get('pairs')} pairs from {pairs.get('prompts')} prompts"
            + (f", scored by `{pairs['scorer']}`" if pairs.get("scorer") else "")
        )
    if info["frozen_teacher"]:
        out.append(f"- frozen teacher (token-level losses): `{info['frozen_teacher']}`")
    return out or ["- none: trained on the data's targets"]


def _temperature(side: dict) -> Any:
    return (side.get("sampling") or {}).get("temperature")


def _eval_lines(info: dict) -> list[str]:
    if not info["evals"]:
        return ["Not evaluated yet: `plad eval --model THIS_FOLDER` adds its results here."]
    lines = [
        "| evaluation | data | judge | measure | value | 95% interval | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for ev in info["evals"]:
        for judge, cells in ev["judges"].items():
            for cell, v in cells.items():
                what = cell.replace("_", " ") + (f" ({ev['compare_to']})" if cell == "head_to_head" else "")
                lines.append(f"| {ev['name']} | `{ev['test_file']}` | {judge} | {what} | {_cell(v)} |")
    return lines + ["", "Intervals: 95% bootstrap over the test prompts (`plad eval`)."]


# --------------------------------------------------------------------------------------------------------------
# Writing


def render(folder: Path) -> str:
    from huggingface_hub import ModelCard

    info = gather(folder)
    return str(ModelCard(f"---\n{card_data(info).to_yaml()}\n---\n\n{body(info)}"))


def write_card(folder: str | Path) -> bool:
    """Write (or rewrite) FOLDER/README.md, unless it holds this card already (a --resume of a finished run
    changes no file); never raises: a failure is a warning (the model is what matters)."""
    folder, path = Path(folder), Path(folder) / CARD_FILE
    try:
        text = render(folder)
        if not (
            path.is_file() and path.read_text(errors="replace") == text
        ):  # the same card is not rewritten
            write_text_atomic(path, text)
    except Exception as e:  # a card must never fail the run that trained the model
        log.warning(
            "%s: the model card could not be written (%s: %s); the model is saved",
            folder,
            type(e).__name__,
            e,
        )
        return False
    return True


@contextlib.contextmanager
def _card_lock(folder: Path) -> Iterator[None]:
    """Evaluations of one model running at once (plad bench's workers) update its card one after another."""
    fd = os.open(folder / CARD_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def eval_entry(results: dict, eval_dir: Path, compare_to: str = "") -> dict:
    """What the card keeps of one `plad eval` results.json: its every judge's cells with their intervals."""
    judges = {
        name: {
            c: {k: j[c].get(k) for k in ("value", "ci95", "n")} for c in CELLS if isinstance(j.get(c), dict)
        }
        for name, j in (results.get("judges") or {}).items()
    }
    return {
        "name": results.get("name") or eval_dir.name,
        "eval_dir": str(eval_dir.resolve()),
        "test_file": results.get("test_file"),
        "n": results.get("n"),
        "headline": results.get("judge"),
        "compare_to": Path(compare_to).parent.name if compare_to else None,  # the other system's eval folder
        "judges": {k: v for k, v in judges.items() if v},
    }


def record_eval(model: str, results: dict, eval_dir: Path, compare_to: str = "") -> bool:
    """Add an evaluation of a plad-trained folder to its card (plad_evals.json, keyed by the eval's folder, so a
    re-run replaces its entry), then rewrite the card. Any other folder or hub id is left alone. Never raises."""
    folder = Path(model)
    if not is_plad_model(folder):
        return False
    try:
        with _card_lock(folder):
            evals = _json(folder / EVALS_FILE)
            entry = eval_entry(results, eval_dir, compare_to)
            evals.pop(entry["eval_dir"], None)  # the newest last: its values go to model-index
            evals[entry["eval_dir"]] = entry
            write_json_atomic(folder / EVALS_FILE, evals)
            return write_card(folder)
    except Exception as e:  # the evaluation itself is done and written
        log.warning(
            "%s: its model card could not record the evaluation (%s: %s)", folder, type(e).__name__, e
        )
        return False
