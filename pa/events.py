"""Job events: their shape, the channel names, and the bus (Redis pub/sub or in-process)."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

from pa import settings as pa_settings

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


def role_change_event(user_id: int) -> str:
    """The message sent when a user's role changed: web processes close the user's
    sockets (4409), which reconnect with the new role's view."""
    return json.dumps({"type": "role_change", "data": {"userId": user_id}},
                      separators=(",", ":"))


def logins_end_event(user_id: int) -> str:
    """The message sent when every login of a user ended: web processes close the
    user's sockets."""
    return json.dumps({"type": "logins_end", "data": {"userId": user_id}},
                      separators=(",", ":"))


def ops_event() -> str:
    """The message sent when an operator changed what the console shows (a type
    paused or resumed): web processes push a fresh overview to admins' sockets."""
    return json.dumps({"type": "ops_changed"}, separators=(",", ":"))


def session_end_event(session_id: str) -> str:
    """The message sent when a login ends: web processes close its sockets."""
    return json.dumps({"type": "session_end", "data": {"sid": session_id}},
                      separators=(",", ":"))


class Bus(Protocol):
    def publish(self, *messages: str) -> None: ...

    def listen(self, on_subscribed: Callable[[], None]) -> AsyncIterator[str]: ...

    def close(self) -> None: ...


class _ThreadConnection:
    """A thread's own connection of a pool, given back when the thread ends.

    (Threads come and go: the test suite's consumers, the web's thread pool.
    Kept for good, their connections filled the pool's 100 within one run.)
    """

    def __init__(self, pool: Any) -> None:
        self.pid = os.getpid()
        self.conn = pool.get_connection()
        # The thread's locals go when it ends, and this object with them.
        weakref.finalize(self, _give_back, pool, self.conn, self.pid)


def _give_back(pool: Any, conn: Any, pid: int) -> None:
    if os.getpid() == pid:  # (a forked child's copy is not its pool's)
        pool.release(conn)


class RedisBus:
    """Redis pub/sub: publish from any thread, one async subscription per listener."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._local = threading.local()

    def publish(self, *messages: str) -> None:
        # Each thread keeps one connection of the pool and talks on it directly,
        # several messages in one round trip: the client's per-command machinery
        # (pool checkout, retry and telemetry wrappers) cost as much CPU as the
        # round trip itself.
        conn = self._connection()
        commands = [("PUBLISH", JOBS_CHANNEL, m) for m in messages]
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            # E.g. Redis restarted: once more on a new connection (a message
            # sent twice is harmless: clients keep the highest version).
            conn.disconnect()
            conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                conn.read_response()

    def commands_then_pop(self, commands: list[tuple[Any, ...]], key: str,
                          timeout: float | None) -> bytes | None:
        """Run `commands` (e.g. PUBLISH), then pop the lowest-scored member of the
        sorted set `key` (BZPOPMIN, waiting up to `timeout` s; ZPOPMIN if None): one
        round trip. The member, or None if the set stayed empty. Raises redis errors."""
        conn = self._connection()
        pop = ("ZPOPMIN", key) if timeout is None else ("BZPOPMIN", key, timeout)
        try:
            reply = self._send_then_pop(conn, commands, pop)
        except (redis.ConnectionError, redis.TimeoutError):
            # E.g. Redis restarted since this thread's last read: once more on a new
            # connection, as publish() does. (Should the first pop have happened
            # unanswered, its job is pending in its row: the reaper enqueues it.)
            reply = self._send_then_pop(conn, commands, pop)
        if not reply:  # nil (timed out) or [] (empty)
            return None
        # BZPOPMIN: [key, member, score]; ZPOPMIN: [member, score]
        return bytes(reply[1] if timeout is not None else reply[0])

    @staticmethod
    def _send_then_pop(conn: Any, commands: list[tuple[Any, ...]],
                       pop: tuple[Any, ...]) -> Any:
        try:
            conn.send_packed_command(conn.pack_commands([*commands, pop]))
            for _ in commands:
                conn.read_response()
            return conn.read_response()
        except BaseException:
            conn.disconnect()  # replies may be left unread on it
            raise

    def _connection(self) -> Any:
        held = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():  # first use, or a forked child
            held = _ThreadConnection(self._client.connection_pool)
            self._local.held = held
        return held.conn

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

    def publish(self, *messages: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for loop, queue in listeners:
            for message in messages:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, message)
                except RuntimeError:  # its loop has closed
                    break

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


_bus: Bus | None = None
_configure_lock = threading.Lock()


def configure(redis_url: str | None) -> Bus:
    """Make Redis at `redis_url` (None: in-process) this process's bus: the current
    one if it is that one already."""
    global _bus
    with _configure_lock:
        before = _bus
        if before is not None and getattr(before, "url", None) == redis_url:
            return before
        _bus = RedisBus(redis_url) if redis_url else LocalBus()
    if before is not None:
        before.close()
    return _bus


def bus() -> Bus:
    """This process's bus: configure()'s, or the settings' at first use."""
    return _bus if _bus is not None else configure(pa_settings.settings.redis_url)


def bus_on(url: str | None) -> RedisBus | None:
    """The event bus, if it is Redis at `url` (then commands for it and for a
    queue on that Redis can share a round trip); else None."""
    current = bus()
    return current if isinstance(current, RedisBus) and current.url == url else None


def publish(*messages: str) -> None:
    """Send events (after this thread's held ones, in one round trip); a failure
    is logged, never raised (the Job row stays the truth)."""
    _send(*take_held(), *messages)


def take_held() -> tuple[str, ...]:
    """This thread's held events, for a caller that sends them before its own."""
    return _held.take()


def _send(*messages: str) -> None:
    try:
        bus().publish(*messages)
    except Exception as exc:
        log.warning("event not published (%s); clients heal from their next snapshot", exc)


#: how long a held event may wait for the next event or queue read of its thread
HOLD_SECONDS = 0.02
#: how often the flusher looks for held events that waited long enough
FLUSH_TICK = HOLD_SECONDS / 2


def hold(message: str) -> None:
    """Publish `message` with this thread's next event or read of the queue, or
    after HOLD_SECONDS.

    For the events of a consumer's worker thread: the claim's `processing`
    event, and, where the queue carries them (pa.queue), the event of how the
    job ended. Most jobs finish within milliseconds: their two events then
    travel in one round trip, and that trip is the one that fetches the next
    task. A job that runs longer shows `processing` at most HOLD_SECONDS (plus
    one tick of the flusher) late. Events of one thread keep their order.
    """
    _held.put(message)


def flush() -> None:
    """Publish every held event now (before this process exits)."""
    _held.flush()


class _Held:
    """Each thread's held events, and the thread that sends those that wait too long."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: thread -> (when the first must go, the messages in order)
        self._by_thread: dict[int, tuple[float, list[str]]] = {}
        self._pid = 0

    def put(self, message: str) -> None:
        """Hold `message` after those this thread holds already."""
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child
                self._pid = os.getpid()
                self._by_thread.clear()
                threading.Thread(target=self._flush_forever, daemon=True,
                                 name="pa-held-events").start()
            held = self._by_thread.get(threading.get_ident())
            if held is None:
                self._by_thread[threading.get_ident()] = (
                    time.monotonic() + HOLD_SECONDS, [message])
            else:
                held[1].append(message)

    def take(self) -> tuple[str, ...]:
        """This thread's held events (to send before its next one), if any."""
        if not self._by_thread:  # the usual case outside the consumer: no lock
            return ()
        with self._lock:
            held = self._by_thread.pop(threading.get_ident(), None)
        return tuple(held[1]) if held else ()

    def flush(self, only_due: bool = False) -> None:
        # Sent while holding the lock: a thread that publishes meanwhile waits,
        # so that its next event cannot overtake the held ones.
        with self._lock:
            now = time.monotonic()
            due = [t for t, (deadline, _) in self._by_thread.items()
                   if not only_due or deadline <= now]
            if due:
                _send(*(m for t in due for m in self._by_thread.pop(t)[1]))

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_TICK)
            self.flush(only_due=True)


_held = _Held()
atexit.register(flush)
