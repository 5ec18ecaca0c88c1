"""Every supported model family (decoder-only, and T5 encoder-decoder) as teacher and student: built from its
config, saved with save_pretrained, then SFT, pairs, text-only and token-level distillation and eval through the
real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Bench, main_inprocess, read_jsonl
from model_families import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(bench: Bench, tmp_path: Path, family: str) -> None:
    from model_families import build_family_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

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
        config = AutoConfig.from_pretrained(out)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        assert auto.from_pretrained(out).config.model_type == AutoConfig.from_pretrained(student).model_type
    ev = tmp_path / "eval"
    assert main_inprocess(
        "eval", "--model", tmp_path / "plad-rank", "--test_file", bench.test, "--output_dir", ev,
        "--generation.max_new_tokens", 8, "--bootstrap_samples", 100, *common,
    ) == 0  # fmt: skip
    assert json.loads((ev / "results.json").read_text())["n"] == 12


def test_encoder_decoder_log_probs_match_the_models_own_loss(bench: Bench, tmp_path: Path) -> None:
    """plad's encoder-decoder batch layout gives the same summed log-probs as T5's own loss with labels."""
    import torch
    from model_families import build_family_model
    from transformers import AutoTokenizer

    from plad.core.batching import collate_sequences
    from plad.core.logprobs import decoder_start_id, score_outputs, sequence_logps

    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    model = build_family_model("t5", tok, tmp_path / "t5", seed=3).eval()
    prompts = [tok("count: a b a\nsummary:").input_ids, tok("count: c\nsummary:").input_ids]
    outputs = [tok(" a:2 b:1", add_special_tokens=False).input_ids + [tok.eos_token_id], [tok.eos_token_id]]
    batch = collate_sequences(prompts, outputs, tok.pad_token_id, decoder_start_id(model))
    with torch.no_grad():
        got = sequence_logps(model, batch, reduction="sum")["logps"]
        for i, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
            loss = model(input_ids=torch.tensor([p]), labels=torch.tensor([o])).loss  # mean NLL over o
            assert float(got[i]) == pytest.approx(-float(loss) * len(o), abs=1e-4)
    scored = score_outputs(model, tok.pad_token_id, prompts, outputs)
    assert [n for _, n in scored] == [len(o) for o in outputs]
    assert [lp for lp, _ in scored] == pytest.approx(got.tolist(), abs=1e-5)


def test_cross_family_text_only_and_token_level_refused(bench: Bench, tmp_path: Path, capsys) -> None:
    """A T5 teacher distilled into a GPT-2 student: the text-only methods work (teacher log-probs in T5's own
    layout); a token-level method is refused before training because the two cannot be compared token by token."""
    from model_families import build_family_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    teacher, student = tmp_path / "t5", tmp_path / "gpt2"
    build_family_model("t5", tok, teacher, seed=0)
    build_family_model("gpt2", tok, student, seed=1)
    pairs = tmp_path / "pairs"
    assert main_inprocess(
        "pairs", "--prompts_file", bench.distill, "--teacher.model", teacher, "--student.model", student,
        "--output_dir", pairs, "--limit", 4, "--teacher_logprobs", "true", "--teacher.sampling.max_new_tokens", 8,
        "--student.sampling.max_new_tokens", 8, "--threads", 1,
    ) == 0  # fmt: skip
    for method in ("seqkd", "plad-rank", "dpkd"):
        assert main_inprocess(
            "distill", "--method", method, "--model", student, "--pairs_file", pairs / "pairs.jsonl",
            "--output_dir", tmp_path / method, "--train.max_steps", 2, "--train.batch_size", 2, "--threads", 1,
        ) == 0, method  # fmt: skip
    capsys.readouterr()
    rc = main_inprocess(
        "distill", "--method", "kd", "--model", student, "--teacher", teacher, "--train_file", bench.sft,
        "--output_dir", tmp_path / "kd", "--train.max_steps", 2, "--threads", 1,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "t5" in err and "gpt2" in err
    assert not (tmp_path / "kd" / "train_summary.json").exists()
