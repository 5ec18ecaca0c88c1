"""Every setting of plad as typed dataclasses, loaded from YAML with dotted command-line overrides.

Every field carries a help text (`--help` prints a line per field). Unknown keys are rejected with the closest
known names; `__post_init__` rejects contradictions with a message that says what to change. Paths that a stage
needs are checked by `require()` when the stage starts, so that `plad run` can fill them in.

The schema is `fields` (helpers), `method_specs` (the distillation methods by name), `sections` (shared sections),
`commands` (single-stage commands) and `experiments` (run, bench, sweep); `loader` reads YAML and flags into it.
`plad.config` is the import path for all.
"""

from plad.config.commands import (
    JUDGES,
    DistillConfig,
    EvalConfig,
    HealConfig,
    LlmJudgeConfig,
    PairsConfig,
    PrepareConfig,
    PruneConfig,
    PushConfig,
    RewardModelOptions,
    SFTConfig,
)
from plad.config.experiments import BenchConfig, BenchmarkConfig, RunConfig, SweepConfig
from plad.config.fields import DTYPES, suggest
from plad.config.loader import (
    fingerprint,
    flat_fields,
    from_dict,
    load_config,
    require,
    result_settings,
    save_yaml,
    to_dict,
)
from plad.config.method_specs import ALL_METHODS, METHOD_SPECS, MethodSpec
from plad.config.sections import (
    ApiConfig,
    DataOptions,
    LoraOptions,
    LossConfig,
    ModelSide,
    SamplingConfig,
    TrainConfig,
    VllmOptions,
)

__all__ = [
    "ALL_METHODS",
    "ApiConfig",
    "BenchConfig",
    "BenchmarkConfig",
    "DTYPES",
    "DataOptions",
    "DistillConfig",
    "EvalConfig",
    "HealConfig",
    "JUDGES",
    "LlmJudgeConfig",
    "LoraOptions",
    "LossConfig",
    "METHOD_SPECS",
    "MethodSpec",
    "ModelSide",
    "PairsConfig",
    "PrepareConfig",
    "PruneConfig",
    "PushConfig",
    "RewardModelOptions",
    "RunConfig",
    "SFTConfig",
    "SamplingConfig",
    "SweepConfig",
    "TrainConfig",
    "VllmOptions",
    "suggest",
    "fingerprint",
    "flat_fields",
    "from_dict",
    "load_config",
    "require",
    "result_settings",
    "save_yaml",
    "to_dict",
]
