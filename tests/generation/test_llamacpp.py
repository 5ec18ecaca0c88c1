"""Pairs and teacher log-probs through llama.cpp's server (llama-cpp-python[server]) on a GGUF file written from
the tiny test model. Needs the `servers` extra, whose llama.cpp build takes 10-17 minutes the first time: run with
`make test-servers` (skipped by `make test` when llama_cpp is not installed)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import Bench, main_inprocess, read_jsonl
from servers import LlamaCppServer, write_gguf
from test_pairs_api import check_store, distill_ids, pairs_args

pytest.importorskip(
    "llama_cpp.server.app", reason="llama.cpp tests need `make test-servers` (the servers extra)"
)
pytest.importorskip("gguf")
pytestmark = [pytest.mark.slow, pytest.mark.servers]


@pytest.fixture(scope="module")
def gguf_files(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    model = root / "model"
    shutil.copytree(bench.teacher, model)
    return {
        "bos": write_gguf(model, root / "tiny-bos.gguf", add_bos=True),
        "nobos": write_gguf(model, root / "tiny.gguf", add_bos=False),
    }


def hf_logprob(model, tok, prompt: str, text: str, bos: int | None) -> tuple[float, int]:
    """Summed log-prob of the tokens of `text` after `prompt`, by the local transformers model."""
    import torch

    enc = tok(prompt + text, return_offsets_mapping=True)
    ids = ([bos] if bos is not None else []) + enc["input_ids"]
    starts = ([None] if bos is not None else []) + [a for a, _ in enc["offset_mapping"]]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    picked = [
        float(logp[i - 1, ids[i]])
        for i in range(1, len(ids))
        if starts[i] is not None and starts[i] >= len(prompt)
    ]
    return sum(picked), len(picked)


def test_llamacpp_teacher_logprobs_match_the_local_model(bench: Bench, gguf_files, tmp_path: Path):
    """A BOS-adding GGUF: llama.cpp's echo log-probs are aligned; plad's stored teacher log-probs equal the local
    transformers model's (same weights, same tokens, BOS in front) and the student's k samples complete although
    the server ignores n."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, k, limit = tmp_path / "pairs", 2, 12
    with LlamaCppServer(gguf_files["bos"], tmp_path / "server.log") as server:
        args = pairs_args(bench, out, server.base_url, server.model, k=k, limit=limit)
        assert main_inprocess(*args, "--teacher_logprobs", "true") == 0
    check_store(out, distill_ids(bench, limit), k)
    model = AutoModelForCausalLM.from_pretrained(bench.teacher)
    tok = AutoTokenizer.from_pretrained(bench.teacher)
    prompts = {r["id"]: r["prompt"] for r in read_jsonl(bench.distill)}
    texts = {(r["id"], r["side"], r["index"]): r["text"] for r in read_jsonl(out / "samples.jsonl")}
    rows = read_jsonl(out / "teacher_logps.jsonl")
    assert len(rows) == limit * (1 + k)
    for r in rows:
        text = texts[(r["id"], r["side"], r["index"])]
        want, n = hf_logprob(model, tok, prompts[r["id"]], text, tok.eos_token_id)
        assert r["n_tokens"] == n
        assert math.isclose(r["logp"], want, abs_tol=2e-3), (r, want)
    pairs = read_jsonl(out / "pairs.jsonl")
    assert all("teacher_logps" in p for p in pairs)
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["api_usage_this_run"]["teacher_logprobs"]["requests"] == len(rows) + 2
    )  # + the alignment probe


def test_llamacpp_shifted_echo_logprobs_are_refused(bench: Bench, gguf_files, tmp_path: Path, capsys):
    """A GGUF that adds no BOS: llama-cpp-python pairs each echoed token with the next position's distribution.
    plad's probe notices before storing a single score and stops with a clear message; the samples are kept."""
    out = tmp_path / "pairs"
    with LlamaCppServer(gguf_files["nobos"], tmp_path / "server.log") as server:
        args = pairs_args(bench, out, server.base_url, server.model, k=1, limit=4)
        assert main_inprocess(*args, "--teacher_logprobs", "true") == 3
    assert "shifted by one token" in capsys.readouterr().err
    assert len(read_jsonl(out / "samples.jsonl")) == 8
    assert not (out / "teacher_logps.jsonl").exists() or not read_jsonl(out / "teacher_logps.jsonl")
