"""The sections shared by several commands: data, training, sampling, loss, endpoint, vLLM, one model side."""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plad.config.fields import check_choices, dtype_opt, opt, suggest
from plad.utils.errors import ConfigError

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
        "what to do with a prompt/target over the limit: truncate (a text prompt keeps its BOS and its end, a chat "
        "prompt loses the middle of its longest message, a target keeps its start; the count is reported) or error",
        ("truncate", "error"),
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.max_prompt_tokens < 1 or self.max_target_tokens < 1:
            raise ConfigError("max_prompt_tokens and max_target_tokens must be >= 1")


TRACKERS = ("tensorboard", "wandb", "trackio", "none")


def _with_contents(path: str, cfg: Any) -> Any:
    """A settings file as fingerprints count it: its path and its contents' digest (a missing file: the path, and
    the stage that reads it says what is wrong)."""
    if not path or not Path(path).is_file():
        return path
    return {"file": path, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}


def _grouping(value: bool, cfg: Any) -> Any:
    """group_by_length as fingerprints count it: left out when off (it came after stage fingerprints existed); when
    on, the lengths it sorts by, which shared_prompt changes (one row per prompt, or a row per output), so that two
    runs with the same data order share a fingerprint and two with different orders do not."""
    if not value:
        return None
    return "shared-prompt rows" if cfg.shared_prompt else True


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
    log_every: int = opt(10, "steps between logged scalars (metrics.jsonl and the trackers of report_to)")
    seed: int = opt(0, "seed for initialisation-independent randomness: data order, dropout")
    mixed_precision: str = opt(
        "auto",
        "accelerate mixed precision: no (float32), bf16, fp16, or auto: bf16 on a CUDA device with bf16 and on a "
        "CPU with native bf16 (AVX512-BF16, AMX) for models of 10M parameters and more, float32 elsewhere "
        "(benchmarks/results/bf16_cpu.md); a stage records what auto chose in its plad_config.yaml",
        ("auto", "no", "bf16", "fp16"),
        # every stage (and every stage of a pipeline) resolves auto before it fingerprints its settings
        # (plad.train.precision), so a fingerprint holds what ran: auto that means float32 counts as `no`, the
        # default before auto, and run folders finished before it stay valid
    )
    report_to: list = opt(
        ["tensorboard"],
        "where the logged scalars also go, through accelerate's trackers: tensorboard (OUTPUT/logs), wandb "
        "(pip install 'plad[wandb]'; WANDB_MODE=offline writes under OUTPUT/logs), trackio (pip install "
        "'plad[trackio]'; local), several (tensorboard,wandb), or none; metrics.jsonl is always written",
        in_fingerprint=False,  # a tracker records results, it cannot change them
    )
    group_by_length: bool = opt(
        False,
        "batch items of similar length together (spans of 50 batches sorted by length, the batches' order drawn at "
        "random): less padding per step, every item still once per epoch",
        in_fingerprint=_grouping,
    )
    gradient_checkpointing: bool = opt(
        False,
        "recompute each layer's activations in the backward pass instead of keeping them: the same gradients, "
        "about half the memory of a step, slower steps (a second forward of every layer)",
        in_fingerprint=False,
    )
    shared_prompt: bool = opt(
        True,
        "pair and list methods (plad-rank, plad-margin, their -div forms, dpkd, plad-list): one row per prompt, the "
        "prompt once and its outputs after it under a tree attention mask, instead of one prompt + output row per "
        "output (the same values; for the model families whose output layer plad gathers, with sdpa or eager "
        "attention; otherwise prompt + output rows)",
        in_fingerprint=False,  # the same computation in fewer tokens (the order it changes: group_by_length's)
    )

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0 (got {self.lr})")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        if self.save_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError("save_every must be >= 0 and keep_checkpoints >= 1")
        for t in self.report_to:
            if t not in TRACKERS:
                raise ConfigError(f"report_to: unknown tracker {t!r}{suggest(t, TRACKERS)}")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ConfigError(
                f"report_to: none cannot go with other trackers (got {','.join(self.report_to)})"
            )


@dataclass
class LoraOptions:
    """LoRA adapters on the trained model through `peft` (Hu et al. 2021, https://arxiv.org/abs/2106.09685): only
    the low-rank matrices A, B of W + (alpha / r) B A train; the base weights stay as loaded."""

    r: int = opt(0, "LoRA rank; 0: no adapters, every weight trains (full fine-tuning)")
    alpha: float = opt(16.0, "LoRA alpha: the update B A is scaled by alpha / r")
    dropout: float = opt(0.0, "dropout on the adapters' input")
    target_modules: list = opt(
        ["all-linear"],
        "names (or name suffixes) of the layers that get adapters, e.g. q_proj,v_proj; all-linear: every linear "
        "layer but the output layer",
    )
    merge: bool = opt(
        True,
        "also write the merged model (base + adapters) at output_dir as a plain model folder, which the next "
        "stages read; false: only the adapter (output_dir/adapter)",
    )
    config: str = opt(
        "",
        "a peft LoraConfig as JSON (e.g. an adapter_config.json) instead of r, alpha, dropout and target_modules: "
        "turns LoRA on with every setting peft has",
        in_fingerprint=_with_contents,  # a file edited in place is another setting
    )

    @property
    def enabled(self) -> bool:
        return self.r > 0 or bool(self.config)

    def __post_init__(self) -> None:
        if self.r < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError(
                f"r must be >= 0, alpha > 0 and dropout in [0, 1) (got r {self.r}, alpha {self.alpha}, dropout "
                f"{self.dropout})"
            )
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ConfigError(f"target_modules must name layers (got {self.target_modules!r})")
        changed = [
            name
            for name, default in (
                ("r", 0),
                ("alpha", 16.0),
                ("dropout", 0.0),
                ("target_modules", ["all-linear"]),
            )
            if getattr(self, name) != default
        ]
        if self.config and changed:
            raise ConfigError(
                f"config {self.config} holds every LoRA setting; remove {', '.join(changed)} (or config)"
            )


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
        check_choices(self)
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
        check_choices(self)
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


def check_endpoint(backend: str, api: ApiConfig) -> None:
    """A model behind an endpoint (backend openai) needs the endpoint's address."""
    if backend == "openai" and not api.base_url:
        raise ConfigError("backend openai needs api.base_url, the endpoint (e.g. http://127.0.0.1:8000/v1)")


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
        check_choices(self)
        check_endpoint(self.backend, self.api)  # before the other side generates anything
