"""Pair generation and teacher log-probs through an OpenAI-compatible endpoint (backend `openai`).

Requests run concurrently (at most `api.concurrency` in flight, each retried by `plad.endpoint.client.Endpoint`); one writer
task appends every finished request's rows to the store (flush + fsync) as soon as they arrive, so a kill loses
at most the requests in flight. A request that runs out of retries stops the run: in-flight requests finish and
are stored, the failure is recorded in failures.jsonl (shown by `plad pairs --status`), and a rerun of the same
command asks only for what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from plad.config import ModelSide, to_dict
from plad.endpoint.client import ApiError, ApiStopped, Endpoint
from plad.endpoint.pool import Put, run_pool
from plad.utils import signals
from plad.utils.io import append_jsonl
from plad.utils.seeds import derive_seed

log = logging.getLogger("plad")

FAILURES = "failures.jsonl"


def endpoint_identity(side: ModelSide) -> dict[str, Any]:
    """What changes an endpoint's outputs: the model name and the request settings. Not the address (a server
    restarted on another port, or reached through a proxy, serves the same model: stored rows stay valid, and each
    row records the address that made it), nor concurrency, retries or prices."""
    a = side.api
    return {
        "backend": "openai",
        "model": side.model,
        "mode": a.mode,
        "system_prompt": a.system_prompt,
        "prompt_template": a.prompt_template,
        "stop": list(a.stop),
        "extra_body": a.extra_body,
        "n": a.n,
        "send_seed": a.send_seed,
    }


def generate_side(
    side: ModelSide,
    name: str,
    examples: list,
    k: int,
    fp: str,
    done: dict,
    path: Path,
    progress: Callable[[str, int], Any],
) -> dict[str, Any]:
    """Sample every missing (prompt, index) of one side through its endpoint; returns this run's usage."""
    missing = [(ex, [j for j in range(k) if (ex.id, name, j, fp) not in done]) for ex in examples]
    jobs = [(ex, idx) for ex, idx in missing if idx]
    if not jobs:
        return {}
    endpoint = Endpoint(side.api, side.model, f"{name} (backend openai)", seed=side.sampling.seed)
    bar = progress(f"pairs {name} (api)", sum(len(idx) for _, idx in jobs))
    t0 = time.perf_counter()
    sampling = to_dict(side.sampling)  # once: every row of this side shares it

    async def work(job: tuple[Any, list[int]], put: Put) -> None:
        ex, remaining = job
        while remaining:
            n = len(remaining) if len(remaining) > 1 and endpoint.n_supported is not False else 1
            # the seed of the first sample asked for: not of n, which depends on when the request was made (before
            # or after `api.n auto` found out whether the server honours n), so that sample j of a prompt is asked
            # with the same seed in an interrupted and an uninterrupted run
            seed = derive_seed(side.sampling.seed, fp, ex.id, remaining[0])
            samples, response = await endpoint.sample(ex.prompt, side.sampling, n, seed)
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
            rows = [
                {
                    "id": ex.id,
                    "side": name,
                    "index": j,
                    "fingerprint": fp,
                    "text": s["text"],
                    "n_tokens": request["completion_tokens"] if len(samples) == 1 else None,
                    "finish": s["finish"],
                    "model": side.model,
                    "endpoint": side.api.base_url,
                    "sampling": sampling,
                    "seed": seed,
                    "request": request,
                }
                for j, s in zip(remaining, samples, strict=False)
            ]
            await put(rows)  # stored as soon as it is paid for
            remaining = remaining[len(samples) :]

    def on_rows(rows: list[dict]) -> None:
        for r in rows:
            done[(r["id"], r["side"], r["index"], r["fingerprint"])] = r
        bar.update(len(rows))
        elapsed = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(
            tok_s=f"{endpoint.usage.completion_tokens / elapsed:.0f}",
            retries=sum(endpoint.usage.retries.values()),
            refresh=False,
        )

    return _run(endpoint, jobs, work, path, side.api.concurrency, on_rows, bar, name, fp)


def _run(
    endpoint: Endpoint,
    jobs: list,
    work: Callable[[Any, Put], Awaitable[None]],
    path: Path,
    concurrency: int,
    on_rows: Callable[[list[dict]], None],
    bar: Any,
    what: str,
    fp: str,
) -> dict[str, Any]:
    async def main() -> list:
        try:
            return await run_pool(jobs, work, path, concurrency, on_rows)
        finally:
            await endpoint.close()

    t0 = time.perf_counter()
    try:
        failed = asyncio.run(main())
    finally:
        bar.close()
    signals.raise_pending()  # interrupted: what finished is stored, the same command continues
    usage = endpoint.usage.as_dict(endpoint.cfg)
    usage["seconds"] = round(time.perf_counter() - t0, 2)
    if failed:
        rows = [
            {
                "id": job[0].id,
                "side": what,
                "fingerprint": fp,
                "error": str(err),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            for job, err in failed
        ]
        append_jsonl(path.parent / FAILURES, rows)
        raise ApiStopped(
            f"{str(failed[0][1])}\nstopped: {len(failed)} request(s) failed ({what}); every finished request is "
            f"stored in {path} ({usage['requests']} requests, {usage['retries']} retries this run). Run the same "
            f"command again to continue: only the missing samples are requested."
        )
    return usage


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
                state["aligned"] = await endpoint.check_echo_alignment([e.prompt for e, _, _ in todo[:3]])
                if state["aligned"] is None:
                    log.warning("%s: could not check that echo log-probs are aligned", endpoint.describe())
        if state["aligned"] is False:
            raise ApiError(
                f"{endpoint.describe()}: its echo log-probs are shifted by one token (the log-prob it reports for "
                "a token is not that of the token given the text before it; llama-cpp-python does this for models "
                "that add no BOS token), so summed log-probs would be wrong. Use a server whose echo log-probs are "
                "right (vLLM; llama.cpp with a BOS-adding model) or a local teacher (backend hf)"
            )
        logp, n = await endpoint.echo_logprobs(ex.prompt, text_of(ex, s, j))
        await put([row_of(ex, s, j, logp, n)])

    def on_rows(rows: list[dict]) -> None:
        bar.update(len(rows))

    return _run(endpoint, todo, work, path, side.api.concurrency, on_rows, bar, "teacher log-probs", "")


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
