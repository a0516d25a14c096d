"""Helpers for the web tests: the app under TestClient (with its lifespan), the app
under a real uvicorn in a thread, signing in, and reading WebSocket messages."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from sqlalchemy import update
from starlette.applications import Starlette
from starlette.testclient import TestClient
from websockets.asyncio.client import ClientConnection, connect

from pa import db
from pa.auth_passwords import hash_password
from pa.models import Role, User
from pa.web.hub import UVICORN_WEBSOCKETS, Hub
from tests.factories import make_user
from tests.services import free_port, wait_for

PASSWORD = "correct horse battery staple"
_password_hash: list[str] = []


def user_with_password(role: Role = Role.EMPLOYEE, **fields: Any) -> User:
    """A user who can sign in with PASSWORD (hashed once per run: argon2 is slow on purpose)."""
    if not _password_hash:
        _password_hash.append(hash_password(PASSWORD))
    user = make_user(role, **fields)
    with db.begin() as conn:
        conn.execute(update(User).where(User.id == user.id)
                     .values(password_hash=_password_hash[0]))
    user.password_hash = _password_hash[0]
    return user


@contextmanager
def app_client(**options: Any) -> Iterator[TestClient]:
    """A TestClient for a fresh app, its lifespan (and hub) running."""
    from pa.web.app import create_app

    with TestClient(create_app(), **options) as client:
        yield client


def plain(job: dict[str, Any]) -> dict[str, Any]:
    """A Job object of the API or a snapshot without what only they add (`paused`,
    `queue`: pa.estimates.annotate), to compare with a job's events."""
    assert "queue" in job and "paused" in job, job
    return {k: v for k, v in job.items() if k not in ("paused", "queue")}


def error_of(r: Any, status: int, code: str) -> dict[str, Any]:
    """The error of an answer that must be the envelope with `status` and `code`."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


def login(client: TestClient | httpx.Client, user: User, password: str = PASSWORD) -> None:
    r = client.post("/api/session", json={"email": user.email, "password": password})
    assert r.status_code == 200, r.text


class LiveServer:
    """The app served by a real uvicorn on a free port, in a thread of this process."""

    def __init__(self, **app_options: Any) -> None:
        from pa.web.app import create_app

        self.app: Starlette = create_app(**app_options)
        self.port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on", **UVICORN_WEBSOCKETS)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True,
                                        name="uvicorn-test")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def hub(self) -> Hub:
        hub: Hub = self.app.state.hub
        return hub

    def start(self) -> None:
        self._thread.start()
        wait_for(lambda: self.server.started, timeout=10, message="uvicorn to start")
        wait_for(lambda: self.hub.subscribed, timeout=10, message="the hub to subscribe")

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "uvicorn did not stop"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)

    def cookie(self, user: User, password: str = PASSWORD) -> str:
        """A `Cookie` header value for a session of `user`."""
        with self.http() as client:
            login(client, user, password)
            return f"pa_session={client.cookies['pa_session']}"


@contextmanager
def live_server(**app_options: Any) -> Iterator[LiveServer]:
    server = LiveServer(**app_options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def open_socket(server: LiveServer, cookie: str | None = None,
                      **options: Any) -> ClientConnection:
    headers = {"Cookie": cookie} if cookie else {}
    return await connect(server.ws_url, additional_headers=headers, open_timeout=10,
                         **options)


async def next_message(ws: ClientConnection, timeout: float = 15,
                       ops: bool = False) -> dict[str, Any]:
    """The socket's next message; an admin's sockets also get the operators' overview
    every few seconds, which is skipped unless `ops`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        raw = await asyncio.wait_for(ws.recv(), max(left, 0.001))
        message: dict[str, Any] = json.loads(raw)
        if ops or message["type"] != "ops":
            return message


async def read_until(ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = 20, what: str = "a message") -> list[dict[str, Any]]:
    """Every message up to and including the first that matches; fails at the deadline."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}; got {len(seen)} messages")
        try:
            message = await next_message(ws, left)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}; got {len(seen)} messages"
            ) from None
        seen.append(message)
        if predicate(message):
            return seen


def job_reaches(job_id: str, status: str) -> Callable[[dict[str, Any]], bool]:
    """A message predicate: job `job_id` in `status`."""

    def check(message: dict[str, Any]) -> bool:
        if message["type"] == "job":
            return bool(message["data"]["id"] == job_id and message["data"]["status"] == status)
        return any(j["id"] == job_id and j["status"] == status
                   for j in message["data"]["jobs"])

    return check
