"""The event hub: one bus subscription per web process, fanned out to WebSockets.

Each socket has a bounded queue. The hub reads every event once (for its owner's
id) and forwards the original text to the owner's sockets and to every admin's.
A socket whose queue is full (a slow browser) loses its backlog and gets a fresh
snapshot instead, so it never holds up the others; every socket gets a snapshot
again after the subscription comes back from an outage.

Admins' sockets also get the operators' overview (`{"type": "ops"}`), built once
per web process for all of them: at most once a second while jobs change (or an
operator paused or resumed a type), and every OPS_IDLE seconds otherwise (a
consumer that went silent changes nothing else). However long a build takes (a
huge table, a loaded machine), building overviews takes at most OPS_BUDGET of the
time: a slow build spaces the next one out.

`/ws` authenticates like the API. A handshake without a signed-in user is
accepted and then closed with code 4401, because a browser can read a close code
but not the status of a refused handshake: the page goes to /login on 4401 and
keeps retrying on anything else. A foreign Origin is refused with HTTP 403 before
this module sees it (OriginCheckMiddleware).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from pa import estimates, events, jobs, ops
from pa.models import Role
from pa.web.auth import current_user, session_id

log = logging.getLogger(__name__)

#: events buffered per socket before it is given a snapshot instead
QUEUE_SIZE = 256
#: waits between attempts to subscribe again after the bus failed
RETRY_FIRST, RETRY_MAX = 0.5, 5.0
#: close code of a socket opened without a signed-in user, or whose login ended
CLOSE_UNAUTHORIZED = 4401
#: the user's role changed: the page reloads, and its socket gets the new role's view
CLOSE_ROLE_CHANGED = 4409
#: close code when the server stops (1001: going away)
CLOSE_GOING_AWAY = 1001
#: seconds between overviews for admins while something changes, and at most between two
OPS_INTERVAL, OPS_IDLE = 1.0, 5.0
#: the share of the time that building overviews may take
OPS_BUDGET = 0.02
#: how uvicorn serves the sockets (run_web.py and the tests' server): websockets'
#: sans-I/O protocol, which keeps no tasks of its own per socket, and no
#: permessage-deflate. pa's messages are a few hundred bytes of JSON; compressing each
#: one once per socket held 38 KB per open socket and was most of the CPU of an event
#: sent to many (bench/bench_sockets.py, docs/BENCHMARKS.md).
UVICORN_WEBSOCKETS: dict[str, Any] = {"ws": "websockets-sansio",
                                      "ws_per_message_deflate": False}


class Signal(enum.Enum):
    #: send a fresh snapshot of the user's jobs
    SNAPSHOT = "snapshot"
    #: the hub stops: close the socket
    CLOSE = "close"
    #: the login that opened the socket has ended: close it as unauthorized
    SIGNED_OUT = "signed_out"
    #: the user's role changed: close it, so that it reconnects with the new role
    ROLE_CHANGED = "role_changed"


class Subscriber:
    """One WebSocket's place in the hub: whose jobs it gets, and what it has still to send."""

    def __init__(self, user_id: int, is_admin: bool, size: int,
                 session_id: str | None = None,
                 types: frozenset[str] | None = None) -> None:
        self.user_id = user_id
        self.is_admin = is_admin
        #: the types of the user's own jobs the socket gets (None: all of them)
        self.types = types
        #: the login (cookie session) that opened the socket; None for a bearer token
        self.session_id = session_id
        self.queue: asyncio.Queue[str | Signal] = asyncio.Queue(size)
        self.closed = False

    def offer(self, message: str) -> None:
        """Queue an event; when the queue is full, drop the backlog for a snapshot."""
        if self.closed:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.replace_backlog(Signal.SNAPSHOT)

    def replace_backlog(self, signal: Signal) -> None:
        if self.closed:
            return
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(signal)
        self.closed = signal in (Signal.CLOSE, Signal.SIGNED_OUT, Signal.ROLE_CHANGED)


class Hub:
    """One subscription to `pa.events.bus()`, many subscribers."""

    def __init__(self, bus: events.Bus | None = None, queue_size: int = QUEUE_SIZE,
                 overview: Callable[[], dict[str, Any]] = ops.overview) -> None:
        self._bus = bus
        self.queue_size = queue_size
        self._overview = overview
        #: something the overview shows changed since it was last sent
        self.ops_dirty = True
        #: overviews built for admins' sockets, and the seconds they took (GET /metrics)
        self.overviews_built = 0
        self.overview_seconds = 0.0
        self._ops_task: asyncio.Task[None] | None = None
        self._by_user: dict[int, set[Subscriber]] = {}
        self._admins: set[Subscriber] = set()
        self._by_session: dict[str, set[Subscriber]] = {}
        self._task: asyncio.Task[None] | None = None
        self._delay = RETRY_FIRST
        #: whether the subscription is live now
        self.subscribed = False

    async def start(self) -> None:
        """Subscribe in a background task (it retries by itself)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pa-hub")
            self._ops_task = asyncio.create_task(self._ops_loop(), name="pa-hub-ops")

    async def stop(self) -> None:
        """Unsubscribe, and tell every socket to close."""
        task, self._task = self._task, None
        if task is not None:
            await _cancel(task)
        ops_task, self._ops_task = self._ops_task, None
        if ops_task is not None:
            await _cancel(ops_task)
        for sub in self._subscribers():
            sub.replace_backlog(Signal.CLOSE)
        self._by_user.clear()
        self._admins.clear()
        self._by_session.clear()
        self.subscribed = False

    def register(self, user_id: int, is_admin: bool, session_id: str | None = None,
                 types: frozenset[str] | None = None) -> Subscriber:
        """A new socket; its first item is a snapshot (taken after it can miss nothing)."""
        sub = Subscriber(user_id, is_admin, self.queue_size, session_id, types)
        sub.queue.put_nowait(Signal.SNAPSHOT)
        if session_id is not None:
            self._by_session.setdefault(session_id, set()).add(sub)
        if is_admin:
            self._admins.add(sub)
            self.ops_dirty = True  # (it gets an overview within a second)
        else:
            self._by_user.setdefault(user_id, set()).add(sub)
        return sub

    def unregister(self, sub: Subscriber) -> None:
        sub.closed = True
        self._admins.discard(sub)
        _discard(self._by_user, sub.user_id, sub)
        if sub.session_id is not None:
            _discard(self._by_session, sub.session_id, sub)

    def count(self) -> int:
        """How many sockets are registered."""
        return len(self._admins) + sum(len(s) for s in self._by_user.values())

    def _subscribers(self) -> list[Subscriber]:
        return [*self._admins, *(s for subs in self._by_user.values() for s in subs)]

    def broadcast(self, message: str) -> None:
        """Forward one job event to its owner's sockets and every admin's; close the
        sockets of a login that ended."""
        try:
            event = json.loads(message)
            if event["type"] == "session_end":
                self.end_session(event["data"]["sid"])
                return
            if event["type"] == "logins_end":
                self.close_user(event["data"]["userId"], Signal.SIGNED_OUT)
                return
            if event["type"] == "role_change":
                self.close_user(event["data"]["userId"], Signal.ROLE_CHANGED)
                return
            self.ops_dirty = True
            if event["type"] == "ops_changed":
                return
            owner, job_type = event["data"]["userId"], event["data"]["type"]
        except (ValueError, KeyError, TypeError):
            log.warning("event ignored: not a job event: %.200s", message)
            return
        if owner is not None:
            for sub in self._by_user.get(owner, ()):
                if sub.types is None or job_type in sub.types:
                    sub.offer(message)
        for sub in self._admins:
            sub.offer(message)

    def end_session(self, session_id: str) -> None:
        """Close the sockets opened by this login (its user logged out)."""
        for sub in list(self._by_session.get(session_id, ())):
            sub.replace_backlog(Signal.SIGNED_OUT)

    def close_user(self, user_id: int, signal: Signal) -> None:
        """Close every socket of the user with `signal`: SIGNED_OUT when their logins
        ended (a new password, revoked tokens, a disabled account), ROLE_CHANGED when
        their role did (they reconnect with what the new role may see)."""
        for sub in self._subscribers():
            if sub.user_id == user_id:
                sub.replace_backlog(signal)

    def resync_all(self) -> None:
        """Every socket gets a fresh snapshot (events may have been missed)."""
        for sub in self._subscribers():
            sub.replace_backlog(Signal.SNAPSHOT)

    def _on_subscribed(self) -> None:
        # Called on every (re)subscription, including one the Redis client made by
        # itself after a dropped connection: either way events may have been missed.
        if not self.subscribed:
            log.info("subscribed to job events")
        self.subscribed = True
        self._delay = RETRY_FIRST
        self.resync_all()

    async def _run(self) -> None:
        bus = self._bus or events.bus()
        while True:
            try:
                async for message in bus.listen(self._on_subscribed):
                    self.broadcast(message)
                raise ConnectionError("the event stream ended")
            except Exception as exc:
                # Warn once per outage; the attempts that follow fail quietly.
                level = logging.WARNING if self._delay == RETRY_FIRST else logging.DEBUG
                log.log(level, "job events unavailable (%s); subscribing again in %.1f s",
                        exc, self._delay)
                self.subscribed = False
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, RETRY_MAX)

    async def _ops_loop(self) -> None:
        loop = asyncio.get_running_loop()
        sent_at, pause = -OPS_IDLE, OPS_INTERVAL
        while True:
            await asyncio.sleep(pause)
            if not self._admins or not (self.ops_dirty or loop.time() - sent_at >= OPS_IDLE):
                continue
            self.ops_dirty, sent_at = False, loop.time()
            try:
                data = await run_in_threadpool(self._overview)
            except Exception as exc:
                log.warning("operators' overview not built (%s)", exc)
                continue
            took = loop.time() - sent_at
            self.overviews_built += 1
            self.overview_seconds += took
            pause = max(OPS_INTERVAL, took / OPS_BUDGET - took)
            text = json.dumps({"type": "ops", "data": data}, separators=(",", ":"))
            for sub in self._admins:
                sub.offer(text)


def _discard(index: dict[Any, set[Subscriber]], key: Any, sub: Subscriber) -> None:
    subs = index.get(key)
    if subs is not None:
        subs.discard(sub)
        if not subs:
            del index[key]


async def _cancel(task: asyncio.Task[None], timeout: float = 5.0) -> None:
    """Cancel `task` and wait for it to end.

    One cancel() is not always enough: redis-py (8.1) loses a cancellation that
    arrives during its connection handshake and goes on reading, so cancel again
    until the task has ended.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        if loop.time() > deadline:
            log.warning("the event subscription did not stop within %.0f s", timeout)
            return
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        log.error("the event subscription failed", exc_info=task.exception())


def _snapshot(user_id: int, role: Role) -> list[dict[str, Any]]:
    return estimates.annotate(jobs.snapshot(user_id, role))


async def _send_loop(websocket: WebSocket, sub: Subscriber, user_id: int,
                     role: Role) -> None:
    while True:
        item = await sub.queue.get()
        if item is Signal.CLOSE:
            await websocket.close(CLOSE_GOING_AWAY)
            return
        if item is Signal.SIGNED_OUT:
            await websocket.close(CLOSE_UNAUTHORIZED, "Signed out.")
            return
        if item is Signal.ROLE_CHANGED:
            await websocket.close(CLOSE_ROLE_CHANGED, "Your role changed.")
            return
        if item is Signal.SNAPSHOT:
            snapshot = await run_in_threadpool(_snapshot, user_id, role)
            text = json.dumps({"type": "snapshot", "data": {"jobs": snapshot}},
                              separators=(",", ":"))
            await websocket.send_text(text)
        else:
            await websocket.send_text(str(item))


#: what sending to or reading from a socket raises once its client has gone
_GONE = (WebSocketDisconnect, WebSocketDisconnected, OSError)


async def _send(websocket: WebSocket, sub: Subscriber, user_id: int, role: Role) -> None:
    try:
        await _send_loop(websocket, sub, user_id, role)
    except _GONE:
        pass  # the client went away while we were sending: nothing to report
    except Exception:
        log.exception("WebSocket of user %s failed", user_id)
        with contextlib.suppress(*_GONE):
            await websocket.close(1011)


async def _receive(websocket: WebSocket) -> None:
    # The client has nothing to say; reading is how its going away is noticed (and,
    # once the sender closed the socket, how the client's answer to that arrives).
    with contextlib.suppress(*_GONE):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass


async def job_socket(websocket: WebSocket) -> None:
    """`/ws`: a snapshot of the user's jobs, then every change of a job they may see."""
    user = await current_user(websocket)
    await websocket.accept()
    if user is None:
        await websocket.close(CLOSE_UNAUTHORIZED, "Sign in first.")
        return
    event_hub: Hub = websocket.app.state.hub
    sub = event_hub.register(user.id, user.is_admin, session_id(websocket),
                             types=None if user.is_admin else jobs.visible_types(user.role))
    # One task sends, in order, what the hub queued; this one reads. A plain task,
    # not an anyio task group: the group held 8 KB more per open socket
    # (bench/bench_sockets.py). However this one ends (the client went, or the host
    # cancelled the endpoint), the sender is cancelled with it.
    sender = asyncio.create_task(_send(websocket, sub, user.id, user.role))
    try:
        await _receive(websocket)
    finally:
        event_hub.unregister(sub)
        sender.cancel()


routes: list[BaseRoute] = [WebSocketRoute("/ws", job_socket, name="ws")]
