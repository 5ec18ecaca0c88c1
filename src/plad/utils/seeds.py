"""Seeds derived from keys, so that each batch, row or run has its own seed whatever ran before it."""

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any key, so each batch has its own seed independent of what ran before it."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big") >> 1
