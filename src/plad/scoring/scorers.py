"""Task scorers s(y; x) in [0, 1], the built-in tasks' graded scorers (plad.benchmark.tasks): plad-margin's scores,
the ranking of real pairs, iterated rounds and eval's `task` judge. Scorers that need no task (ROUGE-L, the
teacher's log-prob) are in plad.scoring.metrics and plad.scoring.samples; eval's other judges in
plad.evaluation.judges."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class Scorer(Protocol):
    name: str

    def score(self, prompt: str, output: str) -> float: ...


class UnknownScorer(ValueError):
    pass


def get_scorer(name: str) -> Scorer:
    from plad.benchmark.tasks import TASKS, get_task

    try:
        return get_task(name)
    except ValueError as e:
        raise UnknownScorer(
            f"unknown scorer {name!r}: {e}; scorers are the built-in tasks ({', '.join(TASKS)})"
        ) from None


def check_prompts(
    scorer: Scorer, examples: Iterable[Any], where: str, setting: str = "scorer", hint: str = ""
) -> None:
    """Every prompt of `examples` is one the task scorer can read (text of its task), checked before any work: a
    task scorer reads its task's prompts only, and would fail on another prompt after the generation is paid for.
    The error names the scorer, the setting that chose it and the first bad row."""
    from plad.utils.errors import DataError

    for ex in examples:
        if not isinstance(ex.prompt, str):
            raise DataError(
                f"{where} id {ex.id}: {setting} {scorer.name} is a task scorer, which needs text prompts, not chat "
                "messages" + (f": {hint}" if hint else "")
            )
        try:
            scorer.score(ex.prompt, "")
        except ValueError:
            shown = ex.prompt if len(ex.prompt) <= 60 else ex.prompt[:57] + "..."
            raise DataError(
                f"{where} id {ex.id}: {setting} {scorer.name} cannot read this prompt ({shown!r} is not a "
                f"{scorer.name} prompt); a task scorer judges only its built-in task's prompts"
                + (f": {hint}" if hint else "")
            ) from None
