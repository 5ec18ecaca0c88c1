"""Bad input, one table (issue 13): every command that takes input, run through the real CLI in this process.

Each case asserts: exit code 2; stderr ends in exactly one line `plad COMMAND: error: ...` that names the file (and
row) or the setting at fault; no traceback; nothing written or overwritten (every file and folder under the case's
folder and the shared tiny models, with bytes and mtimes, before and after; a case that seeds an output checks that
it is untouched). Model weights are never read unless the case says so (`weights=True`): bad input fails first.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Bench, main_inprocess

from plad.cli import build_parser

# ----------------------------------------------------------------------------------------------------------------
# files of the cases


def jl(path: Path, *rows: object) -> Path:
    """A JSONL file of `rows` (a str row is written as it is: a malformed line)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def text(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (path / name.replace("__", ".")).write_text(content)
    return path


ROW = {"id": "a", "prompt": "count: a b\nsummary:", "target": "a b"}
ROW2 = {"id": "b", "prompt": "count: c\nsummary:", "target": "c"}
CHAT = [{"role": "user", "content": "count: a"}]
PAIR = {"id": "p0", "prompt": "count: a b\nsummary:", "chosen": "a b", "rejected": "b"}
PAIR2 = {"id": "p1", "prompt": "count: c\nsummary:", "chosen": "c", "rejected": "c c"}


def bench_test_rows(b: Bench) -> list[dict]:
    return [json.loads(line) for line in b.test.read_text().splitlines() if line.strip()]


def outputs(t: Path, b: Bench, name: str = "o.jsonl", rows: list[dict] | None = None) -> Path:
    """Outputs of a system for the bench's test prompts (every id once)."""
    rows = rows if rows is not None else [{"id": r["id"], "output": r["target"]} for r in bench_test_rows(b)]
    return jl(t / name, *rows)


def bigger_tokenizer(t: Path, b: Bench) -> Path:
    """The bench tokenizer with 10 more tokens than the bench models embed."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(b.tokenizer)
    tok.add_tokens([f"extra{i}" for i in range(10)])
    tok.save_pretrained(t / "bigtok")
    return t / "bigtok"


def not_a_lm(t: Path, b: Bench, layers: int = 1) -> Path:
    """A folder holding a tiny DistilBERT encoder (no LM head) and the bench tokenizer."""
    from transformers import DistilBertConfig, DistilBertModel

    cfg = DistilBertConfig(
        vocab_size=400, dim=16, hidden_dim=32, n_layers=layers, n_heads=2, max_position_embeddings=64
    )
    DistilBertModel(cfg).save_pretrained(t / "bert")
    shutil.copytree(b.tokenizer, t / "bert", dirs_exist_ok=True)
    return t / "bert"


def two_layers(t: Path, b: Bench) -> Path:
    """The bench student's architecture with 2 layers (the bench models have 1: nothing to cut)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(b.student)
    config.num_hidden_layers = 2
    AutoModelForCausalLM.from_config(config).save_pretrained(t / "two")
    shutil.copytree(b.tokenizer, t / "two", dirs_exist_ok=True)
    return t / "two"


def t5(t: Path, b: Bench) -> Path:
    from model_families import build_family_model
    from transformers import AutoTokenizer

    build_family_model("t5", AutoTokenizer.from_pretrained(b.tokenizer), t / "t5")
    return t / "t5"


def other_vocabulary(t: Path, b: Bench) -> Path:
    """A model folder (the bench teacher's config) whose tokenizer has 10 more tokens: another vocabulary."""
    folder = bigger_tokenizer(t, b)
    shutil.copy(b.teacher / "config.json", folder / "config.json")
    return folder


def no_weights(t: Path, b: Bench) -> Path:
    """A model folder with its config and tokenizer but no weight file."""
    shutil.copytree(b.student, t / "noweights", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return t / "noweights"


def prepared_data(t: Path) -> Path:
    d = folder(t / "data")
    for split in ("train", "val", "test", "unlabeled"):
        jl(d / f"{split}.jsonl", ROW, ROW2)
    return d


def eval_results(t: Path, name: str, test_file: str, n: int = 2) -> Path:
    res = {"name": name, "judges": {}, "test_file": test_file, "n": n}
    return text(folder(t / name) / "results.json", json.dumps(res))


def run_yaml(t: Path, body: str, name: str = "run.yaml") -> Path:
    return text(t / name, body)


def files_yaml(t: Path, b: Bench, sft: object = None, distill: object = None, test: object = None) -> str:
    """A run config's data files: the bench's, with any replaced."""
    return (
        f"sft_file: {sft or b.sft}\ndistill_file: {distill or b.distill}\ntest_file: {test or b.test}\n"
        f"teacher: {b.teacher}\nstudent: {b.student}\n"
    )


# ----------------------------------------------------------------------------------------------------------------
# argument lists of the commands, each good but for what a case changes (a later option overrides an earlier one)


def sft(t: Path, b: Bench, *extra: object) -> list:
    return ["sft", "--model", b.student, "--train_file", b.sft, "--output_dir", t / "out", *extra]


def pairs(t: Path, b: Bench, *extra: object) -> list:
    return [
        "pairs", "--prompts_file", b.distill, "--output_dir", t / "out",
        "--teacher.model", b.teacher, "--student.model", b.student, *extra,
    ]  # fmt: skip


def distill(t: Path, b: Bench, *extra: object) -> list:
    good = jl(t / "good-pairs.jsonl", PAIR, PAIR2)
    return ["distill", "--model", b.student, "--pairs_file", good, "--output_dir", t / "out", *extra]


def evaluate(t: Path, b: Bench, *extra: object) -> list:
    return ["eval", "--model", b.student, "--test_file", b.test, "--output_dir", t / "out", *extra]


def judge(t: Path, b: Bench, *extra: object) -> list:
    """eval of given outputs (no model)."""
    return ["eval", "--outputs_file", outputs(t, b), "--test_file", b.test, "--output_dir", t / "out", *extra]


def heal(t: Path, b: Bench, *extra: object) -> list:
    texts = jl(t / "texts.jsonl", *[{"text": f"count: {'a ' * i}summary: {i}"} for i in range(1, 9)])
    return [
        "heal",
        "--model",
        b.student,
        "--text_file",
        texts,
        "--output_dir",
        t / "out",
        "--val_texts",
        2,
        *extra,
    ]


def prune(t: Path, b: Bench, *extra: object) -> list:
    return ["prune", "--model", b.student, "--output_dir", t / "out", *extra]


def prepare(t: Path, *extra: object) -> list:
    return ["prepare", "--cache_dir", t / "cache", "--data_dir", prepared_data(t), *extra]


def run_cfg(t: Path, b: Bench, body: str) -> list:
    return ["run", run_yaml(t, f"output_dir: {t / 'out'}\n{body}")]


def run_over_another_stage(t: Path, b: Bench) -> list:
    """plad run into a folder whose teacher-sft stage was made with other settings (kept: refused, not redone)."""
    folder(t / "out", run_config__yaml="seed: 0\n")
    marker = {"fingerprint": "made-with-other-settings", "done": True}
    folder(t / "out" / "teacher-sft", stage__json=json.dumps(marker))
    return run_cfg(t, b, files_yaml(t, b))


def bench(t: Path, *extra: object) -> list:
    return ["bench", "--output_dir", t / "out", *extra]


def sweep(t: Path, *extra: object) -> list:
    return ["sweep", "--output_dir", t / "out", *extra]


# ----------------------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Case:
    # (case folder, bench) -> (the command line after `plad -q`, substrings of its one error line)
    make: Callable[[Path, Bench], tuple[list, list[str]]]
    weights: bool = False  # the error can only show once a model's weights are read


def case(id_: str, make: Callable, weights: bool = False, marks: Any = ()):
    return pytest.param(Case(make, weights), id=id_, marks=marks)


def p(t: Path, name: str) -> str:
    return str(t / name)


CASES = [
    # ---- command line and config files, common to all commands ------------------------------------------------
    case(
        "cli-unknown-setting-typo",
        lambda t, b: (
            pairs(t, b, "--num_students_samples", 2),
            ["unknown setting --num_students_samples", "did you mean --num_student_samples"],
        ),
    ),
    case(
        "cli-unknown-setting-by-its-words",
        lambda t, b: (
            sft(t, b, "--train.lr_rate", 1),
            ["unknown setting --train.lr_rate; did you mean --train.lr"],
        ),
    ),
    case("cli-unknown-section", lambda t, b: (sft(t, b, "--trian.lr", 1), ["did you mean --train.lr"])),
    case(
        "cli-unknown-top-setting",
        lambda t, b: (distill(t, b, "--modle", "x"), ["unknown setting --modle; did you mean --model"]),
    ),
    case(
        "cli-report-typo",
        lambda t, b: (
            ["report", "r.json", "--titel", "t"],
            ["unknown setting --titel; did you mean --title"],
        ),
    ),
    case(
        "cli-unknown-section-key",
        lambda t, b: (
            heal(t, b, "--train.learnrate", 1),
            ["unknown setting --train.learnrate", "--train.lr"],
        ),
    ),
    case(
        "cli-option-without-value",
        lambda t, b: (distill(t, b, "--method"), ["argument --method: expected one argument"]),
    ),
    case("cli-unknown-command", lambda t, b: (["distil"], ["invalid choice: 'distil'"])),
    case(
        "cli-bad-choice",
        lambda t, b: (
            sft(t, b, "--train.schedule", "cosin"),
            ["train: schedule = 'cosin' is not allowed", "cosine, linear, constant"],
        ),
    ),
    case(
        "cli-int-not-a-number",
        lambda t, b: (heal(t, b, "--max_tokens", "many"), ["max_tokens must be an integer, got 'many'"]),
    ),
    case(
        "cli-int-given-a-fraction",
        lambda t, b: (
            sft(t, b, "--train.batch_size", "2.5"),
            ["train.batch_size must be an integer, got '2.5'"],
        ),
    ),
    case(
        "cli-bool-not-a-bool",
        lambda t, b: (sft(t, b, "--resume", "maybe"), ["resume must be true or false, got 'maybe'"]),
    ),
    case(
        "cli-negative-warmup",
        lambda t, b: (
            distill(t, b, "--train.warmup_steps", -5),
            ["train: warmup_steps must be >= 0 (got -5)"],
        ),
    ),
    case(
        "cli-negative-temperature",
        lambda t, b: (
            pairs(t, b, "--teacher.sampling.temperature", "-0.5"),
            ["teacher.sampling: temperature must be >= 0 (got -0.5)"],
        ),
    ),
    case(
        "cli-negative-lr-scientific",
        lambda t, b: (sft(t, b, "--train.lr", "-1e-3"), ["train: lr must be > 0 (got -0.001)"]),
    ),
    case(
        "cli-negative-run-threads",
        lambda t, b: (bench(t, "--run.threads", -2), ["run.threads must be >= 0", "got -2"]),
    ),
    case(
        "cli-negative-threads", lambda t, b: (heal(t, b, "--threads", -1), ["threads must be >= 0", "got -1"])
    ),
    case("cli-negative-limit", lambda t, b: (pairs(t, b, "--limit", -3), ["limit must be >= 0"])),
    case(
        "cli-top-p-out-of-range",
        lambda t, b: (
            evaluate(t, b, "--generation.top_p", 1.5),
            ["generation: top_p must be in (0, 1] (got 1.5)"],
        ),
    ),
    case(
        "cli-zero-prompt-tokens",
        lambda t, b: (
            sft(t, b, "--data.max_prompt_tokens", 0),
            ["data: max_prompt_tokens and max_target_tokens must be >= 1"],
        ),
    ),
    case(
        "config-empty-stop-string",
        lambda t, b: (
            pairs(t, b, "--config", text(t / "c.yaml", 'student:\n  sampling:\n    stop: ["\\n", ""]\n')),
            ["student.sampling: stop strings must be non-empty texts", str(t / "c.yaml")],
        ),
    ),
    case(
        "config-file-missing",
        lambda t, b: (
            ["sft", "--config", t / "nowhere.yaml"],
            [f"config file {t / 'nowhere.yaml'} does not exist"],
        ),
    ),
    case(
        "config-run-file-missing",
        lambda t, b: (["run", t / "nowhere.yaml"], [f"config file {t / 'nowhere.yaml'} does not exist"]),
    ),
    case(
        "config-file-is-a-folder",
        lambda t, b: (
            ["distill", "--config", folder(t / "configs")],
            [f"config file {t / 'configs'} is a folder"],
        ),
    ),
    case("config-run-without-file", lambda t, b: (["run"], ["the following arguments are required: CONFIG"])),
    case(
        "report-no-results",
        lambda t, b: (
            ["report", "--output_dir", t / "out"],
            ["the following arguments are required: RESULTS"],
        ),
    ),
    case(
        "config-yaml-syntax",
        lambda t, b: (
            ["distill", "--config", text(t / "c.yaml", "method: plad-rank\ntrain:\n  lr: [1e-4\n")],
            [f"config file {t / 'c.yaml'} is not valid YAML", "line 3"],
        ),
    ),
    case(
        "config-yaml-tab-indent",
        lambda t, b: (
            ["sft", "--config", text(t / "c.yaml", "train:\n\tlr: 1e-4\n")],
            [f"config file {t / 'c.yaml'} is not valid YAML", "line 2"],
        ),
    ),
    case(
        "config-yaml-key-twice",
        lambda t, b: (
            ["sft", "--config", text(t / "c.yaml", "train:\n  lr: 1e-4\nmodel: m\ntrain:\n  max_steps: 5\n")],
            [
                f"config file {t / 'c.yaml'} is not valid YAML: line 4, column 1: key 'train' is given twice (first on line 1)"
            ],
        ),
    ),
    case(
        "config-not-utf8",
        lambda t, b: (
            ["sft", "--config", text(t / "c.yaml", b"model: caf\xe9\n")],
            [f"config file {t / 'c.yaml'} is not valid YAML: byte 10 is not UTF-8 text"],
        ),
    ),
    case(
        "config-yaml-top-level-list",
        lambda t, b: (
            ["eval", "--config", text(t / "c.yaml", "- model: x\n")],
            [f"config file {t / 'c.yaml'} must hold a mapping of settings"],
        ),
    ),
    case(
        "config-unknown-nested-key",
        lambda t, b: (
            run_cfg(t, b, "distill:\n  train:\n    lr_rate: 1e-4\n"),
            ["unknown config key 'distill.train.lr_rate'", "did you mean lr", str(t / "run.yaml")],
        ),
    ),
    case(
        "config-section-given-a-number",
        lambda t, b: (
            ["sft", "--config", text(t / "c.yaml", "train: 5\n")],
            ["train must be a mapping of settings, got 5", str(t / "c.yaml")],
        ),
    ),
    case(
        "config-null-integer",
        lambda t, b: (
            ["heal", "--config", text(t / "c.yaml", "train:\n  max_steps: null\n")],
            ["train.max_steps must be an integer, got None", str(t / "c.yaml")],
        ),
    ),
    case(
        "config-bool-for-integer",
        lambda t, b: (
            ["distill", "--config", text(t / "c.yaml", "train:\n  batch_size: true\n")],
            ["train.batch_size must be an integer, got True"],
        ),
    ),
    case(
        "config-mapping-for-list",
        lambda t, b: (run_cfg(t, b, "methods: {plad-rank: 1}\n"), ["methods must be a list"]),
    ),
    case(
        "config-list-for-text",
        lambda t, b: (
            ["pairs", "--config", text(t / "c.yaml", "teacher:\n  model: [a, b]\n")],
            ["teacher.model must be a string"],
        ),
    ),
    case(
        "config-missing-required",
        lambda t, b: (
            ["sft", "--config", text(t / "c.yaml", f"model: {b.student}\n")],
            ["missing train_file, output_dir", "--train_file, --output_dir"],
        ),
    ),
    case(
        "config-unknown-method-run",
        lambda t, b: (
            run_cfg(t, b, "methods: [sft, plad-rnak]\n"),
            ["methods: unknown method 'plad-rnak'", "plad-rank"],
        ),
    ),
    case(
        "config-unknown-judge", lambda t, b: (judge(t, b, "--judge", "rouge,bleu"), ["unknown judge 'bleu'"])
    ),
    case(
        "config-judge-twice",
        lambda t, b: (judge(t, b, "--judge", "rouge,rouge"), ["judge lists a judge twice"]),
    ),
    case(
        "config-bad-base-url",
        lambda t, b: (
            pairs(t, b, "--teacher.backend", "openai", "--teacher.api.base_url", "ftp://host/v1"),
            ["teacher.api: base_url must be an http:// or https:// URL", "ftp://host/v1"],
        ),
    ),
    case(
        "config-extra-body-not-json",
        lambda t, b: (
            pairs(t, b, "--student.api.extra_body", "{min_p: 1}"),
            ["student.api: extra_body is not valid JSON"],
        ),
    ),
    case(
        "config-template-without-slot",
        lambda t, b: (
            pairs(t, b, "--teacher.api.prompt_template", "Q:"),
            ["teacher.api: prompt_template must contain {prompt}"],
        ),
    ),
    case(
        "config-verdict-regex",
        lambda t, b: (
            judge(t, b, "--llm_judge.verdict_regex", "(A|B"),
            ["llm_judge.verdict_regex is not a regular expression"],
        ),
    ),
    # ---- sft -----------------------------------------------------------------------------------------------
    case(
        "sft-malformed-json-line",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", ROW, "{oops", ROW2)),
            [f"{p(t, 'd.jsonl')}:2: not valid JSON"],
        ),
    ),
    case(
        "sft-line-not-an-object",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", ROW, ROW2, "[1, 2]")),
            [f"{p(t, 'd.jsonl')}:3: each line must be a JSON object, got list"],
        ),
    ),
    case(
        "sft-not-utf8",
        lambda t, b: (
            sft(t, b, "--train_file", text(t / "d.jsonl", json.dumps(ROW).encode() + b'\n{"id": "\xff"}\n')),
            [f"{p(t, 'd.jsonl')}:2: not valid JSON"],
        ),
    ),
    case(
        "sft-empty-file",
        lambda t, b: (
            sft(t, b, "--train_file", text(t / "d.jsonl", "\n\n")),
            [f"{p(t, 'd.jsonl')}: the training data is empty"],
        ),
    ),
    case(
        "sft-file-missing",
        lambda t, b: (
            sft(t, b, "--train_file", t / "nope.jsonl"),
            [f"data file {p(t, 'nope.jsonl')} does not exist"],
        ),
    ),
    case(
        "sft-folder-not-a-dataset",
        lambda t, b: (
            sft(t, b, "--train_file", folder(t / "notds", readme__txt="hi")),
            [
                f"training data {p(t, 'notds')} is a folder but not a dataset saved with datasets' save_to_disk"
            ],
        ),
    ),
    case(
        "sft-prompt-field-setting",
        lambda t, b: (
            sft(t, b, "--data.prompt_field", "question"),
            [f"{b.sft}:1: missing prompt field 'question'", "data.prompt_field"],
        ),
    ),
    case(
        "sft-missing-prompt-field",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", ROW, {"id": "z", "text": "x"})),
            [f"{p(t, 'd.jsonl')}:2: missing prompt field 'prompt' (has id, text)", "data.prompt_field"],
        ),
    ),
    case(
        "sft-prompt-null",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", {**ROW, "prompt": None})),
            [f"{p(t, 'd.jsonl')}:1: field 'prompt' is null"],
        ),
    ),
    case(
        "sft-target-number",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", {**ROW, "target": 5})),
            [f"{p(t, 'd.jsonl')}:1: field 'target' holds a number (5), not text"],
        ),
    ),
    case(
        "sft-chat-message-without-role",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", {**ROW, "prompt": [{"content": "x"}]})),
            [f"{p(t, 'd.jsonl')}:1: field 'prompt' must be text or [{{role, content}}, ...]"],
        ),
    ),
    case(
        "sft-target-list",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", ROW, {**ROW2, "target": ["c"]})),
            [f"{p(t, 'd.jsonl')}:2: field 'target' holds a list"],
        ),
    ),
    case(
        "sft-target-null",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", {**ROW, "target": None})),
            [f"{p(t, 'd.jsonl')}:1: field 'target' is null"],
        ),
    ),
    case(
        "sft-prompt-empty",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", ROW, {**ROW2, "prompt": ""})),
            [f"{p(t, 'd.jsonl')}:2: field 'prompt' must be non-empty text"],
        ),
    ),
    case(
        "sft-prompt-number",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", {**ROW, "prompt": 7})),
            [f"{p(t, 'd.jsonl')}:1: field 'prompt' must be non-empty text"],
        ),
    ),
    case(
        "sft-duplicate-id-number-and-text",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", {**ROW, "id": 1}, {**ROW2, "id": "1"})),
            [f"{p(t, 'd.jsonl')}:2: duplicate id '1' in field 'id'"],
        ),
    ),
    case(
        "sft-chat-without-template",
        lambda t, b: (
            sft(t, b, "--train_file", jl(t / "d.jsonl", ROW, {**ROW2, "prompt": CHAT})),
            [f"{p(t, 'd.jsonl')} id b: the prompt is chat messages", "has no chat template"],
        ),
    ),
    case(
        "sft-overlong-prompt-error",
        lambda t, b: (
            sft(t, b, "--data.max_prompt_tokens", 2, "--data.overlong", "error"),
            [f"{b.sft} id ", "over data.max_prompt_tokens=2"],
        ),
    ),
    case(
        "sft-model-folder-missing",
        lambda t, b: (
            sft(t, b, "--model", t / "nomodel"),
            [f"model folder {p(t, 'nomodel')} does not exist"],
        ),
    ),
    case(
        "sft-model-folder-empty",
        lambda t, b: (sft(t, b, "--model", folder(t / "empty")), [f"model folder {p(t, 'empty')} is empty"]),
    ),
    case(
        "sft-model-not-a-lm",
        lambda t, b: (
            sft(t, b, "--model", not_a_lm(t, b)),
            [p(t, "bert"), "not a language model that generates text"],
        ),
    ),
    case(
        "sft-model-without-weights",
        lambda t, b: (sft(t, b, "--model", no_weights(t, b)), [p(t, "noweights")]),
        weights=True,
    ),
    case(
        "sft-tokenizer-bigger-than-model",
        lambda t, b: (
            sft(t, b, "--tokenizer", bigger_tokenizer(t, b)),
            [f"tokenizer {p(t, 'bigtok')} has", f"model {b.student} embeds only", "do not belong together"],
        ),
    ),
    case(
        "sft-output-holds-a-finished-run",
        lambda t, b: (
            sft(t, b, "--output_dir", folder(t / "done", train_summary__json='{"fingerprint": "x"}')),
            [f"output_dir {p(t, 'done')} already holds a training run", "--resume"],
        ),
    ),
    case(
        "sft-resume-other-settings",
        lambda t, b: (
            sft(
                t,
                b,
                "--resume",
                "--output_dir",
                folder(t / "done", train_summary__json='{"fingerprint": "x"}'),
            ),
            [f"--resume: the run in {p(t, 'done')}", "different config"],
        ),
    ),
    case(
        "sft-output-dir-is-a-file",
        lambda t, b: (
            sft(t, b, "--output_dir", text(t / "afile", "x")),
            [f"output_dir {p(t, 'afile')} is not writable"],
        ),
    ),
    # ---- pairs ---------------------------------------------------------------------------------------------
    case(
        "pairs-malformed-json",
        lambda t, b: (
            pairs(t, b, "--prompts_file", jl(t / "d.jsonl", {"id": "1", "prompt": "count: a"}, "{")),
            [f"{p(t, 'd.jsonl')}:2: not valid JSON"],
        ),
    ),
    case(
        "pairs-student-tokenizer-bigger",
        lambda t, b: (
            pairs(t, b, "--student.tokenizer", bigger_tokenizer(t, b)),
            [f"tokenizer {p(t, 'bigtok')} has"],
        ),
    ),
    case(
        "pairs-teacher-tokenizer-missing",
        lambda t, b: (
            pairs(t, b, "--teacher.tokenizer", t / "nt"),
            [f"teacher tokenizer folder {p(t, 'nt')} does not exist"],
        ),
    ),
    case(
        "pairs-status-bad-prompts",
        lambda t, b: (
            pairs(t, b, "--status", "--prompts_file", jl(t / "d.jsonl", ROW, "{")),
            [f"{p(t, 'd.jsonl')}:2: not valid JSON"],
        ),
    ),
    case(
        "pairs-export-no-store",
        lambda t, b: (
            ["pairs", "--output_dir", t / "nostore", "--export", t / "ds"],
            [f"output_dir {p(t, 'nostore')} holds no pairs.jsonl"],
        ),
    ),
    case(
        "pairs-overlong-error",
        lambda t, b: (
            pairs(t, b, "--data.max_prompt_tokens", 2, "--data.overlong", "error"),
            ["over data.max_prompt_tokens=2"],
        ),
    ),
    case(
        "pairs-student-api-key-not-set",
        lambda t, b: (
            pairs(
                t,
                b,
                "--student.backend",
                "openai",
                "--student.model",
                "m",
                "--student.api.base_url",
                "http://127.0.0.1:9/v1",
                "--student.api.api_key_env",
                "PLAD_TEST_NO_SUCH_KEY",
            ),
            [
                "student (backend openai): environment variable PLAD_TEST_NO_SUCH_KEY (api.api_key_env) is not set"
            ],
        ),
    ),
    case(
        "pairs-null-prompt",
        lambda t, b: (
            pairs(t, b, "--prompts_file", jl(t / "d.jsonl", ROW, {"id": "n", "prompt": None})),
            [f"{p(t, 'd.jsonl')}:2: field 'prompt' is null"],
        ),
    ),
    case(
        "pairs-student-model-missing",
        lambda t, b: (
            pairs(t, b, "--student.model", t / "nostudent"),
            [f"folder {p(t, 'nostudent')} does not exist"],
        ),
    ),
    case(
        "pairs-teacher-not-set",
        lambda t, b: (
            ["pairs", "--prompts_file", b.distill, "--output_dir", t / "out", "--student.model", b.student],
            ["missing teacher.model", "--teacher.model"],
        ),
    ),
    case(
        "pairs-chat-without-template",
        lambda t, b: (
            pairs(t, b, "--prompts_file", jl(t / "d.jsonl", {"id": "c", "prompt": CHAT})),
            [f"{p(t, 'd.jsonl')} id c: the prompt is chat messages", "no chat template"],
        ),
    ),
    case(
        "pairs-unknown-scorer",
        lambda t, b: (pairs(t, b, "--scorer", "count-sumary"), ["unknown scorer 'count-sumary'"]),
    ),
    case(
        "pairs-rouge-without-targets",
        lambda t, b: (
            pairs(t, b, "--scorer", "rouge"),
            [f"{b.distill} id ", "scorer rouge", "has none", "teacher-logp"],
        ),
    ),
    case(
        "pairs-rank-by-other-scorer",
        lambda t, b: (
            pairs(t, b, "--rank_by", "rouge", "--scorer", "teacher-logp"),
            ["rank_by = 'rouge' but scorer = 'teacher-logp'"],
        ),
    ),
    case(
        "pairs-zero-samples",
        lambda t, b: (pairs(t, b, "--num_student_samples", 0), ["num_student_samples must be >= 1"]),
    ),
    case(
        "pairs-openai-student-without-url",
        lambda t, b: (
            pairs(t, b, "--student.backend", "openai", "--student.model", "gpt"),
            ["student: backend openai needs api.base_url"],
        ),
    ),
    # ---- distill -------------------------------------------------------------------------------------------
    case(
        "distill-chat-no-template",
        lambda t, b: (
            distill(t, b, "--pairs_file", jl(t / "x.jsonl", {**PAIR, "prompt": CHAT})),
            [f"{p(t, 'x.jsonl')} id p0", "no chat template"],
        ),
    ),
    case(
        "distill-overlong-error",
        lambda t, b: (
            distill(t, b, "--data.max_target_tokens", 1, "--data.overlong", "error"),
            ["over data.max_target_tokens=1"],
        ),
    ),
    case(
        "distill-unknown-method",
        lambda t, b: (distill(t, b, "--method", "plad_rank"), ["unknown method 'plad_rank'", "plad-rank"]),
    ),
    case(
        "distill-pairs-file-missing",
        lambda t, b: (
            distill(t, b, "--pairs_file", t / "none.jsonl"),
            [f"pairs file {p(t, 'none.jsonl')} does not exist", "plad pairs"],
        ),
    ),
    case(
        "distill-pairs-empty",
        lambda t, b: (
            distill(t, b, "--pairs_file", text(t / "e.jsonl", "")),
            [f"{p(t, 'e.jsonl')}: no pairs"],
        ),
    ),
    case(
        "distill-pairs-missing-chosen",
        lambda t, b: (
            distill(
                t,
                b,
                "--pairs_file",
                jl(t / "x.jsonl", PAIR, {k: v for k, v in PAIR2.items() if k != "chosen"}),
            ),
            [f"{p(t, 'x.jsonl')}:2: missing field 'chosen'"],
        ),
    ),
    case(
        "distill-pairs-null-rejected",
        lambda t, b: (
            distill(t, b, "--pairs_file", jl(t / "x.jsonl", PAIR, {**PAIR2, "rejected": None})),
            [f"{p(t, 'x.jsonl')}:2: field 'rejected' holds null"],
        ),
    ),
    case(
        "distill-pairs-numeric-chosen",
        lambda t, b: (
            distill(t, b, "--pairs_file", jl(t / "x.jsonl", {**PAIR, "chosen": 3})),
            [f"{p(t, 'x.jsonl')}:1: field 'chosen' holds a number"],
        ),
    ),
    case(
        "distill-pairs-null-prompt",
        lambda t, b: (
            distill(t, b, "--pairs_file", jl(t / "x.jsonl", PAIR, {**PAIR2, "prompt": None})),
            [f"{p(t, 'x.jsonl')}:2: field 'prompt' holds null"],
        ),
    ),
    case(
        "distill-pairs-id-used-twice",
        lambda t, b: (
            distill(t, b, "--pairs_file", jl(t / "x.jsonl", PAIR, PAIR2, {**PAIR, "chosen": "other"})),
            [f"{p(t, 'x.jsonl')}:3: pair id 'p0' already used on line 1 with other content"],
        ),
    ),
    case(
        "distill-pairs-missing-rejected",
        lambda t, b: (
            distill(t, b, "--pairs_file", jl(t / "x.jsonl", PAIR, {"id": "2", "prompt": "x", "chosen": "y"})),
            [f"{p(t, 'x.jsonl')}:2: missing field 'rejected'"],
        ),
    ),
    case(
        "distill-margin-without-scores",
        lambda t, b: (
            distill(t, b, "--method", "plad-margin"),
            [f"{p(t, 'good-pairs.jsonl')}:1: this method needs scores", "--scorer teacher-logp"],
        ),
    ),
    case(
        "distill-method-typo",
        lambda t, b: (
            distill(t, b, "--method", "plad-rnak"),
            ["unknown method 'plad-rnak'", "did you mean plad-rank"],
        ),
    ),
    case(
        "distill-margin-score-null",
        lambda t, b: (
            distill(
                t,
                b,
                "--method",
                "plad-margin",
                "--pairs_file",
                jl(t / "x.jsonl", {**PAIR, "scores": {"chosen": None, "rejected": 0.5}}),
            ),
            [f"{p(t, 'x.jsonl')}:1: this method needs scores.chosen and scores.rejected", "--scorer"],
        ),
    ),
    case(
        "distill-dpkd-without-teacher-logps",
        lambda t, b: (
            distill(t, b, "--method", "dpkd"),
            [
                f"{p(t, 'good-pairs.jsonl')}:1: this method needs the teacher's log-probs",
                "--teacher_logprobs true",
            ],
        ),
    ),
    case(
        "distill-kd-without-teacher",
        lambda t, b: (
            distill(t, b, "--method", "kd", "--loss.token_data", "teacher"),
            ["missing teacher", "--teacher"],
        ),
    ),
    case(
        "distill-kd-teacher-missing",
        lambda t, b: (
            distill(t, b, "--method", "kd", "--loss.token_data", "teacher", "--teacher", t / "noteacher"),
            [f"teacher folder {p(t, 'noteacher')} does not exist"],
        ),
    ),
    case(
        "distill-kd-other-vocabulary",
        lambda t, b: (
            distill(
                t,
                b,
                "--method",
                "kd",
                "--loss.token_data",
                "teacher",
                "--teacher",
                b.teacher,
                "--teacher_tokenizer",
                bigger_tokenizer(t, b),
            ),
            ["method kd", "both must use one vocabulary", p(t, "bigtok")],
        ),
    ),
    case(
        "distill-target-regularizer-without-data",
        lambda t, b: (distill(t, b, "--loss.regularizer", "target"), ["missing train_file", "--train_file"]),
    ),
    case(
        "distill-target-regularizer-bad-data",
        lambda t, b: (
            distill(
                t, b, "--loss.regularizer", "target", "--train_file", jl(t / "d.jsonl", ROW, {"id": "x"})
            ),
            [f"{p(t, 'd.jsonl')}:2: missing prompt field 'prompt'"],
        ),
    ),
    case(
        "distill-rounds-with-dpkd",
        lambda t, b: (distill(t, b, "--method", "dpkd", "--rounds", 2), ["rounds = 2", "not dpkd"]),
    ),
    case(
        "distill-rounds-margin-without-scorer",
        lambda t, b: (
            distill(t, b, "--method", "plad-margin", "--rounds", 3),
            ["rounds = 3 with plad-margin: set scorer"],
        ),
    ),
    case(
        "distill-rounds-vllm-missing",
        lambda t, b: (
            distill(t, b, "--rounds", 2, "--rounds_backend", "vllm"),
            ["backend vllm needs the vLLM package", "pip install 'plad[vllm]'"],
        ),
        marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed"),
    ),
    case(
        "distill-data-fraction",
        lambda t, b: (distill(t, b, "--data_fraction", 1.5), ["data_fraction must be in (0, 1] (got 1.5)"]),
    ),
    case(
        "distill-skew-alpha",
        lambda t, b: (
            distill(t, b, "--loss.skew_alpha", 2),
            ["loss: skew_alpha must be in [0, 1] (got 2.0)"],
        ),
    ),
    # ---- eval ----------------------------------------------------------------------------------------------
    case(
        "eval-openai-without-url",
        lambda t, b: (evaluate(t, b, "--backend", "openai"), ["backend openai needs api.base_url"]),
    ),
    case(
        "eval-openai-calibration",
        lambda t, b: (
            evaluate(
                t,
                b,
                "--backend",
                "openai",
                "--api.base_url",
                "http://127.0.0.1:9/v1",
                "--calibration_file",
                jl(t / "cal.jsonl", PAIR),
            ),
            ["calibration_file measures a local model's log-probs"],
        ),
    ),  # fmt: skip
    case(
        "eval-chat-prompts-task-scorer",
        lambda t, b: (
            evaluate(
                t,
                b,
                "--scorer",
                "count-summary",
                "--test_file",
                jl(t / "t.jsonl", {**ROW, "id": "q1", "prompt": CHAT}),
            ),
            [f"{p(t, 't.jsonl')} id q1: scorer count-summary is a task scorer, which needs text prompts"],
        ),
    ),
    case(
        "eval-test-malformed",
        lambda t, b: (
            evaluate(t, b, "--test_file", jl(t / "t.jsonl", ROW, "{")),
            [f"{p(t, 't.jsonl')}:2: not valid JSON"],
        ),
    ),
    case(
        "eval-outputs-other-prompts",
        lambda t, b: (
            judge(
                t,
                b,
                "--outputs_file",
                outputs(
                    t,
                    b,
                    "m.jsonl",
                    [
                        {"id": r["id"], "prompt": "count: a\nsummary:", "output": r["target"]}
                        for r in bench_test_rows(b)
                    ],
                ),
            ),
            [
                f"outputs_file: {p(t, 'm.jsonl')} id {bench_test_rows(b)[0]['id']} has another prompt than the test data"
            ],
        ),
    ),
    case(
        "eval-outputs-missing-ids",
        lambda t, b: (
            judge(
                t,
                b,
                "--outputs_file",
                outputs(
                    t, b, "s.jsonl", [{"id": r["id"], "output": r["target"]} for r in bench_test_rows(b)[:-2]]
                ),
            ),
            [f"outputs_file: {p(t, 's.jsonl')} was made on other prompts (2 test ids missing"],
        ),
    ),
    case(
        "eval-outputs-row-without-output",
        lambda t, b: (
            judge(
                t,
                b,
                "--outputs_file",
                outputs(
                    t,
                    b,
                    "x.jsonl",
                    [{"id": r["id"], "output": "x"} for r in bench_test_rows(b)[:1]]
                    + [{"id": "y", "text": "x"}],
                ),
            ),
            [f"outputs_file: {p(t, 'x.jsonl')}:2 needs an 'id' and a text 'output'"],
        ),
    ),
    case(
        "eval-outputs-file-missing",
        lambda t, b: (
            judge(t, b, "--outputs_file", t / "none.jsonl"),
            [f"outputs_file: {p(t, 'none.jsonl')} does not exist"],
        ),
    ),
    case(
        "eval-llm-judge-without-model",
        lambda t, b: (
            judge(t, b, "--judge", "llm"),
            ["judge llm needs llm_judge.model and llm_judge.api.base_url"],
        ),
    ),
    case(
        "eval-calibration-without-model",
        lambda t, b: (
            judge(
                t,
                b,
                "--calibration_file",
                jl(t / "cal.jsonl", {"prompt": "x", "chosen": "a", "rejected": "b"}),
            ),
            ["calibration_file needs model"],
        ),
    ),
    case(
        "eval-calibration-missing-rejected",
        lambda t, b: (
            evaluate(t, b, "--calibration_file", jl(t / "cal.jsonl", {"prompt": "x", "chosen": "a"})),
            [f"{p(t, 'cal.jsonl')}:1: missing field 'rejected'"],
        ),
    ),
    case(
        "eval-length-edges-decreasing",
        lambda t, b: (judge(t, b, "--length_edges", "8,4"), ["length_edges must increase (got ['8', '4'])"]),
    ),
    case(
        "eval-model-missing",
        lambda t, b: (
            evaluate(t, b, "--model", t / "nomodel"),
            [f"model folder {p(t, 'nomodel')} does not exist"],
        ),
    ),
    case(
        "eval-chat-no-template",
        lambda t, b: (
            evaluate(t, b, "--test_file", jl(t / "t.jsonl", {**ROW, "prompt": CHAT})),
            [f"{p(t, 't.jsonl')} id a", "no chat template"],
        ),
    ),
    case(
        "eval-calibration-chat-no-template",
        lambda t, b: (
            evaluate(
                t,
                b,
                "--calibration_file",
                jl(t / "cal.jsonl", {"prompt": CHAT, "chosen": "a", "rejected": "b"}),
            ),
            [f"{p(t, 'cal.jsonl')}:1: the prompt is chat messages", "no chat template"],
        ),
    ),
    case(
        "eval-tokenizer-bigger",
        lambda t, b: (
            evaluate(t, b, "--tokenizer", bigger_tokenizer(t, b)),
            [f"tokenizer {p(t, 'bigtok')} has"],
        ),
    ),
    case(
        "eval-generation-cache-is-a-file",
        lambda t, b: (
            evaluate(t, b, "--generation_cache", text(t / "gc", "x")),
            [f"generation_cache {p(t, 'gc')} is a file"],
        ),
    ),
    case(
        "eval-needs-model-or-outputs",
        lambda t, b: (
            ["eval", "--test_file", b.test, "--output_dir", t / "out"],
            ["eval needs model", "outputs_file"],
        ),
    ),
    case(
        "eval-test-without-target",
        lambda t, b: (
            evaluate(
                t, b, "--test_file", jl(t / "t.jsonl", ROW, {"id": "q", "prompt": "count: a\nsummary:"})
            ),
            [f"{p(t, 't.jsonl')}:2: missing or empty target field 'target'"],
        ),
    ),
    case(
        "eval-outputs-null-output",
        lambda t, b: (
            judge(
                t,
                b,
                "--outputs_file",
                outputs(t, b, "n.jsonl", [{"id": r["id"], "output": None} for r in bench_test_rows(b)]),
            ),
            [f"outputs_file: {p(t, 'n.jsonl')}:1 needs an 'id' and a text 'output'"],
        ),
    ),
    case(
        "eval-outputs-repeated-id",
        lambda t, b: (
            judge(
                t,
                b,
                "--outputs_file",
                outputs(
                    t,
                    b,
                    "r.jsonl",
                    [{"id": r["id"], "output": "x"} for r in bench_test_rows(b)]
                    + [{"id": bench_test_rows(b)[0]["id"], "output": "y"}],
                ),
            ),
            [f"outputs_file: {p(t, 'r.jsonl')}:13 repeats id"],
        ),
    ),
    case(
        "eval-outputs-unknown-ids",
        lambda t, b: (
            judge(
                t,
                b,
                "--outputs_file",
                outputs(
                    t,
                    b,
                    "u.jsonl",
                    [{"id": r["id"], "output": "x"} for r in bench_test_rows(b)]
                    + [{"id": "zz", "output": "y"}],
                ),
            ),
            [f"outputs_file: {p(t, 'u.jsonl')} was made on other prompts", "1 unknown ids"],
        ),
    ),
    case(
        "eval-compare-to-malformed",
        lambda t, b: (
            judge(t, b, "--compare_to", jl(t / "c.jsonl", {"id": "x", "output": "y"}, "{")),
            [f"compare_to: {p(t, 'c.jsonl')} is not valid JSONL", f"{p(t, 'c.jsonl')}:2"],
        ),
    ),
    case(
        "eval-compare-to-other-ids",
        lambda t, b: (
            judge(t, b, "--compare_to", outputs(t, b, "c.jsonl", [{"id": "x", "output": "y"}])),
            [f"compare_to: {p(t, 'c.jsonl')} was made on other prompts"],
        ),
    ),
    case("eval-unknown-scorer", lambda t, b: (judge(t, b, "--scorer", "nope"), ["unknown scorer 'nope'"])),
    case(
        "eval-task-judge-without-scorer",
        lambda t, b: (judge(t, b, "--judge", "task"), ["judge task needs scorer"]),
    ),
    case(
        "eval-reward-model-not-set",
        lambda t, b: (
            judge(t, b, "--judge", "reward-model"),
            ["judge reward-model needs reward_model.model"],
        ),
    ),
    case(
        "eval-llm-template-file-missing",
        lambda t, b: (
            judge(t, b, "--judge", "llm", "--llm_judge.template", t / "tpl.txt"),
            [f"llm_judge.template '{p(t, 'tpl.txt')}' is neither a shipped template"],
        ),
    ),
    case(
        "eval-llm-template-without-slots",
        lambda t, b: (
            judge(
                t,
                b,
                "--judge",
                "llm",
                "--llm_judge.template",
                text(t / "tpl.txt", "Which is better, {a} or {b}?"),
            ),
            [f"llm_judge.template {p(t, 'tpl.txt')} lacks {{prompt}}"],
        ),
    ),
    case(
        "eval-calibration-chosen-number",
        lambda t, b: (
            evaluate(
                t, b, "--calibration_file", jl(t / "cal.jsonl", {"prompt": "x", "chosen": 1, "rejected": "b"})
            ),
            [f"{p(t, 'cal.jsonl')}:1: chosen and rejected must be texts"],
        ),
    ),
    case(
        "eval-few-bootstrap-samples",
        lambda t, b: (judge(t, b, "--bootstrap_samples", 10), ["bootstrap_samples must be >= 100"]),
    ),
    case(
        "eval-length-edges-not-numbers",
        lambda t, b: (judge(t, b, "--length_edges", "short,long"), ["length_edges must be numbers"]),
    ),
    case(
        "eval-results-of-another-model",
        lambda t, b: (
            evaluate(
                t,
                b,
                "--output_dir",
                folder(
                    t / "prev",
                    generation__json=json.dumps({"fingerprint": "x", "model": "other-model", "seconds": 1.0}),
                ),
            ),
            [f"output_dir {p(t, 'prev')} holds the results of model other-model", "--force"],
        ),
    ),
    # ---- run, demo, bench, sweep ---------------------------------------------------------------------------
    case(
        "run-eval-through-an-endpoint",
        lambda t, b: (
            run_cfg(
                t,
                b,
                files_yaml(t, b) + "eval:\n  backend: openai\n  api: {base_url: http://127.0.0.1:9/v1}\n",
            ),
            ["eval.backend openai: the pipeline evaluates the models it trains"],
        ),
    ),
    case(
        "run-reward-model-judge-without-model",
        lambda t, b: (
            run_cfg(t, b, files_yaml(t, b) + "eval:\n  judge: [rouge, reward-model]\n"),
            ["judge reward-model needs reward_model.model"],
        ),
    ),
    case(
        "run-distill-file-only-prompts-missing-test-target",
        lambda t, b: (
            run_cfg(t, b, files_yaml(t, b, test=b.distill)),
            [f"{b.distill}:1: missing or empty target"],
        ),
    ),
    case(
        "run-only-some-files",
        lambda t, b: (
            run_cfg(t, b, f"sft_file: {b.sft}\n"),
            ["set all of sft_file, distill_file and test_file"],
        ),
    ),
    case(
        "run-sft-file-bad-row",
        lambda t, b: (
            run_cfg(t, b, files_yaml(t, b, sft=jl(t / "s.jsonl", ROW, {"id": "x", "prompt": "count: a"}))),
            [f"{p(t, 's.jsonl')}:2: missing or empty target field 'target'"],
        ),
    ),
    case(
        "run-test-file-chat-with-task",
        lambda t, b: (
            run_cfg(t, b, files_yaml(t, b, test=jl(t / "t.jsonl", {**ROW, "prompt": CHAT}))),
            [f"{p(t, 't.jsonl')} id a: task count-summary is a task scorer, which needs text prompts"],
        ),
    ),
    case(
        "run-teacher-missing",
        lambda t, b: (
            run_cfg(t, b, files_yaml(t, b).replace(f"teacher: {b.teacher}", f"teacher: {t / 'noteacher'}")),
            [f"folder {p(t, 'noteacher')} does not exist"],
        ),
    ),
    case(
        "run-stage-of-other-settings",
        lambda t, b: (
            run_over_another_stage(t, b),
            [f"stage 'teacher-sft' in {p(t, 'out/teacher-sft')} was run with other settings", "--force"],
        ),
    ),
    case(
        "run-pairs-model-set",
        lambda t, b: (
            run_cfg(t, b, "pairs:\n  teacher:\n    model: x\n"),
            ["pairs.teacher.model is set by the pipeline"],
        ),
    ),
    case(
        "run-unknown-preset",
        lambda t, b: (
            run_cfg(t, b, "benchmark:\n  student_preset: huge\n"),
            ["benchmark.student_preset: unknown model preset 'huge'"],
        ),
    ),
    case(
        "demo-unknown-preset-default-folder",
        lambda t, b: (
            ["demo", "--benchmark.teacher_preset", "teachr"],
            ["benchmark.teacher_preset: unknown model preset"],
        ),
    ),
    case(
        "bench-teacher-missing",
        lambda t, b: (
            bench(
                t,
                "--seeds",
                0,
                "--methods",
                "sft",
                "--run.sft_file",
                b.sft,
                "--run.distill_file",
                b.distill,
                "--run.test_file",
                b.test,
                "--run.val_file",
                b.test,
                "--run.teacher",
                t / "nt",
                "--run.student",
                b.student,
            ),
            [f"teacher folder {p(t, 'nt')} does not exist"],
        ),
    ),
    case(
        "bench-grid-lr-zero",
        lambda t, b: (
            bench(t, "--grid_lr", "1e-4,0"),
            ["grid_lr: '0' is not a valid value (expected a number > 0)"],
        ),
    ),
    case(
        "bench-seed-not-a-number",
        lambda t, b: (
            bench(t, "--seeds", "0,one"),
            ["seeds: 'one' is not a valid value (expected an integer)"],
        ),
    ),
    case("bench-unknown-method", lambda t, b: (bench(t, "--methods", "kd,sqkd"), ["unknown method 'sqkd'"])),
    case(
        "bench-files-without-val",
        lambda t, b: (
            bench(t, "--run.sft_file", b.sft, "--run.distill_file", b.distill, "--run.test_file", b.test),
            ["set run.val_file"],
        ),
    ),
    case(
        "bench-jobs-with-llm-judge",
        lambda t, b: (bench(t, "--jobs", 2, "--run.eval.judge", "task,llm"), ["jobs = 2 with the llm judge"]),
    ),
    case(
        "bench-val-file-malformed",
        lambda t, b: (
            bench(
                t,
                "--seeds",
                0,
                "--methods",
                "sft",
                "--run.sft_file",
                b.sft,
                "--run.distill_file",
                b.distill,
                "--run.test_file",
                b.test,
                "--run.val_file",
                jl(t / "v.jsonl", ROW, "nope"),
                "--run.teacher",
                b.teacher,
                "--run.student",
                b.student,
            ),
            [f"{p(t, 'v.jsonl')}:2: not valid JSON"],
        ),
    ),
    case(
        "sweep-fraction-out-of-range",
        lambda t, b: (
            sweep(t, "--fractions", "0.5,1.5"),
            ["fractions: '1.5' is not a valid value (expected a fraction in (0, 1])"],
        ),
    ),
    case(
        "sweep-fraction-twice",
        lambda t, b: (sweep(t, "--fractions", "0.5,0.50"), ["fractions: 0.5, 0.50 names one value twice"]),
    ),
    case(
        "sweep-run-seed-set",
        lambda t, b: (sweep(t, "--run.seed", 3), ["run.output_dir and run.seed are set by the sweep"]),
    ),
    case(
        "sweep-distill-file-missing",
        lambda t, b: (
            sweep(
                t,
                "--methods",
                "sft",
                "--run.sft_file",
                b.sft,
                "--run.distill_file",
                t / "nope.jsonl",
                "--run.test_file",
                b.test,
                "--run.teacher",
                b.teacher,
                "--run.student",
                b.student,
            ),
            [f"data file {p(t, 'nope.jsonl')} does not exist"],
        ),
    ),
    # ---- push ----------------------------------------------------------------------------------------------
    case(
        "push-folder-missing",
        lambda t, b: (
            ["push", "--folder", t / "nope", "--repo_id", "me/m"],
            [f"folder {p(t, 'nope')} does not exist"],
        ),
    ),
    case(
        "push-not-a-model",
        lambda t, b: (
            ["push", "--folder", folder(t / "f", notes__txt="x"), "--repo_id", "me/m"],
            [f"folder {p(t, 'f')} holds no config.json"],
        ),
    ),
    case(
        "push-training-not-finished",
        lambda t, b: (
            [
                "push",
                "--folder",
                folder(t / "f", config__json="{}", plad_config__yaml="a: 1"),
                "--repo_id",
                "me/m",
            ],
            [f"folder {p(t, 'f')}: its training has not finished (no train_summary.json)"],
        ),
    ),
    case(
        "push-repo-id-not-namespace-name",
        lambda t, b: (
            ["push", "--folder", b.student, "--repo_id", "just a name"],
            ["repo_id 'just a name' is not"],
        ),
    ),
    case("push-repo-id-missing", lambda t, b: (["push", "--folder", b.student], ["missing repo_id"])),
    # ---- prune, heal, prepare --------------------------------------------------------------------------------
    case(
        "prune-layer-out-of-range",
        lambda t, b: (
            prune(t, b, "--keep_layers", "0,3"),
            [f"keep_layers: layer 3 is out of range; {b.student} has layers 0..0"],
        ),
    ),
    case(
        "prune-num-layers-too-many",
        lambda t, b: (
            prune(t, b, "--num_layers", 5),
            [f"num_layers must be in 1..1 ({b.student} has 1 layers)"],
        ),
    ),
    case(
        "prune-model-folder-empty",
        lambda t, b: (prune(t, b, "--model", folder(t / "empty")), [p(t, "empty")]),
    ),
    case(
        "prune-model-not-a-lm",
        lambda t, b: (
            prune(t, b, "--model", not_a_lm(t, b, layers=2), "--num_layers", 1),
            [f"{p(t, 'bert')} holds a DistilBertConfig (distilbert) model, which is not a decoder-only"],
        ),
    ),
    case(
        "prune-encoder-decoder",
        lambda t, b: (
            prune(t, b, "--model", t5(t, b), "--num_layers", 1),
            [f"{p(t, 't5')} is an encoder-decoder model; plad prune cuts decoder-only models"],
        ),
    ),
    case(
        "prune-model-folder-missing",
        lambda t, b: (
            prune(t, b, "--model", t / "nowhere"),
            [f"model folder {p(t, 'nowhere')} does not exist"],
        ),
    ),
    case(
        "prune-output-holds-a-model",
        lambda t, b: (
            prune(
                t,
                b,
                "--model",
                two_layers(t, b),
                "--output_dir",
                folder(t / "used", config__json="{}"),
                "--keep_layers",
                "0",
            ),
            [f"output_dir {p(t, 'used')} already holds a model"],
        ),
    ),
    case(
        "heal-text-file-missing",
        lambda t, b: (
            heal(t, b, "--text_file", t / "none.jsonl"),
            [f"text_file {p(t, 'none.jsonl')} does not exist"],
        ),
    ),
    case(
        "heal-text-not-text",
        lambda t, b: (
            heal(t, b, "--text_file", jl(t / "x.jsonl", {"text": "a b"}, {"text": 5})),
            [f"{p(t, 'x.jsonl')}:2: field 'text' must be text"],
        ),
    ),
    case(
        "heal-text-field-setting",
        lambda t, b: (
            heal(t, b, "--text_field", "body"),
            [f"{p(t, 'texts.jsonl')}:1: field 'body' must be text"],
        ),
    ),
    case(
        "heal-only-blank-texts",
        lambda t, b: (
            heal(t, b, "--text_file", jl(t / "x.jsonl", {"text": " "}, {"text": ""})),
            [f"{p(t, 'x.jsonl')}: no text in field 'text'"],
        ),
    ),
    case(
        "heal-kd-teacher-missing",
        lambda t, b: (
            heal(t, b, "--objective", "kd", "--teacher", t / "noteacher"),
            [f"teacher folder {p(t, 'noteacher')} does not exist"],
        ),
    ),
    case(
        "heal-kd-without-teacher",
        lambda t, b: (
            heal(t, b, "--objective", "kd"),
            ["missing teacher; set it in the YAML or with --teacher"],
        ),
    ),
    case(
        "heal-kd-other-vocabulary",
        lambda t, b: (
            heal(t, b, "--objective", "kd", "--teacher", other_vocabulary(t, b)),
            ["heal objective kd", f"teacher {p(t, 'bigtok')}", "both must use one vocabulary"],
        ),
    ),
    case(
        "heal-not-more-texts-than-held-out",
        lambda t, b: (
            heal(t, b, "--val_texts", 8),
            [f"{p(t, 'texts.jsonl')}: 8 texts, not more than val_texts=8"],
        ),
    ),
    case("heal-rows-of-one-token", lambda t, b: (heal(t, b, "--max_tokens", 1), ["max_tokens must be >= 2"])),
    case(
        "heal-model-folder-missing",
        lambda t, b: (
            heal(t, b, "--model", t / "nomodel"),
            [f"model folder {p(t, 'nomodel')} does not exist"],
        ),
    ),
    case(
        "prepare-keep-layers-not-numbers",
        lambda t, b: (prepare(t, "--keep_layers", "a,b"), ["keep_layers must be layer numbers, got a,b"]),
    ),
    case(
        "prepare-keep-layers-repeated",
        lambda t, b: (
            prepare(t, "--keep_layers", "0,3,3"),
            ["keep_layers must increase without repeats (got 0,3,3)"],
        ),
    ),
    case(
        "prepare-student-layers-zero",
        lambda t, b: (prepare(t, "--student_layers", 0), ["student_layers must be >= 1 (got 0)"]),
    ),
    case(
        "prepare-zero-test",
        lambda t, b: (prepare(t, "--n_test", 0), ["n_test, n_val and family_cap must be >= 1"]),
    ),
    case(
        "prepare-heal-output-set",
        lambda t, b: (
            prepare(t, "--heal.output_dir", t / "h"),
            ["heal.output_dir is set by plad prepare; remove it"],
        ),
    ),
    case(
        "prepare-heal-bad-objective",
        lambda t, b: (prepare(t, "--heal.objective", "kl"), ["heal: objective = 'kl' is not allowed"]),
    ),
    case(
        "prepare-data-dir-missing",
        lambda t, b: (
            ["prepare", "--cache_dir", t / "cache", "--data_dir", t / "nodata"],
            [f"data_dir {p(t, 'nodata')} has no"],
        ),
    ),
    # ---- report --------------------------------------------------------------------------------------------
    case(
        "report-run-results-bad-rows",
        lambda t, b: (
            ["report", text(t / "results.json", '{"results": {"a": 5}}'), "--output_dir", t / "out"],
            [f"{p(t, 'results.json')}: results.a is not a mapping of results"],
        ),
    ),
    case(
        "report-file-missing",
        lambda t, b: (
            ["report", t / "none.json", "--output_dir", t / "out"],
            [f"results file {p(t, 'none.json')} does not exist"],
        ),
    ),
    case(
        "report-folder-without-results",
        lambda t, b: (
            ["report", folder(t / "run"), "--output_dir", t / "out"],
            [f"{p(t, 'run')} holds no results"],
        ),
    ),
    case(
        "report-not-json",
        lambda t, b: (
            ["report", text(t / "r.json", '{"results": '), "--output_dir", t / "out"],
            [f"{p(t, 'r.json')} is not valid JSON", "line 1"],
        ),
    ),
    case(
        "report-not-utf8",
        lambda t, b: (
            ["report", text(t / "r.json", b'{"name": "\xff"}'), "--output_dir", t / "out"],
            [f"{p(t, 'r.json')} is not valid JSON (byte 10 is not UTF-8 text)"],
        ),
    ),
    case(
        "report-other-json",
        lambda t, b: (
            ["report", text(t / "r.json", '{"a": 1}'), "--output_dir", t / "out"],
            [f"{p(t, 'r.json')} holds neither plad bench results"],
        ),
    ),
    case(
        "report-bench-json-cut-short",
        lambda t, b: (
            ["report", text(t / "bench.json", '{"table": {}, "seeds": [0]}'), "--output_dir", t / "out"],
            [f"{p(t, 'bench.json')} is plad bench results without machine, command, date"],
        ),
    ),
    case(
        "report-two-evals-one-name",
        lambda t, b: (
            [
                "report",
                eval_results(t / "a", "sys", str(b.test)),
                eval_results(t / "b", "sys", str(b.test)),
                "--output_dir",
                t / "out",
            ],
            ["two eval results are both named 'sys'"],
        ),
    ),
    case(
        "report-evals-on-other-test-sets",
        lambda t, b: (
            [
                "report",
                eval_results(t, "a", "x.jsonl"),
                eval_results(t, "b", "y.jsonl"),
                "--output_dir",
                t / "out",
            ],
            ["made on different test sets"],
        ),
    ),
    case(
        "report-output-dir-is-a-file",
        lambda t, b: (
            ["report", eval_results(t, "a", "x.jsonl"), "--output_dir", text(t / "afile", "x")],
            [f"output_dir {p(t, 'afile')} cannot be created"],
        ),
    ),
]


# ----------------------------------------------------------------------------------------------------------------
# the checks


def snapshot(*roots: Path) -> dict[str, object]:
    """Every folder (by name) and file (bytes and mtime) under `roots`."""
    state: dict[str, object] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                state[str(path)] = "folder"
            else:
                state[str(path)] = (path.read_bytes(), path.lstat().st_mtime_ns)
    return state


def changes(before: dict, after: dict) -> list[str]:
    return sorted(
        [f"new {k}" for k in after.keys() - before.keys()]
        + [f"gone {k}" for k in before.keys() - after.keys()]
        + [f"changed {k}" for k in before.keys() & after.keys() if before[k] != after[k]]
    )


@pytest.fixture
def weights_refused(monkeypatch) -> None:
    """Reading a model's weights (or downloading one) fails the case: bad input must be found first."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were read before the bad input was found")

    for name in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", refuse)
    from plad.prepare import real

    monkeypatch.setattr(real, "download_wheel", refuse)  # plad prepare's teacher: minutes of download


@pytest.mark.parametrize("c", CASES)
def test_bad_input(c: Case, bench: Bench, tmp_path: Path, monkeypatch, capsys, request) -> None:
    work = tmp_path / "case"
    work.mkdir()
    monkeypatch.chdir(work)  # a default output folder (runs/..., ~/.cache/plad) would land here
    monkeypatch.setenv("PLAD_CACHE", str(work / "plad-cache"))
    args, expected = c.make(work, bench)
    command = str(args[0])
    prefix = f"plad {command}: error:" if command in build_parser().commands else "plad: error:"
    if not c.weights:
        request.getfixturevalue("weights_refused")
    before = snapshot(work, bench.root)
    capsys.readouterr()
    try:
        rc = main_inprocess("-q", *args)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1 and lines[-1] == errors[0], (
        err
    )  # one line, the last: no message over several lines
    for part in expected:
        assert part in errors[0], f"{part!r} not in: {errors[0]}"
    assert not changes(before, snapshot(work, bench.root))


def test_the_table_is_big_and_spans_every_command() -> None:
    from plad.cli import COMMANDS

    assert len(CASES) >= 60 and len({p.id for p in CASES}) == len(CASES)
    commands = {p.id.split("-")[0] for p in CASES}
    assert set(COMMANDS) | {"report"} <= commands | {"cli", "config"}, set(COMMANDS) - commands


def test_a_model_name_close_to_a_local_folder_is_said_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A name that is no folder here is looked up on the Hub (offline that takes most of a minute to fail): when a
    folder beside it has a close name (a typo), a warning says so before the lookup; a hub id with no such folder
    near gets none."""
    from plad.core.models import _check_folder

    (tmp_path / "student-sft").mkdir()
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="plad"):
        _check_folder("student-sfx", "student model")
        _check_folder("Qwen/Qwen2.5-0.5B", "model")
    assert caplog.messages == [
        "student model student-sfx is not a folder here (did you mean student-sft?); looking it up on the Hugging "
        "Face Hub"
    ]
