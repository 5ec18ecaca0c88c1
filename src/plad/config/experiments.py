"""The dataclasses of the commands that chain stages: run / demo, bench, sweep."""

from __future__ import annotations

from dataclasses import dataclass

from plad.config.commands import DistillConfig, EvalConfig, PairsConfig
from plad.config.fields import ALL_METHODS, check_methods, check_values, opt
from plad.config.sections import TrainConfig
from plad.utils.errors import ConfigError


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
        check_methods(self.methods)
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
        if self.distill.lora.enabled and not self.distill.lora.merge:
            raise ConfigError(
                "distill.lora.merge false writes only the adapters, but the pipeline evaluates each distilled "
                "model as a model folder; keep distill.lora.merge true"
            )
        if self.eval.backend == "openai":
            raise ConfigError(
                "eval.backend openai: the pipeline evaluates the models it trains, which are local; use hf or vllm "
                "(`plad eval --backend openai` evaluates a model behind an endpoint)"
            )
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
        check_methods(self.methods + self.fraction_methods)
        check_values("seeds", self.seeds, int, lambda v: True, "an integer")
        check_values("grid_lr", self.grid_lr, float, lambda v: v > 0, "a number > 0")
        check_values(
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
        check_methods(self.methods)
        check_values("seeds", self.seeds, int, lambda v: True, "an integer")
        check_values("fractions", self.fractions, float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")
        if not self.seeds or not self.methods or not self.fractions:
            raise ConfigError("seeds, methods and fractions must not be empty")
        for name in ("methods", "seeds", "fractions"):
            values = getattr(self, name)
            keys = [float(v) for v in values] if name != "methods" else values
            if len(set(keys)) != len(keys):
                raise ConfigError(f"{name}: {', '.join(values)} names one value twice")
        if self.run.output_dir or self.run.seed:
            raise ConfigError("run.output_dir and run.seed are set by the sweep; use output_dir and seeds")
