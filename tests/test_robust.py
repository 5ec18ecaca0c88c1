"""Faults a user or the machine brings (issue 13): eval on a user's own task, replies holding lone surrogates, two
processes on one folder, a full disk, SIGINT / SIGTERM, a trickling server, an oversized reply, eval results of
another model, file modes, third-party log lines. Loopback servers only; seconds per test."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    Bench,
    load_safetensors,
    main_inprocess,
    one_error_line,
    popen_plad,
    read_jsonl,
    run_plad,
    subprocess_env,
)
from servers import ScriptedServer

from plad.config import ApiConfig, SamplingConfig
from plad.core.data import load_examples
from plad.endpoint.client import ApiError, Endpoint
from plad.utils.errors import DataError
from plad.utils.io import append_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic

# A user's own task: prompts that no built-in task scorer reads.
USER_ROWS = [
    {"id": f"u{i}", "prompt": f"Describe package p{i}:", "target": f"a tool number {i}"} for i in range(6)
]


def user_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(test file, outputs A, outputs B) of the user's task."""
    test = tmp_path / "test.jsonl"
    write_jsonl_atomic(test, USER_ROWS)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl_atomic(a, [{"id": r["id"], "output": r["target"]} for r in USER_ROWS])
    write_jsonl_atomic(b, [{"id": r["id"], "output": "a tool"} for r in USER_ROWS])
    return test, a, b


# --------------------------------------------------------------------------------------------------------------
# 1. eval on a user's own task


def test_eval_of_a_users_task_needs_no_scorer(tmp_path: Path) -> None:
    """No task judge by default: ROUGE-L is the headline (it crashed with `not a count-summary prompt`)."""
    test, a, _ = user_files(tmp_path)
    out = tmp_path / "e"
    assert main_inprocess("-q", "eval", "--test_file", test, "--outputs_file", a, "--output_dir", out) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["scorer"] is None and res["judge"] == "rouge" and res["mean_score"]["value"] == 1.0


def test_task_scorer_on_other_prompts_fails_before_generating(bench: Bench, tmp_path: Path, capsys) -> None:
    test, _, _ = user_files(tmp_path)
    out = tmp_path / "e"
    args = [
        "eval",
        "--model",
        bench.student,
        "--test_file",
        test,
        "--output_dir",
        out,
        "--scorer",
        "count-summary",
    ]
    assert main_inprocess(*args) == 2
    line = one_error_line(capsys.readouterr().err, "eval")
    assert f"{test} id u0: scorer count-summary cannot read this prompt" in line, line
    assert not out.exists()  # nothing generated, nothing written


def test_pairs_task_scorer_on_other_prompts_fails_before_generating(tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "p.jsonl"
    write_jsonl_atomic(prompts, USER_ROWS)
    with ScriptedServer(lambda body: "x") as server:
        assert (
            main_inprocess(
                *api_pairs_args(prompts, tmp_path / "p", server.base_url, "--scorer", "sort-numbers")
            )
            == 2
        )
        assert server.requests == 0  # nothing was asked (nor paid for)
    line = one_error_line(capsys.readouterr().err, "pairs")
    assert f"{prompts} id u0: scorer sort-numbers cannot read this prompt" in line and "teacher-logp" in line


# --------------------------------------------------------------------------------------------------------------
# 3. lone surrogates


ODD = "caf\udce9"  # what json.loads makes of "caf\udce9": valid JSON, not encodable as UTF-8


def test_every_writer_takes_a_lone_surrogate_and_reads_it_back(tmp_path: Path) -> None:
    from plad.utils.io import read_jsonl as plad_read_jsonl

    rows = [{"id": 1, "text": "fine é"}, {"id": 2, "text": ODD}, {"id": 3, "text": "fine too"}]
    path = tmp_path / "a.jsonl"
    append_jsonl(path, rows)  # one odd row: the whole batch is kept
    append_jsonl(path, rows[:1])
    assert plad_read_jsonl(path) == rows + rows[:1]
    assert "fine é" in path.read_text(encoding="utf-8")  # the other rows stay readable text
    write_jsonl_atomic(tmp_path / "b.jsonl", rows)
    assert plad_read_jsonl(tmp_path / "b.jsonl") == rows
    write_json_atomic(tmp_path / "c.json", {"rows": rows})
    assert json.loads((tmp_path / "c.json").read_text()) == {"rows": rows}
    write_text_atomic(tmp_path / "d.md", f"# {ODD}\n")
    assert (tmp_path / "d.md").read_text() == "# caf\\udce9\n"


def test_a_lone_surrogate_in_the_data_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"id": "a", "prompt": "ok", "target": "t"}\n{"id": "b", "prompt": "caf\\udce9", "target": "t"}\n'
    )
    from plad.config import DataOptions

    with pytest.raises(DataError, match=rf"{path}:2: field 'prompt' holds a lone surrogate \(\\udce9"):
        load_examples(str(path), DataOptions(), need_target=True)


def api_pairs_args(prompts: Path, out: Path, base_url: str, *extra: object, client: str = "openai") -> list:
    side = []
    for name in ("teacher", "student"):
        side += [
            f"--{name}.backend", "openai", f"--{name}.model", f"{name}-m", f"--{name}.api.base_url", base_url,
            f"--{name}.api.api_key_env", "", f"--{name}.api.backoff_base", 0.01, f"--{name}.api.client", client,
            f"--{name}.sampling.max_new_tokens", 12,
        ]  # fmt: skip
    return ["pairs", "--prompts_file", prompts, "--output_dir", out, *side, *extra]


def test_pairs_store_replies_holding_lone_surrogates(tmp_path: Path) -> None:
    """A reply "caf\\udce9" is stored (as "caf\ufffd", what a UTF-8 decoder makes of the byte, so that tokenizers
    take it too) and the run completes; a rerun asks for nothing."""
    prompts = tmp_path / "p.jsonl"
    write_jsonl_atomic(prompts, USER_ROWS)
    out = tmp_path / "pairs"
    with ScriptedServer(lambda body: ODD if body["model"] == "teacher-m" else "student says") as server:
        assert main_inprocess(*api_pairs_args(prompts, out, server.base_url)) == 0
        asked = server.requests
        assert main_inprocess(*api_pairs_args(prompts, out, server.base_url)) == 0
        assert server.requests == asked == 2 * len(USER_ROWS)
    pairs = read_jsonl(out / "pairs.jsonl")
    assert [p["chosen"] for p in pairs] == ["caf\ufffd"] * len(USER_ROWS)


def test_llm_judge_cache_keeps_a_reply_holding_a_lone_surrogate(tmp_path: Path) -> None:
    test, a, b = user_files(tmp_path)
    out = tmp_path / "e"
    reply = f"Comparison: {ODD}\nPreferred: A"
    with ScriptedServer(lambda body: reply) as server:
        args = [
            "eval", "--test_file", test, "--outputs_file", b, "--output_dir", out, "--judge", "llm,rouge",
            "--llm_judge.model", "j", "--llm_judge.api.base_url", server.base_url, "--llm_judge.api.api_key_env", "",
            "--compare_to", a, "--bootstrap_samples", 100,
        ]  # fmt: skip
        assert main_inprocess(*args) == 0
        asked = server.requests
        assert main_inprocess(*args) == 0  # every verdict from the cache
        assert server.requests == asked > 0
    cached = read_jsonl(out / "llm_verdicts.jsonl")
    assert len(cached) == asked and all(r["reply"] == reply for r in cached)


# --------------------------------------------------------------------------------------------------------------
# 4. one process per output folder

HOLDER = """
import sys, time
from plad.utils.lock import folder_lock
with folder_lock(sys.argv[1], command="plad pairs --holder"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_folder_in_use_is_refused_and_a_killed_holders_lock_does_not_block(tmp_path: Path, capsys) -> None:
    test, a, _ = user_files(tmp_path)
    out = tmp_path / "e"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["eval", "--test_file", test, "--outputs_file", a, "--output_dir", out]
        assert main_inprocess(*args) == 2
        line = one_error_line(capsys.readouterr().err, "eval")
        assert (
            f"output_dir {out} is in use by pid {holder.pid} on " in line and "plad pairs --holder" in line
        ), line
        assert not (out / "results.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (out / ".plad.lock").is_file()  # left behind by the killed holder: it does not block
    assert main_inprocess(*args) == 0
    assert (out / "results.json").is_file() and not (out / ".plad.lock").exists()


def test_the_lock_is_reentrant_and_leaves_no_folder_behind(tmp_path: Path) -> None:
    from plad.utils.lock import FolderBusy, folder_lock

    out = tmp_path / "new" / "deeper"
    with folder_lock(out):
        with folder_lock(out):  # the same process again: goes on
            assert (out / ".plad.lock").is_file()
    assert not (tmp_path / "new").exists()  # created by the lock, nothing written: removed again
    probe = f"from plad.utils.lock import folder_lock\nwith folder_lock({str(out)!r}): pass\nprint('ok')"
    with folder_lock(out, command="me"):
        proc = subprocess.run(
            [sys.executable, "-c", probe], env=subprocess_env(), capture_output=True, text=True
        )
        assert "FolderBusy" in proc.stderr and f"pid {os.getpid()}" in proc.stderr and ": me;" in proc.stderr
    assert issubclass(FolderBusy, Exception)


# --------------------------------------------------------------------------------------------------------------
# 5. a full disk


def test_full_disk_in_pairs_says_so_and_the_same_command_resumes(tmp_path: Path, capsys, monkeypatch) -> None:
    import plad.generation.store as store

    prompts = tmp_path / "p.jsonl"
    write_jsonl_atomic(prompts, USER_ROWS)
    out = tmp_path / "pairs"
    writes = []

    def full_after_one(path: Path, rows: list) -> None:
        if writes:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        writes.append(rows)
        append_jsonl(path, rows)

    with ScriptedServer(lambda body: "text") as server:
        args = api_pairs_args(prompts, out, server.base_url, "--teacher.api.concurrency", 1)
        monkeypatch.setattr(store, "append_jsonl", full_after_one)
        assert main_inprocess(*args) == 3
        line = one_error_line(capsys.readouterr().err, "pairs")
        assert "the disk is full (No space left on device writing" in line and "samples.jsonl" in line, line
        assert "everything written before it is kept" in line and "run the same command again" in line
        kept = read_jsonl(out / "samples.jsonl")
        assert len(kept) == len(writes[0]) >= 1
        monkeypatch.undo()
        assert main_inprocess(*args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == len(USER_ROWS)
    assert summary["generated_rows_this_run"] == 2 * len(USER_ROWS) - len(kept)  # nothing stored twice


def sft_args(bench: Bench, out: Path, *extra: object) -> list[object]:
    return [
        "sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", out,
        "--train.max_steps", 6, "--train.batch_size", 4, "--train.warmup_steps", 0, "--threads", 1, *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("failure", ["oserror", "torch"])
def test_full_disk_in_a_checkpoint_save(bench: Bench, tmp_path: Path, capsys, monkeypatch, failure) -> None:
    """ENOSPC in a checkpoint save (an OSError, or torch.save's bare "unexpected pos" on a disk with no room left)
    ends with one line: disk full, nothing lost, --resume continues; the partial checkpoint is removed."""
    import accelerate

    import plad.train.loop

    def full(self, output_dir: str, **kwargs) -> None:
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "part").write_bytes(b"x")
        if failure == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", output_dir + "/optimizer.bin")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(accelerate.Accelerator, "save_state", full)
    monkeypatch.setattr(plad.train.loop, "disk_nearly_full", lambda path: True, raising=False)
    out = tmp_path / "sft"
    assert main_inprocess(*sft_args(bench, out, "--train.save_every", 2)) == 3
    line = one_error_line(capsys.readouterr().err, "sft")
    assert "the disk is full" in line and "--resume" in line, line
    assert not list((out / "checkpoints").iterdir())  # the partial checkpoint is gone: its space is free


# --------------------------------------------------------------------------------------------------------------
# 6. SIGINT / SIGTERM


@pytest.fixture(scope="module")
def sft_reference(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("sft-ref")
    assert main_inprocess(*long_sft(bench, out)) == 0
    return load_safetensors(out / "model.safetensors")


def long_sft(bench: Bench, out: Path, *extra: object) -> list[object]:
    return [
        "sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", out, "--train.max_steps", 60,
        "--train.batch_size", 4, "--train.warmup_steps", 5, "--train.log_every", 1, "--threads", 1, *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_training_stops_cleanly_and_resumes_exactly(
    bench: Bench, tmp_path: Path, sft_reference: dict, signum: int
) -> None:
    """save_every is 0 (the default), yet the interrupted run leaves a checkpoint of its last step; --resume then
    gives the uninterrupted run's weights bit for bit."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = popen_plad(*long_sft(bench, out), log=log)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() or (out / "metrics.jsonl").read_bytes().count(b"\n") < 3:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 128 + signum
    text = log.read_text()
    line = one_error_line(text, "sft")
    name = signal.Signals(signum).name
    assert (
        line
        == f"plad sft: interrupted ({name}); run the same command with --resume to continue from the last checkpoint"
    )
    assert not (out / "train_summary.json").exists(), "the run finished before the signal; make it longer"
    (ckpt,) = (out / "checkpoints").glob("step-*")
    step = int(ckpt.name.split("-")[1])
    assert f"stopped at step {step} of 60" in text
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")][-1] == step
    assert main_inprocess(*long_sft(bench, out, "--resume")) == 0
    got = load_safetensors(out / "model.safetensors")
    assert all((got[k] == v).all() for k, v in sft_reference.items())
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 61))


def test_interrupted_api_pairs_store_every_paid_request(tmp_path: Path) -> None:
    """SIGINT while requests are in flight: no new request, those in flight finish and are stored (they are paid
    for), exit 130; the same command then asks only for what is missing."""
    rows = [{"id": f"u{i}", "prompt": f"p{i}"} for i in range(20)]
    prompts, out, log = tmp_path / "p.jsonl", tmp_path / "pairs", tmp_path / "pairs.log"
    write_jsonl_atomic(prompts, rows)

    def slow(body: dict) -> str:
        time.sleep(0.2)
        return "text"

    with ScriptedServer(slow) as server:
        args = api_pairs_args(prompts, out, server.base_url, "--teacher.api.concurrency", 3)
        proc = popen_plad(*args, log=log)
        deadline = time.monotonic() + 120
        while not (out / "samples.jsonl").is_file() or (out / "samples.jsonl").read_bytes().count(b"\n") < 3:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        line = one_error_line(log.read_text(), "pairs")
        assert line == "plad pairs: interrupted (SIGINT); run the same command again to continue"
        stored = read_jsonl(out / "samples.jsonl")
        assert len(stored) == server.requests < len(rows)  # every request asked was stored
        assert main_inprocess(*args) == 0
        assert server.requests == 2 * len(rows)  # nothing asked twice
    assert len(read_jsonl(out / "samples.jsonl")) == 2 * len(rows)


def test_api_sample_seeds_depend_only_on_prompt_side_index_and_seed(tmp_path: Path) -> None:
    """k = 3 samples from a server that ignores n: the seed sent for sample j of a prompt is the same whether the
    request went out before or after plad found that out (concurrency 1 vs 8), as in a resumed run."""
    prompts = tmp_path / "p.jsonl"
    write_jsonl_atomic(prompts, USER_ROWS)
    seeds = {}
    for concurrency in (1, 8):
        out = tmp_path / f"c{concurrency}"
        with ScriptedServer(lambda body: f"seed {body['seed']}", ignore_n=True) as server:
            args = api_pairs_args(prompts, out, server.base_url, "--num_student_samples", 3)
            args += ["--student.api.concurrency", concurrency]
            assert main_inprocess(*args) == 0
        rows = [r for r in read_jsonl(out / "samples.jsonl") if r["side"] == "student"]
        assert all(r["text"] == f"seed {r['seed'] % 2**31}" for r in rows)
        seeds[concurrency] = {(r["id"], r["index"]): r["seed"] for r in rows}
    assert seeds[1] == seeds[8] and len(set(seeds[1].values())) == 3 * len(USER_ROWS)


# --------------------------------------------------------------------------------------------------------------
# 7. / 8. a trickling server, an oversized reply


def ask(cfg: ApiConfig, max_new_tokens: int = 12) -> tuple[list, Endpoint]:
    ep = Endpoint(cfg, "m", "teacher")

    async def go() -> list:
        try:
            return (await ep.sample("prompt", SamplingConfig(max_new_tokens=max_new_tokens), 1, 0))[0]
        finally:
            await ep.close()

    return asyncio.run(go()), ep


@pytest.mark.parametrize("client", ["openai", "lean"])
def test_a_trickling_reply_hits_the_request_deadline(client: str) -> None:
    with ScriptedServer(lambda body: "never done " * 20, trickle=0.02) as server:  # ~6 s in all, never silent
        cfg = ApiConfig(
            base_url=server.base_url, api_key_env="", client=client, timeout=0.5, request_deadline=1.0,
            max_retries=1, backoff_base=0.01,
        )  # fmt: skip
        t0 = time.monotonic()
        with pytest.raises(
            ApiError, match=r"gave up after 2 attempts.*within 1 s \(api.request_deadline\)"
        ) as e:
            ask(cfg)
        assert time.monotonic() - t0 < 4.0
        assert e.value.retryable and server.requests == 2


@pytest.mark.parametrize("client", ["openai", "lean"])
def test_an_oversized_reply_is_retried_and_never_stored(tmp_path: Path, client: str) -> None:
    """A server that ignores max_tokens (2 MB for max_new_tokens 12): the reply counts as malformed and is asked
    again; what is stored is the sane retry."""
    seen: dict[str, int] = {}

    def reply(body: dict) -> str:
        key = body["prompt"]
        seen[key] = seen.get(key, 0) + 1
        return "x" * 2_000_000 if seen[key] == 1 else "short"

    prompts = tmp_path / "p.jsonl"
    write_jsonl_atomic(prompts, USER_ROWS[:3])
    out = tmp_path / "pairs"
    with ScriptedServer(reply) as server:
        assert main_inprocess(*api_pairs_args(prompts, out, server.base_url, client=client)) == 0
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == 6 and {r["text"] for r in rows} == {"short"}
    usage = json.loads((out / "summary.json").read_text())["api_usage_this_run"]
    assert usage["teacher"]["retries_by_reason"] == {"malformed": 3}
    with ScriptedServer(lambda body: "y" * 5000) as server:  # always too long: a clear stop
        cfg = ApiConfig(
            base_url=server.base_url, api_key_env="", client=client, max_retries=1, backoff_base=0.01
        )
        with pytest.raises(ApiError, match="malformed reply"):
            ask(cfg, max_new_tokens=2)
        assert ask(cfg, max_new_tokens=100)[0] == [{"text": "y" * 5000, "finish": "stop"}]  # within the bound


# --------------------------------------------------------------------------------------------------------------
# 9. eval results of another model


def test_eval_refuses_to_overwrite_another_systems_results(tmp_path: Path, capsys) -> None:
    test, a, b = user_files(tmp_path)
    out = tmp_path / "e"
    base = ["eval", "--test_file", test, "--output_dir", out, "--scorer", ""]
    assert main_inprocess(*base, "--outputs_file", a) == 0
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert main_inprocess(*base, "--outputs_file", b) == 2
    line = one_error_line(capsys.readouterr().err, "eval")
    assert f"output_dir {out} holds the results of outputs_file {a}" in line and "--force" in line, line
    assert (out / "results.json").read_bytes() == before
    assert main_inprocess(*base, "--outputs_file", a, "--judge", "rouge") == 0  # the same system: re-judged
    assert main_inprocess(*base, "--outputs_file", b, "--force") == 0
    assert json.loads((out / "results.json").read_text())["outputs_file"] == str(b)


# --------------------------------------------------------------------------------------------------------------
# 18. file modes, log lines


def test_results_get_the_umask_mode(tmp_path: Path) -> None:
    code = (
        "import os, sys\nos.umask(0o027)\nfrom plad.utils.io import write_json_atomic\n"
        "from pathlib import Path\nwrite_json_atomic(Path(sys.argv[1]), {'a': 1})\n"
    )
    target = tmp_path / "r.json"
    subprocess.run([sys.executable, "-c", code, str(target)], env=subprocess_env(), check=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # mkstemp alone gives 0o600
    write_json_atomic(tmp_path / "here.json", {})
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "here.json").stat().st_mode) == 0o666 & ~mask


def test_trained_weights_get_the_umask_mode(bench: Bench, tmp_path: Path) -> None:
    """safetensors writes its files 0o600: the trained model, a LoRA adapter and a checkpoint's weights get the
    umask's mode like every other file plad writes, so other users of a shared machine can read them."""
    mask = os.umask(0o022)
    os.umask(mask)
    want = 0o666 & ~mask
    base = ("sft", "--model", bench.student, "--train_file", bench.sft,
            "--train.batch_size", 4, "--threads", 1)  # fmt: skip
    assert main_inprocess(*base, "--output_dir", tmp_path / "full", "--train.max_steps", 1) == 0
    assert (
        main_inprocess(*base, "--output_dir", tmp_path / "lora", "--train.max_steps", 1, "--lora.r", 2) == 0
    )
    written = [tmp_path / "full" / "model.safetensors", tmp_path / "lora" / "model.safetensors"]
    written.append(tmp_path / "lora" / "adapter" / "adapter_model.safetensors")
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in written} == dict.fromkeys(written, want)
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from plad.train.loop import _save_checkpoint

    AcceleratorState._reset_state(
        reset_partial_state=False
    )  # as the training loop does: earlier runs' settings
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    _save_checkpoint(accelerator, tmp_path / "ck", 1, "fp", keep=1)
    checkpoint = next((tmp_path / "ck" / "checkpoints").glob("step-*/model.safetensors"))
    assert stat.S_IMODE(checkpoint.stat().st_mode) == want


def test_only_plads_own_log_lines_say_plad(tmp_path: Path) -> None:
    test, a, _ = user_files(tmp_path)
    proc = run_plad(
        "eval", "--test_file", test, "--outputs_file", a, "--output_dir", tmp_path / "e", "--scorer", ""
    )
    assert proc.returncode == 0, proc.stderr
    assert "Using default tokenizer" not in proc.stderr  # rouge-score's INFO line, once shown as plad's
    assert all(line.startswith("plad: ") for line in proc.stderr.splitlines() if line.strip()), proc.stderr

    import logging

    from plad.utils.logs import Format

    fmt = Format("%(source)s: %(message)s")
    record = logging.LogRecord("absl", logging.WARNING, "", 0, "Using default tokenizer.", None, None)
    assert fmt.format(record) == "absl: Using default tokenizer."
    record = logging.LogRecord("plad", logging.INFO, "", 0, "eval: done", None, None)
    assert fmt.format(record) == "plad: eval: done"


def test_a_full_fine_tuning_checkpoint_logs_no_third_party_noise(bench: Bench, tmp_path: Path) -> None:
    """accelerate warns "Removed shared tensor {'lm_head.weight'} ..." at every checkpoint of a model with tied
    embeddings (harmless: loading ties them again, and --resume continues bit for bit): plad's log leaves it out,
    and every other line of a checkpointing sft is plad's own."""
    proc = run_plad(
        "sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", tmp_path / "sft",
        "--train.max_steps", 3, "--train.save_every", 1, "--train.batch_size", 4, "--threads", 1,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Removed shared tensor" not in proc.stderr
    assert all(line.startswith("plad: ") for line in proc.stderr.splitlines() if line.strip()), proc.stderr


def test_a_store_holding_a_key_twice_uses_it_once(tmp_path: Path, caplog) -> None:
    """Two writers before the lock (or a store appended to itself) can leave one key twice in samples.jsonl: the
    pairs use it once (the first row), with a warning, and a rerun requests nothing."""
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl_atomic(prompts, USER_ROWS)
    out = tmp_path / "pairs"
    with ScriptedServer(lambda body: "text") as server:
        args = api_pairs_args(prompts, out, server.base_url)
        assert main_inprocess(*args) == 0
        asked = server.requests
        rows = read_jsonl(out / "samples.jsonl")
        append_jsonl(out / "samples.jsonl", [{**r, "text": "a second writer's text"} for r in rows[:3]])
        with caplog.at_level(logging.WARNING, logger="plad"):
            assert main_inprocess(*args) == 0
        assert server.requests == asked
    assert "3 rows repeat a stored key" in caplog.text
    pairs = read_jsonl(out / "pairs.jsonl")
    assert len(pairs) == len(USER_ROWS)
    assert not any("a second writer's text" in (p["chosen"], p["rejected"]) for p in pairs)


def test_rows_longer_than_the_models_positions_fit_instead_of_crashing(
    bench: Bench, tmp_path: Path, caplog, capsys
) -> None:
    """A GPT-2 style model has a learned table of 24 positions; default limits (256 + 256) and long rows once
    crashed sft and eval with `IndexError: index out of range in self`. Every stage now fits prompts and outputs
    into the positions (counted as truncated), and data.overlong=error names the row and the limit instead."""
    from model_families import family_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    model = tmp_path / "gpt2-24"
    AutoModelForCausalLM.from_config(family_config("gpt2", tok, max_positions=24)).save_pretrained(model)
    tok.save_pretrained(model)
    words = "count: " + " ".join("abcdefgh"[i % 8] for i in range(60))
    rows = [
        {"id": str(i), "prompt": f"{words} {i} summary:", "target": " ".join("ab" * 20)} for i in range(6)
    ]
    data = tmp_path / "long.jsonl"
    write_jsonl_atomic(data, rows)
    one = ["--threads", 1]
    with caplog.at_level(logging.INFO, logger="plad"):
        assert main_inprocess(
            "sft", "--model", model, "--train_file", data, "--output_dir", tmp_path / "sft",
            "--train.max_steps", 2, "--train.batch_size", 3, *one,
        ) == 0  # fmt: skip
    assert "reads 24 positions" in caplog.text and "truncated 6 prompts and 6 outputs" in caplog.text
    pairs = tmp_path / "pairs"
    assert main_inprocess(
        "pairs", "--prompts_file", data, "--teacher.model", model, "--student.model", tmp_path / "sft",
        "--output_dir", pairs, "--teacher.sampling.max_new_tokens", 40, "--student.sampling.max_new_tokens", 40,
        "--teacher_logprobs", "true", *one,
    ) == 0  # fmt: skip
    for method in ("plad-rank", "kd"):
        assert main_inprocess(
            "distill", "--method", method, "--model", tmp_path / "sft", "--teacher", model, "--train_file", data,
            "--pairs_file", pairs / "pairs.jsonl", "--output_dir", tmp_path / method, "--train.max_steps", 2,
            "--train.batch_size", 3, *one,
        ) == 0, method  # fmt: skip
    assert main_inprocess(
        "eval", "--model", tmp_path / "plad-rank", "--test_file", data, "--output_dir", tmp_path / "eval",
        "--generation.max_new_tokens", 40, "--bootstrap_samples", 100, *one,
    ) == 0  # fmt: skip
    assert all(r["n_tokens"] <= 12 for r in read_jsonl(tmp_path / "eval" / "outputs.jsonl"))
    capsys.readouterr()
    out = tmp_path / "strict"
    assert main_inprocess(
        "sft", "--model", model, "--train_file", data, "--output_dir", out, "--data.overlong", "error", *one
    ) == 2  # fmt: skip
    line = one_error_line(capsys.readouterr().err, "sft")
    assert f"{data} id 0: prompt has" in line and "data.max_prompt_tokens=12" in line, line
    assert not out.exists()
