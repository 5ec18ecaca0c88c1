"""train.mixed_precision bf16 on CPU: autocast around the forward only (backward outside it, as PyTorch advises),
float32 weights kept and saved, and the loss within bf16's rounding of the float32 run's."""

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
