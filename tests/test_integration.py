"""End to end on tiny models: `plad run` through the real CLI, each stage command on its own, and the
micro-batch x gradient-accumulation invariance of the one training loop (README "Methods"; ARCHITECTURE.md)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import Bench, load_safetensors, main_inprocess, make_pairs, read_jsonl, run_plad

METHODS = ["sft", "seqkd", "plad-rank", "plad-margin"]
SYSTEMS = ["student-sft", "teacher", *METHODS]
N_TEST, N_DISTILL = 12, 16
PAIR_FIELDS = {"id", "prompt", "chosen", "rejected", "chosen_from", "rejected_from"}

# --------------------------------------------------------------------------------------------------------------
# plad run

RUN_CONFIG = {
    "seed": 0,
    "threads": 1,
    "task": "count-summary",
    "benchmark": {
        "task": "count-summary",
        "n_sft": 200,
        "n_val": 10,
        "n_distill": N_DISTILL,
        "n_test": N_TEST,
        "teacher_preset": "tiny",
        "student_preset": "tiny",
        "vocab_size": 320,
    },
    "teacher_sft": {"max_steps": 20, "batch_size": 16, "lr": 2e-3, "warmup_steps": 2},
    "student_sft": {"max_steps": 10, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2},
    "pairs": {
        "scorer": "count-summary",
        "num_student_samples": 1,
        "teacher": {"sampling": {"temperature": 0.7, "max_new_tokens": 16, "batch_size": 8}},
        "student": {"sampling": {"temperature": 0.7, "max_new_tokens": 16, "batch_size": 8}},
    },
    "methods": METHODS,
    "distill": {
        "loss": {"beta": 0.2, "regularizer": "chosen"},
        "train": {
            "max_steps": 5,
            "batch_size": 8,
            "lr": 3e-4,
            "warmup_steps": 1,
            "schedule": "constant",
            "log_every": 10,
        },
    },
    "eval": {"bootstrap_samples": 200, "generation": {"temperature": 0.0, "max_new_tokens": 16}},
}

ALL_STAGES = ["data", "models", "teacher-sft", "student-sft", "pairs"]
ALL_STAGES += [f"distill/{m}" for m in METHODS] + [f"eval/{s}" for s in SYSTEMS]
ALL_STAGES += [f"calibration/{s}" for s in SYSTEMS if s != "teacher"]
# Top-level files every invocation rewrites (they describe the invocation: timings, and the report's plots);
# checked separately.
PER_INVOCATION = {"results.json", "report.md", "report.html", "run_config.yaml"}
PER_INVOCATION |= {"win_rates.png", "length_buckets.png", "calibration.png", "training_curves.png"}


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every stage file: (mtime in ns, contents)."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and str(p.relative_to(root)) not in PER_INVOCATION
    }


def _under(snapshot: dict, *stages: str) -> dict:
    return {k: v for k, v in snapshot.items() if any(k.startswith(s + "/") for s in stages)}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("plad-run")
    root = tmp / "run"
    cfg_path = tmp / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({"output_dir": str(root), **RUN_CONFIG}))
    t0 = time.perf_counter()
    proc = run_plad("run", cfg_path, timeout=170)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert elapsed < 60, f"tiny `plad run` took {elapsed:.0f} s"
    return SimpleNamespace(root=root, cfg=cfg_path, proc=proc, seconds=elapsed)


def _ci(metric: dict) -> None:
    lo, hi = metric["ci95"]
    assert 0.0 <= lo <= metric["value"] <= hi <= 1.0, metric


@pytest.mark.slow
def test_run_writes_every_artifact(run: SimpleNamespace) -> None:
    from huggingface_hub import ModelCard

    root = run.root
    for stage in ALL_STAGES:
        marker = json.loads((root / stage / "stage.json").read_text())
        assert marker["done"] is True and len(marker["fingerprint"]) == 16, stage

    # data and models
    for split, n in (("sft", 200), ("val", 10), ("distill", N_DISTILL), ("test", N_TEST)):
        assert len(read_jsonl(root / "data" / f"{split}.jsonl")) == n
    assert all("target" in r for r in read_jsonl(root / "data" / "test.jsonl"))
    assert not any("target" in r for r in read_jsonl(root / "data" / "distill.jsonl"))
    for d in ("models/teacher", "models/student", "teacher-sft", "student-sft"):
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (root / d / f).is_file(), f"{d}/{f}"
    for d in ("teacher-sft", "student-sft"):
        summary = json.loads((root / d / "train_summary.json").read_text())
        assert summary["steps"] == RUN_CONFIG[d.replace("-", "_")]["max_steps"]
        assert summary["final_loss"] == summary["final_loss"]  # not NaN

    # pairs: the rows of README "What the stages write", provenance in samples.jsonl, scores from the scorer
    samples = read_jsonl(root / "pairs" / "samples.jsonl")
    assert len(samples) == 2 * N_DISTILL
    by_key = {(s["id"], s["side"], s["index"]): s for s in samples}
    assert len(by_key) == len(samples)
    for s in samples:
        side_cfg = RUN_CONFIG["pairs"][s["side"]]["sampling"]
        assert s["model"] == str(root / f"{s['side']}-sft")
        assert s["sampling"]["temperature"] == side_cfg["temperature"]
        assert s["sampling"]["max_new_tokens"] == side_cfg["max_new_tokens"]
        assert {"top_p", "top_k", "seed", "batch_size"} <= s["sampling"].keys()
        assert isinstance(s["seed"], int) and isinstance(s["fingerprint"], str) and isinstance(s["text"], str)
        assert s["finish"] in ("eos", "length") and 1 <= s["n_tokens"] <= side_cfg["max_new_tokens"]
    pairs = read_jsonl(root / "pairs" / "pairs.jsonl")
    prompts = {r["id"]: r["prompt"] for r in read_jsonl(root / "data" / "distill.jsonl")}
    assert [p["id"] for p in pairs] == list(prompts)
    for p in pairs:
        assert PAIR_FIELDS <= p.keys(), p.keys()
        assert p["prompt"] == prompts[p["id"]]
        assert p["chosen"] == by_key[(p["id"], "teacher", 0)]["text"]
        assert p["rejected"] == by_key[(p["id"], "student", 0)]["text"]
        assert p["chosen_from"] == str(root / "teacher-sft")
        assert p["rejected_from"] == str(root / "student-sft")
        assert p["scores"]["scorer"] == "count-summary"
        assert all(0.0 <= p["scores"][k] <= 1.0 for k in ("chosen", "rejected"))
    pairs_summary = json.loads((root / "pairs" / "summary.json").read_text())
    assert pairs_summary["pairs"] == N_DISTILL and pairs_summary["scorer"] == "count-summary"

    # distillation: one trained model per method
    for m in METHODS:
        d = root / "distill" / m
        summary = json.loads((d / "train_summary.json").read_text())
        assert summary["method"] == m and summary["steps"] == 5
        assert [r["step"] for r in read_jsonl(d / "metrics.jsonl")] == [5]  # log_every 10 > max_steps
        assert yaml.safe_load((d / "plad_config.yaml").read_text())["method"] == m
        assert not (d / "checkpoints").exists()
        # the model card: the method, and the run's evaluation of this model with its interval (model-index too)
        card = ModelCard.load(d / "README.md")
        evaluated = json.loads((root / "eval" / m / "results.json").read_text())
        (entry,) = card.data.to_dict()["plad"]["evaluations"]
        assert m in card.data.tags and entry["name"] == m and entry["compare_to"] == "student-sft"
        assert entry["judges"]["task"]["mean_score"]["ci95"] == evaluated["mean_score"]["ci95"]
        assert {r.metric_type for r in card.data.eval_results} >= {"task/mean_score", "task/head_to_head"}

    # evaluation
    results = json.loads((root / "results.json").read_text())
    assert list(results["results"]) == SYSTEMS
    test_ids = [r["id"] for r in read_jsonl(root / "data" / "test.jsonl")]
    # calibration: held-out pairs from the teacher's and the SFT student's test outputs and the targets
    held_out = read_jsonl(root / "eval" / "calibration_pairs.jsonl")
    for pair in held_out:
        assert pair["scores"]["chosen"] > pair["scores"]["rejected"] and pair["id"] in test_ids
        assert {pair["chosen_from"], pair["rejected_from"]} < {"teacher", "student-sft", "target"}
    for system in SYSTEMS:
        res = json.loads((root / "eval" / system / "results.json").read_text())
        in_summary = dict(results["results"][system])
        calibration = in_summary.pop("calibration", None)
        assert res == in_summary
        if system == "teacher":  # it made the chosen half of the held-out pairs: not measured
            assert calibration is None
        else:
            cal = json.loads((root / "calibration" / system / "calibration.json").read_text())
            assert calibration == cal and cal["pairs"] == len(held_out) > 0
            for key in ("summed", "per_token"):
                _ci(cal[key])
        assert res["name"] == system and res["n"] == N_TEST and res["scorer"] == "count-summary"
        for key in ("mean_score", "exact_match", "win_rate_vs_target", "target_mean_score"):
            _ci(res[key])
        if system == "student-sft":  # the head-to-head baseline
            assert "head_to_head" not in res
        else:
            _ci(res["head_to_head"])
            assert res["head_to_head"]["against"] == str(root / "eval" / "student-sft" / "outputs.jsonl")
        outputs = read_jsonl(root / "eval" / system / "outputs.jsonl")
        assert [o["id"] for o in outputs] == test_ids
        for o in outputs:
            assert {"prompt", "output", "target", "score", "target_score", "n_tokens", "finish"} <= o.keys()
            assert 0.0 <= o["score"] <= 1.0
        assert res["mean_score"]["value"] == pytest.approx(sum(o["score"] for o in outputs) / N_TEST)
    report = (root / "report.md").read_text()
    assert all(f"| {s} |" in report for s in SYSTEMS)
    # the run's report is plad report's: the table, pairs and stage times, plots, and the HTML with them inlined
    assert "## Pseudo-preference pairs" in report and "## Time (this invocation)" in report
    pngs = sorted(p.name for p in root.glob("*.png"))
    assert {"win_rates.png", "training_curves.png"} <= set(pngs) and all(f"]({p})" in report for p in pngs)
    page = (root / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs) and "<table>" in page
    assert yaml.safe_load((root / "run_config.yaml").read_text())["methods"] == METHODS


@pytest.mark.slow
def test_distilled_checkpoints_load_and_every_parameter_changed(run: SimpleNamespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = AutoModelForCausalLM.from_pretrained(run.root / "student-sft")
    start_params = dict(start.named_parameters())  # tied embeddings appear once
    assert start.get_input_embeddings().weight is start.get_output_embeddings().weight
    start_tok = AutoTokenizer.from_pretrained(run.root / "student-sft")
    text = "count: a b a\nsummary: a:2 b:1"
    for m in METHODS:
        d = run.root / "distill" / m
        tok = AutoTokenizer.from_pretrained(d)
        assert tok(text).input_ids == start_tok(text).input_ids
        assert tok.eos_token_id is not None and tok.pad_token_id is not None
        model = AutoModelForCausalLM.from_pretrained(d)
        params = dict(model.named_parameters())
        assert params.keys() == start_params.keys()
        unchanged = [n for n, p in params.items() if torch.equal(p, start_params[n])]
        assert not unchanged, f"{m}: parameters not trained: {unchanged}"
        # not just one entry per tensor: (almost) every weight moved
        for n, p in params.items():
            moved = float((p != start_params[n]).float().mean())
            assert moved > 0.99, f"{m}: only {moved:.1%} of {n} changed"
        with torch.no_grad():
            out = model.generate(**tok(["count: a b a\nsummary:"], return_tensors="pt"), max_new_tokens=3)
        assert out.shape[1] >= 1


@pytest.mark.slow
def test_report_from_run_results(run: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main_inprocess("report", run.root, "--output_dir", out) == 0  # the folder: its results.json
    md = (out / "report.md").read_text()
    pngs = ("win_rates", "length_buckets", "calibration", "training_curves")
    assert all(f"]({p}.png)" in md for p in pngs)
    assert all(name in md for name in SYSTEMS)
    assert "| system | task | rouge | exact-match |" in md  # the judge table
    assert (out / "report.html").read_text().count("data:image/png;base64,") == len(pngs)


@pytest.mark.slow
def test_second_run_skips_every_stage(run: SimpleNamespace) -> None:
    before = _snapshot(run.root)
    results_before = json.loads((run.root / "results.json").read_text())
    config_before = (run.root / "run_config.yaml").read_text()

    proc = run_plad("run", run.cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    skipped = [line for line in proc.stderr.splitlines() if "done with the same settings, skipped" in line]
    assert len(skipped) == len(ALL_STAGES), proc.stderr[-4000:]
    assert ": running" not in proc.stderr
    assert _snapshot(run.root) == before  # no stage file rewritten (same mtimes, same bytes)
    results = json.loads((run.root / "results.json").read_text())
    assert results["results"] == results_before["results"]
    assert results["total_seconds"] < 5  # nothing was loaded, trained or generated
    assert (run.root / "run_config.yaml").read_text() == config_before


@pytest.mark.slow
def test_changed_setting_refused_then_forced(run: SimpleNamespace) -> None:
    """Runs after test_second_run_skips_every_stage (file order): it changes the run's settings."""
    before = _snapshot(run.root)
    config_before = (run.root / "run_config.yaml").read_text()

    proc = run_plad("run", run.cfg, "--distill.loss.beta", "0.3")
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "plad run: error: stage 'distill/sft'" in proc.stderr
    assert "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(run.root) == before  # a refused run changes nothing
    assert (run.root / "run_config.yaml").read_text() == config_before

    proc = run_plad("run", run.cfg, "--distill.loss.beta", "0.3", "--force")
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = _snapshot(run.root)
    upstream = ["data", "models", "teacher-sft", "student-sft", "pairs", "eval/student-sft", "eval/teacher"]
    assert _under(after, *upstream) == _under(before, *upstream)  # not re-run
    rerun = [f"distill/{m}" for m in METHODS] + [f"eval/{m}" for m in METHODS]
    for stage in rerun:
        assert f"plad: {stage}: running" in proc.stderr
        new_fp = json.loads(after[f"{stage}/stage.json"][1])["fingerprint"]
        assert new_fp != json.loads(before[f"{stage}/stage.json"][1])["fingerprint"], stage
    for m in METHODS:
        assert yaml.safe_load(after[f"distill/{m}/plad_config.yaml"][1])["loss"]["beta"] == 0.3
    assert yaml.safe_load((run.root / "run_config.yaml").read_text())["distill"]["loss"]["beta"] == 0.3


# --------------------------------------------------------------------------------------------------------------
# Stage commands on their own (the same `main()` as the console script, in this process)


@pytest.fixture(scope="module")
def stage_pairs(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(bench, tmp_path_factory.mktemp("stage") / "pairs")


def test_stage_sft(bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    args = ["sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", out]
    rc = main_inprocess(*args, "--train.max_steps", 4, "--train.batch_size", 8, "--train.log_every", 2)
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "sft" and summary["steps"] == 4
    assert json.loads((out / "train_summary.json").read_text()) == summary
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [2, 4]
    assert yaml.safe_load((out / "plad_config.yaml").read_text())["train"]["max_steps"] == 4
    before, after = (
        load_safetensors(bench.student / "model.safetensors"),
        load_safetensors(out / "model.safetensors"),
    )
    assert before.keys() == after.keys() and all(not torch.equal(before[k], after[k]) for k in before)
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0
    # a second run into the same folder without --resume is refused: nothing is overwritten
    assert main_inprocess(*args, "--train.max_steps", 4) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_stage_pairs_k2_with_scores(bench: Bench, stage_pairs: Path) -> None:
    prompt_ids = [r["id"] for r in read_jsonl(bench.distill)][:6]
    pairs = read_jsonl(stage_pairs / "pairs.jsonl")
    assert [p["id"] for p in pairs] == [f"{i}#{j}" for i in prompt_ids for j in (0, 1)]
    samples = {(s["id"], s["side"], s["index"]): s for s in read_jsonl(stage_pairs / "samples.jsonl")}
    assert len(samples) == 6 * 3  # one teacher and two student samples per prompt
    for p in pairs:
        assert PAIR_FIELDS <= p.keys()
        pid, j = p["prompt_id"], p["meta"]["sample_index"]
        assert p["id"] == f"{pid}#{j}"
        assert p["chosen"] == samples[(pid, "teacher", 0)]["text"]  # both pairs share the teacher output
        assert p["rejected"] == samples[(pid, "student", j)]["text"]
        assert p["chosen_from"] == str(bench.teacher) and p["rejected_from"] == str(bench.student)
        assert p["scores"]["scorer"] == "count-summary"
        assert isinstance(p["scores"]["chosen"], float) and isinstance(p["scores"]["rejected"], float)
    summary = json.loads((stage_pairs / "summary.json").read_text())
    assert summary["pairs"] == 12 and summary["prompts"] == 6 and summary["num_student_samples"] == 2
    assert summary["generated_rows_this_run"] == 18
    finish = [(s["side"], s["finish"]) for s in samples.values()]  # the untrained bench models rarely end
    cut = {side: finish.count((side, "length")) for side in ("teacher", "student")}
    assert summary["cut_by_max_new_tokens"] == cut


def test_pairs_rebuilt_with_other_settings_says_so_first(
    bench: Bench, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pairs.jsonl follows the settings of the last run: run again with other settings (another temperature,
    fewer prompts) it is rebuilt for them, with a warning before anything is sampled (a distill reading the file
    would train on other pairs); run again with the same settings, it is not. The other samples stay stored."""
    import shutil

    out = tmp_path / "pairs"
    shutil.copytree(make_pairs(bench, tmp_path / "first"), out)
    with caplog.at_level("WARNING", logger="plad"):
        make_pairs(bench, out)
    assert "holds the pairs of other settings" not in caplog.text
    with caplog.at_level("WARNING", logger="plad"):
        make_pairs(bench, out, "--limit", 2, "--teacher.sampling.temperature", 0.9)
    assert (
        "holds the pairs of other settings (the teacher side's settings, the prompts (6 -> 2))" in caplog.text
    )
    assert len(read_jsonl(out / "pairs.jsonl")) == 4
    assert (
        len(read_jsonl(out / "samples.jsonl")) == 6 * 3 + 2
    )  # the first run's samples kept, 2 new teacher ones


@pytest.fixture(scope="module")
def stage_distilled(bench: Bench, stage_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage") / "plad-margin"
    rc = main_inprocess(
        "distill",
        "--method", "plad-margin",
        "--model", bench.student,
        "--pairs_file", stage_pairs / "pairs.jsonl",
        "--output_dir", out,
        "--train.max_steps", 3,
        "--train.batch_size", 4,
        "--train.log_every", 1,
        "--threads", 1,
    )  # fmt: skip
    assert rc == 0
    return out


def test_stage_distill_plad_margin(stage_distilled: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = json.loads((stage_distilled / "train_summary.json").read_text())
    assert summary["method"] == "plad-margin" and summary["steps"] == 3
    rows = read_jsonl(stage_distilled / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {
            "loss",
            "calibration",
            "chosen_logps",
            "rejected_logps",
            "margin",
            "rank_acc",
            "reg_ce",
        } <= r.keys()
    AutoModelForCausalLM.from_pretrained(stage_distilled)
    AutoTokenizer.from_pretrained(stage_distilled)


def test_stage_distill_margin_needs_scores(bench: Bench, stage_pairs: Path, tmp_path: Path, capsys) -> None:
    unscored = tmp_path / "pairs.jsonl"
    rows = read_jsonl(stage_pairs / "pairs.jsonl")
    unscored.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "scores"}) + "\n" for r in rows)
    )
    rc = main_inprocess(
        "distill", "--method", "plad-margin", "--model", bench.student, "--pairs_file", unscored,
        "--output_dir", tmp_path / "out",
    )  # fmt: skip
    assert rc == 2
    assert f"{unscored}:1" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_stage_eval_with_compare_to(bench: Bench, stage_distilled: Path, tmp_path: Path) -> None:
    common = ["--test_file", bench.test, "--generation.max_new_tokens", 12, "--bootstrap_samples", 200]
    common += ["--scorer", "count-summary"]  # eval's scorer defaults to none (a user's task)
    base, dist = tmp_path / "base", tmp_path / "distilled"
    assert (
        main_inprocess("eval", "--model", bench.student, "--output_dir", base, *common, "--threads", 1) == 0
    )
    baseline = base / "outputs.jsonl"
    rc = main_inprocess(
        "eval", "--model", stage_distilled, "--output_dir", dist, *common, "--compare_to", baseline
    )
    assert rc == 0
    res = json.loads((dist / "results.json").read_text())
    assert res["name"] == "distilled" and res["n"] == N_TEST and res["scorer"] == "count-summary"
    for key in ("mean_score", "win_rate_vs_target", "rouge_l", "exact_match_squad"):
        _ci(res[key])
    assert res["head_to_head"]["against"] == str(baseline)
    _ci(res["head_to_head"])
    outputs = read_jsonl(dist / "outputs.jsonl")
    assert [o["id"] for o in outputs] == [r["id"] for r in read_jsonl(bench.test)]
    from plad.scoring.metrics import rouge_l

    assert all(o["rouge_l"] == rouge_l(o["output"], o["target"]) for o in outputs)
    assert res["rouge_l"]["value"] == pytest.approx(sum(o["rouge_l"] for o in outputs) / len(outputs))
    assert "head_to_head" not in json.loads((base / "results.json").read_text())


# --------------------------------------------------------------------------------------------------------------
# Micro-batch x gradient accumulation: batch 8 x accum 1 == batch 2 x accum 4, through the real `train()`


def _items(kind: str, vocab: int) -> list:
    """Exactly 8 items (so both settings see the same 8 in their one step) with very different lengths."""
    from plad.core.methods import Item

    g = torch.Generator().manual_seed(0 if kind != "reg" else 1)

    def ids(n: int) -> list[int]:
        return torch.randint(0, vocab - 2, (n,), generator=g).tolist()

    prompt_lens, chosen_lens, rejected_lens = (
        [3, 9, 5, 14, 4, 7, 11, 6],
        [1, 17, 3, 2, 25, 6, 9, 4],
        [8, 2, 13, 5, 1, 20, 3, 10],
    )
    if kind == "reg":  # dataset targets of the `target` regulariser: other lengths, other total
        return [
            Item(ids(p), ids(c)) for p, c in zip(prompt_lens[::-1], [5, 2, 30, 1, 12, 3, 8, 15], strict=True)
        ]
    if kind == "single":
        return [Item(ids(p), ids(c)) for p, c in zip(prompt_lens, chosen_lens, strict=True)]
    return [
        Item(ids(p), ids(c), ids(r), float(i % 3) / 2, float(i % 2) / 3, -1.5 * c - i, -2.0 * r + i)
        for i, (p, c, r) in enumerate(zip(prompt_lens, chosen_lens, rejected_lens, strict=True))
    ]


def _sharp_teacher(bench: Bench):
    """The tiny teacher with its logits scaled up x30: random tiny models are near-uniform, so token-level losses
    between two of them have gradients too small for a 1e-5 comparison to mean anything."""
    from plad.core.models import load_model_and_tokenizer

    teacher = load_model_and_tokenizer(str(bench.teacher))[0].eval()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(30.0)  # tied: the embeddings scale too, which only changes the teacher
    return teacher


class _RecordingSGD(torch.optim.SGD):
    """Stands in for AdamW: plain SGD (update = -lr * grad, so saved weights show the gradient) that records
    the gradients it steps with. AdamW's first step is ~lr * sign(grad), blind to a wrong loss scale."""

    last: list[torch.Tensor] = []

    def __init__(self, params, lr: float, **_: object):
        super().__init__(params, lr=lr)

    def step(self, closure=None):
        _RecordingSGD.last = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def _one_step(
    bench: Bench,
    out: Path,
    method_name: str,
    loss_cfg,
    items,
    reg_items,
    batch_size: int,
    accum: int,
    student: Path | None = None,
):
    from plad.config import TrainConfig
    from plad.core.methods import METHODS, Frozen
    from plad.core.models import load_model_and_tokenizer
    from plad.train.batches import TrainData
    from plad.train.loop import train

    model, tok = load_model_and_tokenizer(str(student or bench.student))
    names = [n for n, _ in model.named_parameters()]
    teacher = _sharp_teacher(bench) if METHODS[method_name].needs_teacher_model else None
    cfg = TrainConfig(
        max_steps=1, batch_size=batch_size, grad_accum=accum, lr=1.0, schedule="constant", warmup_steps=0,
        max_grad_norm=0.0, log_every=1, seed=3,
    )  # fmt: skip
    train(
        model=model, tokenizer=tok, method=METHODS[method_name],
        data=TrainData(items, batch_size, 3, reg_items),
        loss_cfg=loss_cfg, cfg=cfg, output_dir=out, config_fingerprint="x", resume=False,
        frozen=Frozen(teacher=teacher, vocab=len(tok)),
    )  # fmt: skip
    return dict(zip(names, _RecordingSGD.last, strict=True)), load_safetensors(out / "model.safetensors")


def _reference_grads(bench: Bench, method_name: str, loss_cfg, items, reg_items) -> dict:
    """The window's loss written out by hand, one unpadded forward per sequence (no plad.core.methods or plad.core.losses
    code): mean over examples of the sequence term + weight * (sum of token terms) / (tokens in the window)."""
    from plad.core.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(bench.student))
    teacher = _sharp_teacher(bench)

    def logits_of(m, prompt: list[int], output: list[int]) -> torch.Tensor:  # (len(output), V)
        return m(input_ids=torch.tensor([prompt + output])).logits[0, len(prompt) - 1 : -1].float()

    def output_nll(prompt: list[int], output: list[int]) -> torch.Tensor:  # (len(output),)
        logq = torch.log_softmax(logits_of(model, prompt, output), -1)
        return -logq.gather(-1, torch.tensor(output)[:, None])[:, 0]

    def token_terms(prompt: list[int], output: list[int]) -> torch.Tensor:  # (len(output),)
        logq = torch.log_softmax(logits_of(model, prompt, output), -1)
        with torch.no_grad():
            logp = torch.log_softmax(logits_of(teacher, prompt, output), -1)
        p, q = logp.exp(), logq.exp()
        if method_name == "kd":
            return (p * (logp - logq)).sum(-1)
        if method_name == "gkd":  # beta = 0.5: Jensen-Shannon with M = (p + q) / 2
            m = (p + q) / 2
            return 0.5 * (p * (logp - m.log())).sum(-1) + 0.5 * (q * (logq - m.log())).sum(-1)
        # dpkd-token: a = teacher argmax, b = student argmax; (1 - r) * CE + r * -log sigmoid(beta * h)
        a, b = logp.argmax(-1, keepdim=True), logq.argmax(-1, keepdim=True)
        h = (logq.gather(-1, a) - logq.gather(-1, b) - logp.gather(-1, a) + logp.gather(-1, b))[:, 0]
        nll = -logq.gather(-1, torch.tensor(output)[:, None])[:, 0]
        r, beta = loss_cfg.dpkd_token_ratio, loss_cfg.dpkd_token_beta
        return (1 - r) * nll + r * -torch.log(torch.sigmoid(beta * h))

    if method_name == "sft":
        nlls = [output_nll(it.prompt, it.chosen) for it in items]
        loss = torch.cat(nlls).sum() / sum(len(n) for n in nlls)
    elif method_name in ("kd", "gkd", "dpkd-token"):
        terms = [token_terms(it.prompt, it.chosen) for it in items]
        loss = torch.cat(terms).sum() / sum(len(t) for t in terms)
    else:
        chosen = [output_nll(it.prompt, it.chosen) for it in items]
        rejected = [output_nll(it.prompt, it.rejected) for it in items]
        if method_name == "dpkd":  # summed log-probs, length-normalised log-ratios to the teacher
            seq = [
                -torch.log(
                    torch.sigmoid(
                        loss_cfg.beta / len(c) * (-c.sum() - it.teacher_chosen_logp)
                        - loss_cfg.beta / len(r) * (-r.sum() - it.teacher_rejected_logp)
                    )
                )
                for c, r, it in zip(chosen, rejected, items, strict=True)
            ]
        else:
            seq = [
                torch.clamp(loss_cfg.beta + c.mean() - r.mean(), min=0)
                for c, r in zip(chosen, rejected, strict=True)
            ]
        reg = (
            chosen
            if loss_cfg.regularizer == "chosen"
            else [output_nll(it.prompt, it.chosen) for it in reg_items]
        )
        loss = sum(seq) / len(items) + loss_cfg.reg_weight * torch.cat(reg).sum() / sum(len(n) for n in reg)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _naive_grads(bench: Bench, method_name: str, loss_cfg, items, reg_items, batch_size: int) -> dict:
    """The bug the loop avoids: each micro-batch normalised by its own token count, then averaged."""
    from plad.core.methods import METHODS, Frozen, make_batch
    from plad.core.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(bench.student))
    frozen = Frozen(teacher=_sharp_teacher(bench), vocab=len(tok))
    method = METHODS[method_name]
    n_micro = len(items) // batch_size
    for a in range(n_micro):
        sl = slice(a * batch_size, (a + 1) * batch_size)
        batch = make_batch(
            items[sl],
            reg_items[sl] if reg_items else None,
            tok.pad_token_id,
            loss_cfg,
            None,
            method.from_divergence,
        )
        parts = method.loss(model, batch, loss_cfg, frozen)
        loss = parts.tok_weight * parts.tok_sum / batch["n_tokens"]
        if parts.seq_sum is not None:
            loss = loss + parts.seq_sum / batch["n_examples"]
        (loss / n_micro).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("method_name", "regularizer"),
    [
        ("sft", "none"),
        ("plad-rank", "chosen"),
        ("plad-rank", "target"),
        ("dpkd", "chosen"),
        ("kd", "none"),
        ("gkd", "none"),
        ("dpkd-token", "none"),
    ],
)
def test_micro_batch_times_accumulation_invariance(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method_name: str, regularizer: str
) -> None:
    from plad.config import LossConfig
    from plad.core.methods import METHODS as TABLE
    from plad.core.models import load_model_and_tokenizer

    monkeypatch.setattr(torch.optim, "AdamW", _RecordingSGD)
    start, tok = load_model_and_tokenizer(str(bench.student))
    start_params = {n: p.detach().clone() for n, p in start.named_parameters()}
    vocab = len(tok)
    loss_cfg = LossConfig(beta=1.0, reg_weight=0.7, regularizer=regularizer, logp="mean", on_policy_frac=0.0)
    items = _items("pairs" if TABLE[method_name].source == "pairs" else "single", vocab)
    reg_items = _items("reg", vocab) if regularizer == "target" else None

    run = {}
    for bs, accum in ((8, 1), (2, 4)):
        out = tmp_path / f"b{bs}x{accum}"
        run[bs] = _one_step(bench, out, method_name, loss_cfg, items, reg_items, bs, accum)
    (grads_8, weights_8), (grads_2, weights_2) = run[8], run[2]

    assert grads_8.keys() == start_params.keys()
    scale = max(float(g.abs().max()) for g in grads_8.values())
    assert scale > 1e-3, "gradients too small for the comparison to mean anything"
    worst = max(float((grads_8[n] - grads_2[n]).abs().max()) for n in grads_8)
    assert worst < 1e-5, f"gradients differ by {worst:.2e} (largest gradient {scale:.2e})"
    # the saved checkpoints (SGD, lr 1: weights - grad) agree too
    saved = weights_8
    for n, w in saved.items():
        assert float((w - weights_2[n]).abs().max()) < 1e-5, n
    emb = "model.embed_tokens.weight"
    assert torch.allclose(saved[emb], start_params[emb] - grads_8[emb], atol=1e-6)

    # ... and equal the gradient of the window's loss written out by hand (right normalisers, masks, EOS).
    reference = _reference_grads(bench, method_name, loss_cfg, items, reg_items)
    off = max(float((reference[n] - grads_8[n]).abs().max()) for n in reference)
    assert off < 1e-5, f"gradients differ from the hand-written loss by {off:.2e}"

    # The test can fail: normalising per micro-batch instead of per window gives other gradients here.
    naive = _naive_grads(bench, method_name, loss_cfg, items, reg_items, 2)
    gap = max(float((naive[n] - grads_2[n]).abs().max()) for n in naive)
    assert gap > 100 * worst and gap > 1e-4, f"naive normalisation differs by only {gap:.2e}"


def test_models_stage_fingerprint_follows_preset_contents(tmp_path, monkeypatch):
    """Changing a preset's architecture (same name) must not reuse models built from the old one."""
    from plad.benchmark import build
    from plad.config import RunConfig, from_dict
    from plad.experiments.pipeline import run_pipeline
    from plad.utils.errors import ConfigError

    cfg = {
        "output_dir": str(tmp_path / "run"),
        "threads": 1,
        "methods": ["sft"],
        "benchmark": {
            "n_sft": 60,
            "n_val": 4,
            "n_distill": 8,
            "n_test": 6,
            "teacher_preset": "tiny",
            "student_preset": "tiny",
        },
        "teacher_sft": {"max_steps": 2, "batch_size": 8},
        "student_sft": {"max_steps": 2, "batch_size": 8},
        "distill": {"train": {"max_steps": 1, "batch_size": 4}},
        "eval": {"bootstrap_samples": 100},
    }
    assert set(run_pipeline(from_dict(RunConfig, cfg))["results"]) >= {"teacher", "student-sft"}
    monkeypatch.setitem(build.MODEL_PRESETS, "tiny", {**build.MODEL_PRESETS["tiny"], "num_hidden_layers": 2})
    with pytest.raises(ConfigError, match="stage 'models'"):
        run_pipeline(from_dict(RunConfig, cfg))
    with pytest.raises(ConfigError, match="unknown model preset 'tiyn'.*tiny"):
        run_pipeline(
            from_dict(RunConfig, {**cfg, "benchmark": {**cfg["benchmark"], "teacher_preset": "tiyn"}})
        )


@pytest.mark.parametrize("method_name", ["sft", "plad-rank"])
def test_micro_batch_times_accumulation_invariance_encoder_decoder(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method_name: str
) -> None:
    """The same window normalisation for a T5 student (encoder-decoder batch layout)."""
    from model_families import build_family_model
    from transformers import AutoTokenizer

    from plad.config import LossConfig

    monkeypatch.setattr(torch.optim, "AdamW", _RecordingSGD)
    tok = AutoTokenizer.from_pretrained(bench.tokenizer)
    student = tmp_path / "t5"
    build_family_model("t5", tok, student, seed=2)
    loss_cfg = LossConfig(beta=1.0, reg_weight=0.7, regularizer="chosen", logp="mean")
    items = _items("single" if method_name == "sft" else "pairs", len(tok))
    grads = {}
    for bs, accum in ((8, 1), (2, 4)):
        out = tmp_path / f"b{bs}x{accum}"
        grads[bs], _ = _one_step(bench, out, method_name, loss_cfg, items, None, bs, accum, student=student)
    scale = max(float(g.abs().max()) for g in grads[8].values())
    worst = max(float((grads[8][n] - grads[2][n]).abs().max()) for n in grads[8])
    assert scale > 1e-3 and worst < 1e-5, (scale, worst)


def test_stage_pairs_reference_free_and_rouge_scorers(
    bench: Bench, stage_pairs: Path, tmp_path: Path
) -> None:
    """plad-margin on a task without a scorer: teacher-logp scores each sample by the teacher's exp(mean log-prob
    per token), stored beside it (teacher_logprobs is implied); rouge scores it against the prompt's target."""
    import math

    from plad.scoring.metrics import rouge_l

    out = tmp_path / "tl"
    out.mkdir()
    shutil.copyfile(
        stage_pairs / "samples.jsonl", out / "samples.jsonl"
    )  # the samples exist: only scoring left
    make_pairs(bench, out, "--scorer", "teacher-logp")
    logps = {(r["id"], r["side"], r["index"]): r for r in read_jsonl(out / "teacher_logps.jsonl")}
    for p in read_jsonl(out / "pairs.jsonl"):
        t = logps[(p["prompt_id"], "teacher", 0)]
        s = logps[(p["prompt_id"], "student", p["meta"]["sample_index"])]
        assert p["scores"]["scorer"] == "teacher-logp"
        assert p["scores"]["chosen"] == pytest.approx(math.exp(t["logp"] / t["n_tokens"]))
        assert p["scores"]["rejected"] == pytest.approx(math.exp(s["logp"] / s["n_tokens"]))
    # rouge needs the prompts' targets: the test split has them, the distillation split does not
    assert main_inprocess("pairs", "--prompts_file", bench.distill, "--teacher.model", bench.teacher,
                          "--student.model", bench.student, "--output_dir", tmp_path / "r", "--scorer", "rouge",
                          "--limit", 2) == 2  # fmt: skip
    out = tmp_path / "rouge"
    make_pairs(bench, out, "--scorer", "rouge", "--prompts_file", bench.test)
    targets = {r["id"]: r["target"] for r in read_jsonl(bench.test)}
    for p in read_jsonl(out / "pairs.jsonl"):
        assert p["scores"]["chosen"] == pytest.approx(rouge_l(p["chosen"], targets[p["prompt_id"]]))
        assert p["scores"]["rejected"] == pytest.approx(rouge_l(p["rejected"], targets[p["prompt_id"]]))
