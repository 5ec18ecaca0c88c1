"""The vllm backend against a real vLLM engine (`make test-vllm`: vLLM's CPU build in its own venv, .venv-vllm).

Skipped where vLLM is not installed (`make test`); `make test-vllm` sets PLAD_REQUIRE_VLLM=1, so a broken vLLM
install fails there instead of skipping. Models of the teacher preset (head size 32, which vLLM's CPU attention
supports), saved with save_pretrained, go through `plad pairs --*.backend vllm` as a user's model would: a
teacher fine-tuned for 300 steps (distinct outputs that end with EOS at different lengths) and a random student.
- greedy decoding in float32 gives exactly the hf backend's texts, token counts and finish reasons;
- k sampled rows per prompt, each prompt with its own seed: a resumed run after losing rows asks only for the
  missing ones and gets the very same samples back.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Bench, read_jsonl, run_plad

if os.environ.get("PLAD_REQUIRE_VLLM"):
    import vllm  # noqa: F401  an import error fails `make test-vllm`
else:
    pytest.importorskip("vllm")

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Models:
    teacher: Path  # fine-tuned: its greedy outputs differ per prompt and end with EOS
    student: Path  # random weights


@pytest.fixture(scope="module")
def models(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Models:
    from transformers import AutoTokenizer

    from plad.benchmark.build import build_model
    from plad.benchmark.tasks import generate_splits
    from plad.utils.io import write_jsonl_atomic

    root = tmp_path_factory.mktemp("vllm")
    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    build_model("teacher", tok, root / "init", seed=0)
    build_model("teacher", tok, root / "student", seed=1)
    write_jsonl_atomic(
        root / "sft.jsonl", generate_splits("count-summary", {"sft": 2000}, corrupt_frac=0.0, seed=0)["sft"]
    )
    done = run_plad(
        "sft", "--model", root / "init", "--train_file", root / "sft.jsonl", "--output_dir", root / "teacher",
        "--train.max_steps", 300, "--threads", 2, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return Models(teacher=root / "teacher", student=root / "student")


def pairs(bench: Bench, models: Models, out: Path, *extra: object) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU build
    args = [
        "pairs", "--prompts_file", bench.distill, "--output_dir", out, "--teacher.model", models.teacher,
        "--student.model", models.student, "--teacher.sampling.max_new_tokens", 24,
        "--student.sampling.max_new_tokens", 24, "--threads", 1, *extra,
    ]  # fmt: skip
    done = run_plad(*args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def rows_by_key(path: Path) -> dict[tuple, dict]:
    return {(r["id"], r["side"], r["index"]): r for r in read_jsonl(path)}


def test_vllm_greedy_float32_matches_the_hf_backend(bench: Bench, models: Models, tmp_path: Path) -> None:
    greedy = ["--limit", 24, "--num_student_samples", 1]
    greedy += ["--teacher.sampling.temperature", 0, "--student.sampling.temperature", 0]
    pairs(bench, models, tmp_path / "hf", *greedy)
    vllm = ["--teacher.backend", "vllm", "--student.backend", "vllm"]
    vllm += ["--teacher.vllm.dtype", "float32", "--student.vllm.dtype", "float32"]
    pairs(bench, models, tmp_path / "vllm", *greedy, *vllm)
    hf, vl = rows_by_key(tmp_path / "hf" / "samples.jsonl"), rows_by_key(tmp_path / "vllm" / "samples.jsonl")
    assert set(hf) == set(vl) and len(hf) == 48
    same = ("text", "n_tokens", "finish")
    assert [k for k in hf if [hf[k][f] for f in same] != [vl[k][f] for f in same]] == []
    assert all(r["backend"] == "vllm" for r in vl.values())
    teacher = [r for k, r in vl.items() if k[1] == "teacher"]
    assert len({r["text"] for r in teacher}) >= 20  # the outputs depend on the prompt
    assert sum(r["finish"] == "eos" for r in teacher) >= 20 and len({r["n_tokens"] for r in teacher}) >= 3


def test_vllm_k_samples_resume_with_the_same_seeds(bench: Bench, models: Models, tmp_path: Path) -> None:
    out, k = tmp_path / "p", 3
    args = ["--limit", 16, "--num_student_samples", k]
    args += ["--teacher.backend", "vllm", "--student.backend", "vllm"]
    pairs(bench, models, out, *args)
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
    pairs(bench, models, out, *args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated_rows_this_run"] == len(range(0, len(lines), 3))
    again = rows_by_key(out / "samples.jsonl")
    assert set(again) == set(first)
    assert [key for key in first if first[key]["text"] != again[key]["text"]] == []


def test_eval_through_vllm_matches_the_hf_backend(bench: Bench, models: Models, tmp_path: Path) -> None:
    """`plad eval --backend vllm`: the evaluated model generates on vLLM; greedy float32 outputs equal the hf
    backend's, and calibration (a local model's log-probs) still works, through transformers on the same weights."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cal = tmp_path / "cal.jsonl"
    cal.write_text(
        "".join(
            json.dumps({"id": r["id"], "prompt": r["prompt"], "chosen": r["target"], "rejected": "x"}) + "\n"
            for r in read_jsonl(bench.test)[:8]
        )
    )
    outs = {}
    for backend in ("hf", "vllm"):
        args = [
            "eval", "--model", models.teacher, "--test_file", bench.test, "--output_dir", tmp_path / backend,
            "--limit", 24, "--generation.max_new_tokens", 24, "--threads", 1, "--backend", backend,
            "--vllm.dtype", "float32", "--calibration_file", cal,
        ]  # fmt: skip
        done = run_plad(*args, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outs[backend] = read_jsonl(tmp_path / backend / "outputs.jsonl")
        results = json.loads((tmp_path / backend / "results.json").read_text())
        assert results["calibration"]["pairs"] == 8
    same = ("id", "output", "n_tokens", "finish")
    assert [[r[f] for f in same] for r in outs["vllm"]] == [[r[f] for f in same] for r in outs["hf"]]
    assert len({r["output"] for r in outs["hf"]}) >= 8  # the outputs depend on the prompt (answers repeat)


def test_iterated_rounds_sample_through_vllm(bench: Bench, models: Models, tmp_path: Path) -> None:
    """`plad distill --rounds 2 --rounds_backend vllm`: round 1's fresh student samples come from vLLM's engine on
    the student trained in round 0 (saved for it, then removed); greedy float32 samples equal the hf backend's.
    The student starts from the fine-tuned teacher, so that its samples differ per prompt."""
    greedy = ["--limit", 16, "--student.sampling.temperature", 0, "--teacher.sampling.temperature", 0]
    pairs(bench, models, tmp_path / "pairs", *greedy)
    rounds = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / backend
        args = [
            "distill", "--method", "plad-rank", "--model", models.teacher, "--pairs_file",
            tmp_path / "pairs" / "pairs.jsonl", "--output_dir", out, "--rounds", 2, "--train.max_steps", 2,
            "--train.batch_size", 4, "--on_policy.temperature", 0, "--on_policy.max_new_tokens", 24,
            "--rounds_backend", backend, "--vllm.dtype", "float32", "--threads", 1,
        ]  # fmt: skip
        done = run_plad(*args, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        rounds[backend] = read_jsonl(out / "rounds" / "round-1.jsonl")
        assert not (
            out / "rounds" / "student"
        ).exists()  # the weights saved for vLLM are gone after the round
    assert len(rounds["vllm"]) == 16
    texts = {b: [[s["text"] for s in r["samples"]] for r in rows] for b, rows in rounds.items()}
    assert texts["vllm"] == texts["hf"]
    assert len({t for (t,) in texts["vllm"]}) >= 8  # the samples depend on the prompt
