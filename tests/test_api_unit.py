"""The API client's pieces that need no server: Retry-After parsing, backoff, stop cutting, request bodies,
batch planning, config checks, and the vLLM backend's install hint."""

from __future__ import annotations

import email.utils
import random
import time

import pytest
from conftest import Bench, main_inprocess

from plad.api import Endpoint, backoff_seconds, cut_at_stop, retry_after_seconds
from plad.config import ApiConfig, ConfigError, SamplingConfig
from plad.generation.hf import plan_batches


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "-2"}) == 0.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": date}) <= 31
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def test_backoff_is_full_jitter_capped():
    cfg = ApiConfig(backoff_base=0.5, backoff_max=4.0)
    rng = random.Random(0)
    for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)]:
        waits = [backoff_seconds(cfg, attempt, rng) for _ in range(400)]
        assert 0 <= min(waits) and max(waits) <= cap
        assert max(waits) > 0.8 * cap  # the whole range is used (jitter spreads clients apart)


def test_cut_at_stop():
    assert cut_at_stop("abc<END>def", ["<END>"]) == ("abc", True)
    assert cut_at_stop("abc\n\nx END", ["END", "\n\n"]) == ("abc", True)  # the earliest stop wins
    assert cut_at_stop("abc", ["zz", ""]) == ("abc", False)


def test_request_bodies(monkeypatch):
    monkeypatch.setenv("K", "secret-key-1")
    s = SamplingConfig(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=12)
    chat = Endpoint(ApiConfig(base_url="http://x/v1", api_key_env="K", mode="chat", system_prompt="Be brief.",
                              prompt_template="Summarise: {prompt}", stop=["\n"]), "m", "teacher")  # fmt: skip
    p = chat.request_params("text", s, 3, 2**40 + 5, 12)
    assert p["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarise: text"},
    ]
    assert (p["n"], p["top_p"], p["extra_body"], p["stop"], p["max_tokens"]) == (
        3,
        0.9,
        {"top_k": 5},
        ["\n"],
        12,
    )
    assert p["seed"] == (2**40 + 5) % 2**31
    msgs = [{"role": "user", "content": "hi"}]
    assert chat.request_params(msgs, s, 1, None, 12)["messages"][1:] == msgs
    assert chat.scrub("key=secret-key-1!") == "key=***!"
    comp = Endpoint(ApiConfig(base_url="http://x/v1", api_key_env="", send_seed=False), "m", "student")
    p = comp.request_params("text", s, 1, 7, 12)
    assert p["prompt"] == "text" and "seed" not in p and "n" not in p
    with pytest.raises(ConfigError, match="api.mode=chat"):
        comp.request_params(msgs, s, 1, 7, 12)


def test_api_config_checks(monkeypatch):
    with pytest.raises(ConfigError, match=r"\{prompt\}"):
        ApiConfig(prompt_template="no placeholder")
    with pytest.raises(ConfigError, match="extra_body"):
        ApiConfig(extra_body="{not json")
    with pytest.raises(ConfigError, match="base_url"):
        Endpoint(ApiConfig(api_key_env=""), "m", "teacher")
    monkeypatch.delenv("PLAD_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError, match="PLAD_UNSET_VAR"):
        Endpoint(ApiConfig(base_url="http://x/v1", api_key_env="PLAD_UNSET_VAR"), "m", "teacher")


def test_plan_batches_token_budget():
    lengths = [10, 50, 20, 50, 5, 30]
    assert plan_batches(lengths, 4) == [[1, 3, 5, 2], [0, 4]]
    # budget 300 with 10 new tokens and 2 samples: (longest + 10) * 2 * rows <= 300
    batches = plan_batches(lengths, 4, max_batch_tokens=300, max_new_tokens=10, samples=2)
    assert batches == [[1, 3], [5, 2, 0], [4]]  # 2 x 60 x 2 = 240; 3 x 40 x 2 = 240; a 4th row: 320
    for b in batches:
        assert len(b) * (max(lengths[i] for i in b) + 10) * 2 <= 300 or len(b) == 1
    assert plan_batches([500, 1], 4, max_batch_tokens=100, max_new_tokens=10) == [[0], [1]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_vllm_backend_says_how_to_install(bench: Bench, tmp_path, capsys):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    rc = main_inprocess(
        "pairs", "--prompts_file", bench.distill, "--output_dir", tmp_path / "p", "--limit", 2,
        "--teacher.model", bench.teacher, "--student.model", bench.student, "--student.backend", "vllm",
        "--teacher.sampling.max_new_tokens", 4,
    )  # fmt: skip
    assert rc == 2
    assert "pip install 'plad[vllm]'" in capsys.readouterr().err


def test_hf_max_batch_tokens_gives_the_same_rows(bench: Bench, tmp_path):
    """max_batch_tokens only changes batch composition: every row is there, k samples per prompt."""
    from conftest import read_jsonl

    out = tmp_path / "p"
    rc = main_inprocess(
        "pairs", "--prompts_file", bench.distill, "--output_dir", out, "--limit", 6,
        "--teacher.model", bench.teacher, "--student.model", bench.student, "--num_student_samples", 3,
        "--teacher.sampling.max_new_tokens", 6, "--student.sampling.max_new_tokens", 6,
        "--student.sampling.max_batch_tokens", 200, "--threads", 1,
    )  # fmt: skip
    assert rc == 0
    rows = read_jsonl(out / "samples.jsonl")
    assert sorted((r["side"], r["index"]) for r in rows if r["id"] == rows[0]["id"]) == [
        ("student", 0), ("student", 1), ("student", 2), ("teacher", 0)
    ]  # fmt: skip
    assert len({r["seed"] for r in rows if r["side"] == "student"}) > 1  # several batches under the budget
