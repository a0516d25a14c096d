"""Job events: their shape, the channel names, and the bus (Redis pub/sub or in-process)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

from pa.settings import settings

log = logging.getLogger(__name__)

#: every Redis key and channel of pa starts with this (channels ignore the db number)
PREFIX = "pa"


def key(*parts: str) -> str:
    """A Redis key or channel name under pa's prefix."""
    return ":".join((PREFIX, *parts))


JOBS_CHANNEL = key("events", "jobs")


def job_event(job: dict[str, Any]) -> str:
    """The message sent for one change of a job: the whole job, with its version."""
    return json.dumps({"type": "job", "data": job}, separators=(",", ":"))


class Bus(Protocol):
    def publish(self, message: str) -> None: ...

    def listen(self, on_subscribed: Callable[[], None]) -> AsyncIterator[str]: ...

    def close(self) -> None: ...


class RedisBus:
    """Redis pub/sub: publish from any thread, one async subscription per listener."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def publish(self, message: str) -> None:
        self._client.publish(JOBS_CHANNEL, message)

    async def listen(self, on_subscribed: Callable[[], None]) -> AsyncIterator[str]:
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=5)
        # Subscribe confirmations are kept: redis-py reconnects and subscribes
        # again by itself after a dropped connection, and each confirmation tells
        # the listener that events may have been missed meanwhile.
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(JOBS_CHANNEL)
            while True:
                # A timeout lets a dead connection surface as an error on the next
                # read instead of waiting forever on a half-open socket.
                msg = await pubsub.get_message(timeout=30)
                if msg is None:
                    await pubsub.ping()
                    continue
                if msg["type"] == "subscribe":
                    on_subscribed()
                    continue
                if msg["type"] != "message":
                    continue  # e.g. the answer to our ping
                data = msg["data"]
                yield data.decode() if isinstance(data, bytes) else str(data)
        finally:
            try:
                await pubsub.aclose()
                await client.aclose()
            except Exception:  # the connection may be gone already
                pass

    def close(self) -> None:
        self._client.close()


class LocalBus:
    """In-process events for embedded mode: publishers on any thread, listeners on loops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]] = []

    def publish(self, message: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for loop, queue in listeners:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, message)
            except RuntimeError:  # its loop has closed
                pass

    async def listen(self, on_subscribed: Callable[[], None]) -> AsyncIterator[str]:
        entry = (asyncio.get_running_loop(), asyncio.Queue[str]())
        with self._lock:
            self._listeners.append(entry)
        try:
            on_subscribed()
            while True:
                yield await entry[1].get()
        finally:
            with self._lock:
                self._listeners.remove(entry)

    def close(self) -> None:
        pass


def create_bus() -> Bus:
    return RedisBus(settings.redis_url) if settings.redis_url else LocalBus()


bus: Bus = create_bus()


def publish(message: str) -> None:
    """Send an event; a failure is logged, never raised (the Job row stays the truth)."""
    try:
        bus.publish(message)
    except Exception as exc:
        log.warning("event not published (%s); clients heal from their next snapshot", exc)
