"""Scores of stored samples for `plad pairs` (plad-margin's scores, real preference ranking): a task scorer, the
teacher's length-normalised likelihood, or ROUGE-L against the prompt's target."""

from __future__ import annotations

import math
from typing import Any

from plad.utils.errors import ConfigError

# Scorers that need no task: the teacher's own confidence, or ROUGE-L against the prompt's reference.
SAMPLE_SCORERS = {
    "teacher-logp": "exp(mean log-prob per token) of the sample under the teacher, in (0, 1]: needs no reference",
    "rouge": "ROUGE-L F of the sample against the prompt's target in the prompts file",
}


class SampleScorer:
    """Scores a stored sample (a row of samples.jsonl) of a prompt: a task scorer (text prompts), the teacher's
    length-normalised likelihood (teacher-logp), or ROUGE-L against the prompt's target (rouge)."""

    def __init__(self, name: str, examples: list, where: str = "prompts") -> None:
        self.name, self.task, self.teacher_logps = name, None, {}
        if name == "rouge":
            if missing := next((ex for ex in examples if not ex.target), None):
                raise ConfigError(
                    f"{where} id {missing.id}: scorer rouge scores samples against the prompt's target, and this "
                    "prompt has none; use scorer teacher-logp (needs no reference), or give the prompts targets (in "
                    "the field that data.target_field names)"
                )
        elif name != "teacher-logp":
            from plad.scoring.scorers import check_prompts, get_scorer

            self.task = get_scorer(name)
            # before any sample is generated: a scorer of another task fails on these prompts
            check_prompts(self.task, examples, where, hint="use scorer teacher-logp or rouge")

    def score(self, ex: Any, side: str, row: dict) -> float:
        if self.task is not None:
            return self.task.score(ex.prompt, row["text"])
        if self.name == "rouge":
            from plad.scoring.metrics import rouge_l

            return rouge_l(row["text"], ex.target)
        t = self.teacher_logps[(ex.id, side, row["index"])]
        return math.exp(t["logp"] / max(t["n_tokens"], 1))
