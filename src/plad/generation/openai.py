"""Backend openai: sampling (and the teacher's log-probs) through an OpenAI-compatible endpoint.

Requests run concurrently (at most `api.concurrency` in flight, each retried by `plad.endpoint.client.Endpoint`);
one writer task hands every finished request's rows to the caller (pairs appends them to its store with flush +
fsync) as soon as they arrive, so a kill loses at most the requests in flight. A request that runs out of retries
stops the run: in-flight requests finish and are kept, pairs records the failure in failures.jsonl (shown by
`plad pairs --status`), and a rerun of the same command asks only for what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from plad.config import ApiConfig, ModelSide, SamplingConfig
from plad.endpoint.client import ApiError, ApiStopped, Endpoint, api_key
from plad.endpoint.pool import Put, run_pool
from plad.generation.backend import Drawn, Emit, Prompt, Rate, Sample, Want, without_batch_settings
from plad.utils import signals
from plad.utils.errors import ConfigError
from plad.utils.io import append_jsonl
from plad.utils.seeds import derive_seed

log = logging.getLogger("plad")

FAILURES = "failures.jsonl"


def endpoint_identity(a: ApiConfig, model: str) -> dict[str, Any]:
    """What changes an endpoint's outputs: the model name and the request settings. Not the address (a server
    restarted on another port, or reached through a proxy, serves the same model: stored rows stay valid, and each
    row records the address that made it), nor concurrency, retries or prices."""
    return {
        "backend": "openai",
        "model": model,
        "mode": a.mode,
        "system_prompt": a.system_prompt,
        "prompt_template": a.prompt_template,
        "stop": list(a.stop),
        "extra_body": a.extra_body,
        "n": a.n,
        "send_seed": a.send_seed,
    }


class SamplingStopped(ApiStopped):
    """Requests ran out of retries: `failed` holds (prompt index, error) of each; what finished was emitted."""

    def __init__(self, message: str, failed: list[tuple[int, Exception]], usage: dict[str, Any]) -> None:
        super().__init__(message)
        self.failed, self.usage = failed, usage


class OpenAIBackend:
    """An OpenAI-compatible endpoint: `api.concurrency` requests in flight, each retried by
    plad.endpoint.client.Endpoint; one request per prompt asks for its missing samples with `n` (or one request
    per sample where the server ignores n). Each finished request is emitted at once, by one writer.

    (`sample` is about 65 lines on purpose: its request worker is a closure over the endpoint, whose `n` support is
    learnt from the first reply and read by every later request.)"""

    name = "openai"

    def __init__(self, api: ApiConfig, model: str, what: str) -> None:
        api_key(api, what)  # the key before any other side samples
        self.api, self.model, self.what = api, model, what

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
        wanted = want or (lambda i, j: True)
        jobs = [(i, [j for j in range(k) if wanted(i, j)]) for i in range(len(prompts))]
        jobs = [(i, idx) for i, idx in jobs if idx]
        if not jobs:
            return {}
        endpoint = Endpoint(self.api, self.model, self.what, seed=sampling.seed)
        rate = Rate(bar)

        async def work(job: tuple[int, list[int]], put: Put) -> None:
            i, remaining = job
            while remaining:
                n = len(remaining) if len(remaining) > 1 and endpoint.n_supported is not False else 1
                # the seed of the first sample asked for: not of n, which depends on when the request was made
                # (before or after `api.n auto` found out whether the server honours n), so that sample j of a
                # prompt is asked with the same seed in an interrupted and an uninterrupted run
                s = derive_seed(*seed, prompts[i].id, remaining[0])
                samples, response = await endpoint.sample(prompts[i].prompt, sampling, n, s)
                if n > 1 and endpoint.n_supported is None:
                    endpoint.n_supported = len(samples) >= n
                    if not endpoint.n_supported:
                        log.warning(
                            "%s returned %d choice(s) for n=%d: it ignores n; asking one request per sample",
                            endpoint.describe(),
                            len(samples),
                            n,
                        )
                u = getattr(response, "usage", None)
                request = {
                    "id": uuid.uuid4().hex,
                    "prompt_tokens": getattr(u, "prompt_tokens", None),
                    "completion_tokens": getattr(u, "completion_tokens", None),
                    "choices": len(samples),
                }
                n_tokens = request["completion_tokens"] if len(samples) == 1 else None
                extra = {"endpoint": self.api.base_url, "request": request}
                drawn = [
                    Drawn(i, j, Sample(x["text"], n_tokens, x["finish"]), s, extra)
                    for j, x in zip(remaining, samples, strict=False)
                ]
                await put(drawn)  # stored as soon as it is paid for
                remaining = remaining[len(samples) :]

        def on_rows(drawn: list[Drawn]) -> None:
            rate.update(drawn, retries=sum(endpoint.usage.retries.values()))

        usage, failed = _run(endpoint, jobs, work, emit, self.api.concurrency, on_rows)
        if failed:
            raise SamplingStopped(
                f"{str(failed[0][1])}\nstopped: {len(failed)} request(s) failed ({self.what}); every finished "
                f"request is kept ({usage['requests']} requests, {usage['retries']} retries this run)",
                [(job[0], err) for job, err in failed],
                usage,
            )
        return usage

    def close(self) -> None:
        pass

    @classmethod
    def identity(cls, side: Any, data: Any) -> dict[str, Any]:
        # each prompt is its own request: no batch settings; prompts go as text: no token limits
        return {**endpoint_identity(side.api, side.model), "sampling": without_batch_settings(side.sampling)}


def _run(
    endpoint: Endpoint,
    jobs: list,
    work: Callable[[Any, Put], Awaitable[None]],
    write: Callable[[list], None],
    concurrency: int,
    on_rows: Callable[[list], None],
) -> tuple[dict[str, Any], list]:
    """The pool over `jobs`; returns this run's usage and the jobs that ran out of retries."""

    async def main() -> list:
        try:
            return await run_pool(jobs, work, write, concurrency, on_rows)
        finally:
            await endpoint.close()

    t0 = time.perf_counter()
    failed = asyncio.run(main())
    signals.raise_pending()  # interrupted: what finished is stored, the same command continues
    usage = endpoint.usage.as_dict(endpoint.cfg)
    usage["seconds"] = round(time.perf_counter() - t0, 2)
    return usage, failed


def teacher_logprobs_api(
    side: ModelSide,
    todo: list[tuple[Any, str, int]],
    text_of: Callable[[Any, str, int], str],
    row_of: Callable[[Any, str, int, float, int], dict],
    path: Path,
    progress: Callable[[str, int], Any],
) -> dict[str, Any]:
    """Score (prompt, sample) texts with the teacher's endpoint (completions, echo + logprobs); rows appended to
    `path` as they finish."""
    endpoint = Endpoint(side.api, side.model, "teacher log-probs (backend openai)", seed=side.sampling.seed)
    bar = progress("pairs teacher log-probs (api)", len(todo))

    state: dict[str, Any] = {}

    async def work(item: tuple[Any, str, int], put: Put) -> None:
        ex, s, j = item
        if not isinstance(ex.prompt, str):
            raise ApiError("teacher log-probs through an API need text prompts (echo scores plain text)")
        async with state.setdefault("lock", asyncio.Lock()):  # once per run, before any score is stored
            if "aligned" not in state:
                state["aligned"] = None
                state["aligned"] = await check_echo_alignment(endpoint, [e.prompt for e, _, _ in todo[:3]])
                if state["aligned"] is None:
                    log.warning("%s: could not check that echo log-probs are aligned", endpoint.describe())
        if state["aligned"] is False:
            raise ApiError(
                f"{endpoint.describe()}: its echo log-probs are shifted by one token (the log-prob it reports for "
                "a token is not that of the token given the text before it; llama-cpp-python does this for models "
                "that add no BOS token), so summed log-probs would be wrong. Use a server whose echo log-probs are "
                "right (vLLM; llama.cpp with a BOS-adding model) or a local teacher (backend hf)"
            )
        logp, n = await echo_logprobs(endpoint, ex.prompt, text_of(ex, s, j))
        await put([row_of(ex, s, j, logp, n)])

    def on_rows(rows: list[dict]) -> None:
        bar.update(len(rows))

    try:
        usage, failed = _run(endpoint, todo, work, partial(append_jsonl, path), side.api.concurrency, on_rows)
    finally:
        bar.close()
    if failed:
        record_failures(path.parent, [(job[0].id, err) for job, err in failed], "teacher log-probs", "")
        raise ApiStopped(stopped_message(str(failed[0][1]), len(failed), "teacher log-probs", path, usage))
    return usage


def record_failures(folder: Path, failed: list[tuple[str, Exception]], what: str, fp: str) -> None:
    """Requests that ran out of retries, appended to failures.jsonl (what `plad pairs --status` counts)."""
    rows = [
        {
            "id": pid,
            "side": what,
            "fingerprint": fp,
            "error": str(err),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        for pid, err in failed
    ]
    append_jsonl(folder / FAILURES, rows)


def stopped_message(first: str, n_failed: int, what: str, path: Path, usage: dict[str, Any]) -> str:
    return (
        f"{first}\nstopped: {n_failed} request(s) failed ({what}); every finished request is stored in {path} "
        f"({usage['requests']} requests, {usage['retries']} retries this run). Run the same command again to "
        "continue: only the missing samples are requested."
    )


async def echo_logprobs(endpoint: Endpoint, prompt_text: str, output_text: str) -> tuple[float, int]:
    """Summed log-prob (and token count) of `output_text` after `prompt_text`, from a completions request with
    echo + logprobs: the tokens whose offset falls inside the output are summed."""
    if endpoint.cfg.mode != "completions":
        raise ConfigError(
            f"{endpoint.what}: teacher log-probs through an API need api.mode=completions (echo + logprobs)"
        )
    prompt = endpoint.cfg.prompt_template.format(prompt=prompt_text)
    full = prompt + output_text
    response = await endpoint.call(
        "completions", prompt=full, max_tokens=1, temperature=0.0, echo=True, logprobs=0
    )
    lp = response.choices[0].logprobs if response.choices else None
    if lp is None or not getattr(lp, "token_logprobs", None) or not getattr(lp, "text_offset", None):
        raise ApiError(
            f"{endpoint.describe()} returned no prompt log-probs for a completions request with echo=true and "
            "logprobs=0; this server cannot score given texts: use a server that can (vLLM, llama.cpp) or a "
            "local teacher (backend hf) for teacher_logprobs"
        )
    start, end = len(prompt), len(full)
    total, count = 0.0, 0
    for offset, logp in zip(lp.text_offset, lp.token_logprobs, strict=False):
        if start <= offset < end:
            if logp is None:
                raise ApiError(f"{endpoint.describe()}: a token of the scored text has no log-prob")
            total += float(logp)
            count += 1
    return total, count


async def check_echo_alignment(endpoint: Endpoint, prompts: list[str]) -> bool | None:
    """Does the server pair each echoed token with the log-prob of that token given the tokens before it?

    Greedy-generate one token g after a prompt P (its log-prob comes from the generation path), then echo-score
    P + g with the top log-prob of every position. An aligned server reports g's generation log-prob at g's
    position; a server that shifts echo log-probs by one token (llama-cpp-python for models that add no BOS
    token) reports it among the top log-probs of the position before. Returns True / False, or None when no
    probe prompt gave a clear answer."""
    for p in prompts[:3]:
        prompt = endpoint.cfg.prompt_template.format(prompt=p)
        gen = await endpoint.call("completions", prompt=prompt, max_tokens=1, temperature=0.0, logprobs=1)
        c = gen.choices[0]
        if not c.text or c.logprobs is None or not c.logprobs.token_logprobs:
            continue
        lp_gen = c.logprobs.token_logprobs[0]
        echo = await endpoint.call(
            "completions", prompt=prompt + c.text, max_tokens=1, temperature=0.0, echo=True, logprobs=1
        )
        lp = echo.choices[0].logprobs
        if lp is None or not lp.text_offset or lp_gen is None:
            continue
        # g must be one echoed token of its own (tokenization can merge across the boundary)
        idx = [i for i, off in enumerate(lp.text_offset) if off == len(prompt)]
        end = len(prompt + c.text)
        if (
            len(idx) != 1
            or idx[0] == 0
            or (idx[0] + 1 < len(lp.text_offset) and lp.text_offset[idx[0] + 1] < end)
        ):
            continue
        i = idx[0]
        at_g = lp.token_logprobs[i]
        before = (lp.top_logprobs or [None] * len(lp.text_offset))[i - 1] or {}
        d_aligned = abs(float(at_g) - float(lp_gen)) if at_g is not None else math.inf
        d_shifted = abs(float(before[c.text]) - float(lp_gen)) if c.text in before else math.inf
        if min(d_aligned, d_shifted) > 0.05:
            continue
        return d_aligned <= d_shifted
    return None


def usage_from_rows(rows: list[dict]) -> dict[str, int]:
    """Requests and tokens paid for, over every stored row (one request can carry several rows)."""
    seen: dict[str, dict] = {}
    for r in rows:
        req = r.get("request")
        if req and req.get("id"):
            seen[req["id"]] = req
    return {
        "requests": len(seen),
        "prompt_tokens": sum(q.get("prompt_tokens") or 0 for q in seen.values()),
        "completion_tokens": sum(q.get("completion_tokens") or 0 for q in seen.values()),
    }
