"""`train.report_to` (README, "Configuration reference"): the trackers of the one training loop through
accelerate. tensorboard (the default) and none always; wandb (offline) and trackio (local) when installed, skipped
otherwise (they are optional extras, not in requirements-cpu.txt). Tiny models, two steps, in this process."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import Bench, as_resolved, main_inprocess

from plad.config import DistillConfig, HealConfig, RunConfig, SFTConfig, fingerprint, result_settings


def sft(bench: Bench, out: Path, *extra: object) -> int:
    args = [
        "-q",
        "sft",
        "--model",
        bench.student,
        "--train_file",
        bench.sft,
        "--output_dir",
        out,
        "--threads",
        1,
    ]
    return main_inprocess(
        *args, "--train.max_steps", 2, "--train.batch_size", 4, "--train.log_every", 1, *extra
    )


def test_tensorboard_is_the_default(bench: Bench, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    assert sft(bench, out) == 0
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


def test_none_writes_no_logs_folder_but_metrics(bench: Bench, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    assert sft(bench, out, "--train.report_to", "none") == 0
    assert not (out / "logs").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def test_a_missing_tracker_is_named_with_its_pip_command(
    bench: Bench, tmp_path: Path, monkeypatch, capsys
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    capsys.readouterr()
    assert sft(bench, tmp_path / "sft", "--train.report_to", "tensorboard,wandb") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "plad sft: error: train.report_to wandb: the wandb package is not installed; pip install 'plad[wandb]' "
        "(or pip install wandb), or log to tensorboard or none"
    ]
    assert not (tmp_path / "sft" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "value, expected",
    [
        ("tensorbord", "unknown tracker 'tensorbord' (did you mean tensorboard?)"),
        ("none,wandb", "none cannot go"),
    ],
)
def test_bad_report_to(bench: Bench, tmp_path: Path, capsys, value, expected) -> None:
    capsys.readouterr()
    assert sft(bench, tmp_path / "sft", "--train.report_to", value) == 2
    assert expected in capsys.readouterr().err


def test_report_to_changes_no_fingerprint() -> None:
    """Fingerprints of stages finished before report_to existed (values computed at the commit before it): a
    finished stage stays finished, and --resume with another tracker is the same run."""
    made = {"model": "m", "train_file": "t", "output_dir": "o"}
    for cfg, before in [
        (as_resolved(SFTConfig(**made)), "507d21b622b0d433"),
        (as_resolved(DistillConfig(model="m", pairs_file="p", output_dir="o")), "b87e519a0558e378"),
        (as_resolved(HealConfig()), "63344f066c5c5411"),
    ]:
        assert fingerprint(result_settings(cfg)) == before
        cfg.train.report_to = ["wandb"]
        assert fingerprint(result_settings(cfg)) == before
    from plad.experiments.cache import settings

    assert fingerprint(settings(as_resolved(RunConfig()))) == "0e8b924322774255"


def test_wandb_offline_writes_under_logs(bench: Bench, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    out = tmp_path / "sft"
    assert sft(bench, out, "--train.report_to", "tensorboard,wandb") == 0
    runs = list((out / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), runs
    record = next(runs[0].glob("*.wandb")).read_bytes()  # the run's records: its configuration and scalars
    assert b"train.max_steps" in record and b"train/loss" in record
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # both trackers


def test_wandb_run_resumed_from_a_checkpoint_goes_on_in_the_same_run(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM after step 1, then --resume: the second start logs to the first start's wandb run (the same id,
    resume allowed), not to a new run; another output_dir gets another run."""
    pytest.importorskip("wandb")
    import re
    import signal

    from plad.train.loop import Trainer

    for name, value in [("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_CONFIG_DIR", tmp_path / "c"),
                        ("WANDB_CACHE_DIR", tmp_path / "cache")]:  # fmt: skip
        monkeypatch.setenv(name, str(value))
    real_log = Trainer.log

    def log_then_stop(self: Trainer) -> None:
        real_log(self)
        if self.step == 1:
            signal.raise_signal(signal.SIGTERM)

    out, args = (
        tmp_path / "sft",
        ("--train.report_to", "wandb", "--train.save_every", 1, "--train.max_steps", 3),
    )
    with monkeypatch.context() as m:
        m.setattr(Trainer, "log", log_then_stop)
        assert sft(bench, out, *args) == 128 + signal.SIGTERM
    assert sft(bench, out, *args, "--resume") == 0
    run_id = (out / "logs" / "wandb_run_id").read_text().strip()
    runs = sorted((out / "logs" / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>, and -1 after a second start within the same second
    assert len(runs) == 2 and all(
        re.fullmatch(rf"offline-run-\d+_\d+-{run_id}(-\d+)?", r.name) for r in runs
    ), runs
    assert sft(bench, tmp_path / "other", *args) == 0
    assert (tmp_path / "other" / "logs" / "wandb_run_id").read_text().strip() != run_id


def test_trackio_logs_locally(bench: Bench, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is imported
    if "trackio" in sys.modules:
        pytest.skip("trackio was imported before: it keeps the folder it read then")
    pytest.importorskip("trackio")
    out = tmp_path / "sft"
    assert sft(bench, out, "--train.report_to", "trackio") == 0
    assert list((tmp_path / "trackio").rglob("plad*")), list((tmp_path / "trackio").rglob("*"))
    assert not (out / "logs").exists() or not list((out / "logs").rglob("events.out.tfevents.*"))


def test_the_logged_learning_rate_is_the_one_the_step_used(bench: Bench, tmp_path: Path) -> None:
    """metrics.jsonl's lr at step s is the rate step s trained with (linear warm-up over 4 steps: 1/4, 2/4, 3/4, 1
    of train.lr), not the next step's."""
    out = tmp_path / "sft"
    args = ("--train.max_steps", 4, "--train.log_every", 1, "--train.lr", 1e-3, "--train.warmup_steps", 4)
    assert sft(bench, out, *args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
