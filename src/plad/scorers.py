"""Scorers s(y; x) in [0, 1]: used for plad-margin scores, real preference ranking and as the eval judge.

Now the built-in tasks' graded scorers; later judges (reward models, metrics, LLM judges) plug in here.
"""

from __future__ import annotations

from typing import Protocol


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
