"""A bounded pool of concurrent requests with one writer that keeps each finished request's rows at once (the caller's
`write`: an append + fsync to a store): used by the openai backend, its teacher log-probs and the LLM judge."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from plad.endpoint.client import ApiError
from plad.utils import signals

Put = Callable[[list[Any]], Awaitable[None]]


async def run_pool(
    jobs: list[Any],
    work: Callable[[Any, Put], Awaitable[None]],
    write: Callable[[list[Any]], None],
    concurrency: int,
    on_rows: Callable[[list[Any]], None],
) -> list[tuple[Any, ApiError]]:
    """Run `work(job, put)` over `jobs` with `concurrency` workers; `put(rows)` hands the rows of one finished
    request to the single writer, which passes them to `write` right away (in a thread: it may block on IO), then
    to `on_rows` (in the event loop: progress).

    The first ApiError stops new jobs (in-flight ones finish and are stored); returns the failed jobs. So does a
    SIGINT / SIGTERM under `plad` (the caller then calls `signals.raise_pending`).

    (One function of about 65 lines on purpose: the writer, the workers and the stop event share the queue, the
    failure list and the stop; as separate functions they would pass all of it around.)"""
    queue: asyncio.Queue = asyncio.Queue()
    todo = list(reversed(jobs))
    failed: list[tuple[Any, ApiError]] = []
    stop = asyncio.Event()

    async def writer() -> None:
        finished = False
        while not finished:
            batch: list[Any] = []
            rows = await queue.get()
            while True:  # everything that arrived meanwhile goes in one fsync
                if rows is None:
                    finished = True
                    break
                batch += rows
                if queue.empty():
                    break
                rows = queue.get_nowait()
            if batch:
                try:
                    await asyncio.to_thread(write, batch)
                except BaseException:
                    stop.set()  # nothing more is asked once nothing more can be kept
                    raise
                on_rows(batch)

    async def worker() -> None:
        while todo and not stop.is_set() and signals.pending() is None:
            job = todo.pop()
            try:
                await work(job, queue.put)
            except ApiError as e:
                failed.append((job, e))
                stop.set()
                return
            except BaseException:
                stop.set()  # the other workers finish their requests, and the writer stores them
                raise

    writer_task = asyncio.create_task(writer())
    try:
        # SIGINT / SIGTERM (under `plad`): no new request; those in flight are paid for, so they finish and are stored
        with signals.deferred("the requests in flight finish and are stored"):
            done = await asyncio.gather(
                *(worker() for _ in range(min(concurrency, max(len(jobs), 1)))), return_exceptions=True
            )
    finally:
        await queue.put(None)
        await writer_task  # a failed write raises here
    for result in done:
        if isinstance(result, BaseException):
            raise result
    return failed
