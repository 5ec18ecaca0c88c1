"""The API client's pieces that need no model server: Retry-After parsing, backoff, stop cutting, request bodies,
error classification of both HTTP clients, proxies, batch planning, config checks, and the vLLM backend's install
hint."""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from servers import QuietHTTPServer

from plad.config import ApiConfig, SamplingConfig
from plad.endpoint.client import ApiError, Endpoint, cut_at_stop
from plad.endpoint.retry import backoff_seconds, retry_after_seconds
from plad.endpoint.retry import classify as classify_failure
from plad.endpoint.transport import HttpStatusError, env_proxy, error_message
from plad.utils.errors import ConfigError


def test_retry_after_forms():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "-2"}) == 0.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": date}) <= 31
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def test_backoff_is_full_jitter_capped():
    cfg = ApiConfig(backoff_base=0.5, backoff_max=4.0)
    rng = random.Random(0)
    for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)]:
        waits = [backoff_seconds(cfg, attempt, rng) for _ in range(400)]
        assert 0 <= min(waits) and max(waits) <= cap
        assert max(waits) > 0.8 * cap  # the whole range is used (jitter spreads clients apart)


def test_cut_at_stop():
    assert cut_at_stop("abc<END>def", ["<END>"]) == ("abc", True)
    assert cut_at_stop("abc\n\nx END", ["END", "\n\n"]) == ("abc", True)  # the earliest stop wins
    assert cut_at_stop("abc", ["zz", ""]) == ("abc", False)


def test_request_bodies(monkeypatch):
    monkeypatch.setenv("K", "secret-key-1")
    s = SamplingConfig(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=12)
    chat = Endpoint(ApiConfig(base_url="http://x/v1", api_key_env="K", mode="chat", system_prompt="Be brief.",
                              prompt_template="Summarise: {prompt}", stop=["\n"]), "m", "teacher")  # fmt: skip
    p = chat.request_params("text", s, 3, 2**40 + 5, 12)
    assert p["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarise: text"},
    ]
    assert (p["n"], p["top_p"], p["extra_body"], p["stop"], p["max_tokens"]) == (
        3,
        0.9,
        {"top_k": 5},
        ["\n"],
        12,
    )
    assert p["seed"] == (2**40 + 5) % 2**31
    msgs = [{"role": "user", "content": "hi"}]
    assert chat.request_params(msgs, s, 1, None, 12)["messages"][1:] == msgs
    assert chat.scrub("key=secret-key-1!") == "key=***!"
    comp = Endpoint(ApiConfig(base_url="http://x/v1", api_key_env="", send_seed=False), "m", "student")
    p = comp.request_params("text", s, 1, 7, 12)
    assert p["prompt"] == "text" and "seed" not in p and "n" not in p
    with pytest.raises(ConfigError, match="api.mode=chat"):
        comp.request_params(msgs, s, 1, 7, 12)


def test_api_config_checks(monkeypatch):
    with pytest.raises(ConfigError, match=r"\{prompt\}"):
        ApiConfig(prompt_template="no placeholder")
    with pytest.raises(ConfigError, match="extra_body"):
        ApiConfig(extra_body="{not json")
    with pytest.raises(ConfigError, match="base_url"):
        Endpoint(ApiConfig(api_key_env=""), "m", "teacher")
    monkeypatch.delenv("PLAD_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError, match="PLAD_UNSET_VAR"):
        Endpoint(ApiConfig(base_url="http://x/v1", api_key_env="PLAD_UNSET_VAR"), "m", "teacher")


def classify(e: BaseException, client: str = "openai") -> tuple:
    ep = Endpoint(ApiConfig(base_url="http://x/v1", api_key_env="", timeout=7, client=client), "m", "teacher")
    reason, hint, retryable, _ = classify_failure(e, ep.cfg, ep.scrub)
    return reason, hint, retryable


def chained(*excs: BaseException) -> BaseException:
    """excs[0] raised from excs[1] raised from ... (as the clients wrap transport errors)."""
    for outer, inner in zip(excs, excs[1:], strict=False):
        outer.__cause__ = inner
    return excs[0]


def test_both_clients_classify_failures_alike():
    import aiohttp
    import httpx2
    import openai

    req = httpx2.Request("POST", "http://x/v1/completions")
    # the openai client over aiohttp: a dropped connection arrives as a connect timeout; it is a connection fault
    dropped = chained(
        openai.APITimeoutError(req), httpx2.ConnectTimeout("x"), aiohttp.ServerDisconnectedError()
    )
    assert classify(dropped) == ("connection", None, True)
    read_timeout = chained(
        openai.APITimeoutError(req), httpx2.ReadTimeout("x"), aiohttp.SocketTimeoutError("read")
    )
    assert classify(read_timeout) == ("timeout", None, True)
    assert classify(openai.APITimeoutError(req)) == ("timeout", None, True)  # httpx transport
    # the lean client: aiohttp's own exceptions and plad's HttpStatusError
    assert classify(aiohttp.ServerDisconnectedError(), "lean")[0::2] == ("connection", True)
    assert classify(aiohttp.ClientPayloadError("cut"), "lean")[0::2] == ("connection", True)
    assert classify(asyncio.TimeoutError(), "lean")[0::2] == ("timeout", True)
    assert classify(aiohttp.ConnectionTimeoutError(), "lean")[0::2] == ("timeout", True)
    assert classify(HttpStatusError(429, "slow down", {"retry-after": "2"}), "lean") == ("429", 2.0, True)
    assert classify(HttpStatusError(503, "busy", {}), "lean") == ("5xx", None, True)
    assert classify(HttpStatusError(401, "bad key", {}), "lean") == ("401", None, False)
    assert classify(json.JSONDecodeError("cut", "{", 1), "lean")[0::2] == ("malformed", True)
    assert classify(aiohttp.InvalidURL("x"), "lean")[0::2] == ("other", False)
    # openai's status errors give the same reasons
    resp = httpx2.Response(429, headers={"retry-after": "2"}, request=req)
    assert classify(openai.RateLimitError("slow down", response=resp, body=None)) == ("429", 2.0, True)


def test_error_messages_of_openai_style_bodies(monkeypatch):
    assert error_message(b'{"error": {"message": "model not found", "type": "x"}}') == "model not found"
    assert error_message(b'{"error": "plain"}') == "plain"
    assert error_message(b"<html>Bad gateway</html>") == "<html>Bad gateway</html>"
    # a key the server echoes across the point where the message is cut: scrubbed whole, before the cut
    key = "sk-secret-0123456789"
    monkeypatch.setenv("PLAD_TEST_KEY", key)
    ep = Endpoint(ApiConfig(base_url="http://x/v1", api_key_env="PLAD_TEST_KEY", client="lean"), "m", "t")
    for at in range(280, 310):
        body = ("x" * at + f"Bearer {key} refused").encode()
        message = classify_failure(HttpStatusError(401, error_message(body), {}), ep.cfg, ep.scrub)[3]
        assert "sk-s" not in message and key[:-1] not in message, at


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "http://host:port/v1", "ftp://host/v1", "http:///v1"])
def test_base_url_must_be_an_http_url(url):
    with pytest.raises(ConfigError, match="http:// or https://"):
        ApiConfig(base_url=url)
    ApiConfig(base_url="https://api.example.com/v1")


@pytest.mark.parametrize("client", ["openai", "lean"])
def test_timeout_counts_time_without_progress(client):
    """api.timeout is the longest wait for the next bytes, as the openai client has it: a reply that trickles in
    over 3 x timeout arrives; a server that says nothing for longer than the timeout is a timeout."""
    reply = json.dumps({"choices": [{"index": 0, "text": " hi", "finish_reason": "stop"}]}).encode()

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            silent = body["prompt"] == "silent"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            if silent:
                time.sleep(2.0)
            for i in range(0, len(reply), len(reply) // 6 + 1):
                self.wfile.write(reply[i : i + len(reply) // 6 + 1])
                self.wfile.flush()
                time.sleep(0.25)

    server = QuietHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = ApiConfig(
        base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
        api_key_env="",
        client=client,
        timeout=0.6,
        max_retries=0,
    )
    ep = Endpoint(cfg, "m", "teacher")

    async def ask(prompt: str) -> list:
        try:
            return (await ep.sample(prompt, SamplingConfig(max_new_tokens=2), 1, 0))[0]
        finally:
            await ep.close()

    try:
        t0 = time.monotonic()
        assert asyncio.run(ask("trickle")) == [{"text": " hi", "finish": "stop"}]
        assert time.monotonic() - t0 > 1.2  # longer than the timeout in all
        with pytest.raises(ApiError, match="timed out"):
            asyncio.run(ask("silent"))
        assert ep.usage.retries == {} and ep.usage.attempts == 2
    finally:
        server.shutdown()
        server.server_close()


def test_env_proxy(monkeypatch):
    for var in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    assert env_proxy("http://10.0.0.5:8000/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    assert env_proxy("https://api.example.com/v1") == "http://proxy.corp:3128"
    assert env_proxy("http://10.0.0.5:8000/v1") is None  # no proxy named for http
    monkeypatch.setenv("NO_PROXY", "example.com,localhost")
    assert env_proxy("https://api.example.com/v1") is None


def test_lean_client_goes_through_the_environments_proxy(monkeypatch):
    """HTTP_PROXY set: the lean client sends the absolute URL to the proxy (what a proxy expects), with the key."""
    seen: list[tuple[str, str]] = []
    reply = json.dumps({"choices": [{"index": 0, "text": " hi", "finish_reason": "stop"}]}).encode()

    class Proxy(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.path, self.headers.get("Authorization", "")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = QuietHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for var in ("no_proxy", "NO_PROXY", "http_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("PLAD_TEST_KEY", "k-123")
        cfg = ApiConfig(base_url="http://upstream.invalid:9/v1", api_key_env="PLAD_TEST_KEY", client="lean")
        ep = Endpoint(cfg, "m", "teacher")

        async def ask() -> list:
            try:
                return (await ep.sample("prompt", SamplingConfig(max_new_tokens=2), 1, 0))[0]
            finally:
                await ep.close()

        assert asyncio.run(ask()) == [{"text": " hi", "finish": "stop"}]
        assert seen == [("http://upstream.invalid:9/v1/completions", "Bearer k-123")]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("client", ["openai", "lean"])
def test_reachability_probe_goes_through_the_same_client(client, monkeypatch):
    """check_reachable asks GET /models through the endpoint's own HTTP client: a refused key stops before any work,
    a server without the route (404) or with a plain-text answer counts as reachable, a 5xx only warns, and a port
    with no server says it cannot be reached, naming why."""
    status = {"code": 200}
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.path + " " + self.headers.get("Authorization", ""))
            body = b"not json" if status["code"] == 200 else b'{"error": {"message": "no"}}'
            self.send_response(status["code"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = QuietHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PLAD_TEST_PROBE_KEY", "sk-probe-secret")
        cfg = ApiConfig(
            base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", client=client,
            api_key_env="PLAD_TEST_PROBE_KEY", timeout=2.0,
        )  # fmt: skip
        ep = Endpoint(cfg, "m", "teacher")
        for code in (200, 404, 405, 503):
            status["code"] = code
            ep.check_reachable()
        assert seen[0] == "/v1/models Bearer sk-probe-secret" and len(seen) == 4
        for code in (401, 403):
            status["code"] = code
            with pytest.raises(ApiError, match=f"HTTP {code}, the key was refused; nothing was asked yet"):
                ep.check_reachable()
    finally:
        server.shutdown()
        server.server_close()
    from servers import free_port

    gone = ApiConfig(
        base_url=f"http://127.0.0.1:{free_port()}/v1", client=client, api_key_env="", timeout=2.0
    )
    gone = Endpoint(gone, "m", "x")
    with pytest.raises(ApiError) as e:
        gone.check_reachable()
    assert "cannot be reached (" in str(e.value) and "Nothing was asked yet" in str(e.value)
    assert "sk-probe-secret" not in str(e.value)
