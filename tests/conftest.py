"""Shared fixtures: ONE tiny offline benchmark (data, tokenizer, tiny teacher and student) per test session,
and helpers to run the real `plad` CLI in a subprocess or in-process."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# tqdm reads TQDM_* variables when it is imported: set them before anything imports it (in-process CLI calls).
os.environ.setdefault("TQDM_DISABLE", "1")
# One torch thread everywhere: tiny models gain nothing from more, a busy 2-core machine makes OpenMP spin-waits
# cost 10-100x, and the resume tests compare bit-exact results across processes (same thread count).
os.environ.setdefault("OMP_NUM_THREADS", "1")

SPLIT_SIZES = {"sft": 200, "distill": 48, "test": 12}


@dataclass(frozen=True)
class Bench:
    root: Path
    sft: Path  # labeled: id, prompt, target
    distill: Path  # prompts only
    test: Path  # labeled
    tokenizer: Path
    teacher: Path  # randomly initialised `tiny` Llama presets, saved with save_pretrained
    student: Path


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    from plad.benchmark.build import build_model, build_tokenizer
    from plad.benchmark.tasks import generate_splits
    from plad.utils.io import write_jsonl_atomic

    root = tmp_path_factory.mktemp("bench")
    splits = generate_splits("count-summary", SPLIT_SIZES, corrupt_frac=0.3, seed=0)
    for name, rows in splits.items():
        write_jsonl_atomic(root / f"{name}.jsonl", rows)
    tok = build_tokenizer([r["prompt"] + r["target"] for r in splits["sft"]], root / "tokenizer", 320)
    build_model("tiny", tok, root / "teacher", seed=0)
    build_model("tiny", tok, root / "student", seed=1)
    return Bench(
        root=root,
        sft=root / "sft.jsonl",
        distill=root / "distill.jsonl",
        test=root / "test.jsonl",
        tokenizer=root / "tokenizer",
        teacher=root / "teacher",
        student=root / "student",
    )


def subprocess_env() -> dict[str, str]:
    env = dict(
        os.environ,
        TQDM_DISABLE="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    import plad

    src = str(Path(plad.__file__).resolve().parents[1])  # the same plad as this process imported
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def plad_cmd(*args: object) -> list[str]:
    """The real CLI entry point, run with the interpreter of this test session."""
    return [sys.executable, "-m", "plad.cli", *map(str, args)]


def run_plad(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        plad_cmd(*args), env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def popen_plad(*args: object, log: Path) -> subprocess.Popen:
    """Start `plad ...` in the background, stdout+stderr to `log` (so no pipe can fill up and block it)."""
    fh = log.open("w")
    try:
        return subprocess.Popen(plad_cmd(*args), env=subprocess_env(), stdout=fh, stderr=subprocess.STDOUT)
    finally:
        fh.close()


def complete_lines(path: Path) -> int:
    """Rows fully written (newline-terminated) so far; 0 while the file does not exist."""
    try:
        return Path(path).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 60.0) -> None:
    """Poll `ready()` every few ms; SIGKILL the process as soon as it holds. Fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(
                f"process ended (rc {proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"kill point not reached in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


KILL_SEED = 13  # fixed: a failing kill point comes back on the next run


def kill_point(what: str, lo: int, hi: int) -> int:
    """A kill point in [lo, hi] (rows or steps observed) drawn by random.Random seeded with KILL_SEED and `what`:
    each test kills somewhere else than at a hand-picked round number, the same place every run."""
    return random.Random(f"{KILL_SEED}:{what}").randint(lo, hi)


def one_error_line(err: str, command: str) -> str:
    """The one `plad COMMAND: ...` line of a failed run's stderr; no traceback."""
    lines = [line for line in err.splitlines() if line.startswith(f"plad {command}:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def main_inprocess(*args: object) -> int:
    """`plad ...` through the same `main()` as the console script, in this process (no interpreter start-up)."""
    from plad.cli import main

    return main([str(a) for a in args])


def make_pairs(bench: Bench, out: Path, *extra: object, teacher: Path | None = None) -> Path:
    """`plad pairs` on the bench's first 6 distill prompts, k = 2 student samples, scored (in this process)."""
    rc = main_inprocess(
        "pairs",
        "--prompts_file", bench.distill,
        "--teacher.model", teacher or bench.teacher,
        "--student.model", bench.student,
        "--output_dir", out,
        "--num_student_samples", 2,
        "--scorer", "count-summary",
        "--limit", 6,
        "--teacher.sampling.max_new_tokens", 12,
        "--student.sampling.max_new_tokens", 12,
        "--threads", 1,
        *extra,
    )  # fmt: skip
    assert rc == 0
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def as_resolved(cfg: Any) -> Any:
    """`cfg` with every train.mixed_precision auto as the stages resolve it for the small models these fingerprints
    were computed with (`no`, the default before auto; plad.train.precision resolves auto before fingerprinting)."""
    from plad.config import TrainConfig

    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, TrainConfig) and value.mixed_precision == "auto":
            changes[f.name] = dataclasses.replace(value, mixed_precision="no")
        elif dataclasses.is_dataclass(value):
            changes[f.name] = as_resolved(value)
    return dataclasses.replace(cfg, **changes)
