"""benchmarks/trl_compare.py without TRL (which lives in its own venv): the rows its GKD collator gives TRL are the
rows plad kd trains on, token for token; the ratios are per repetition; the plad side runs end to end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "trl_compare.py"


@pytest.fixture(scope="module")
def tc():
    spec = importlib.util.spec_from_file_location("trl_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["trl_compare"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tc, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("tc")
    return tc.build(work, ["demo"], 0, 16)["demo"] | {"work": work}


def test_gkd_collator_rows_are_plad_kd_rows(tc, demo) -> None:
    from transformers import AutoTokenizer

    from plad.config import DataOptions
    from plad.core.data import load_pairs
    from plad.train.stages import pair_items

    tok = AutoTokenizer.from_pretrained(str(demo["student"]))
    pairs = load_pairs(str(demo["pairs"]))
    items = pair_items(pairs, tok, DataOptions(), "pairs", "teacher")
    collate = tc.PlainCollator(tok)
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]
    for row, it in zip(rows, items, strict=True):
        assert collate.encode(row) == (it.prompt + it.chosen, len(it.prompt))
    batch = collate(rows[:3])
    for i, it in enumerate(items[:3]):
        n = len(it.prompt) + len(it.chosen)
        assert (
            batch["attention_mask"][i].sum() == n
            and batch["input_ids"][i, :n].tolist() == it.prompt + it.chosen
        )
        assert batch["labels"][i].tolist() == [-100] * len(it.prompt) + it.chosen + [-100] * (batch["labels"].shape[1] - n)  # fmt: skip
        P = batch["prompts"].shape[1]  # left-padded prompts, what GKD's on-policy generate reads
        assert batch["prompts"][i, P - len(it.prompt) :].tolist() == it.prompt
        assert batch["prompt_attention_mask"][i].tolist() == [0] * (P - len(it.prompt)) + [1] * len(it.prompt)
    assert demo["n"] == len(pairs) == 16 and all(
        set(p["teacher_logps"]) == {"chosen", "rejected"} for p in pairs
    )


def test_ratios_are_per_repetition(tc) -> None:
    def run(name: str, rep: int, tps: float, rss: float) -> dict:
        return {"model": "m", "contender": name, "rep": rep, "batch": 8, "main_batch": 8, "tokens": 100,
                "tokens_per_s": tps, "seconds": 100 / tps, "peak_rss_mib": rss}  # fmt: skip

    runs = [run("plad kd fp32", 0, 30, 100), run("TRL GKD fp32", 0, 10, 400),
            run("plad kd fp32", 1, 20, 100), run("TRL GKD fp32", 1, 20, 200)]  # fmt: skip
    ratio = tc.summarise(runs)["m"]["ratios"]["plad kd fp32 / TRL GKD fp32"]
    assert ratio["speed"] == {"median": 2.0, "min": 1.0, "max": 3.0}  # (3 + 1) / 2, not 25 / 15
    assert ratio["memory"] == {"median": 0.375, "min": 0.25, "max": 0.5}


def test_plad_contender_runs_and_counts(tc, demo) -> None:
    demo = dict(demo, plad_tokens=(tc.plad_tokens(demo, "plad-rank"), tc.plad_tokens(demo, "kd")))
    token_level = ("plad kd bf16", "plad gkd fp32, on-policy every step")
    for name in ("plad plad-rank fp32", *token_level, "plad plad-rank fp32, LoRA r16"):
        r = tc.contender(name, demo, demo["work"], 2, 8, sys.executable)
        assert r["tokens"] == demo["plad_tokens"][name in token_level] > 0
        assert r["seconds"] > 0 and 100 < r["peak_rss_mib"] < 4000
