"""Precision on CPU: train.mixed_precision bf16 (autocast around the forward only, backward outside it, float32
weights kept and saved) and bfloat16 weights (dtype, frozen_dtype, the sampling sides), each within bf16's rounding
of the float32 run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import Bench, load_safetensors, main_inprocess, read_jsonl


def _sft(bench: Bench, out: Path, precision: str) -> int:
    return main_inprocess(
        "sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", out, "--train.max_steps", 2,
        "--train.batch_size", 4, "--train.log_every", 1, "--train.mixed_precision", precision, "--threads", 1,
    )  # fmt: skip


def test_bf16_autocast_wraps_the_forward_not_the_backward(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelerate import Accelerator

    seen: list[tuple[bool, torch.dtype]] = []
    real = Accelerator.backward

    def spy(self, loss, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), loss.dtype))
        return real(self, loss, **kwargs)

    monkeypatch.setattr(Accelerator, "backward", spy)
    assert _sft(bench, tmp_path / "bf16", "bf16") == 0
    assert seen and all(not autocast for autocast, _ in seen), seen
    assert _sft(bench, tmp_path / "fp32", "no") == 0
    bf16, fp32 = (
        read_jsonl(tmp_path / "bf16" / "metrics.jsonl"),
        read_jsonl(tmp_path / "fp32" / "metrics.jsonl"),
    )
    # the same batches and initial weights: step 1's loss differs by bf16's rounding of the matmuls only
    assert bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=2e-2)
    assert bf16[0]["loss"] != fp32[0]["loss"]  # autocast did run in bf16
    weights = load_safetensors(tmp_path / "bf16" / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float32}  # master weights stay float32
    start = load_safetensors(bench.student / "model.safetensors")
    assert any(not torch.equal(weights[k], start[k]) for k in start)


def _first_loss(out: Path) -> float:
    return read_jsonl(out / "metrics.jsonl")[0]["loss"]


def test_bfloat16_weights_train_full_and_lora(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dtype bfloat16`: full fine-tuning trains the bf16 weights themselves (pure bf16, as torchtune's full
    recipes; saved as bf16), LoRA trains float32 adapters over the frozen bf16 base (peft's default, so AdamW's
    updates are not lost to bf16 rounding). First-step losses within bf16's rounding of float32's."""
    from plad.train import lora

    base = (
        "sft",
        "--model",
        bench.student,
        "--train_file",
        bench.sft,
        "--train.max_steps",
        2,
        "--train.batch_size",
        4,
    )
    base += ("--train.log_every", 1, "--threads", 1)
    assert main_inprocess(*base, "--output_dir", tmp_path / "fp32") == 0
    assert main_inprocess(*base, "--output_dir", tmp_path / "full", "--dtype", "bfloat16") == 0
    weights = load_safetensors(tmp_path / "full" / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
    start = load_safetensors(bench.student / "model.safetensors")
    assert any(not torch.equal(weights[k], start[k].to(torch.bfloat16)) for k in start)  # it trained
    assert _first_loss(tmp_path / "full") == pytest.approx(_first_loss(tmp_path / "fp32"), rel=2e-2)

    dtypes: dict[str, set] = {}
    real = lora.save

    def spy(model, tokenizer, output_dir, merge, sharded_state=None):
        for p in model.parameters():
            dtypes.setdefault("trained" if p.requires_grad else "frozen", set()).add(p.dtype)
        return real(model, tokenizer, output_dir, merge, sharded_state)

    monkeypatch.setattr(lora, "save", spy)
    assert main_inprocess(*base, "--output_dir", tmp_path / "lora", "--dtype", "bfloat16", "--lora.r", 4) == 0
    assert dtypes == {"trained": {torch.float32}, "frozen": {torch.bfloat16}}
    assert _first_loss(tmp_path / "lora") == pytest.approx(_first_loss(tmp_path / "fp32"), rel=2e-2)


def test_bfloat16_frozen_teacher_and_sampling(bench: Bench, tmp_path: Path) -> None:
    """kd with the frozen teacher in bf16 (distill.frozen_dtype), and plad pairs sampling and scoring in bf16."""
    from conftest import make_pairs

    store = make_pairs(
        bench, tmp_path / "pairs", "--teacher.dtype", "bfloat16", "--student.dtype", "bfloat16"
    )
    rows = read_jsonl(store / "pairs.jsonl")
    assert rows and all(r["chosen"] and r["rejected"] for r in rows)
    kd = (
        "distill",
        "--method",
        "kd",
        "--model",
        bench.student,
        "--teacher",
        bench.teacher,
        "--train_file",
        bench.sft,
    )
    kd += ("--train.max_steps", 2, "--train.batch_size", 4, "--train.log_every", 1, "--threads", 1)
    assert main_inprocess(*kd, "--output_dir", tmp_path / "kd32") == 0
    assert main_inprocess(*kd, "--output_dir", tmp_path / "kd16", "--frozen_dtype", "bfloat16") == 0
    got, want = _first_loss(tmp_path / "kd16"), _first_loss(tmp_path / "kd32")
    assert got == pytest.approx(want, rel=2e-2) and got != want  # the teacher's logits came from bf16 weights
