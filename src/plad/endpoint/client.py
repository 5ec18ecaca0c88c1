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
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from plad.config import ApiConfig
from plad.endpoint.retry import backoff_seconds, classify
from plad.endpoint.transport import (
    LeanClient,
    OpenaiClient,
    causes,
    check_reply,
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
                reason, _, _, message = classify(e, self.cfg, self.scrub)
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
                reason, wait_hint, retryable, message = classify(e, self.cfg, self.scrub)
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
