"""`plad bench` end to end on tiny models: every stage of the comparison, the tables, resumability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import main_inprocess, read_jsonl
from test_integration import RUN_CONFIG

METHODS = ["sft", "plad-rank", "plad-list", "dpkd", "kd"]
VARIANTS = ["plad-list-k2", "plad-rank-rounds2"]
GRID = ["1e-4", "1e-3"]


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    run = {k: v for k, v in RUN_CONFIG.items() if k not in ("seed", "methods")}
    cfg = {
        "output_dir": str(root / "out"),
        "seeds": [0, 1],
        "methods": METHODS,
        "grid_lr": GRID,
        "fractions": [0.5],
        "fraction_methods": ["sft", "plad-rank"],
        "length_buckets": 2,
        "list_k": 2,
        "rounds": 2,
        "run": {
            **run,
            # sort-numbers gives partial credit to the barely trained tiny models' outputs, so that scores differ
            # and real preference pairs exist (on count-summary they all score 0 at this size)
            "task": "sort-numbers",
            "benchmark": {**run["benchmark"], "task": "sort-numbers"},
            "pairs": {**run["pairs"], "scorer": "sort-numbers"},
            "distill": {**run["distill"], "train": {**run["distill"]["train"], "max_steps": 3}},
        },
    }
    (root / "bench.yaml").write_text(yaml.safe_dump(cfg))
    assert main_inprocess("bench", "--config", root / "bench.yaml") == 0
    return root / "out"


@pytest.mark.slow
def test_bench_writes_the_comparison(bench_dir: Path) -> None:
    summary = json.loads((bench_dir / "bench.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["grid_lr"] == GRID and summary["steps"] == 3
    assert list(summary["table"]) == ["student-sft", "teacher", *METHODS, "plad-rank-real", *VARIANTS]
    for name in [*METHODS, "plad-rank-real", *VARIANTS]:
        row = summary["table"][name]
        assert len(row["lr"]) == 2 and set(row["lr"]) <= set(GRID)
        for metric in ("mean_score", "win_rate_vs_target", "head_to_head"):
            cell = row[metric]
            assert len(cell["values"]) == 2 and cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1]
    for seed in (0, 1):
        per_seed = json.loads((bench_dir / f"seed-{seed}" / "bench_seed.json").read_text())
        for m in METHODS:
            # every method tried every learning rate of the grid on the validation split, and kept the best
            val = per_seed["methods"][m]["val"]
            assert set(val) == set(GRID) and per_seed["methods"][m]["lr"] == max(GRID, key=lambda lr: val[lr])
            assert (bench_dir / f"seed-{seed}" / "eval" / m / "outputs.jsonl").is_file()
            for lr in GRID:
                assert (
                    bench_dir / f"seed-{seed}" / "tune" / m / f"lr-{float(lr):g}" / "model.safetensors"
                ).is_file()
        # the variants: k = 2 student samples per prompt, fresh samples stored for round 2
        seed_dir = bench_dir / f"seed-{seed}"
        assert len(read_jsonl(seed_dir / "pairs-k2" / "pairs.jsonl")) == 2 * len(
            read_jsonl(seed_dir / "pairs" / "pairs.jsonl")
        )
        assert list((seed_dir / "tune" / "plad-rank-rounds2").glob("lr-*/rounds/round-1.jsonl"))
        assert set(per_seed["scaling"]) == {"sft", "plad-rank"}
        assert set(per_seed["scaling"]["sft"]) == {"1.0", "0.5"}
        buckets = per_seed["length_buckets"]
        assert sum(buckets["sizes"]) == 12 and len(buckets["win_rate"]["plad-rank"]) == 2
    md = (bench_dir / "bench.md").read_text()
    for text in ("plad-rank-real", "by target length", "Data scaling", "Command:", "cores"):
        assert text in md


@pytest.mark.slow
def test_bench_rerun_skips_every_stage(bench_dir: Path, capsys) -> None:
    before = {p: p.stat().st_mtime_ns for p in bench_dir.rglob("*.safetensors")}
    assert main_inprocess("bench", "--config", bench_dir.parent / "bench.yaml") == 0
    after = {p: p.stat().st_mtime_ns for p in bench_dir.rglob("*.safetensors")}
    assert before == after  # nothing retrained


def test_bench_config_errors(tmp_path: Path, capsys) -> None:
    assert main_inprocess("bench", "--methods", "sft,plad-rnak", "--output_dir", tmp_path / "b") == 2
    assert "plad-rank" in capsys.readouterr().err
    assert main_inprocess("bench", "--fractions", "1.5", "--output_dir", tmp_path / "b") == 2
    assert "fractions" in capsys.readouterr().err
    assert (
        main_inprocess("bench", "--run.sft_file", "a", "--run.distill_file", "b", "--run.test_file", "c") == 2
    )
    assert "val_file" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_bench_needs_a_judge_before_any_work(tmp_path: Path, capsys) -> None:
    assert main_inprocess("bench", "--run.task", "", "--output_dir", tmp_path / "b") == 2
    assert "run.task" in capsys.readouterr().err
    assert not (tmp_path / "b" / "seed-0").exists()


@pytest.mark.slow
def test_report_from_bench_results(bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main_inprocess("report", bench_dir / "bench.json", "--output_dir", out) == 0
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    pngs = ("win_rates.png", "length_buckets.png", "calibration.png", "scaling.png", "training_curves.png")
    for png in pngs:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
        assert f"]({png})" in md
    assert page.count("data:image/png;base64,") == len(pngs) and "<table" in page  # self-contained
    assert "plad-rank-rounds2" in md and "[" in md  # every system, with intervals
    # a folder without a bench.json or results.json is refused
    assert (
        main_inprocess("report", bench_dir / "seed-0", "--output_dir", tmp_path / "r2") == 2
    )  # no results.json


@pytest.mark.slow
def test_bench_without_task_scorer_same_in_parallel(tmp_path: Path, capfd) -> None:
    """A task without a scorer (the real benchmark's case): ROUGE-L is the headline, plad-margin's scores come from
    the teacher (teacher-logp), head-to-head and length buckets are against the SFT student, calibration pairs are
    ranked by ROUGE-L. `jobs: 2` runs the tuning, test evaluations, calibration and data-scaling stages in two
    worker processes and gives the same results as one process."""
    run = {k: v for k, v in RUN_CONFIG.items() if k not in ("seed", "methods")}
    base = {
        "seeds": [0],
        "methods": ["sft", "plad-margin", "kd"],
        "grid_lr": GRID,
        "real_pairs": False,
        "list_k": 0,
        "rounds": 1,
        "fractions": [0.5],
        "fraction_methods": ["plad-margin"],
        "length_buckets": 2,
        "calibration_pairs": 8,
        "run": {
            **run,
            "task": "",
            "pairs": {**run["pairs"], "scorer": "teacher-logp"},
            "distill": {**run["distill"], "train": {**run["distill"]["train"], "max_steps": 2}},
        },
    }
    seeds = {}
    for jobs in (1, 2):
        cfg = {**base, "jobs": jobs, "output_dir": str(tmp_path / f"jobs{jobs}")}
        (tmp_path / f"bench{jobs}.yaml").write_text(yaml.safe_dump(cfg))
        assert main_inprocess("bench", "--config", tmp_path / f"bench{jobs}.yaml") == 0
        err = capfd.readouterr().err
        if jobs == 2:  # workers log as plad[pid], other libraries' INFO lines (rouge-score's) are not shown
            assert "]: tune/kd/lr-" in err and "plad[" in err
            assert "Using default tokenizer" not in err, err
        per_seed = json.loads((tmp_path / f"jobs{jobs}" / "seed-0" / "bench_seed.json").read_text())
        seeds[jobs] = {k: v for k, v in per_seed.items() if "seconds" not in k}
    assert seeds[1] == seeds[2]
    summary = json.loads((tmp_path / "jobs2" / "bench.json").read_text())
    assert summary["judge"] == "rouge"
    for name in ["teacher", "sft", "plad-margin", "kd"]:
        row = summary["table"][name]
        assert row["win_rate_vs_target"] is None and row["head_to_head"] is not None
        assert row["mean_score"] == row["rouge_l"]
    pairs = read_jsonl(tmp_path / "jobs2" / "seed-0" / "pairs" / "pairs.jsonl")
    assert all(p["scores"]["scorer"] == "teacher-logp" for p in pairs)
    assert summary["length_buckets"]["against"] == "student-sft"
    assert set(summary["length_buckets"]["win_rate"]) == {"teacher", "sft", "plad-margin", "kd"}
    assert set(summary["calibration"]) >= {"student-sft", "sft", "plad-margin", "kd"}
    md = (tmp_path / "jobs2" / "bench.md").read_text()
    assert "mean score (rouge)" in md and "win rate vs target" not in md and "## Calibration" in md
