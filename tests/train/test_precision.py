"""Precision on CPU: train.mixed_precision bf16 (autocast around the forward only, backward outside it, float32
weights kept and saved) and bfloat16 weights (dtype, frozen_dtype, the sampling sides), each within bf16's rounding
of the float32 run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import Bench, load_safetensors, main_inprocess, read_jsonl

from plad.utils.errors import ModelError


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


# ----------------------------------------------------------------------------------------------------------------
# train.mixed_precision auto


@pytest.mark.parametrize(
    ("cuda", "native", "threshold", "dtype", "want"),
    [
        ("bf16", False, None, "float32", "bf16"),  # a GPU with bf16
        ("no-bf16", True, None, "float32", "no"),  # an old GPU
        (None, False, 1, "float32", "no"),  # a CPU that would emulate bf16
        (None, True, None, "float32", "no"),  # the test student: far below the threshold
        (None, True, 1, "float32", "bf16"),  # a model above the threshold on a CPU with native bf16
        (None, True, 1, "bfloat16", "no"),  # bf16 weights: autocast adds nothing
        ("bf16", True, 1, "float16", "no"),
    ],
)  # fmt: skip
def test_auto_mixed_precision_rule(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, cuda, native, threshold, dtype, want
) -> None:
    from plad.train import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda is not None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda == "bf16")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a test device")
    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: native)
    if threshold is not None:
        monkeypatch.setattr(precision, "AUTO_BF16_MIN_PARAMETERS", threshold)
    value, why = precision.auto_mixed_precision(str(bench.student), dtype)
    assert value == want and why


def test_stored_parameters_counts_the_saved_weights(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the safetensors headers: the loaded model's parameter count (a tied output layer stored once); without
    safetensors weights (a hub id, .bin weights), the count of the model its config builds; None where there is
    no config either (a hub id offline and not cached)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from plad.train.precision import stored_dtype, stored_parameters

    model = AutoModelForCausalLM.from_pretrained(str(bench.student))
    want = sum(p.numel() for p in model.parameters())
    assert stored_parameters(str(bench.student)) == want
    model.config.save_pretrained(
        tmp_path / "config-only"
    )  # what a hub id resolves to: a config, no weights here
    assert stored_parameters(str(tmp_path / "config-only")) == want
    assert stored_dtype(str(tmp_path / "config-only")) == "float32"
    with pytest.raises(ModelError, match="is not a model folder"):  # what its stage would say, said first
        stored_parameters(str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(AutoConfig, "from_pretrained", offline)
    with pytest.raises(ModelError, match="is not a model folder or hub id with a config.json"):
        stored_parameters("HuggingFaceTB/SmolLM2-135M")


def test_auto_is_resolved_before_the_stage_records_it(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The default (auto) trains the test student in float32 here, and plad_config.yaml says `no`: a finished run
    of the old default keeps its fingerprint. Where auto means bf16, the stage trains under autocast and records
    bf16; a --resume where auto would now mean something else resumes as the run ran (bf16), and an explicit
    other value is refused as a changed setting."""
    import yaml

    from plad.train import precision

    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: True)
    args = ("sft", "--model", bench.student, "--train_file", bench.sft, "--train.max_steps", 2,
            "--train.batch_size", 4, "--train.log_every", 1, "--threads", 1)  # fmt: skip
    assert main_inprocess(*args, "--output_dir", tmp_path / "auto") == 0
    assert main_inprocess(*args, "--output_dir", tmp_path / "no", "--train.mixed_precision", "no") == 0
    recorded = yaml.safe_load((tmp_path / "auto" / "plad_config.yaml").read_text())
    assert recorded["train"]["mixed_precision"] == "no"
    assert _first_loss(tmp_path / "auto") == _first_loss(tmp_path / "no")

    monkeypatch.setattr(precision, "AUTO_BF16_MIN_PARAMETERS", 1)
    assert main_inprocess(*args, "--output_dir", tmp_path / "bf16", "--train.save_every", 1) == 0
    recorded = yaml.safe_load((tmp_path / "bf16" / "plad_config.yaml").read_text())
    assert recorded["train"]["mixed_precision"] == "bf16"
    assert _first_loss(tmp_path / "bf16") != _first_loss(tmp_path / "no")  # autocast ran
    monkeypatch.setattr(precision, "AUTO_BF16_MIN_PARAMETERS", 10**12)  # auto would now mean float32
    resumed = (*args, "--output_dir", tmp_path / "bf16", "--train.save_every", 1, "--resume")
    assert main_inprocess(*resumed) == 0  # refused before auto took the run's choice on --resume
    recorded = yaml.safe_load((tmp_path / "bf16" / "plad_config.yaml").read_text())
    assert recorded["train"]["mixed_precision"] == "bf16"
    assert main_inprocess(*resumed, "--train.mixed_precision", "no") != 0
    assert "train.mixed_precision: 'bf16' -> 'no'" in capsys.readouterr().err


def test_train_called_with_auto_resolves_it_from_the_loaded_model(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """plad.train.loop.train given a TrainConfig as it is (auto): the loaded model's parameters and dtype decide."""
    from transformers import AutoModelForCausalLM

    from plad.train import precision

    model = AutoModelForCausalLM.from_pretrained(str(bench.student))
    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: True)
    assert precision.for_loaded_model("auto", model) == "no"  # the test student: below the threshold
    assert precision.for_loaded_model("fp16", model) == "fp16"
    monkeypatch.setattr(precision, "AUTO_BF16_MIN_PARAMETERS", 1)
    assert precision.for_loaded_model("auto", model) == "bf16"
    assert precision.for_loaded_model("auto", model.to(torch.bfloat16)) == "no"


def test_auto_reads_the_stored_dtype_when_dtype_is_auto(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dtype auto loads the weights as stored: a bfloat16 checkpoint gains nothing from autocast (no), a float32 one
    is treated as float32 (bf16 above the threshold)."""
    from transformers import AutoModelForCausalLM

    from plad.train import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "AUTO_BF16_MIN_PARAMETERS", 1)
    model = AutoModelForCausalLM.from_pretrained(str(bench.student), dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    assert precision.stored_dtype(str(tmp_path / "bf16")) == "bfloat16"
    assert precision.stored_dtype(str(bench.student)) == "float32"
    with pytest.raises(ModelError, match="does not exist"):
        precision.stored_dtype(str(tmp_path / "nothing"))
    assert precision.auto_mixed_precision(str(tmp_path / "bf16"), "auto")[0] == "no"
    assert precision.auto_mixed_precision(str(bench.student), "auto")[0] == "bf16"


def test_pipeline_stages_fingerprint_what_auto_means(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`plad run` resolves auto before a stage's fingerprint and passes the result down: a stage that auto trained
    in bf16 is refused for an explicit `no` (not reused as if float32) and redone with --force, and auto that
    means float32 fingerprints as an explicit `no` (the old default: run folders made before auto stay valid)."""
    import yaml

    from plad.config import RunConfig, TrainConfig
    from plad.experiments.cache import Run
    from plad.experiments.pipeline import sft_stage
    from plad.train import precision
    from plad.utils.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_cpu_has_native_bf16", lambda: True)

    def stage(mixed_precision: str, force: bool = False) -> tuple[Path, str]:
        train = TrainConfig(max_steps=2, batch_size=4, log_every=1, mixed_precision=mixed_precision)
        run = Run(cfg=RunConfig(threads=1), root=tmp_path / "run", force=force)
        run.data_fp, run.files = "data", {"sft": str(bench.sft)}
        d, fp = sft_stage(run, "student-sft", str(bench.student), train, False, "")
        return Path(d), fp

    def recorded(d: Path) -> str:
        return yaml.safe_load((d / "plad_config.yaml").read_text())["train"]["mixed_precision"]

    monkeypatch.setattr(precision, "AUTO_BF16_MIN_PARAMETERS", 1)
    d, auto_bf16 = stage("auto")
    assert recorded(d) == "bf16"
    assert stage("bf16")[1] == auto_bf16  # what ran, however it was asked for: skipped
    with pytest.raises(ConfigError, match="other settings"):
        stage("no")
    d, explicit_no = stage("no", force=True)
    assert recorded(d) == "no" and explicit_no != auto_bf16
    monkeypatch.setattr(precision, "AUTO_BF16_MIN_PARAMETERS", 10**12)
    assert stage("auto")[1] == explicit_no


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_diverged_run_stops_with_an_error_and_saves_nothing(
    bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture, dtype: str
) -> None:
    """A loss that turns NaN or infinite (here: a learning rate of 1e30) stops the stage with exit 2 and a message
    that says what to change (for float16 weights: they train without loss scaling), before a model or summary of
    diverged weights is written; metrics.jsonl keeps the row that shows it."""
    out = tmp_path / "sft"
    capsys.readouterr()
    rc = main_inprocess(
        "sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", out, "--train.max_steps", 4,
        "--train.batch_size", 4, "--train.log_every", 1, "--train.lr", 1e30, "--dtype", dtype, "--threads", 1,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "training diverged: the loss is" in err and "Traceback" not in err, err[-2000:]
    assert ("Weights in float16 train without loss scaling" in err) == (dtype == "float16")
    assert not (out / "model.safetensors").exists() and not (out / "train_summary.json").exists()
    losses = [r["loss"] for r in read_jsonl(out / "metrics.jsonl")]
    assert not all(map(math.isfinite, losses)), losses


def test_fp16_autocast_is_refused_without_a_gpu(
    bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU accelerate does not autocast to float16: fp16 would train in float32 and be recorded as fp16. The
    stage refuses it at its start, before any weight is read, naming what to use instead."""
    from plad.train import precision

    monkeypatch.setattr(precision, "_has_gpu", lambda: False)
    capsys.readouterr()
    assert _sft(bench, tmp_path / "fp16", "fp16") == 2
    err = capsys.readouterr().err
    assert "train.mixed_precision fp16 needs a GPU" in err and "use bf16" in err
    assert not (tmp_path / "fp16").exists() or not list((tmp_path / "fp16").iterdir())
