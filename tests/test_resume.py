"""Kill -9 at a random moment, resume, and get exactly what an uninterrupted run gets (README, "Interrupts, a full disk, two processes, exit codes").

The killed runs are real `plad` subprocesses; the uninterrupted references and the resumed runs go through the
same `plad.cli.main` in this process (one torch thread everywhere, so results can be compared bit for bit).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import (
    Bench,
    complete_lines,
    kill_point,
    kill_when,
    load_safetensors,
    main_inprocess,
    popen_plad,
    read_jsonl,
)

pytestmark = pytest.mark.slow

N_PROMPTS = 48  # the bench's distill split
SIDE_BATCH = 2  # prompts per generation batch: many small appends, so a kill lands mid-job


# --------------------------------------------------------------------------------------------------------------
# plad pairs


def _pairs_args(bench: Bench, out: Path) -> list[object]:
    return [
        "pairs",
        "--prompts_file", bench.distill,
        "--teacher.model", bench.teacher,
        "--student.model", bench.student,
        "--output_dir", out,
        "--teacher.sampling.batch_size", SIDE_BATCH,
        "--student.sampling.batch_size", SIDE_BATCH,
        "--teacher.sampling.max_new_tokens", 32,
        "--student.sampling.max_new_tokens", 32,
        "--scorer", "count-summary",
        "--threads", 1,
    ]  # fmt: skip


def _sample_key(row: dict) -> tuple:
    return (row["id"], row["side"], row["index"], row["fingerprint"])


@pytest.fixture(scope="module")
def pairs_reference(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairs-reference") / "A"
    assert main_inprocess(*_pairs_args(bench, out)) == 0  # uninterrupted
    return out


# Killed a few batches in (the teacher side, unless polling lags), and at a seeded random number of stored rows
# (either side): the resumed run finishes the job.
PAIRS_KILL_POINTS = {"fixed": 8, "seeded": kill_point("pairs", 1, 2 * N_PROMPTS - 12)}


@pytest.mark.parametrize("at", PAIRS_KILL_POINTS)
def test_pairs_killed_mid_job_resumes_to_identical_store(
    bench: Bench, tmp_path: Path, pairs_reference: Path, at: str
) -> None:
    a, b = pairs_reference, tmp_path / "B"
    log = tmp_path / "killed.log"
    proc = popen_plad(*_pairs_args(bench, b), log=log)
    samples_b = b / "samples.jsonl"
    kill_when(proc, lambda: complete_lines(samples_b) >= PAIRS_KILL_POINTS[at], log)
    assert not (b / "pairs.jsonl").exists()
    kept = complete_lines(samples_b)
    assert 0 < kept < 2 * N_PROMPTS
    # A kill in the middle of a write leaves a torn last line; make sure there is one.
    with samples_b.open("ab") as f:
        f.write(b'{"id": "count-summary-distill-00047", "side": "teacher", "ind')

    assert main_inprocess(*_pairs_args(bench, b)) == 0

    assert (b / "pairs.jsonl").read_bytes() == (a / "pairs.jsonl").read_bytes()
    rows_a, rows_b = read_jsonl(a / "samples.jsonl"), read_jsonl(b / "samples.jsonl")
    keys_b = Counter(_sample_key(r) for r in rows_b)
    assert max(keys_b.values()) == 1, [k for k, n in keys_b.items() if n > 1][:5]
    assert len(rows_b) == len(rows_a) == 2 * N_PROMPTS

    def canon(rows: list[dict]) -> list[str]:
        return sorted(json.dumps(r, sort_keys=True) for r in rows)

    assert canon(rows_b) == canon(rows_a)
    summary = json.loads((b / "summary.json").read_text())
    # Nothing paid twice: the resumed run generated exactly the rows the killed one had not stored.
    assert summary["generated_rows_this_run"] == 2 * N_PROMPTS - kept


# --------------------------------------------------------------------------------------------------------------
# plad sft (the same loop as every distill method)

STEPS = 300


def _sft_args(bench: Bench, out: Path, *extra: object) -> list[object]:
    return [
        "sft",
        "--model", bench.student,
        "--train_file", bench.sft,
        "--output_dir", out,
        "--train.max_steps", STEPS,
        "--train.batch_size", 8,
        "--train.warmup_steps", 10,
        "--train.log_every", 1,
        "--threads", 1,
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sft_reference(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("sft-reference")
    assert main_inprocess(*_sft_args(bench, out, "--train.save_every", 5)) == 0
    return load_safetensors(out / "model.safetensors")


def _metric_steps(out: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(out / "metrics.jsonl")]


def _assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    diffs = {k: float((got[k] - want[k]).abs().max()) for k in want}
    # Bit-exact: same data order (a function of seed and step), optimizer/scheduler/RNG state restored, one thread.
    assert all(torch.equal(got[k], want[k]) for k in want), {k: d for k, d in diffs.items() if d}


def _checkpoint_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    return sorted(root.glob("step-*")) if root.is_dir() else []


def test_sft_killed_after_checkpoint_resumes_exactly(
    bench: Bench, tmp_path: Path, sft_reference: dict, capsys: pytest.CaptureFixture, caplog
) -> None:
    out, log = tmp_path / "run", tmp_path / "killed.log"
    proc = popen_plad(*_sft_args(bench, out, "--train.save_every", 5), log=log)
    kill_when(proc, lambda: bool(_checkpoint_dirs(out)), log)
    assert not (out / "train_summary.json").exists(), "the run finished before the kill; make it longer"
    ckpt_step = int(_checkpoint_dirs(out)[-1].name.split("-")[1])
    assert ckpt_step < STEPS

    # A changed setting is refused before anything is loaded or written: nothing is mixed into the run.
    capsys.readouterr()

    def run_files() -> dict[
        Path, bytes
    ]:  # not the killed run's lock file (taken over and released by each run)
        return {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".plad.lock"}

    files_before = run_files()
    changed = _sft_args(bench, out, "--train.save_every", 5, "--train.lr", 5e-3, "--resume")
    assert main_inprocess(*changed) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "different config" in err and str(out) in err
    assert "(train.lr: " in err and " -> 0.005)" in err, err  # names the setting that changed
    assert run_files() == files_before

    caplog.set_level("INFO", logger="plad")
    assert main_inprocess(*_sft_args(bench, out, "--train.save_every", 5, "--resume")) == 0
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert resumed and f"(step {ckpt_step} of {STEPS})" in resumed[0]  # continued, not restarted

    _assert_same_weights(load_safetensors(out / "model.safetensors"), sft_reference)
    assert _metric_steps(out) == list(range(1, STEPS + 1))  # no duplicate or missing step rows
    assert not (out / "checkpoints").exists()  # the final model supersedes them

    # --resume of the finished run: nothing is redone (plad_config.yaml is rewritten, with the same text);
    # with other settings it is refused.
    def files() -> dict[Path, tuple[int, bytes]]:
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}

    finished = files()
    assert main_inprocess(*_sft_args(bench, out, "--train.save_every", 5, "--resume")) == 0
    again = files()
    assert again.keys() == finished.keys()
    assert all(again[p][1] == finished[p][1] for p in finished)
    assert all(again[p] == finished[p] for p in finished if p.name != "plad_config.yaml")
    capsys.readouterr()
    assert main_inprocess(*changed) == 2
    assert "different config" in capsys.readouterr().err


def test_sft_killed_at_a_seeded_random_step_resumes_exactly(
    bench: Bench, tmp_path: Path, sft_reference: dict, caplog
) -> None:
    """Killed after a seeded random number of logged steps (anywhere between two checkpoints, or during a save):
    --resume continues from the newest complete checkpoint and ends bit for bit where the reference did."""
    at = kill_point("sft", 6, STEPS - 60)
    out, log = tmp_path / "run", tmp_path / "killed.log"
    proc = popen_plad(*_sft_args(bench, out, "--train.save_every", 5), log=log)
    kill_when(proc, lambda: complete_lines(out / "metrics.jsonl") >= at, log)
    assert not (out / "train_summary.json").exists(), "the run finished before the kill; make it longer"
    logged = complete_lines(out / "metrics.jsonl")
    assert logged >= at

    caplog.set_level("INFO", logger="plad")
    assert main_inprocess(*_sft_args(bench, out, "--train.save_every", 5, "--resume")) == 0
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    step = int(resumed[0].split("(step ")[1].split(" ")[0])
    assert step % 5 == 0 and logged - 5 <= step <= logged, (step, logged)  # the newest checkpoint
    _assert_same_weights(load_safetensors(out / "model.safetensors"), sft_reference)
    assert _metric_steps(out) == list(range(1, STEPS + 1))


def test_sft_killed_before_first_checkpoint_restarts_cleanly(
    bench: Bench, tmp_path: Path, sft_reference: dict
) -> None:
    out, log = tmp_path / "run", tmp_path / "killed.log"
    args = _sft_args(bench, out, "--train.save_every", STEPS - 10)
    proc = popen_plad(*args, log=log)
    kill_when(proc, lambda: complete_lines(out / "metrics.jsonl") >= 3, log)
    assert not _checkpoint_dirs(out) and not (out / "train_summary.json").exists()
    logged_before_kill = complete_lines(out / "metrics.jsonl")
    assert logged_before_kill >= 3

    assert main_inprocess(*args, "--resume") == 0
    # save_every does not change the numbers: same weights as the uninterrupted reference.
    _assert_same_weights(load_safetensors(out / "model.safetensors"), sft_reference)
    assert _metric_steps(out) == list(range(1, STEPS + 1))  # the killed run's rows are not kept twice


def test_iterated_plad_killed_after_a_round_resumes_exactly(bench: Bench, tmp_path: Path) -> None:
    """Iterated PLaD samples fresh negatives at each round start; a resumed run must reuse the round's stored
    samples (the model that made them is gone), so the result is bit-exact with an uninterrupted run."""
    pairs = tmp_path / "pairs"
    rc = main_inprocess(
        "pairs", "--prompts_file", bench.distill, "--teacher.model", bench.teacher, "--student.model",
        bench.student, "--output_dir", pairs, "--limit", 16, "--teacher.sampling.max_new_tokens", 10,
        "--student.sampling.max_new_tokens", 10, "--threads", 1,
    )  # fmt: skip
    assert rc == 0

    def args(out: Path) -> list[object]:
        return [
            "distill", "--method", "plad-rank", "--model", bench.student, "--pairs_file", pairs / "pairs.jsonl",
            "--output_dir", out, "--rounds", 2, "--train.max_steps", 60, "--train.batch_size", 4,
            "--train.save_every", 5, "--train.log_every", 1, "--on_policy.max_new_tokens", 10, "--threads", 1,
        ]  # fmt: skip

    reference = tmp_path / "reference"
    assert main_inprocess(*args(reference)) == 0
    out, log = tmp_path / "run", tmp_path / "killed.log"
    proc = popen_plad(*args(out), log=log)
    # killed after the round-2 samples were stored and a checkpoint of round 2 was written
    kill_when(proc, lambda: any(int(p.name.split("-")[1]) >= 35 for p in _checkpoint_dirs(out)), log)
    assert not (out / "train_summary.json").exists(), "the run finished before the kill; make it longer"
    round_file = out / "rounds" / "round-1.jsonl"
    stored = round_file.read_bytes()
    assert main_inprocess(*[*args(out), "--resume"]) == 0
    assert round_file.read_bytes() == stored  # reused, not regenerated
    assert stored == (reference / "rounds" / "round-1.jsonl").read_bytes()
    _assert_same_weights(
        load_safetensors(out / "model.safetensors"), load_safetensors(reference / "model.safetensors")
    )
    assert _metric_steps(out) == list(range(1, 61))
