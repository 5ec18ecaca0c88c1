"""Every supported decoder-only family as teacher and student: built from its config, saved with
save_pretrained, then SFT, pairs, text-only and token-level distillation and eval through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Bench, main_inprocess, read_jsonl

from plad.benchmark.build import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(bench: Bench, tmp_path: Path, family: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from plad.benchmark.build import build_family_model

    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    build_family_model(family, tok, teacher, seed=0)
    build_family_model(family, tok, student, seed=1)
    common = ["--threads", 1]
    sft = tmp_path / "student-sft"
    assert main_inprocess(
        "sft", "--model", student, "--train_file", bench.sft, "--output_dir", sft,
        "--train.max_steps", 3, "--train.batch_size", 4, *common,
    ) == 0  # fmt: skip
    pairs = tmp_path / "pairs"
    assert main_inprocess(
        "pairs", "--prompts_file", bench.distill, "--teacher.model", teacher, "--student.model", sft,
        "--output_dir", pairs, "--limit", 6, "--num_student_samples", 2, "--teacher_logprobs", "true",
        "--teacher.sampling.max_new_tokens", 8, "--student.sampling.max_new_tokens", 8,
        "--scorer", "count-summary", *common,
    ) == 0  # fmt: skip
    assert len(read_jsonl(pairs / "pairs.jsonl")) == 12
    for method in ("plad-rank", "dpkd", "kd"):
        out = tmp_path / method
        assert main_inprocess(
            "distill", "--method", method, "--model", sft, "--teacher", teacher, "--train_file", bench.sft,
            "--pairs_file", pairs / "pairs.jsonl", "--output_dir", out, "--train.max_steps", 2,
            "--train.batch_size", 4, *common,
        ) == 0, method  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(out)
        assert model.config.model_type == AutoModelForCausalLM.from_pretrained(student).config.model_type
    ev = tmp_path / "eval"
    assert main_inprocess(
        "eval", "--model", tmp_path / "plad-rank", "--test_file", bench.test, "--output_dir", ev,
        "--generation.max_new_tokens", 8, "--bootstrap_samples", 100, *common,
    ) == 0  # fmt: skip
    assert json.loads((ev / "results.json").read_text())["n"] == 12
