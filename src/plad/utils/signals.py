"""SIGINT and SIGTERM as a clean stop: `plad` turns both into `Interrupted` (a KeyboardInterrupt), and a training
loop can defer them to the end of the step in progress, write a checkpoint of that step, then stop, so that an
interrupted run resumes with `--resume` exactly where it stopped. A second signal while one is deferred stops at
once."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger("plad")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict = {"defer": [], "pending": None}  # defer: what each deferring block does before it stops


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which (exit code 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum: int, frame: object) -> None:
    if _state["defer"] and _state["pending"] is None:
        _state["pending"] = signum
        log.warning(
            "%s: %s, then plad stops (send it again to stop at once)",
            signal.Signals(signum).name,
            _state["defer"][-1],
        )
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the body (the previous handlers come back after it). Only the main
    thread can set signal handlers; elsewhere the body runs with the handlers as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state["pending"] = None
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state["pending"] = None


@contextlib.contextmanager
def deferred(finishing: str) -> Iterator[None]:
    """In the body a first SIGINT / SIGTERM is only recorded (see `pending`, `take_pending`), so that the work in
    progress can end at a consistent point; `finishing` says what happens before the stop (it is logged)."""
    _state["defer"].append(finishing)
    try:
        yield
    finally:
        _state["defer"].pop()


def pending() -> int | None:
    """The deferred signal, if one arrived."""
    return _state["pending"]


def take_pending() -> int | None:
    """The deferred signal, if one arrived (and forget it)."""
    signum, _state["pending"] = _state["pending"], None
    return signum


def raise_pending() -> None:
    """Stop now (`Interrupted`) if a deferred signal arrived."""
    if (signum := take_pending()) is not None:
        raise Interrupted(signum)
