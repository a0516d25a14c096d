"""Real services for the tests: redis-server, aiosmtpd, a PostgreSQL database."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


def job_now(job_id: str) -> dict[str, Any]:
    """The Job object as the API would show it now."""
    from pa import jobs

    row = jobs.load_row(job_id)
    assert row is not None, f"job {job_id} is gone"
    return jobs.job_to_dict(row)


def wait_final(job_id: str, timeout: float = 90.0) -> dict[str, Any]:
    """The job once it has reached a final status (completed, failed or cancelled)."""
    return wait_for(lambda: (j := job_now(job_id))["status"] in FINAL_STATUSES and j,
                    timeout=timeout, message=f"job {job_id} to finish")


class RedisServer:
    """A redis-server of our own on a free port, keeping nothing on disk."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, timeout=10, message="redis-server to answer")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart_empty(self) -> None:
        """Stop and start again on the same port: every queue entry is gone."""
        self.stop()
        self.start()


#: an answer for SmtpHandler.data_answers: close the connection, keeping nothing
HANG_UP = "hang up"


@dataclass
class SmtpHandler:
    """aiosmtpd handler: keeps received messages; scripted refusals for failure tests."""

    messages: list[EmailMessage] = field(default_factory=list)
    #: answers to give to the next DATA commands instead of accepting (e.g. "451 ...")
    data_answers: list[str] = field(default_factory=list)
    #: recipients refused with this answer
    refuse: dict[str, str] = field(default_factory=dict)
    #: seconds to wait before answering each DATA (a slow server)
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.data_answers.clear()
            self.refuse.clear()
            self.delay = 0.0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio

        # Like a real MTA, it keeps a message once it has the final dot (the client
        # may vanish while the answer is slow to come), and only then answers.
        with self.lock:
            if self.data_answers:
                answer = self.data_answers.pop(0)
                if answer == HANG_UP:  # (a server going away before it takes the message)
                    server.transport.close()
            else:
                msg = message_from_bytes(envelope.content, policy=policy.default)
                self.messages.append(msg)  # type: ignore[arg-type]
                answer = "250 Message accepted"
        if self.delay:
            await asyncio.sleep(self.delay)
        return answer

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if address in str(m["To"])]


class SmtpServer:
    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.handler = SmtpHandler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


class PostgresDatabase:
    """A database of our own on the machine's PostgreSQL (127.0.0.1:5432, trust auth)."""

    def __init__(self, base_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"):
        self.base_url = base_url
        self.name = f"pa_test_{uuid.uuid4().hex[:10]}"

    @property
    def url(self) -> str:
        return self.base_url.rsplit("/", 1)[0] + "/" + self.name

    def _admin(self, sql: str) -> None:
        import psycopg

        dsn = self.base_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)

    def create(self) -> None:
        self._admin(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@contextmanager
def subscribed(redis_url: str, on_message: Callable[[str], None]) -> Iterator[None]:
    """A real subscriber of pa's jobs channel on its own thread, calling
    `on_message` with each message in arrival order."""
    import redis

    from pa.events import JOBS_CHANNEL

    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(JOBS_CHANNEL)
    # The subscription counts only once Redis has confirmed it.
    wait_for(lambda: pubsub.get_message(timeout=0.1), timeout=5, message="the subscription")
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if msg is not None:
                on_message(msg["data"].decode())

    thread = threading.Thread(target=listen, name="test-events", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        pubsub.close()
        client.close()


class TcpProxy:
    """A TCP relay on a free port to `target_port`, that a test can cut (every
    connection dropped, new ones refused) and restore, like a lost network."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True,
                         name="test-proxy").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            if self._listener is not listener:
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.start()
