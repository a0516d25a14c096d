"""The engine, sessions and SQLite's pragmas; the same code runs on PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from pa.settings import settings


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware."""
    return datetime.now(UTC)


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, issue BEGIN (the driver's implicit
        # transactions would not cover our SELECT-then-UPDATE blocks).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writing transaction takes the write lock at once (IMMEDIATE), so that
        # two writers queue instead of one failing with "database is locked" when
        # it upgrades a read transaction to a write.
        dbapi_conn = conn.connection.dbapi_connection
        if conn.get_execution_options().get("pa_write", True):
            _begin_immediate(dbapi_conn)
        else:
            dbapi_conn.execute("BEGIN")  # type: ignore[union-attr]

    return engine


#: how long a writer waits for SQLite's write lock before "database is locked"
WRITE_LOCK_TIMEOUT = 30.0


def _begin_immediate(dbapi_conn: Any) -> None:
    """Take SQLite's write lock, retrying every 0.5-2 ms.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ... 100 ms between tries, so
    a writer of another process (web vs consumer) could wait up to 100 ms after
    the lock came free; polling hands it over within a couple of milliseconds.
    """
    deadline = time.monotonic() + WRITE_LOCK_TIMEOUT
    delay = 0.0005
    dbapi_conn.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                dbapi_conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 1.5, 0.002)
    finally:
        dbapi_conn.execute("PRAGMA busy_timeout=30000")


engine: Engine = make_engine(settings.database_url)
SessionLocal = sessionmaker(engine, expire_on_commit=False)

class SqliteWriteLock:
    """One writer at a time, across this process's threads and across processes.

    SQLite takes one writer at a time, and its waiters sleep (its busy handler,
    or our polling) instead of being woken: a process that writes often (a busy
    consumer) re-takes the lock microseconds after releasing it, while the
    others sleep through the gap, and the web starved. Writers therefore queue
    on a thread lock, then on an flock() of a file beside the database: a
    blocked flock() is woken by the kernel the moment the holder lets go.
    Re-entrant, so that a nested write behaves as it did without the lock.
    """

    def __init__(self, database: str) -> None:
        self._path = database + ".pa-write-lock"
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._file(), fcntl.LOCK_UN)

    def _file(self) -> int:
        # A forked child must not share its parent's open file (and so its lock).
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd


def _write_lock() -> SqliteWriteLock | None:
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return SqliteWriteLock(url.database)


_sqlite_writer = _write_lock()


@contextmanager
def _one_writer(write: bool) -> Iterator[None]:
    if write and _sqlite_writer is not None:
        with _sqlite_writer.hold():
            yield
    else:
        yield


@contextmanager
def session_scope(write: bool = True) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with _one_writer(write), SessionLocal() as session:
        session.connection(execution_options={"pa_write": write})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def begin() -> Iterator[Connection]:
    """A Core connection in a writing transaction, committed when the block exits cleanly."""
    with _one_writer(True), engine.connect() as conn:
        conn = conn.execution_options(pa_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read() -> Iterator[Connection]:
    """A Core connection for reads only (no write lock on SQLite)."""
    with engine.connect() as conn:
        conn = conn.execution_options(pa_write=False)
        with conn.begin():
            yield conn
