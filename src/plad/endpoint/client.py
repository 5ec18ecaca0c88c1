"""OpenAI-compatible endpoints: one client for API teachers, API students and LLM judges.

Requests (and the reachability probe) go through one of the HTTP clients of transport.py, the official `openai`
client or plad's lean one, both over aiohttp. Either way the client's own retries are off, so that plad decides
what is retried and counts it (retry.py): 408/409/429, 5xx, timeouts, dropped connections and malformed replies
are retried with exponential backoff and full jitter, honouring Retry-After; anything else (a bad request, a
wrong key, an unknown model) stops at once with the endpoint named. The key comes only from the
environment variable the config names and is scrubbed from every message plad writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from plad.config import ApiConfig
from plad.endpoint.retry import RETRYABLE_STATUS, backoff_seconds, retry_after_seconds
from plad.endpoint.transport import (
    DeadlineExceeded,
    HttpStatusError,
    LeanClient,
    MalformedReply,
    OpenaiClient,
    causes,
    check_reply,
    is_timeout,
    reply_limit,
    within_deadline,
)
from plad.utils.errors import ConfigError

log = logging.getLogger("plad")


class ApiError(RuntimeError):
    """An endpoint failed in a way plad cannot retry (or the retry budget is spent)."""

    def __init__(self, message: str, retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.retryable, self.status = retryable, status


class ApiStopped(RuntimeError):
    """A run stopped early because of an endpoint; everything finished before the stop is stored."""


@dataclass
class Usage:
    """What this process asked of an endpoint: requests, retries by reason, tokens."""

    requests: int = 0  # successful requests
    attempts: int = 0  # requests sent, retried ones included
    retries: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, response: Any) -> None:
        self.requests += 1
        u = getattr(response, "usage", None)
        if u is not None:
            self.prompt_tokens += int(getattr(u, "prompt_tokens", 0) or 0)
            self.completion_tokens += int(getattr(u, "completion_tokens", 0) or 0)

    def as_dict(self, cfg: ApiConfig | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": sum(self.retries.values()),
            "retries_by_reason": dict(sorted(self.retries.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        if cfg is not None:
            out["cost"] = cost(cfg, self.prompt_tokens, self.completion_tokens)
        return out


def cost(cfg: ApiConfig, prompt_tokens: int, completion_tokens: int) -> float:
    return round(
        (prompt_tokens * cfg.price_input_per_mtok + completion_tokens * cfg.price_output_per_mtok) / 1e6, 6
    )


def api_key(cfg: ApiConfig, what: str) -> str:
    """The key in the environment variable that api.api_key_env names ('' when it names none)."""
    if not cfg.api_key_env:
        return ""
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise ConfigError(
            f"{what}: environment variable {cfg.api_key_env} (api.api_key_env) is not set; export the API key "
            "there, or set api.api_key_env to '' for a server that needs no key"
        )
    return key


class Endpoint:
    """One OpenAI-compatible endpoint with plad's retry policy, usage counts and key scrubbing."""

    def __init__(self, cfg: ApiConfig, model: str, what: str, seed: int = 0):
        try:
            import openai
        except ImportError:  # pragma: no cover - a dependency of plad
            raise ConfigError("the openai backend needs the `openai` package: pip install openai") from None
        if not cfg.base_url:
            raise ConfigError(f"{what}: backend openai needs api.base_url (e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise ConfigError(f"{what}: backend openai needs model (the endpoint's model name)")
        self._key = api_key(cfg, what)
        self.cfg, self.model, self.what = cfg, model, what
        self.extra_body = json.loads(cfg.extra_body) if cfg.extra_body else {}
        self.usage = Usage()
        self._rng = random.Random(seed)
        self._openai = openai
        self.client = self._new_client()
        self.n_supported: bool | None = {"native": True, "repeat": False}.get(cfg.n)

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def describe(self) -> str:
        return f"{self.what} endpoint {self.cfg.base_url} (model {self.model})"

    def _new_client(self) -> OpenaiClient | LeanClient:
        if self.cfg.client == "lean":
            return LeanClient(self.cfg.base_url, self._key, self.cfg.timeout)
        return OpenaiClient(self._openai, self.cfg.base_url, self._key, self.cfg.timeout)

    async def close(self) -> None:
        """Close the connections of this event loop; a later asyncio.run gets a fresh client."""
        await self.client.close()
        self.client = self._new_client()

    def check_reachable(self) -> None:
        """Fail before any work when the server cannot be reached or refuses the key: GET /models through the
        same HTTP client as every request (a server without that route, answering 404 or 405, still counts as
        reachable; one answering 5xx gets a warning, and its requests will be retried)."""

        async def probe() -> None:
            try:
                await within_deadline(self.client.get("/models"), min(self.cfg.timeout, 30.0))
            finally:
                await self.close()

        try:
            asyncio.run(probe())
        except Exception as e:
            status = getattr(e, "status_code", None)
            if status in (401, 403):
                raise ApiError(
                    f"{self.describe()}: HTTP {status}, the key was refused; nothing was asked yet",
                    status=status,
                ) from None
            if status is not None and status >= 500:
                log.warning(
                    "%s answers HTTP %d to GET /models; requests will be retried", self.describe(), status
                )
            if status is None:
                reason, _, _, message = self._classify(e)
                if reason == "connection":  # the innermost error says why: refused, unknown host, TLS
                    message = self.scrub(str(causes(e)[-1]))[:160] or message
                raise ApiError(
                    f"{self.describe()} cannot be reached ({message}); is the server running and base_url right? "
                    "Nothing was asked yet"
                ) from None

    # ---------------------------------------------------------------------------------------------------------
    # The retry loop

    async def call(self, kind: str, **params: Any) -> Any:
        """POST one request (`kind` completions or chat) with retries; returns the reply (attribute access).

        The body goes out as given and the reply comes back as parsed JSON (the openai client's request transform
        and reply models are skipped: they cost more CPU than the rest of plad per request)."""
        path = "/completions" if kind == "completions" else "/chat/completions"
        body = {"model": self.model, **params}
        extra = {**self.extra_body, **body.pop("extra_body", {})}
        body.update(extra)
        limit = reply_limit(body)
        max_bytes = (
            None if limit is None else int(body.get("n") or 1) * 12 * limit + (1 << 20)
        )  # 12: \\u escapes
        deadline = self.cfg.request_deadline
        attempt = 0
        while True:
            self.usage.attempts += 1
            try:
                data = await within_deadline(self.client.post(path, body, max_bytes), deadline)
                response = check_reply(data, kind, limit)
                self.usage.add(response)
                return response
            except asyncio.CancelledError:
                raise
            except Exception as e:  # classified below; anything unknown is not retried
                reason, wait_hint, retryable, message = self._classify(e)
                if not retryable:
                    status = getattr(e, "status_code", None)
                    raise ApiError(f"{self.describe()}: {message}", status=status) from None
                if attempt >= self.cfg.max_retries:
                    raise ApiError(
                        f"{self.describe()}: gave up after {attempt + 1} attempts; last error: {message}",
                        retryable=True,
                    ) from None
                if wait_hint is not None and wait_hint > self.cfg.max_retry_after:
                    raise ApiError(
                        f"{self.describe()}: the server asks to wait {wait_hint:.0f} s (Retry-After), more than "
                        f"api.max_retry_after = {self.cfg.max_retry_after:.0f} s",
                        retryable=True,
                    ) from None
                delay = backoff_seconds(self.cfg, attempt, self._rng)
                if wait_hint is not None:
                    delay = wait_hint + self._rng.uniform(0, min(1.0, self.cfg.backoff_base))
                self.usage.retries[reason] += 1
                log.debug("%s: %s; retry %d in %.2f s", self.describe(), message, attempt + 1, delay)
                attempt += 1
                await asyncio.sleep(delay)

    def _classify(self, e: Exception) -> tuple[str, float | None, bool, str]:
        """(reason, server-requested wait, retryable, message without the key)."""
        o = self._openai
        status = None
        if isinstance(e, o.APIStatusError):
            status, body, headers = e.status_code, str(getattr(e, "message", "") or e), e.response.headers
        elif isinstance(e, HttpStatusError):
            status, body, headers = e.status_code, e.message, e.headers
        if status is not None:
            body = self.scrub(body)[:300]
            hint = retry_after_seconds(headers)
            reason = "429" if status == 429 else "5xx" if status >= 500 else str(status)
            if status in RETRYABLE_STATUS or status >= 500:
                return reason, hint, True, f"HTTP {status}: {body}"
            what = {401: "the key was refused", 403: "access denied", 404: "unknown model or path"}.get(
                status, ""
            )
            return reason, None, False, f"HTTP {status}{' (' + what + ')' if what else ''}: {body}"
        import aiohttp

        if isinstance(e, DeadlineExceeded):
            return "timeout", None, True, str(e)
        chain = causes(e)
        # the openai client's aiohttp transport reports a dropped connection as a connect timeout: look beneath
        dropped = [x for x in chain if isinstance(x, aiohttp.ClientError) and not is_timeout(x)]
        if isinstance(e, o.APITimeoutError) and not dropped or is_timeout(e):
            return "timeout", None, True, f"timed out after {self.cfg.timeout:g} s (api.timeout)"
        if any(isinstance(x, aiohttp.InvalidURL) for x in chain):
            return "other", None, False, f"api.base_url {self.cfg.base_url!r} is not a valid URL"
        if isinstance(e, o.APIConnectionError) or dropped:
            cause = dropped[-1] if dropped else (e.__cause__ or e.__context__)
            return (
                "connection",
                None,
                True,
                f"connection failed ({type(cause).__name__ if cause else 'error'})",
            )
        if isinstance(
            e, json.JSONDecodeError | UnicodeDecodeError | o.APIResponseValidationError | MalformedReply
        ):
            return "malformed", None, True, f"malformed reply ({self.scrub(str(e))[:200]})"
        return "other", None, False, f"{type(e).__name__}: {self.scrub(str(e))[:300]}"

    # ---------------------------------------------------------------------------------------------------------
    # Requests plad makes

    def stops(self, sampling: Any) -> list[str]:
        """The stop sequences of a request: api.stop, then sampling.stop (which every backend honours)."""
        return list(dict.fromkeys([*self.cfg.stop, *getattr(sampling, "stop", [])]))

    def request_params(self, prompt: Any, sampling: Any, n: int, seed: int | None, max_tokens: int) -> dict:
        """Parameters of a sampling request for one prompt (text or chat messages)."""
        cfg = self.cfg
        params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": sampling.temperature}
        if sampling.top_p < 1:
            params["top_p"] = sampling.top_p
        if sampling.top_k:
            params["extra_body"] = {"top_k": sampling.top_k}
        if n > 1:
            params["n"] = n
        if stop := self.stops(sampling):
            params["stop"] = stop
        if cfg.send_seed and seed is not None:
            params["seed"] = seed % (2**31)
        if cfg.mode == "chat":
            if isinstance(prompt, str):
                messages = [{"role": "user", "content": cfg.prompt_template.format(prompt=prompt)}]
            else:
                messages = list(prompt)
            if cfg.system_prompt:
                messages = [{"role": "system", "content": cfg.system_prompt}, *messages]
            params["messages"] = messages
        else:
            if not isinstance(prompt, str):
                raise ConfigError(
                    f"{self.what}: the prompts are chat messages but api.mode is completions; set api.mode=chat"
                )
            params["prompt"] = cfg.prompt_template.format(prompt=prompt)
        return params

    async def sample(self, prompt: Any, sampling: Any, n: int, seed: int | None) -> tuple[list[dict], Any]:
        """Up to `n` samples of one request: [{"text", "finish"}], and the raw response (for usage).

        Servers that ignore `n` return fewer choices; the caller asks again for the rest."""
        params = self.request_params(prompt, sampling, n, seed, sampling.max_new_tokens)
        response = await self.call(self.cfg.mode, **params)
        out = []
        for choice in sorted(response.choices, key=lambda c: c.index or 0)[:n]:
            text = choice.message.content if self.cfg.mode == "chat" else choice.text
            text, cut = cut_at_stop(valid_text(text or ""), self.stops(sampling))
            out.append({"text": text, "finish": "stop" if cut else (choice.finish_reason or "stop")})
        return out, response

    async def echo_logprobs(self, prompt_text: str, output_text: str) -> tuple[float, int]:
        """Summed log-prob (and token count) of `output_text` after `prompt_text`, from a completions request with
        echo + logprobs: the tokens whose offset falls inside the output are summed."""
        if self.cfg.mode != "completions":
            raise ConfigError(
                f"{self.what}: teacher log-probs through an API need api.mode=completions (echo + logprobs)"
            )
        prompt = self.cfg.prompt_template.format(prompt=prompt_text)
        full = prompt + output_text
        response = await self.call(
            "completions", prompt=full, max_tokens=1, temperature=0.0, echo=True, logprobs=0
        )
        lp = response.choices[0].logprobs if response.choices else None
        if lp is None or not getattr(lp, "token_logprobs", None) or not getattr(lp, "text_offset", None):
            raise ApiError(
                f"{self.describe()} returned no prompt log-probs for a completions request with echo=true and "
                "logprobs=0; this server cannot score given texts: use a server that can (vLLM, llama.cpp) or a "
                "local teacher (backend hf) for teacher_logprobs"
            )
        start, end = len(prompt), len(full)
        total, count = 0.0, 0
        for offset, logp in zip(lp.text_offset, lp.token_logprobs, strict=False):
            if start <= offset < end:
                if logp is None:
                    raise ApiError(f"{self.describe()}: a token of the scored text has no log-prob")
                total += float(logp)
                count += 1
        return total, count

    async def check_echo_alignment(self, prompts: list[str]) -> bool | None:
        """Does the server pair each echoed token with the log-prob of that token given the tokens before it?

        Greedy-generate one token g after a prompt P (its log-prob comes from the generation path), then echo-score
        P + g with the top log-prob of every position. An aligned server reports g's generation log-prob at g's
        position; a server that shifts echo log-probs by one token (llama-cpp-python for models that add no BOS
        token) reports it among the top log-probs of the position before. Returns True / False, or None when no
        probe prompt gave a clear answer."""
        for p in prompts[:3]:
            prompt = self.cfg.prompt_template.format(prompt=p)
            gen = await self.call("completions", prompt=prompt, max_tokens=1, temperature=0.0, logprobs=1)
            c = gen.choices[0]
            if not c.text or c.logprobs is None or not c.logprobs.token_logprobs:
                continue
            lp_gen = c.logprobs.token_logprobs[0]
            echo = await self.call(
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


# -------------------------------------------------------------------------------------------------------------
# HTTP clients: post(path, body) -> parsed JSON reply; close()


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with every lone surrogate (a reply's "\\udce9": valid JSON, but an undecodable byte, not a character;
    tokenizers refuse it) replaced by U+FFFD, as a UTF-8 decoder replaces a bad byte; proper text unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut `text` at the first stop sequence (OpenAI excludes it; some servers return it)."""
    cuts = [i for s in stop if s and (i := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)
