"""The vllm backend against a real vLLM engine (`make test-vllm`: vLLM's CPU build in its own venv, .venv-vllm).

Skipped where vLLM is not installed (`make test`). A model built from the teacher preset (head size 32, which
vLLM's CPU attention supports) and saved with save_pretrained goes through `plad pairs --*.backend vllm` as a
user's model would:
- greedy decoding in float32 gives exactly the hf backend's texts (same prompt tokens, same decoding);
- k sampled rows per prompt, each prompt with its own seed: a resumed run after losing rows asks only for the
  missing ones and gets the very same samples back.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from conftest import Bench, read_jsonl, run_plad

pytest.importorskip("vllm")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    from plad.benchmark.build import build_model

    out = tmp_path_factory.mktemp("vllm") / "teacher"
    build_model("teacher", AutoTokenizer.from_pretrained(bench.tokenizer), out, seed=0)
    return out


def pairs(bench: Bench, model: Path, out: Path, *extra: object) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU build
    args = [
        "pairs", "--prompts_file", bench.distill, "--output_dir", out, "--teacher.model", model,
        "--student.model", model, "--teacher.sampling.max_new_tokens", 12,
        "--student.sampling.max_new_tokens", 12, "--threads", 1, *extra,
    ]  # fmt: skip
    done = run_plad(*args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def rows_by_key(path: Path) -> dict[tuple, dict]:
    return {(r["id"], r["side"], r["index"]): r for r in read_jsonl(path)}


def test_vllm_greedy_float32_matches_the_hf_backend(bench: Bench, model: Path, tmp_path: Path) -> None:
    greedy = ["--limit", 24, "--num_student_samples", 1]
    greedy += ["--teacher.sampling.temperature", 0, "--student.sampling.temperature", 0]
    pairs(bench, model, tmp_path / "hf", *greedy)
    vllm = ["--teacher.backend", "vllm", "--student.backend", "vllm"]
    vllm += ["--teacher.vllm.dtype", "float32", "--student.vllm.dtype", "float32"]
    pairs(bench, model, tmp_path / "vllm", *greedy, *vllm)
    hf, vl = rows_by_key(tmp_path / "hf" / "samples.jsonl"), rows_by_key(tmp_path / "vllm" / "samples.jsonl")
    assert set(hf) == set(vl) and len(hf) == 48
    assert [k for k in hf if hf[k]["text"] != vl[k]["text"]] == []
    assert all(r["backend"] == "vllm" and r["n_tokens"] == hf[k]["n_tokens"] for k, r in vl.items())


def test_vllm_k_samples_resume_with_the_same_seeds(bench: Bench, model: Path, tmp_path: Path) -> None:
    out, k = tmp_path / "p", 3
    args = [
        "--limit",
        16,
        "--num_student_samples",
        k,
        "--teacher.backend",
        "vllm",
        "--student.backend",
        "vllm",
    ]
    pairs(bench, model, out, *args)
    first = rows_by_key(out / "samples.jsonl")
    assert Counter(side for _, side, _ in first) == {"teacher": 16, "student": 16 * k}
    per_prompt = Counter(
        len({r["text"] for key, r in first.items() if key[:2] == (i, "student")})
        for i in {key[0] for key in first}
    )
    assert per_prompt[k] >= 14  # k different samples per prompt (two may coincide by chance)
    # lose every third row (as if they had never been stored), then run the same command
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("".join(line + "\n" for i, line in enumerate(lines) if i % 3))
    pairs(bench, model, out, *args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated_rows_this_run"] == len(range(0, len(lines), 3))
    again = rows_by_key(out / "samples.jsonl")
    assert set(again) == set(first)
    assert [key for key in first if first[key]["text"] != again[key]["text"]] == []
