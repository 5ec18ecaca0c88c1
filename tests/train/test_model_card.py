"""The model card (README.md) of a trained folder (README, "What the stages write"): written by sft and distill,
read back with huggingface_hub, extended by `plad eval` of the folder, never written into another folder, and
never failing a run. Tiny models, a few steps, through the real CLI in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Bench, main_inprocess

STEPS = ["--train.max_steps", 2, "--train.batch_size", 4, "--threads", 1]


@pytest.fixture(scope="module")
def trained(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An SFT student and a plad-rank student distilled from it on a hand-written pairs store."""
    root = tmp_path_factory.mktemp("card")
    sft = root / "student-sft"
    assert (
        main_inprocess(
            "-q", "sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", sft, *STEPS
        )
        == 0
    )
    store = root / "pairs"
    store.mkdir()
    rows = [json.loads(line) for line in bench.sft.read_text().splitlines()[:8]]
    pairs = [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            "chosen": r["target"],
            "rejected": "x",
            "scores": {"chosen": 1, "rejected": 0},
        }
        for r in rows
    ]
    (store / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    summary = {
        "prompts": 8,
        "pairs": 8,
        "teacher": {"model": "org/teacher-1b", "sampling": {"temperature": 0.5}},
        "student": {"model": str(sft), "sampling": {"temperature": 0.7}},
        "scorer": "count-summary",
    }
    (store / "summary.json").write_text(json.dumps(summary))
    distilled = root / "plad-rank"
    rc = main_inprocess(
        "-q", "distill", "--method", "plad-rank", "--model", sft, "--pairs_file", store / "pairs.jsonl",
        "--output_dir", distilled, "--loss.beta", 0.3, *STEPS,
    )  # fmt: skip
    assert rc == 0
    return {"sft": sft, "distilled": distilled, "root": root}


def card(folder: Path):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md")


def test_sft_folder_has_a_card(trained: dict, bench: Bench) -> None:
    c = card(trained["sft"])
    meta = c.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["plad", "sft"]
    assert "base_model" not in meta  # a local folder is no Hub id: named in the body, not in the metadata
    assert meta["plad"]["command"] == "plad sft" and meta["plad"]["steps"] == 2
    assert f"starting from `{bench.student}`" in c.text
    assert f"`train_file`: `{bench.sft}`" in c.text and "Not evaluated yet" in c.text
    assert "`mixed_precision` no" in c.text and "LoRA" not in c.text  # what auto chose here


def test_a_lora_card_says_so(bench: Bench, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    rc = main_inprocess(
        "-q", "sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", out, *STEPS,
        "--lora.r", 4, "--lora.merge", "false",
    )  # fmt: skip
    assert rc == 0
    assert "- LoRA: `r` 4, `alpha` 16.0, `dropout` 0.0, target modules ['all-linear']; the adapter only" in (
        card(out).text
    )


def test_distilled_card_names_method_settings_teacher_and_data(trained: dict) -> None:
    c = card(trained["distilled"])
    meta = c.data.to_dict()
    assert meta["tags"] == ["plad", "distillation", "plad-rank"]
    plad = meta["plad"]
    assert plad["method"] == "plad-rank" and plad["loss"]["beta"] == 0.3
    assert plad["teacher"] == "org/teacher-1b"  # the pairs' teacher, from the store's summary.json
    assert plad["data_used"] == {"data_fraction": 1.0, "prompts": 8, "pairs": 8, "examples": 0, "items": 8}
    assert "method: `plad-rank`: PLaD ranking calibration" in c.text
    assert "`beta` 0.3" in c.text
    assert (
        "teacher `org/teacher-1b` (chosen, temperature 0.5)" in c.text and "8 pairs from 8 prompts" in c.text
    )


def test_base_model_follows_plad_folders_to_the_hub_id(trained: dict, tmp_path: Path) -> None:
    """A student distilled from an SFT folder that was fine-tuned from a Hub model has that model as base."""
    import yaml

    from plad.train.model_card import base_model, write_card

    sft = tmp_path / "sft"
    sft.mkdir()
    for f in ("config.json", "train_summary.json"):
        (sft / f).write_text((trained["sft"] / f).read_text())
    (sft / "plad_config.yaml").write_text(
        yaml.safe_dump({"model": "HuggingFaceTB/SmolLM2-135M", "train": {}})
    )
    assert base_model(str(sft)) == "HuggingFaceTB/SmolLM2-135M"
    assert write_card(sft) and card(sft).data.base_model == "HuggingFaceTB/SmolLM2-135M"


def test_eval_adds_results_with_intervals_to_the_card(trained: dict, bench: Bench, tmp_path: Path) -> None:
    folder = trained["distilled"]
    args = ["-q", "eval", "--model", folder, "--test_file", bench.test, "--limit", 4, "--threads", 1]
    args += ["--generation.max_new_tokens", 4, "--bootstrap_samples", 100]
    assert main_inprocess(*args, "--output_dir", tmp_path / "eval-a", "--name", "run-a") == 0
    results = json.loads((tmp_path / "eval-a" / "results.json").read_text())
    rouge = results["judges"]["rouge"]["mean_score"]
    c = card(folder)
    evals = c.data.to_dict()["plad"]["evaluations"]
    assert [e["name"] for e in evals] == ["run-a"]
    assert evals[0]["judges"]["rouge"]["mean_score"] == {k: rouge[k] for k in ("value", "ci95", "n")}
    index = {r.metric_type: r for r in c.data.eval_results}
    assert index["rouge/mean_score"].metric_value == round(rouge["value"], 4)
    assert index["rouge/mean_score"].dataset_name == "test" and c.data.model_name == "plad-rank"
    low, high = rouge["ci95"]
    assert (
        f"| run-a | `{bench.test}` | rouge | mean score | {rouge['value']:.3f} | [{low:.3f}, {high:.3f}] | 4 |"
        in c.text
    )
    # the same eval folder again replaces its entry; another one adds a row
    assert main_inprocess(*args, "--output_dir", tmp_path / "eval-a", "--name", "run-a") == 0
    assert main_inprocess(*args, "--output_dir", tmp_path / "eval-b", "--name", "run-b") == 0
    c = card(folder)
    assert [e["name"] for e in c.data.to_dict()["plad"]["evaluations"]] == ["run-a", "run-b"]
    # model-index: one value per data set and measure (the newest); the body keeps both rows
    assert sorted(r.metric_type for r in c.data.eval_results) == [
        "exact-match/mean_score",
        "rouge/mean_score",
    ]
    assert c.text.count("| run-b |") == 2 and c.text.count("| run-a |") == 2


def test_eval_of_another_folder_writes_nothing_into_it(bench: Bench, tmp_path: Path) -> None:
    before = sorted(p.name for p in bench.student.iterdir())
    args = ["-q", "eval", "--model", bench.student, "--test_file", bench.test, "--limit", 2, "--threads", 1]
    assert main_inprocess(*args, "--generation.max_new_tokens", 2, "--output_dir", tmp_path / "e") == 0
    assert sorted(p.name for p in bench.student.iterdir()) == before


def test_a_card_that_cannot_be_written_does_not_fail_the_run(
    bench: Bench, tmp_path: Path, monkeypatch, caplog
) -> None:
    from plad.train import model_card

    def broken(folder):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(model_card, "render", broken)
    out = tmp_path / "sft"
    rc = main_inprocess(
        "sft", "--model", bench.student, "--train_file", bench.sft, "--output_dir", out, *STEPS
    )
    assert rc == 0 and (out / "model.safetensors").is_file() and not (out / "README.md").exists()
    assert (
        "the model card could not be written (RuntimeError: template exploded); the model is saved"
        in caplog.text
    )
