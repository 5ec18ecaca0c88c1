"""plad's retry policy for endpoints: which failures are retried (408/409/429, 5xx, timeouts, dropped connections,
malformed replies), how long to wait (exponential backoff with full jitter, or the server's Retry-After)."""

from __future__ import annotations

import email.utils
import random
import time
from typing import Any

from plad.config import ApiConfig

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
