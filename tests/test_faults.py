"""Faults in `plad distill` and `plad eval` (issue 13): kill -9 at a seeded random point, then the same command:
every row once, results identical to an uninterrupted run, nothing paid twice; a full disk (an injected ENOSPC)
in their writers: one line saying so, and the same command resumes. (pairs and sft: tests/test_resume.py,
tests/test_robust.py.)

The killed runs are real `plad` subprocesses; the uninterrupted references and the resumed runs go through the same
`plad.cli.main` in this process (one torch thread everywhere, so weights and generations compare bit for bit). The
LLM judge is a loopback OpenAI-compatible server whose verdicts are a function of the request text.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    Bench,
    complete_lines,
    kill_point,
    kill_when,
    load_safetensors,
    main_inprocess,
    make_pairs,
    one_error_line,
    popen_plad,
    read_jsonl,
)
from servers import ScriptedServer

from plad.utils.io import append_jsonl
from plad.utils.io import read_jsonl as read_torn

pytestmark = pytest.mark.slow


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    diffs = {k: float((got[k] - want[k]).abs().max()) for k in want if not torch.equal(got[k], want[k])}
    assert not diffs, diffs


def resumed_step(caplog: pytest.LogCaptureFixture) -> int:
    msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert msgs, "the run did not resume from a checkpoint"
    return int(msgs[-1].split("(step ")[1].split(" ")[0])


def fill_disk(monkeypatch: pytest.MonkeyPatch, name: str, after: int = 0) -> None:
    """Writes into a file named `name` (or into the temp file of an atomic write of it) fail as on a full disk from
    the (after + 1)-th on: the failing write stores half its bytes, then raises ENOSPC naming no file, as write(2)
    does. Through io.open, which plad's writers reach by Path.open and os.fdopen."""
    real_open = io.open
    writes = {"ok": 0}

    class Full:
        def __init__(self, f: Any) -> None:
            self._f = f

        def write(self, data: bytes) -> int:
            if writes["ok"] >= after:
                self._f.write(data[: len(data) // 2])
                self._f.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            writes["ok"] += 1
            return self._f.write(data)

        def __getattr__(self, attr: str) -> Any:
            return getattr(self._f, attr)

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        if not any(c in mode for c in "wax+"):
            return f
        path = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.fsdecode(file)
        base = os.path.basename(path)
        return Full(f) if base == name or base.startswith(f".{name}.") else f

    monkeypatch.setattr(io, "open", open_)


# --------------------------------------------------------------------------------------------------------------
# plad distill

STEPS, SAVE_EVERY = 60, 5
METHODS = ["plad-rank", "kd"]  # pairs (sequence level) and a frozen teacher (token level)


@pytest.fixture(scope="module")
def pairs_file(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(bench, tmp_path_factory.mktemp("pairs") / "pairs") / "pairs.jsonl"


def distill_args(bench: Bench, pairs_file: Path, method: str, out: Path, *extra: object) -> list[object]:
    data = ["--teacher", bench.teacher, "--train_file", bench.sft] if method == "kd" else []
    return [
        "distill", "--method", method, "--model", bench.student, "--output_dir", out,
        *(data or ["--pairs_file", pairs_file]),
        "--train.max_steps", STEPS, "--train.batch_size", 4, "--train.warmup_steps", 5,
        "--train.save_every", SAVE_EVERY, "--train.log_every", 1, "--threads", 1, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def distill_reference(bench: Bench, pairs_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """method -> the folder of an uninterrupted run (made once, on first use)."""
    made: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in made:
            out = tmp_path_factory.mktemp(f"reference-{method}") / "run"
            assert main_inprocess(*distill_args(bench, pairs_file, method, out)) == 0
            made[method] = out
        return made[method]

    return get


def assert_same_run(out: Path, reference: Path) -> None:
    """Bit-identical weights, and metrics.jsonl with each step once holding the reference's numbers (all but the
    throughput)."""
    assert_same_weights(
        load_safetensors(out / "model.safetensors"), load_safetensors(reference / "model.safetensors")
    )

    def rows(folder: Path) -> list[dict]:
        return [
            {k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_jsonl(folder / "metrics.jsonl")
        ]

    got = rows(out)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert got == rows(reference)
    assert not (out / "checkpoints").exists()  # the final model supersedes them


@pytest.mark.parametrize("method", METHODS)
def test_distill_killed_at_a_seeded_random_step_resumes_exactly(
    bench: Bench, pairs_file: Path, distill_reference, tmp_path: Path, method: str, caplog
) -> None:
    reference = distill_reference(method)
    at = kill_point(f"distill-{method}", SAVE_EVERY + 1, STEPS - 30)
    out, log = tmp_path / "run", tmp_path / "killed.log"
    args = distill_args(bench, pairs_file, method, out)
    proc = popen_plad(*args, log=log)
    kill_when(proc, lambda: complete_lines(out / "metrics.jsonl") >= at, log)
    assert not (out / "train_summary.json").exists(), "the run finished before the kill; make it longer"
    logged = complete_lines(out / "metrics.jsonl")

    caplog.set_level("INFO", logger="plad")
    assert main_inprocess(*args, "--resume") == 0
    step = resumed_step(caplog)  # the newest complete checkpoint (one being written at the kill is not one)
    assert step % SAVE_EVERY == 0 and logged - SAVE_EVERY <= step <= logged, (step, logged)
    assert_same_run(out, reference)


@pytest.mark.parametrize("where", ["metrics", "final model"])
def test_full_disk_in_distill_says_so_and_resume_continues(
    bench: Bench, pairs_file: Path, distill_reference, tmp_path: Path, where: str, monkeypatch, capsys, caplog
) -> None:
    """ENOSPC appending a metrics row (half the line written) at a seeded step, or saving the final model: exit 3,
    one line (disk full, --resume continues); --resume then ends where an uninterrupted run does, every metrics row
    once."""
    import transformers
    from safetensors import SafetensorError

    reference = distill_reference("plad-rank")
    out = tmp_path / "run"
    args = distill_args(bench, pairs_file, "plad-rank", out)
    at = kill_point("distill-enospc", SAVE_EVERY + 1, STEPS - 1)

    if where == "metrics":
        fill_disk(monkeypatch, "metrics.jsonl", after=at - 1)  # one row a step
        said = f"the disk is full (No space left on device writing {out / 'metrics.jsonl'});"
    else:  # what safetensors raises on a full disk: not an OSError

        def save(self, save_directory, **kwargs) -> None:
            (Path(save_directory) / "model.safetensors").write_bytes(b"partial")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save)
        said = "the disk is full (No space left on device);"

    assert main_inprocess(*args) == 3
    line = one_error_line(capsys.readouterr().err, "distill")
    assert said in line and "everything written before it is kept" in line, line
    assert "free some space and run the same command with --resume to continue" in line, line
    assert not (out / "train_summary.json").exists()
    monkeypatch.undo()

    caplog.set_level("INFO", logger="plad")
    assert main_inprocess(*args, "--resume") == 0
    last_checkpoint = (at - 1) // SAVE_EVERY * SAVE_EVERY if where == "metrics" else STEPS - SAVE_EVERY
    assert resumed_step(caplog) == last_checkpoint
    assert_same_run(out, reference)


# --------------------------------------------------------------------------------------------------------------
# plad eval with an LLM judge


class Judge:
    """A loopback judge: the verdict (A, B or tie) and the reply are a function of the request text, so every run
    gets the same verdicts; `asked` holds a short hash of each request text received, in order."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.lock = threading.Lock()
        self.slow_after = (
            math.inf
        )  # answers this many requests quickly, then slowly (a kill lands before the end)
        self.server = ScriptedServer(self.reply)

    def reply(self, body: dict) -> str:
        h = hashlib.sha256(body["messages"][-1]["content"].encode()).hexdigest()[:12]
        with self.lock:  # counted when asked: a request in flight at a kill was paid for by the killed run
            self.asked.append(h)
            slow = len(self.asked) > self.slow_after
        time.sleep(0.5 if slow else 0.01)
        verdict = ("A", "B", "tie")[int(h, 16) % 3]
        return f"Comparison: request {h}.\nPreferred: {verdict}"


def request_of(row: dict) -> str:
    """The request hash a stored verdict answered (the judge writes it into its reply)."""
    return row["reply"].split("request ")[1].split(".")[0]


@pytest.fixture(scope="module")
def judge():
    j = Judge()
    with j.server:
        yield j


@pytest.fixture(scope="module")
def other_outputs(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another system's outputs (the targets cut short) for the head-to-head."""
    path = tmp_path_factory.mktemp("other") / "outputs.jsonl"
    append_jsonl(path, [{"id": r["id"], "output": r["target"][:-3]} for r in read_jsonl(bench.test)])
    return path


def eval_args(bench: Bench, out: Path, judge: Judge, other: Path) -> list[object]:
    return [
        "eval", "--model", bench.student, "--test_file", bench.test, "--output_dir", out,
        "--generation.max_new_tokens", 16, "--judge", "llm,rouge", "--compare_to", other,
        "--llm_judge.model", "judge-m", "--llm_judge.api.base_url", judge.server.base_url,
        "--llm_judge.api.api_key_env", "", "--llm_judge.api.concurrency", 2, "--llm_judge.api.backoff_base", 0.01,
        "--bootstrap_samples", 200, "--threads", 1,
    ]  # fmt: skip


# What differs between two runs that judged the same outputs the same way: timings, this run's requests and
# usage, the cache's path (in the output folder).
VOLATILE = {
    "seconds",
    "generation_seconds",
    "requests_this_run",
    "cached_verdicts_used",
    "usage_this_run",
    "cache",
}


def stable(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def eval_reference(
    bench: Bench, judge: Judge, other_outputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int]:
    """(folder of an uninterrupted eval, the number of distinct requests it needed)."""
    out = tmp_path_factory.mktemp("eval-reference") / "e"
    judge.asked.clear()
    assert main_inprocess(*eval_args(bench, out, judge, other_outputs)) == 0
    need = len(judge.asked)
    assert need == len(set(judge.asked)) == len(read_jsonl(out / "llm_verdicts.jsonl")) > 20
    return out, need


def assert_same_eval(out: Path, reference: Path, need: int, stored_before: set[str], judge: Judge) -> None:
    """The rerun asked exactly the requests whose verdicts were not stored (none paid twice), the cache holds each
    verdict once, and outputs.jsonl and results.json are the uninterrupted run's."""
    asked = judge.asked
    assert not stored_before & set(asked), "a stored verdict was asked again"
    assert len(asked) == len(set(asked)) == need - len(stored_before)
    cache = read_jsonl(out / "llm_verdicts.jsonl")
    keys = Counter(r["key"] for r in cache)
    assert len(keys) == need and max(keys.values()) == 1, [k for k, n in keys.items() if n > 1][:3]
    assert sorted(map(request_of, cache)) == sorted(
        map(request_of, read_jsonl(reference / "llm_verdicts.jsonl"))
    )
    assert (out / "outputs.jsonl").read_bytes() == (reference / "outputs.jsonl").read_bytes()
    results = json.loads((out / "results.json").read_text())
    assert stable(results) == stable(json.loads((reference / "results.json").read_text()))
    assert results["judges"]["llm"]["requests_this_run"] == need - len(stored_before)


def test_eval_killed_mid_judging_resumes_exactly(
    bench: Bench, judge: Judge, other_outputs: Path, eval_reference: tuple[Path, int], tmp_path: Path
) -> None:
    """SIGKILL after a seeded random number of stored verdicts (the outputs were generated and kept before judging):
    the same command reuses the outputs and the stored verdicts, asks only for the missing ones, and writes the
    results of an uninterrupted run."""
    reference, need = eval_reference
    at = kill_point("eval", 1, need - 8)
    out, log = tmp_path / "e", tmp_path / "killed.log"
    cache = out / "llm_verdicts.jsonl"
    args = eval_args(bench, out, judge, other_outputs)
    judge.asked.clear()
    judge.slow_after = at
    try:
        proc = popen_plad(*args, log=log)
        kill_when(proc, lambda: complete_lines(cache) >= at, log, timeout=120)
    finally:
        judge.slow_after = math.inf
    assert not (out / "results.json").exists(), "the run finished before the kill"
    stored = read_torn(cache, tolerate_torn_tail=True)
    assert at <= len(stored) < need
    stored_before = {request_of(r) for r in stored}
    assert stored_before <= set(judge.asked)
    with cache.open(
        "ab"
    ) as f:  # a kill in the middle of a write leaves a torn last line; make sure there is one
        f.write(b'{"key": "0123", "id": "count-summary-test-0000", "ord')

    judge.asked.clear()
    assert main_inprocess(*args) == 0
    assert_same_eval(out, reference, need, stored_before, judge)


@pytest.mark.parametrize("writer", ["verdicts", "outputs", "results"])
def test_full_disk_in_eval_says_so_and_the_same_command_resumes(
    bench: Bench,
    judge: Judge,
    other_outputs: Path,
    eval_reference: tuple[Path, int],
    tmp_path: Path,
    writer: str,
    monkeypatch,
    capsys,
) -> None:
    """ENOSPC in each of eval's writers: the verdict cache (after a seeded number of appends), the generated
    outputs, results.json; the failing write half done. Exit 3 and one line (disk full, the same command continues);
    the same command then asks only for the verdicts not stored and writes the uninterrupted run's results."""
    reference, need = eval_reference
    out = tmp_path / "e"
    args = eval_args(bench, out, judge, other_outputs)
    name = {"verdicts": "llm_verdicts.jsonl", "outputs": "outputs.jsonl", "results": "results.json"}[writer]
    fill_disk(monkeypatch, name, after=kill_point("eval-enospc", 1, 6) if writer == "verdicts" else 0)

    judge.asked.clear()
    assert main_inprocess(*args) == 3
    line = one_error_line(capsys.readouterr().err, "eval")
    assert f"the disk is full (No space left on device writing {out / name})" in line, line
    assert "everything written before it is kept" in line and "run the same command again" in line, line
    assert not (out / "results.json").exists() and not list(out.glob(".*.tmp"))  # no temp file left
    cache = out / "llm_verdicts.jsonl"
    stored_before = (
        {request_of(r) for r in read_torn(cache, tolerate_torn_tail=True)} if cache.exists() else set()
    )
    if writer == "verdicts":
        assert 0 < len(stored_before) < need
    else:  # the outputs are written before any verdict is asked, results.json after the last one is stored
        assert len(stored_before) == {"outputs": 0, "results": need}[writer]
    monkeypatch.undo()

    judge.asked.clear()
    assert main_inprocess(*args) == 0
    assert_same_eval(out, reference, need, stored_before, judge)
