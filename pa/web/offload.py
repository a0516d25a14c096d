"""Where a route's blocking work runs: on the event loop when it cannot block, else
in the thread pool; and the async half of dispatching a job.

Handing work to a thread costs more than a short SQLite statement does (the
hand-over, and the threads' fight for the GIL at load), so with SQLite a route's
database work runs on the loop whenever it cannot wait: a read (WAL readers never
wait) or a write whose lock is free, or frees within a few milliseconds (the loop
serves other requests meanwhile); a write that would wait longer goes to the
thread pool. With PostgreSQL it runs on the loop too, on the loop's asyncio
connections (db.run_on_loop), where waiting for the server does not block it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from pa import db, jobs
from pa.settings import settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: pauses on the loop before a write whose lock is taken tries again; then a thread.
#: Sent straight to a thread, a write holds the process's write lock while that
#: thread waits for the GIL (up to 5 ms behind the busy loop), so the next writes
#: find it taken too and follow it: at saturation every write ran in a thread and
#: a request cost twice the CPU (0.86 vs 1.5-1.7 ms), set off by nothing more than
#: the checkpointer's few milliseconds under the lock every few seconds.
BUSY_PAUSES = (0.0002, 0.0005, 0.001, 0.002)


async def run_db(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)`, database work only (no network calls besides the database).

    `fn` must not have written anything when it raises WriterBusy: one write
    transaction, or reads before it, so that running it again in a thread is
    the same as running it once.
    """
    if db.runs_inline():
        for pause in (*BUSY_PAUSES, None):
            try:
                with db.without_waiting():
                    return fn(*args)
            except db.WriterBusy:
                if pause is None:
                    break
                await asyncio.sleep(pause)
    elif db.runs_on_loop():
        return await db.run_on_loop(fn, *args)
    return await run_in_threadpool(fn, *args)


class Dispatcher:
    """jobs.dispatch() without blocking the event loop: the event and the task in
    one round trip on an asyncio Redis client (one per app, opened by its lifespan).
    Without one Redis for both (embedded mode) it hands dispatch() to a thread."""

    def __init__(self) -> None:
        self._client: aioredis.Redis | None = None

    async def start(self) -> None:
        if jobs.one_redis():
            assert settings.redis_url
            self._client = aioredis.Redis.from_url(
                settings.redis_url, socket_timeout=5, socket_connect_timeout=5
            )

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def dispatch(self, job: dict[str, Any]) -> None:
        if self._client is None:
            await run_in_threadpool(jobs.dispatch, job)
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            jobs.queue_commands(pipe, job)
            await pipe.execute()
        except Exception as exc:
            # The row is committed and pending: the reaper enqueues it again later.
            log.warning("job %s not enqueued (%s); the reaper will retry", job["id"], exc)
