"""The seam between plad and whatever samples text: the `Backend` protocol.

Every sampling call site goes through it: `plad pairs` (teacher and student sides), `plad eval` (the evaluated
model), gkd's on-policy samples and iterated PLaD's rounds (the student being trained, in memory). Three backends
implement it: hf (a local transformers model, generation/hf.py), vllm (vLLM's offline engine, generation/vllm.py)
and openai (an OpenAI-compatible endpoint, generation/openai.py); generation/registry.py opens the one a config
names. Adding a backend means writing one class with `sample` and `close` and adding it to the registry.

A call samples `k` outputs for each prompt and hands every finished unit of work to `emit` at once: a batch (hf),
a chunk of prompts (vllm), a request (openai). A caller that stores rows (pairs) thus loses at most the unit in
flight when killed. `want(i, j)` says whether sample j of prompt i is still missing: a resumed run asks only for
those (units with nothing missing are skipped, and a unit's samples that are not wanted are not emitted).

Seeds: `seed` is a key (a tuple); each backend derives the seed of a unit from the key and the unit alone, so a
resumed run asks for a missing unit with the seed an uninterrupted run used:
- hf: derive_seed(*seed, id of the batch's first prompt, rows in the batch) (batches are planned over all
  prompts, length-grouped, before anything is skipped),
- vllm: derive_seed(*seed, prompt id),
- openai: derive_seed(*seed, prompt id, index of the first sample the request asks for).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from plad.config import SamplingConfig, to_dict


@dataclass
class Sample:
    text: str
    # generated tokens, the end token (or the token that completed a stop string) included; None: an endpoint that
    # did not say (one request that returned several samples)
    n_tokens: int | None
    finish: str  # "eos" (an end token: EOS or end-of-turn), "stop" (a stop string) or "length"
    ids: list[int] | None = None  # the generated token ids (local backends), as many as n_tokens


@dataclass
class Prompt:
    id: str
    prompt: Any = None  # the text or chat messages (what an endpoint is sent)
    # its token ids in the model's tokenizer, fitted to the model's positions (local backends)
    ids: list[int] | None = None


@dataclass
class Drawn:
    """One sample of one prompt, as a backend emits it."""

    prompt: int  # index into the prompts of the call
    index: int  # sample number, 0 .. k-1
    sample: Sample
    seed: int  # the seed of the unit that made it
    # what the backend adds to a stored row (vllm: backend; openai: endpoint, request)
    extra: dict[str, Any] = field(default_factory=dict)


Want = Callable[[int, int], bool]
Emit = Callable[[list[Drawn]], None]


class Backend(Protocol):
    name: str  # hf, vllm or openai

    def sample(
        self,
        prompts: list[Prompt],
        sampling: SamplingConfig,
        k: int,
        seed: tuple,
        emit: Emit,
        want: Want | None = None,
        bar: Any = None,
    ) -> dict[str, Any]:
        """Sample k outputs per prompt (those `want` asks for), emitting each finished unit; `bar` (a tqdm bar or
        None) is advanced by the rows emitted. Returns what it cost (an endpoint's usage; {} for local backends)."""
        ...

    def close(self) -> None:
        """Let go of the weights or the engine."""
        ...

    @classmethod
    def identity(cls, side: Any, data: Any) -> dict[str, Any]:
        """What changes the samples of a side (a ModelSide) with these data settings: what pairs fingerprints, so
        stored samples of other settings are never reused."""
        ...


def without_batch_settings(sampling: SamplingConfig) -> dict[str, Any]:
    """The sampling settings without batch_size and max_batch_tokens: for backends that batch by themselves."""
    return {k: v for k, v in to_dict(sampling).items() if k not in ("batch_size", "max_batch_tokens")}


def wanted_rows(n_prompts: int, k: int, want: Want | None) -> int:
    """How many (prompt, sample) rows a call asks for: the total of its progress bar."""
    return n_prompts * k if want is None else sum(want(i, j) for i in range(n_prompts) for j in range(k))


def collect(
    backend: Backend, prompts: list[Prompt], sampling: SamplingConfig, k: int, seed: tuple, bar: Any = None
) -> list[list[Sample]]:
    """Every prompt's k samples, in order: for callers that keep them in memory (eval, on-policy samples)."""
    got: list[list[Any]] = [[None] * k for _ in prompts]

    def emit(drawn: list[Drawn]) -> None:
        for d in drawn:
            got[d.prompt][d.index] = d.sample

    backend.sample(prompts, sampling, k, seed, emit, bar=bar)
    return got


class Rate:
    """Advances a progress bar (or None) by the rows of each finished unit and shows generated tokens per second."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.t0, self.tokens = bar, time.perf_counter(), 0

    def update(self, drawn: list[Drawn], **postfix: Any) -> None:
        self.tokens += sum(d.sample.n_tokens or 0 for d in drawn)
        if self.bar is not None:
            self.bar.update(len(drawn))
            rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(tok_s=f"{rate:.0f}", **postfix, refresh=False)
