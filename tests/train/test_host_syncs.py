"""The training step keeps its numbers on the device: plad's own code reads no tensor back to the host (item,
tolist, float, int, bool) inside optimizer_step, for every family of method. On a GPU each such read waits for
every queued kernel; the log window's metrics are read once per logged row instead (window_means)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import Bench, main_inprocess, make_pairs, read_jsonl

PLAD_SRC = str(Path(__file__).resolve().parents[2] / "src" / "plad")
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture(scope="module")
def store(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(bench, tmp_path_factory.mktemp("syncs") / "pairs", "--teacher_logprobs", "true")


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("sft", ()),
        ("plad-rank", ()),
        ("plad-margin-div", ()),
        ("plad-list", ()),
        ("dpkd", ()),
        ("kd", ("--loss.token_data", "teacher")),
        ("plad-rank", ("--loss.regularizer", "kl-init")),
    ],
)
def test_optimizer_step_reads_nothing_back(
    bench: Bench, store: Path, tmp_path: Path, monkeypatch, method: str, extra: tuple
) -> None:
    from plad.train.loop import Trainer

    reads: list[str] = []
    inside = [False]
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            if inside[0]:
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(PLAD_SRC):
                    reads.append(f"{_name} at {caller}:{sys._getframe(1).f_lineno}")
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    step = Trainer.optimizer_step

    def watched(self, *a, **k):
        inside[0] = True
        try:
            return step(self, *a, **k)
        finally:
            inside[0] = False

    monkeypatch.setattr(Trainer, "optimizer_step", watched)
    out = tmp_path / "run"
    rc = main_inprocess(
        "distill", "--method", method, "--model", bench.student, "--teacher", bench.teacher,
        "--pairs_file", store / "pairs.jsonl", "--train_file", bench.sft, "--output_dir", out,
        "--train.max_steps", 3, "--train.batch_size", 4, "--train.grad_accum", 2, "--train.log_every", 2,
        "--threads", 1, *extra,
    )  # fmt: skip
    assert rc == 0
    assert reads == []
    rows = read_jsonl(out / "metrics.jsonl")  # the metrics still arrive, once per log row
    assert [r["step"] for r in rows] == [2, 3] and all(isinstance(r["loss"], float) for r in rows)
    assert all(r["loss"] == r["loss"] and r["grad_norm"] > 0 for r in rows)
