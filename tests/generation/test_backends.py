"""Generation backends outside the pairs job: the hf backend's batching (length-grouped, token budget) and the vllm
backend's message when vLLM is missing."""

from __future__ import annotations

import pytest
from conftest import Bench, main_inprocess

from plad.generation.hf import plan_batches


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
