"""plad's retry policy for endpoints: which failures are retried (408/409/429, 5xx, timeouts, dropped connections,
malformed replies), how long to wait (exponential backoff with full jitter, or the server's Retry-After)."""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable
from typing import Any

from plad.config import ApiConfig
from plad.endpoint.transport import DeadlineExceeded, HttpStatusError, MalformedReply, causes, is_timeout

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds the server asked us to wait (Retry-After as seconds or an HTTP date, or retry-after-ms)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - time.time(), 0.0)


def backoff_seconds(cfg: ApiConfig, attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(backoff_max, backoff_base * 2**attempt)]."""
    return rng.uniform(0, min(cfg.backoff_max, cfg.backoff_base * 2**attempt))


def classify(
    e: Exception, cfg: ApiConfig, scrub: Callable[[str], str]
) -> tuple[str, float | None, bool, str]:
    """A failed request as (reason, server-requested wait, retryable, message without the key): what the retry
    loop of Endpoint.call needs to decide."""
    import aiohttp
    import openai as o

    status = None
    if isinstance(e, o.APIStatusError):
        status, body, headers = e.status_code, str(getattr(e, "message", "") or e), e.response.headers
    elif isinstance(e, HttpStatusError):
        status, body, headers = e.status_code, e.message, e.headers
    if status is not None:
        body = scrub(body)[:300]
        hint = retry_after_seconds(headers)
        reason = "429" if status == 429 else "5xx" if status >= 500 else str(status)
        if status in RETRYABLE_STATUS or status >= 500:
            return reason, hint, True, f"HTTP {status}: {body}"
        what = {401: "the key was refused", 403: "access denied", 404: "unknown model or path"}.get(
            status, ""
        )
        return reason, None, False, f"HTTP {status}{' (' + what + ')' if what else ''}: {body}"
    if isinstance(e, DeadlineExceeded):
        return "timeout", None, True, str(e)
    chain = causes(e)
    # the openai client's aiohttp transport reports a dropped connection as a connect timeout: look beneath
    dropped = [x for x in chain if isinstance(x, aiohttp.ClientError) and not is_timeout(x)]
    if isinstance(e, o.APITimeoutError) and not dropped or is_timeout(e):
        return "timeout", None, True, f"timed out after {cfg.timeout:g} s (api.timeout)"
    if any(isinstance(x, aiohttp.InvalidURL) for x in chain):
        return "other", None, False, f"api.base_url {cfg.base_url!r} is not a valid URL"
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
        return "malformed", None, True, f"malformed reply ({scrub(str(e))[:200]})"
    return "other", None, False, f"{type(e).__name__}: {scrub(str(e))[:300]}"
