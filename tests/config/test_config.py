"""Config loading: unknown keys with suggestions, type coercion, contradictions, nested defaults, fingerprints,
help texts, every shipped YAML, and the CLI's error paths."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml
from conftest import as_resolved

from plad.config import (
    DistillConfig,
    EvalConfig,
    PairsConfig,
    RunConfig,
    SFTConfig,
    SweepConfig,
    TrainConfig,
    fingerprint,
    flat_fields,
    load_config,
    save_yaml,
)
from plad.utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
STAGE_CONFIGS = [SFTConfig, PairsConfig, DistillConfig, EvalConfig, RunConfig, SweepConfig]


def write_yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------------------------------------------
# unknown keys, types, choices


def test_unknown_yaml_key_names_dotted_key_and_suggests(tmp_path):
    p = write_yaml(tmp_path, "train:\n  lr_rate: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, p)
    msg = str(e.value)
    assert "train.lr_rate" in msg
    assert "did you mean" in msg and "lr" in msg.split("did you mean")[1]
    assert str(p) in msg  # the file is named


def test_unknown_nested_yaml_key_in_run_config(tmp_path):
    """Three levels deep: the full dotted path is reported."""
    p = write_yaml(tmp_path, "distill:\n  loss:\n    betta: 0.1\n")
    with pytest.raises(ConfigError, match=r"distill\.loss\.betta.*did you mean beta"):
        load_config(RunConfig, p)


def test_unknown_top_level_key_without_close_match_lists_known(tmp_path):
    p = write_yaml(tmp_path, "zzzzzz: 1\n")
    with pytest.raises(ConfigError, match=r"'zzzzzz'.*known: .*output_dir"):
        load_config(SFTConfig, p)


def test_unknown_dotted_override():
    with pytest.raises(ConfigError, match=r"train\.max_stpes.*did you mean max_steps"):
        load_config(SFTConfig, None, [("train.max_stpes", "3")])
    with pytest.raises(ConfigError, match=r"'trian'.*did you mean train"):
        load_config(SFTConfig, None, [("trian.lr", "3")])


def test_override_through_a_leaf_is_rejected():
    """`model.x` where model is a plain string: not a section."""
    with pytest.raises(ConfigError, match="model is not a section"):
        load_config(SFTConfig, None, [("model.x", "3")])


def test_bad_type():
    with pytest.raises(ConfigError, match=r"train\.max_steps must be an integer, got 'abc'"):
        load_config(SFTConfig, None, [("train.max_steps", "abc")])
    with pytest.raises(ConfigError, match=r"train\.lr must be a number"):
        load_config(SFTConfig, None, [("train.lr", "fast")])
    with pytest.raises(ConfigError, match=r"resume must be true or false"):
        load_config(SFTConfig, None, [("resume", "maybe")])
    with pytest.raises(ConfigError, match=r"train\.max_steps must be an integer, got 2\.5"):
        load_config(SFTConfig, None, [("train.max_steps", 2.5)])


def test_section_given_a_scalar(tmp_path):
    p = write_yaml(tmp_path, "train: 5\n")
    with pytest.raises(ConfigError, match="train must be a mapping"):
        load_config(SFTConfig, p)


def test_bad_choice():
    with pytest.raises(ConfigError) as e:
        load_config(DistillConfig, None, [("loss.logp", "avg")])
    msg = str(e.value)
    assert "loss" in msg and "logp" in msg and "'avg'" in msg and "mean" in msg and "sum" in msg


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(SFTConfig, write_yaml(tmp_path, "train: [1,\n"))
    with pytest.raises(ConfigError, match="mapping of settings at the top level"):
        load_config(SFTConfig, write_yaml(tmp_path, "- a\n- b\n"))


# ----------------------------------------------------------------------------------------------------------------
# contradictions (__post_init__)


@pytest.mark.parametrize(
    ("cls", "overrides", "pattern"),
    [
        (PairsConfig, [("num_student_samples", "0")], r"num_student_samples must be >= 1"),
        (
            PairsConfig,
            [("teacher.sampling.temperature", "-1")],
            r"teacher\.sampling: temperature must be >= 0",
        ),
        (PairsConfig, [("student.sampling.top_p", "0")], r"top_p must be in \(0, 1\]"),
        (PairsConfig, [("limit", "-1")], r"limit must be >= 0"),
        (SFTConfig, [("train.max_steps", "0")], r"train: max_steps must be >= 1"),
        (SFTConfig, [("train.lr", "0")], r"lr must be > 0"),
        (SFTConfig, [("data.max_prompt_tokens", "0")], r"max_prompt_tokens"),
        (DistillConfig, [("loss.beta", "-0.1")], r"loss: beta must be >= 0 \(got -0.1\)"),
        (DistillConfig, [("loss.gkd_beta", "1.5")], r"loss: gkd_beta must be in \[0, 1\]"),
        (EvalConfig, [("bootstrap_samples", "10")], r"bootstrap_samples must be >= 100"),
        (RunConfig, [("sft_file", "x.jsonl")], r"set all of sft_file, distill_file and test_file"),
        (RunConfig, [("methods", "sft,plad-rnak")], r"unknown method 'plad-rnak'.*did you mean plad-rank"),
        (RunConfig, [("distill.model", "m")], r"distill\.model is set by the pipeline"),
        (RunConfig, [("pairs.teacher.model", "m")], r"use the top-level `teacher` key"),
        (SFTConfig, [("lora.r", "-1")], r"lora: r must be >= 0"),
        (DistillConfig, [("lora.dropout", "1")], r"lora: .*dropout in \[0, 1\)"),
        (
            DistillConfig,
            [("lora.config", "a.json"), ("lora.r", "8")],
            r"lora: config a.json holds .* remove r",
        ),
        (
            RunConfig,
            [("distill.lora.r", "8"), ("distill.lora.merge", "false")],
            r"keep distill\.lora\.merge true",
        ),
    ],
)
def test_contradictions_rejected(cls, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(cls, None, overrides)


def test_direct_construction_rejects_contradictions():
    with pytest.raises(ConfigError, match="num_student_samples"):
        PairsConfig(num_student_samples=0)
    with pytest.raises(ConfigError, match="only_sft.jsonl|set all of"):
        RunConfig(sft_file="only_sft.jsonl")
    with pytest.raises(ConfigError, match="did you mean plad-margin"):
        RunConfig(methods=["plad-margn"])


# ----------------------------------------------------------------------------------------------------------------
# coercion and defaults


def test_overrides_coerce_types():
    cfg = load_config(
        RunConfig,
        None,
        [
            ("distill.train.lr", "1e-4"),
            ("distill.resume", "true"),
            ("methods", "sft, seqkd"),
            ("seed", "1e3"),
        ],
    )
    assert cfg.distill.train.lr == 1e-4 and isinstance(cfg.distill.train.lr, float)
    assert cfg.distill.resume is True
    assert cfg.methods == ["sft", "seqkd"]
    assert cfg.seed == 1000 and isinstance(cfg.seed, int)
    cfg = load_config(SFTConfig, None, [("resume", "no"), ("train.max_grad_norm", "0")])
    assert cfg.resume is False and cfg.train.max_grad_norm == 0.0


def test_yaml_native_types_and_override_precedence(tmp_path):
    p = write_yaml(
        tmp_path, "methods: [sft, plad-rank]\ndistill:\n  train:\n    lr: 0.01\n    max_steps: 7\n"
    )
    cfg = load_config(RunConfig, p, [("distill.train.lr", "0.5")])
    assert cfg.methods == ["sft", "plad-rank"]
    assert cfg.distill.train.lr == 0.5  # the command line wins over the file
    assert cfg.distill.train.max_steps == 7  # the file's other keys stay


def test_nested_defaults_preserved_when_a_sibling_is_overridden():
    """Overriding one field of a section must not reset its other fields to the section class's defaults:
    RunConfig ships its own defaults for distill.train, pairs.scorer, the SFT sections and eval."""
    base = RunConfig()
    assert base.distill.train.lr != TrainConfig().lr, "the test needs a RunConfig-specific default"
    cfg = load_config(RunConfig, None, [("distill.loss.beta", "0.5")])
    assert cfg.distill.loss.beta == 0.5
    assert cfg.distill.train == base.distill.train
    cfg = load_config(RunConfig, None, [("distill.train.batch_size", "4")])
    assert cfg.distill.train.batch_size == 4
    assert cfg.distill.train.lr == base.distill.train.lr
    assert cfg.distill.train.max_steps == base.distill.train.max_steps
    cfg = load_config(RunConfig, None, [("pairs.limit", "5"), ("teacher_sft.lr", "0.01")])
    assert cfg.pairs.scorer == base.pairs.scorer == "count-summary"
    assert cfg.teacher_sft.max_steps == base.teacher_sft.max_steps != TrainConfig().max_steps
    # Stage configs too: pairs sample at temperature 0.5 unless told otherwise, eval reads the test split.
    cfg = load_config(PairsConfig, None, [("teacher.model", "t"), ("student.sampling.top_k", "5")])
    assert cfg.teacher.sampling.temperature == 0.5
    assert cfg.student.sampling.temperature == 0.5 and cfg.student.sampling.top_k == 5
    cfg = load_config(EvalConfig, None, [("data.max_prompt_tokens", "8")])
    assert cfg.data.split == "test"


def test_defaults_are_not_shared_between_instances():
    a, b = RunConfig(), RunConfig()
    a.distill.train.lr = 123.0
    a.methods.append("sft")
    assert b.distill.train.lr != 123.0 and RunConfig().methods == b.methods


def test_save_yaml_round_trip(tmp_path):
    cfg = load_config(RunConfig, None, [("distill.train.lr", "0.07"), ("methods", "sft,plad-margin")])
    save_yaml(cfg, tmp_path / "saved.yaml")
    assert load_config(RunConfig, tmp_path / "saved.yaml") == cfg


# ----------------------------------------------------------------------------------------------------------------
# fingerprints


def test_fingerprint_stable_and_sensitive():
    a = load_config(DistillConfig, None, [("train.lr", "0.001")])
    b = load_config(DistillConfig, None, [("train.lr", "1e-3")])
    assert fingerprint(a) == fingerprint(b) == fingerprint(DistillConfig(train=TrainConfig(lr=1e-3)))
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint(a))
    assert fingerprint({"x": 1, "y": [1, 2]}) == fingerprint({"y": [1, 2], "x": 1})  # key order is irrelevant
    c = load_config(DistillConfig, None, [("train.lr", "0.0011")])
    d = load_config(DistillConfig, None, [("loss.logp", "sum")])
    assert len({fingerprint(a), fingerprint(c), fingerprint(d), fingerprint(DistillConfig())}) == 4


# ----------------------------------------------------------------------------------------------------------------
# help texts


def _all_fields(cls, prefix=""):
    """Every field, sections included, with its dotted name."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield prefix + f.name, f
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _all_fields(hints[f.name], prefix + f.name + ".")


@pytest.mark.parametrize("cls", STAGE_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_help(cls):
    leaves = flat_fields(cls)
    assert leaves, cls
    for name, _typ, _default, help_ in leaves:
        assert help_.strip(), f"{cls.__name__}.{name} has no help text"
    for name, f in _all_fields(cls):  # sections too
        assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{name} has no help text"


def test_flat_fields_show_the_parents_defaults():
    fields = {name: default for name, _t, default, _h in flat_fields(RunConfig)}
    assert fields["distill.train.lr"] == RunConfig().distill.train.lr
    assert fields["pairs.teacher.sampling.temperature"] == 0.5
    assert "methods" in fields and "eval.data.split" in fields


# ----------------------------------------------------------------------------------------------------------------
# shipped configs


# configs/accelerate/ holds accelerate's launch configs (tests/train/test_multiprocess.py runs them), not plad's
SHIPPED = sorted(
    p
    for p in {*REPO.glob("configs/**/*.yaml"), *REPO.glob("configs/**/*.yml")}
    if p.parent != REPO / "configs" / "accelerate"
)


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_config_loads(path):
    """Every shipped config is the config of exactly one command (run, bench or sweep)."""
    from plad.config import BenchConfig, SweepConfig

    loaded = []
    for cls in (RunConfig, BenchConfig, SweepConfig):
        try:
            loaded.append(load_config(cls, path))
        except ConfigError:
            pass
    assert len(loaded) == 1, [type(c).__name__ for c in loaded]


# ----------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_dash_spelling_and_bool_flag(monkeypatch):
    """`--max-steps` works like `--max_steps`; a bare bool flag means true."""
    import plad.cli as cli

    seen = {}

    def fake_run_sft(cfg):
        seen["cfg"] = cfg
        return {}

    import plad.train.stages

    monkeypatch.setattr(plad.train.stages, "run_sft", fake_run_sft)
    assert cli.main(["-q", "sft", "--train.max-steps", "3", "--resume", "--train.lr", "1e-2"]) == 0
    cfg = seen["cfg"]
    assert cfg.train.max_steps == 3 and cfg.resume is True and cfg.train.lr == 0.01


@pytest.mark.parametrize("command", ["sft", "pairs", "distill", "eval", "run", "demo", "sweep"])
def test_cli_help_lists_every_field(command, capsys):
    from plad.cli import COMMANDS, main

    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    squashed = "".join(out.split())  # argparse wraps lines (and may break at hyphens)
    for name, _typ, _default, help_ in flat_fields(COMMANDS[command].config):
        assert f"--{name}" in out, name
        assert "".join(help_.split()) in squashed, name


def test_shipped_demo_config_is_the_demo_defaults():
    """configs/demo.yaml documents what `plad demo` runs; it must not drift from RunConfig's defaults."""
    from pathlib import Path

    from plad.config import RunConfig, load_config, to_dict

    path = Path(__file__).parents[2] / "configs" / "demo.yaml"
    shipped = load_config(RunConfig, path)
    expected = RunConfig(output_dir="runs/demo")
    assert to_dict(shipped) == to_dict(expected)
    # ... and spells out every setting (a key missing from the file would silently take the default)
    assert yaml.safe_load(path.read_text()) == to_dict(expected)


def test_settings_added_after_fingerprints_count_only_when_set():
    """eval.backend / api / vllm came after stage fingerprints existed: at their defaults they are left out of what a
    fingerprint hashes (run folders finished before stay valid); set, they change it."""
    from plad.config import ApiConfig, EvalConfig, fingerprint, result_settings

    assert not {"backend", "api", "vllm"} & set(result_settings(EvalConfig()))
    assert fingerprint(result_settings(EvalConfig())) == fingerprint(
        result_settings(EvalConfig(backend="hf"))
    )
    vllm = result_settings(EvalConfig(backend="vllm"))
    assert vllm["backend"] == "vllm" and "api" not in vllm
    api = result_settings(EvalConfig(backend="openai", api=ApiConfig(base_url="http://127.0.0.1:9/v1")))
    assert api["api"]["base_url"] == "http://127.0.0.1:9/v1"


def test_lora_and_gradient_checkpointing_leave_fingerprints_of_defaults_unchanged():
    """lora.* and train.gradient_checkpointing came after stage fingerprints existed: a default config hashes to
    what it hashed before them (values computed before they were added), so finished stages and --resume stay
    valid; LoRA on changes the fingerprint, gradient checkpointing (same gradients) never does."""
    from plad.config import HealConfig, LoraOptions, fingerprint, result_settings
    from plad.train.stages import resume_fingerprint

    before = {
        SFTConfig: "486dc31b86b15d9d",
        DistillConfig: "c2c3a9fa507c8141",
        HealConfig: "0d4cbabbbc0bfee5",
    }
    for cls, value in before.items():
        assert resume_fingerprint(as_resolved(cls())) == value, cls.__name__
    assert fingerprint(result_settings(as_resolved(RunConfig()))) == "5fed643cfbd2f40e"
    checkpointed = SFTConfig(train=TrainConfig(gradient_checkpointing=True, mixed_precision="no"))
    assert resume_fingerprint(checkpointed) == before[SFTConfig]
    assert resume_fingerprint(as_resolved(DistillConfig(lora=LoraOptions(r=8)))) != before[DistillConfig]


def test_a_lora_config_file_counts_by_its_contents(tmp_path: Path) -> None:
    """lora.config names a file: editing it in place changes the settings of a stage that reads it, so its
    fingerprint holds the file's digest, not only its path; a LoRA set by r alone hashes as before."""
    import json

    from plad.config import LoraOptions, result_settings

    path = tmp_path / "lora.json"
    path.write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    before = result_settings(DistillConfig(lora=LoraOptions(config=str(path))))["lora"]["config"]
    path.write_text(json.dumps({"r": 8, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    after = result_settings(DistillConfig(lora=LoraOptions(config=str(path))))["lora"]["config"]
    assert before["file"] == after["file"] == str(path) and before["sha256"] != after["sha256"]
    assert result_settings(DistillConfig(lora=LoraOptions(r=8)))["lora"]["config"] == ""


def test_group_by_length_fingerprints_the_order_it_draws():
    """group_by_length off is left out (it came after fingerprints existed); on, it counts the lengths it sorts by:
    shared_prompt changes them (a row per prompt), so two runs that draw different orders never share a
    fingerprint, and shared_prompt alone (the same values in fewer tokens) never changes one."""
    from plad.config import result_settings

    def counted(**kw: object) -> object:
        return result_settings(TrainConfig(**kw)).get("group_by_length", "left out")

    assert counted() == counted(shared_prompt=False) == "left out"
    assert counted(group_by_length=True, shared_prompt=False) is True  # as before shared_prompt existed
    assert counted(group_by_length=True) == "shared-prompt rows"
