"""The openai backend against a real server (`transformers serve` on 127.0.0.1 serving a tiny model saved with
save_pretrained), with a fault-injecting proxy in front of it: pairs, and eval of a model behind an endpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Bench, main_inprocess, popen_plad, read_jsonl
from servers import FaultProxy, TransformersServer, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(bench: Bench, tmp_path_factory: pytest.TempPathFactory):
    """The bench's tiny teacher behind `transformers serve`; its generation_config samples (do_sample), as a
    served chat model's usually does (the server samples only when the model's generation config says so)."""
    root = tmp_path_factory.mktemp("served")
    model = root / "model"
    shutil.copytree(bench.teacher, model)
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, "do_sample": True}))
    with TransformersServer(model, root / "server.log") as server:
        yield server


CLIENTS = ["openai", "lean"]


def api_side(side: str, model: str, base_url: str, *extra: object, client: str = "openai") -> list[object]:
    """--{side}.* options of an openai-backend side that talks to a local server quickly."""
    opts = {
        "backend": "openai",
        "model": model,
        "api.base_url": base_url,
        "api.api_key_env": "",
        "api.client": client,
        "api.timeout": 1.5,
        "api.backoff_base": 0.05,
        "api.backoff_max": 0.5,
        "sampling.max_new_tokens": 8,
    }
    return [a for k, v in opts.items() for a in (f"--{side}.{k}", v)] + list(extra)


def pairs_args(
    bench: Bench, out: Path, base_url: str, model: str, k: int = 2, limit: int = 48, client: str = "openai"
) -> list[object]:
    return [
        "pairs", "--prompts_file", bench.distill, "--output_dir", out, "--num_student_samples", k,
        "--limit", limit, *api_side("teacher", model, base_url, client=client),
        *api_side("student", model, base_url, client=client),
    ]  # fmt: skip


def check_store(out: Path, ids: list[str], k: int) -> list[dict]:
    """Every (prompt, side, index) stored exactly once."""
    rows = read_jsonl(out / "samples.jsonl")
    keys = Counter((r["id"], r["side"], r["index"]) for r in rows)
    wanted = {(i, "teacher", 0) for i in ids} | {(i, "student", j) for i in ids for j in range(k)}
    assert set(keys) == wanted
    assert max(keys.values()) == 1, [k for k, c in keys.items() if c > 1][:5]
    return rows


def distill_ids(bench: Bench, limit: int) -> list[str]:
    return [r["id"] for r in read_jsonl(bench.distill)][:limit]


@pytest.mark.parametrize("client", CLIENTS)
def test_api_pairs_through_faults_store_each_paid_request_once(bench: Bench, served, tmp_path: Path, client):
    """>= 200 requests at 30% injected faults (429 + Retry-After, 500, 503, stalls past the timeout, connection
    resets, truncated JSON): every row completes, every usable reply the proxy delivered is stored exactly once,
    each fault costs exactly one retry counted under its own reason, and Retry-After is honoured."""
    out, k = tmp_path / "pairs", 4
    # 12 retries: at 30% faults the default 8 gives up on one of ~250 requests in about 1 run in 200 (0.3^9 per
    # request; seen once); with 12, about 1 run in 25,000 (0.3^13 per request)
    retries = [f"--{side}.api.max_retries" for side in ("teacher", "student")]
    with FaultProxy(served.base_url.removesuffix("/v1"), rate=0.3, seed=1, stall=2.5) as proxy:
        args = pairs_args(bench, out, proxy.base_url, served.model, k=k, client=client)
        rc = main_inprocess(*args, retries[0], 12, retries[1], 12)
        events = proxy.outcomes()
        delivered = proxy.delivered()
    assert rc == 0
    ids = distill_ids(bench, 48)
    rows = check_store(out, ids, k)
    faults = [e for e in events if e["outcome"] != "ok"]
    assert len(events) >= 200 and len(faults) >= 0.2 * len(events), (len(events), len(faults))
    assert {e["outcome"] for e in faults} == {"429", "500", "503", "timeout", "reset", "truncated"}
    # no usable reply was asked for twice, and each one is behind stored rows
    assert max(delivered.values()) == 1
    requests = {r["request"]["id"] for r in rows}
    assert len(requests) == len(delivered)
    # transformers serve ignores n: the first requests (at most one per worker) ask n = k, get one choice; from
    # then on one request per sample
    assert 1 <= Counter(e["n"] for e in events if e["outcome"] == "ok")[k] <= 8
    summary = json.loads((out / "summary.json").read_text())
    usage = summary["api_usage_this_run"]
    assert usage["teacher"]["retries"] + usage["student"]["retries"] == len(faults)
    reason = {"429": "429", "500": "5xx", "503": "5xx", "timeout": "timeout", "reset": "connection"}
    injected = Counter(reason.get(e["outcome"], "malformed") for e in faults)
    assert Counter(usage["teacher"]["retries_by_reason"]) + Counter(
        usage["student"]["retries_by_reason"]
    ) == (injected)
    assert usage["teacher"]["requests"] + usage["student"]["requests"] == len(delivered)
    stored = summary["api_usage_stored"]
    assert stored["teacher"]["requests"] + stored["student"]["requests"] == len(delivered)
    assert stored["student"]["completion_tokens"] > 0
    # Retry-After: 1 -> the same request is not sent again within a second
    for e in [e for e in events if e["outcome"] == "429"]:
        later = [x["t"] for x in events if x["hash"] == e["hash"] and x["t"] > e["t"]]
        assert later and min(later) - e["t_end"] >= 0.95
    # provenance: which endpoint, model, sampling and seed made each row
    assert all(r["endpoint"] == proxy.base_url and r["model"] == served.model for r in rows)
    assert len(read_jsonl(out / "pairs.jsonl")) == len(ids) * k
    # a second run asks for nothing
    with FaultProxy(served.base_url.removesuffix("/v1"), rate=0.0) as proxy:
        assert main_inprocess(*pairs_args(bench, out, proxy.base_url, served.model, k=k, client=client)) == 0
        assert proxy.outcomes() == []


def test_api_kill9_midway_then_resume(bench: Bench, served, tmp_path: Path):
    """kill -9 of `plad pairs` in the middle of an API run, then the same command again: the store ends with every
    row once, and no request whose reply was stored before the kill is sent again."""
    out, k, limit = tmp_path / "pairs", 3, 48
    with FaultProxy(served.base_url.removesuffix("/v1"), rate=0.1, seed=2, stall=2.5) as proxy:
        args = pairs_args(bench, out, proxy.base_url, served.model, k=k, limit=limit)
        proc = popen_plad(*args, log=tmp_path / "first.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            path = out / "samples.jsonl"
            if path.exists() and path.read_bytes().count(b"\n") >= 40:
                break
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        at_kill = read_jsonl_tolerant(out / "samples.jsonl")
        assert 40 <= len(at_kill) < limit * (k + 1)
        stored_seeds = {r["seed"] for r in at_kill}
        delivered_before = proxy.delivered()
        assert main_inprocess(*args) == 0
        delivered = proxy.delivered()
        events = proxy.outcomes("ok")
    check_store(out, distill_ids(bench, limit), k)
    repeats = {h for h, c in delivered.items() if c > 1}
    seed_of = {e["hash"]: e["seed"] for e in events}
    # a repeat can only be a reply that was in flight when the process died (delivered, not yet stored)
    assert not {h for h in repeats if seed_of[h] in stored_seeds}
    assert repeats <= set(delivered_before) and len(repeats) <= 8


def read_jsonl_tolerant(path: Path) -> list[dict]:
    from plad.utils.io import read_jsonl as read

    return read(path, tolerate_torn_tail=True)


def test_api_stop_sequences_are_cut_even_when_the_server_keeps_them(bench: Bench, served, tmp_path: Path):
    # which character does this random model emit most? (transformers serve keeps stop strings in its output)
    free = tmp_path / "free"
    assert main_inprocess(*pairs_args(bench, free, served.base_url, served.model, k=1, limit=24)) == 0
    texts = [r["text"] for r in read_jsonl(free / "samples.jsonl")]
    char = Counter(c for t in texts for c in set(t) if c.isprintable() and not c.isspace()).most_common(1)[0][
        0
    ]
    out = tmp_path / "stopped"
    args = pairs_args(bench, out, served.base_url, served.model, k=1, limit=24)
    args += ["--teacher.api.stop", char, "--student.api.stop", char]
    assert main_inprocess(*args) == 0
    rows = read_jsonl(out / "samples.jsonl")
    assert not [r["text"] for r in rows if char in r["text"]]
    assert any(r["finish"] == "stop" for r in rows)


@pytest.mark.parametrize("client", CLIENTS)
def test_api_errors_are_clear_fast_and_keep_the_key_secret(
    bench: Bench, served, tmp_path: Path, capsys, client: str
):
    secret = "sk-plad-test-0123456789abcdef"
    os.environ["PLAD_TEST_KEY"] = secret
    try:
        # a model the server does not serve: HTTP 400, not retried, endpoint named, key nowhere
        out = tmp_path / "wrong-model"
        with FaultProxy(served.base_url.removesuffix("/v1"), rate=0.0) as proxy:
            args = pairs_args(bench, out, proxy.base_url, "no-such-model", k=1, limit=8, client=client)
            args += ["--teacher.api.api_key_env", "PLAD_TEST_KEY", "--teacher.api.concurrency", 1]
            assert main_inprocess(*args) == 3
            assert len(proxy.outcomes()) == 1  # no retry of a request the server refused
        err = capsys.readouterr().err
        assert "HTTP 400" in err and proxy.base_url in err and "no-such-model" in err
        written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
        assert secret not in err + written
        # the key's environment variable missing: a config error before any request
        args = pairs_args(bench, out, served.base_url, served.model, k=1, limit=8, client=client)
        assert main_inprocess(*args, "--teacher.api.api_key_env", "PLAD_NO_SUCH_KEY_VAR") == 2
        assert "PLAD_NO_SUCH_KEY_VAR" in capsys.readouterr().err
    finally:
        del os.environ["PLAD_TEST_KEY"]

    # an endpoint that is down: retried, then a resumable stop; --status shows what failed
    out = tmp_path / "down"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    args = pairs_args(bench, out, served.base_url, served.model, k=2, limit=8, client=client)
    args += [*api_side("student", served.model, dead, client=client), "--student.api.max_retries", 2]
    assert main_inprocess(*args) == 3
    err = capsys.readouterr().err
    assert dead in err and "gave up after 3 attempts" in err and "Run the same command again" in err
    assert main_inprocess(*args, "--status") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["teacher"] == {**status["teacher"], "done": 8, "pending": 0, "failed": 0}
    assert status["student"]["done"] == 0 and status["student"]["pending"] == 16
    assert status["student"]["failed"] >= 2
    # the endpoint is back: the same command finishes, teacher rows are not asked again
    args = pairs_args(bench, out, served.base_url, served.model, k=2, limit=8, client=client)
    with FaultProxy(served.base_url.removesuffix("/v1"), rate=0.0) as proxy:
        args = pairs_args(bench, out, served.base_url, served.model, k=2, limit=8, client=client)
        args += api_side("student", served.model, proxy.base_url, client=client)
        assert main_inprocess(*args) == 0
        assert len(proxy.outcomes()) == 16  # n probe (1 choice) + 1 more per prompt; teacher rows all stored
    capsys.readouterr()
    assert main_inprocess(*args, "--status") == 0
    status = json.loads(capsys.readouterr().out)
    assert (
        status["student"]["done"] == 16
        and status["student"]["pending"] == 0
        and status["student"]["failed"] == 0
    )


def test_api_teacher_logprobs_need_a_server_that_returns_them(bench: Bench, served, tmp_path: Path, capsys):
    out = tmp_path / "pairs"
    args = pairs_args(bench, out, served.base_url, served.model, k=1, limit=4) + [
        "--teacher_logprobs",
        "true",
    ]
    assert main_inprocess(*args) == 3
    err = capsys.readouterr().err
    assert "returned no prompt log-probs" in err and served.base_url in err
    assert len(read_jsonl(out / "samples.jsonl")) == 8  # the samples paid for are kept


def test_eval_of_a_model_behind_an_endpoint(bench: Bench, served, tmp_path: Path, capsys):
    """`plad eval --backend openai`: the evaluated model answers through the endpoint (through faults), its outputs are
    judged like a local model's, and a rerun reuses them without a request."""
    out = tmp_path / "eval"
    with FaultProxy(served.base_url.removesuffix("/v1"), rate=0.3, seed=5) as proxy:
        args = [
            "eval", "--test_file", bench.test, "--output_dir", out, "--limit", 6, "--judge", "rouge,exact-match",
            "--backend", "openai", "--model", served.model, "--api.base_url", proxy.base_url,
            "--api.api_key_env", "", "--api.timeout", 1.5, "--api.backoff_base", 0.05, "--api.backoff_max", 0.5,
            "--generation.max_new_tokens", 8,
        ]  # fmt: skip
        assert main_inprocess(*args) == 0, capsys.readouterr().err
        asked = len(proxy.outcomes())
        results = json.loads((out / "results.json").read_text())
        assert results["backend"] == "openai" and results["n"] == 6 and results["model"] == served.model
        rows = read_jsonl(out / "outputs.jsonl")
        assert [r["id"] for r in rows] == [r["id"] for r in read_jsonl(bench.test)][:6]
        assert all(isinstance(r["output"], str) for r in rows) and any(r["output"] for r in rows)
        assert asked >= 6  # one request per prompt, plus the retried faults
        assert main_inprocess(*args) == 0  # the same command: outputs reused, nothing asked
        assert len(proxy.outcomes()) == asked
        assert read_jsonl(out / "outputs.jsonl") == rows
    # a model behind an endpoint has no log-probs here: calibration is refused before anything is asked
    bad = [*args, "--calibration_file", bench.test, "--output_dir", tmp_path / "cal"]
    assert main_inprocess(*bad) == 2
    assert "calibration_file measures a local model's log-probs" in capsys.readouterr().err
