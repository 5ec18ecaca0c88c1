"""The HTTP side of an endpoint: two clients with one interface (`post(path, body)` -> the parsed JSON reply,
`get(path)`, `close()`), both over aiohttp (the one HTTP library plad uses; the reachability probe goes through the
same client as the requests): the official `openai` client with its aiohttp transport (`api.client: openai`, the
default) and plad's lean aiohttp client (`api.client: lean`). The lean one is kept because it pays off where
plad's own share of a request matters: a quarter to half of the official client's CPU per request, and 3-13% more
rows/s at concurrency 4-16 even with a slow (500 ms per request) teacher (benchmarks/README.md, "API
throughput"). Also here: a per-request deadline, and the checks every reply passes before plad reads it (choices
present, texts no longer than max_tokens allows)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any


class OpenaiClient:
    """The official openai client (its retries off) over its aiohttp transport; over its default httpx transport
    when that is missing (an openai release before it, or aiohttp not installed)."""

    def __init__(self, openai: Any, base_url: str, key: str, timeout: float):
        http: dict[str, Any] = {}
        try:
            http["http_client"] = openai.DefaultAioHttpClient()
        except (AttributeError, RuntimeError):  # pragma: no cover - aiohttp is a dependency of plad
            pass
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=key or "none", max_retries=0, timeout=timeout, **http
        )

    async def get(self, path: str) -> Any:
        return await self._client.get(path, cast_to=object)

    async def post(self, path: str, body: dict, max_bytes: int | None = None) -> Any:
        # max_bytes is not enforced here (the openai client reads a reply whole); texts are bounded after parsing
        return await self._client.post(path, body=body, cast_to=object)

    async def close(self) -> None:
        await self._client.close()


class HttpStatusError(RuntimeError):
    """An HTTP error reply to the lean client: status, the server's message, headers (for Retry-After)."""

    def __init__(self, status: int, message: str, headers: Any):
        super().__init__(f"HTTP {status}: {message}")
        self.status_code, self.message, self.headers = status, message, headers  # as openai.APIStatusError


class LeanClient:
    """plad's minimal client: one aiohttp session, the body sent as JSON with a bearer key, the reply parsed as
    JSON. A proxy from the environment (HTTP(S)_PROXY, NO_PROXY) is looked up
    once, as the openai client does: aiohttp's trust_env would look it up (and read ~/.netrc) on every request,
    which costs more CPU than the request itself."""

    def __init__(self, base_url: str, key: str, timeout: float):
        from plad import __version__

        # as the openai client: `timeout` without progress (to connect, or between bytes of the reply), so a
        # long generation that the server streams out slowly is not cut
        self.timeout = timeout

        self.base_url = base_url.rstrip("/")
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"plad/{__version__}",
        }
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.proxy = env_proxy(self.base_url)
        self._session: Any = None

    def _open(self) -> Any:
        if self._session is None:  # made inside the event loop that uses it
            import aiohttp

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout, sock_connect=self.timeout, sock_read=self.timeout
                ),
                connector=aiohttp.TCPConnector(limit=0),  # plad bounds the requests in flight itself
            )
        return self._session

    async def get(self, path: str) -> Any:
        async with self._open().get(self.base_url + path, headers=self.headers, proxy=self.proxy) as r:
            raw = await r.read()
            if r.status >= 400:
                raise HttpStatusError(r.status, error_message(raw), r.headers)
        return raw  # what a server answers to a GET (the probe's /models) is not read

    async def post(self, path: str, body: dict, max_bytes: int | None = None) -> Any:
        """The parsed reply; one longer than `max_bytes` is refused as malformed as soon as it gets longer (a
        server that ignores max_tokens cannot fill the memory)."""
        data = json.dumps(body).encode()
        url = self.base_url + path
        async with self._open().post(url, data=data, headers=self.headers, proxy=self.proxy) as r:
            if max_bytes is None:
                raw = await r.read()
            else:
                chunks, size = [], 0
                async for chunk in r.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > max_bytes:
                        raise MalformedReply(
                            f"a reply of more than {max_bytes} bytes (max_tokens {body['max_tokens']})"
                        )
                    chunks.append(chunk)
                raw = b"".join(chunks)
            if r.status >= 400:
                raise HttpStatusError(r.status, error_message(raw), r.headers)
        return json.loads(raw)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP_PROXY / HTTPS_PROXY / ALL_PROXY), unless NO_PROXY
    exempts its host."""
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.netloc, proxies):
        return None
    return proxy


def error_message(raw: bytes) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}), else the body's text (whole: the
    caller scrubs the key before it shortens the message, so no part of a key can survive a cut)."""
    try:
        data = json.loads(raw)
        err = data.get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
        if msg:
            return str(msg)
    except ValueError:
        pass
    return raw.decode("utf-8", "replace").strip()


async def within_deadline(coro: Any, seconds: float) -> Any:
    """Await `coro` for at most `seconds` in all; DeadlineExceeded past them (a TimeoutError from inside, the
    client's own no-progress timeout, passes unchanged)."""
    message = f"no complete reply within {seconds:g} s (api.request_deadline)"
    if hasattr(asyncio, "timeout"):  # Python 3.11+: no extra task per request
        cm = asyncio.timeout(seconds)
        try:
            async with cm:
                return await coro
        except TimeoutError:
            if cm.expired():
                raise DeadlineExceeded(message) from None
            raise
    t0 = time.monotonic()
    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        if time.monotonic() - t0 < seconds * 0.99:
            raise
        raise DeadlineExceeded(message) from None


def causes(e: BaseException) -> list[BaseException]:
    """e, its cause, that one's cause, ... (each once)."""
    out: list[BaseException] = []
    x: BaseException | None = e
    while x is not None and x not in out:
        out.append(x)
        x = x.__cause__ or x.__context__
    return out


def is_timeout(e: BaseException) -> bool:
    return isinstance(e, TimeoutError | asyncio.TimeoutError)


class MalformedReply(ValueError):
    """A reply that parsed but lacks what every OpenAI-compatible reply has (choices), or is far longer than its
    max_tokens allows."""


class DeadlineExceeded(TimeoutError):
    """A request took longer than api.request_deadline in all (retried like a timeout)."""


# A reply's text may hold at most this many characters per max_tokens token, plus REPLY_SLACK: generous (a token is
# a few characters; the longest tokens of common vocabularies are a few dozen), so only a server that ignores
# max_tokens hits it. Such a reply is malformed: retried, and after api.max_retries the run stops, naming it; it is
# never stored (a 20 MB reply to max_tokens 12 would otherwise fill samples.jsonl and the memory).
REPLY_CHARS_PER_TOKEN = 64


REPLY_SLACK = 1024


def reply_limit(body: dict) -> int | None:
    """The most characters a choice's text may hold for this request; None when its max_tokens does not bound
    them (no max_tokens, or echo: the prompt comes back too)."""
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or body.get("echo"):
        return None
    return REPLY_CHARS_PER_TOKEN * max_tokens + REPLY_SLACK


class Reply(dict):
    """A JSON object with attribute access (None for an absent key), nested objects wrapped on access."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _wrap(self.get(name))


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return Reply(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def check_reply(data: Any, kind: str, limit: int | None = None) -> Reply:
    if not isinstance(data, dict):
        raise MalformedReply(f"not a {kind} object: {str(data)[:120]!r}")
    if not isinstance(data.get("choices"), list) or not data["choices"]:
        raise MalformedReply(f"{kind} reply without choices: {str(data)[:120]!r}")
    for choice in data["choices"] if limit is not None else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        text = choice.get("text") if isinstance(choice, dict) else None
        text = message.get("content") if isinstance(message, dict) else text
        if isinstance(text, str) and len(text) > limit:
            raise MalformedReply(
                f"a reply text of {len(text)} characters, more than {limit} ({REPLY_CHARS_PER_TOKEN} per max_tokens "
                f"token + {REPLY_SLACK}): the server does not honour max_tokens"
            )
    return Reply(data)
