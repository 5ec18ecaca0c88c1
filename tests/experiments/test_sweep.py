"""`plad sweep` end to end on tiny models: every method x fraction point, the training data each point used,
resumability, the data-scaling plot of `plad report`, and the config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import main_inprocess, read_jsonl, run_plad
from test_integration import N_DISTILL, N_TEST, RUN_CONFIG

METHODS = ["sft", "plad-rank"]
FRACTIONS = {"0.25": 0.25, "1": 1.0}  # sweep.json's keys: the fractions as given on the command line, as %g
N_SFT = RUN_CONFIG["benchmark"]["n_sft"]
STAGES = ["data", "models", "teacher-sft", "student-sft", "pairs", "eval/student-sft"]
STAGES += [f"{kind}/{m}/frac-{f}" for m in METHODS for f in FRACTIONS for kind in ("scaling", "scaling-eval")]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    run = {k: v for k, v in RUN_CONFIG.items() if k not in ("seed", "methods")}
    (root / "sweep.yaml").write_text(yaml.safe_dump({"output_dir": str(root / "out"), "run": run}))
    # the list options as a user types them; "1" is the full-data run
    assert (
        main_inprocess(
            "sweep", "--config", root / "sweep.yaml", "--methods", "sft,plad-rank", "--fractions", "0.25,1"
        )
        == 0
    )
    return root / "out"


def _stage_files(root: Path) -> dict[str, int]:
    """mtime of every stage marker and trained model: a re-run that skips everything rewrites none of them."""
    files = [*root.rglob("stage.json"), *root.rglob("*.safetensors")]
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in files}


@pytest.mark.slow
def test_sweep_writes_every_point(sweep_dir: Path) -> None:
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert (
        summary["methods"] == METHODS and summary["fractions"] == list(FRACTIONS) and summary["seeds"] == [0]
    )
    assert summary["lr"] == RUN_CONFIG["distill"]["train"]["lr"] and "bootstrap" in summary["interval"]
    assert {"date", "machine", "command"} <= summary.keys() and summary["machine"]["cores"] >= 1
    seed_dir = sweep_dir / "seed-0"
    for stage in STAGES:
        assert json.loads((seed_dir / stage / "stage.json").read_text())["done"], stage
    ref = summary["reference"]["student-sft"]
    assert ref["win_rate_vs_target"]["n"] == N_TEST and "head_to_head" not in ref
    for method in METHODS:
        assert set(summary["scaling"][method]) == set(FRACTIONS)
        for key, fraction in FRACTIONS.items():
            point = summary["scaling"][method][key]
            # one seed: the evaluation's own bootstrap interval
            results = json.loads(
                (seed_dir / "scaling-eval" / method / f"frac-{key}" / "results.json").read_text()
            )
            for metric in ("win_rate_vs_target", "mean_score", "head_to_head"):
                assert point[metric] == {k: results[metric][k] for k in ("value", "ci95", "n")}
            assert results["head_to_head"]["against"] == str(
                seed_dir / "eval" / "student-sft" / "outputs.jsonl"
            )
            # what the distillation trained on, as the run itself recorded it
            trained = json.loads(
                (seed_dir / "scaling" / method / f"frac-{key}" / "train_summary.json").read_text()
            )
            assert point["data_used"] == [trained["data_used"]]
            assert trained["data_used"]["data_fraction"] == fraction
    used = {m: {k: summary["scaling"][m][k]["data_used"][0] for k in FRACTIONS} for m in METHODS}
    # plad-rank learns from the pairs (one per distillation prompt), sft from the labeled examples
    assert [used["plad-rank"][k]["pairs"] for k in FRACTIONS] == [N_DISTILL // 4, N_DISTILL]
    assert [used["sft"][k]["examples"] for k in FRACTIONS] == [N_SFT // 4, N_SFT]
    pairs = read_jsonl(seed_dir / "pairs" / "pairs.jsonl")
    assert len(pairs) == N_DISTILL == summary["pairs_per_seed"][0]
    md = (sweep_dir / "sweep.md").read_text()
    for text in (
        "| plad-rank |",
        "| 25% | 100% |",
        "student-sft (0%)",
        "Training data used",
        "4 pairs",
        "no tuning",
    ):
        assert text in md, text


@pytest.mark.slow
def test_sweep_rerun_runs_nothing(sweep_dir: Path) -> None:
    before = _stage_files(sweep_dir)
    # 1.0 is the point 1, 0.250 the point 0.25: the same stages
    proc = run_plad(
        "sweep",
        "--config",
        sweep_dir.parent / "sweep.yaml",
        "--methods",
        "sft,plad-rank",
        "--fractions",
        "0.250,1.0",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    skipped = [line for line in proc.stderr.splitlines() if "done with the same settings, skipped" in line]
    assert len(skipped) == len(STAGES) and ": running" not in proc.stderr, proc.stderr[-4000:]
    assert _stage_files(sweep_dir) == before
    summary = json.loads((sweep_dir / "sweep.json").read_text())  # rewritten: this invocation's command line
    assert (
        summary["command"].startswith("plad sweep --config") and "--fractions 0.250,1.0" in summary["command"]
    )
    per_seed = json.loads((sweep_dir / "seed-0" / "sweep_seed.json").read_text())
    assert per_seed["stage_seconds_this_invocation"] == {} and per_seed["stage_seconds_total"] > 0


@pytest.mark.slow
def test_report_draws_the_scaling_curve(sweep_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main_inprocess("report", sweep_dir, "--output_dir", out) == 0  # the folder: its sweep.json
    md = (out / "report.md").read_text()
    for png in ("scaling.png", "win_rates.png", "training_curves.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
        assert f"]({png})" in md
    assert "plad-rank @ 25%" in md and "bootstrap" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3


def test_sweep_config_errors(tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    for args, says in (
        (["--fractions", "0,0.5"], "fractions: '0' is not a valid value (expected a fraction in (0, 1])"),
        (["--fractions", "1.5"], "fractions: '1.5' is not a valid value"),
        (["--fractions", "0.5,0.50"], "names one value twice"),
        (["--methods", "sft,plad-rnak"], "unknown method 'plad-rnak' (did you mean plad-rank"),
        (["--run.seed", "1"], "use output_dir and seeds"),
    ):
        assert main_inprocess("sweep", "--output_dir", out, *args) == 2, args
        err = capsys.readouterr().err
        assert "plad sweep: error:" in err and says in err, err
    assert not out.exists()  # refused before any work
    proc = run_plad("sweep", "--output_dir", out, "--fractions", "0.1,1.5")  # the real exit code of the CLI
    assert proc.returncode == 2 and "fractions: '1.5'" in proc.stderr
    assert not out.exists()


def test_sweep_aggregates_over_seeds() -> None:
    """Several seeds: the mean with a t-interval across seeds and the per-seed values, for every point."""
    from plad.config import SweepConfig
    from plad.experiments.sweep import aggregate

    def cell(v: float) -> dict:
        return {"value": v, "ci95": [v - 0.1, v + 0.1], "n": 12}

    def seed(s: int, v: float) -> dict:
        point = {m: cell(v) for m in ("win_rate_vs_target", "mean_score", "head_to_head")}
        used = {"data_fraction": 0.5, "prompts": 8, "pairs": 8, "examples": 0, "items": 8}
        return {
            "seed": s,
            "reference": {"student-sft": {"win_rate_vs_target": cell(0.1), "mean_score": cell(0.2)}},
            "points": {"plad-rank": {"0.5": {**point, "data_used": used}}},
            "pairs": 16,
            "stage_seconds_total": 1.0,
        }

    summary = aggregate(
        SweepConfig(fractions=["0.5"], seeds=["0", "1", "2"]), [seed(0, 0.2), seed(1, 0.3), seed(2, 0.4)]
    )
    point = summary["scaling"]["plad-rank"]["0.5"]
    assert point["win_rate_vs_target"]["mean"] == pytest.approx(0.3)
    assert point["win_rate_vs_target"]["values"] == pytest.approx([0.2, 0.3, 0.4])
    lo, hi = point["win_rate_vs_target"]["ci95"]
    assert hi - 0.3 == pytest.approx(4.303 * 0.1 / 3**0.5)  # t(0.975, 2) * sd / sqrt(3)
    assert lo == pytest.approx(0.6 - hi)
    assert len(point["data_used"]) == 3 and "3 seeds" in summary["interval"]
    assert summary["reference"]["student-sft"]["mean_score"]["mean"] == pytest.approx(0.2)


def test_scaling_plot_reads_bench_and_sweep_results(tmp_path: Path) -> None:
    """One plot function for both files: bench.json keeps one win-rate cell per fraction, sweep.json a cell per
    metric; the x ticks are the fractions present."""
    from plad.reporting.plots import _scaling_series, plot_scaling

    bench = {
        "table": {"student-sft": {"win_rate_vs_target": {"mean": 0.1, "ci95": [0.0, 0.2], "values": [0.1]}}},
        "scaling": {
            "sft": {"0.3": {"mean": 0.2, "ci95": [0.1, 0.3]}, "1.0": {"mean": 0.25, "ci95": [0.2, 0.3]}}
        },
    }
    sweep = {
        "reference": {"student-sft": {"mean_score": {"value": 0.5, "ci95": [0.4, 0.6], "n": 12}}},
        "scaling": {"plad-rank": {"0.3": {"mean_score": {"value": 0.6, "ci95": [0.5, 0.7], "n": 12}}}},
        "interval": "one seed, 95% bootstrap interval over the test prompts",
    }
    assert _scaling_series(bench, "win_rate_vs_target") == {
        "sft": {0.3: (0.2, 0.1, 0.3), 1.0: (0.25, 0.2, 0.3)}
    }
    assert _scaling_series(bench, "mean_score") == {}
    assert _scaling_series(sweep, "mean_score") == {"plad-rank": {0.3: (0.6, 0.5, 0.7)}}
    for data in (bench, sweep):
        png = plot_scaling(data, tmp_path)
        assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert plot_scaling({"scaling": {}}, tmp_path / "none") is None
