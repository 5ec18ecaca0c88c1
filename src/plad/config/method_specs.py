"""The distillation methods by name: what each is and what it needs, without torch (the one list of method names).

plad.core.methods pairs each row with its loss function; `plad methods` prints this table; configs check names
against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    # What it learns on: "targets" (labeled data), "teacher" (teacher outputs of the pairs store), "pairs"
    # ((y+, y-) pairs), "lists" (teacher + k student samples per prompt), "tokens" (loss.token_data decides).
    source: str
    needs_scores: bool = False
    uses_regularizer: bool = False
    needs_teacher_model: bool = False  # a frozen local teacher with the student's vocabulary
    needs_teacher_logps: bool = False  # teacher log-probs stored with the pairs
    on_policy: bool = False  # student samples generated during training
    from_divergence: bool = False  # counts each output from the first token where y+ and y- differ

    def data_source(self, loss: Any) -> str:
        """The data a batch is built from: `source`, with "tokens" resolved by `loss.token_data`."""
        if self.source == "tokens":
            return "targets" if loss.token_data == "target" else "teacher"
        return self.source


def _token(name: str, summary: str, **needs: bool) -> MethodSpec:
    return MethodSpec(name, summary, "tokens", needs_teacher_model=True, **needs)


METHOD_SPECS: dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec("sft", "CE on dataset targets (the equal-compute control)", "targets"),
        MethodSpec("seqkd", "CE on teacher outputs (sequence-level KD, Kim & Rush 2016)", "teacher"),
        MethodSpec(
            "plad-rank",
            "PLaD ranking calibration on (teacher, student) pairs + lambda * regulariser",
            "pairs",
            uses_regularizer=True,
        ),
        MethodSpec(
            "plad-margin",
            "PLaD margin calibration (margin = beta * score gap) + lambda * regulariser",
            "pairs",
            needs_scores=True,
            uses_regularizer=True,
        ),
        MethodSpec(
            "plad-list",
            "SLiC list-wise rank over the teacher output and k student samples (ordered by score when scored)",
            "lists",
            uses_regularizer=True,
        ),
        MethodSpec(
            "plad-rank-div",
            "plad-rank with log-probs counted from the first token where y+ and y- differ (divergence-aware)",
            "pairs",
            uses_regularizer=True,
            from_divergence=True,
        ),
        MethodSpec(
            "plad-margin-div",
            "plad-margin with log-probs counted from the first token where y+ and y- differ (divergence-aware)",
            "pairs",
            needs_scores=True,
            uses_regularizer=True,
            from_divergence=True,
        ),
        MethodSpec(
            "dpkd",
            "DPKD sequence form, teacher as reference model (needs teacher log-probs in the pairs) + lambda * CE",
            "pairs",
            uses_regularizer=True,
            needs_teacher_logps=True,
        ),
        _token("dpkd-token", "DPKD released-code per-token form (teacher vs student argmax), mixed with CE"),
        _token("kd", "token-level forward KL(teacher || student) (Hinton et al.; DistiLLM's KD)"),
        _token("rkl", "token-level reverse KL(student || teacher) (MiniLLM's objective, token form)"),
        _token("skew-fkl", "skew forward KL(teacher || a*teacher + (1-a)*student) (DistiLLM)"),
        _token("skew-rkl", "skew reverse KL(student || (1-a)*teacher + a*student) (DistiLLM)"),
        _token("jsd", "token-level Jensen-Shannon divergence"),
        _token("tvd", "token-level total variation distance"),
        _token(
            "gkd",
            "generalized JSD(beta) on data and on-policy student samples (probability lambda) (Agarwal et al.)",
            on_policy=True,
        ),
    ]
}
ALL_METHODS = list(METHOD_SPECS)
