"""The Backend protocol (generation/backend.py) on the hf backend: what a unit emits, resuming with `want`, the
batching (length-grouped, token budget); and the vllm backend's message when vLLM is missing. The openai backend's
side of the protocol is tested against a real server in test_pairs_api.py, the vllm one in test_vllm.py."""

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


def test_hf_backend_emits_each_wanted_sample_once_and_resumes_with_the_same_samples(bench: Bench):
    """One emit per batch; every (prompt, sample) once; a call that asks only for what is missing (`want`, as a
    resumed run does) gets exactly the samples, and seeds, an uninterrupted call made for them."""
    from plad.config import SamplingConfig
    from plad.core.models import load_model_and_tokenizer
    from plad.generation.backend import Prompt, collect
    from plad.generation.hf import HfBackend

    model, tok = load_model_and_tokenizer(str(bench.student))
    texts = ["count: a b", "count: a", "count: b b a b", "count: a a", "count: b", "count: a b a"]
    prompts = [Prompt(f"p{i}", ids=tok(t).input_ids) for i, t in enumerate(texts)]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=5, batch_size=2)
    backend = HfBackend(model, tok)
    units: list = []
    backend.sample(prompts, sampling, 2, ("key",), units.append)
    full = {(d.prompt, d.index): (d.sample.ids, d.seed) for u in units for d in u}
    assert sorted(full) == [(i, j) for i in range(6) for j in range(2)]
    assert [len(u) for u in units] == [4, 4, 4]  # a batch of 2 prompts x 2 samples per emit
    assert len({seed for _, seed in full.values()}) == 3  # a seed per batch
    missing = {(0, 1), (3, 0), (3, 1), (5, 0)}
    again: list = []
    backend.sample(prompts, sampling, 2, ("key",), again.append, want=lambda i, j: (i, j) in missing)
    assert {(d.prompt, d.index): (d.sample.ids, d.seed) for u in again for d in u} == {
        m: full[m] for m in missing
    }
    other: list = []
    backend.sample(prompts, sampling, 2, ("other key",), other.append)
    assert {(d.prompt, d.index): d.seed for u in other for d in u} != {m: s for m, (_, s) in full.items()}
    # collect: every prompt's samples in order, as eval and on-policy sampling take them
    got = collect(backend, prompts, sampling, 2, ("key",))
    assert [[s.ids for s in row] for row in got] == [[full[(i, j)][0] for j in range(2)] for i in range(6)]
