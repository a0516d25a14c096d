"""The engine, sessions and SQLite's pragmas; the same code runs on PostgreSQL.

A Database (engine, SQLite's write gate and checkpointer, the per-loop
PostgreSQL engines) is built by configure() at start (pa.runtime.configure),
or from the settings at first use; the functions below use the current one.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util.concurrency import greenlet_spawn, in_greenlet

from pa import settings as pa_settings

log = logging.getLogger(__name__)

T = TypeVar("T")


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware."""
    return datetime.now(UTC)


def make_engine(url: str, *, flush_commits: bool = True) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and foreign keys.

    flush_commits=False (PostgreSQL): a commit does not wait for the WAL flush
    (synchronous_commit off); see Database.unflushed.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        if flush_commits:
            engine = create_engine(url, pool_size=10, max_overflow=10)
        else:
            engine = create_engine(url, pool_size=4, max_overflow=8,
                                   connect_args={"options": "-c synchronous_commit=off",
                                                 "application_name": "pa-unflushed"})
        _ping_when_idle(engine)
        return engine
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
        # No checkpoint inside a commit: the commit that crossed 1,000 WAL pages
        # copied them into the database and synced it (10-50 ms here) while
        # holding the write lock, on a request's path. Checkpointer does it.
        cur.execute("PRAGMA wal_autocheckpoint=0")
        # A log that grew in a burst is cut back to this when it starts over.
        cur.execute("PRAGMA journal_size_limit=67108864")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writing transaction takes the write lock at once (IMMEDIATE), so that
        # two writers queue instead of one failing with "database is locked" when
        # it upgrades a read transaction to a write. pa's writers queue on
        # SqliteWriteLock first, so the busy timeout only serves writers from
        # outside pa (an operator's sqlite3 shell).
        dbapi_conn = conn.connection.dbapi_connection
        write = conn.get_execution_options().get("pa_write", True)
        dbapi_conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")  # type: ignore[union-attr]

    return engine


#: the largest id a row has: the id columns are INTEGER, 32 bits in PostgreSQL
MAX_ID = 2**31 - 1
#: a pooled PostgreSQL connection unused for longer than this is tested before use
PING_AFTER_IDLE = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's pool_pre_ping, for connections that sat idle only.

    pool_pre_ping sends a `SELECT 1` on every checkout: a round trip for each
    statement of a job's claim and change, a third of their round trips. A
    connection used a moment ago is as good as the ping would say; one idle for
    longer (the server may have restarted, a proxy may have cut it) is pinged,
    and replaced if the ping fails. A connection that breaks between two quick
    uses fails its statement, and SQLAlchemy then drops the whole pool.
    """

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("pa_checked_in", 0.0) < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(str(exc)) from exc  # the pool connects anew

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["pa_checked_in"] = time.monotonic()


class Database:
    """One database: its engine and, on a SQLite file, the write gate and the
    checkpointer; on PostgreSQL, the engines of the event loops (open_on_loop)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.is_sqlite = self.engine.url.get_backend_name() == "sqlite"
        database = self.engine.url.database
        on_file = self.is_sqlite and bool(database) and database != ":memory:"
        self.writer = SqliteWriteLock(str(database)) if on_file else None
        self.checkpointer = Checkpointer(str(database) if on_file else None, self.writer)
        #: PostgreSQL for code on an event loop: per loop, an engine on psycopg's
        #: asyncio connections (see run_on_loop)
        self.loop_engines: dict[asyncio.AbstractEventLoop, AsyncEngine] = {}
        self._unflushed: Engine | None = None
        self._lock = threading.Lock()

    def unflushed(self) -> Engine:
        """PostgreSQL connections whose commits do not wait for the WAL flush
        (made at first use: only consumers write through them).

        For a job's claim: it loses nothing if a crash of PostgreSQL undoes it
        (within 3 x wal_writer_delay, 0.6 s): the job is then pending again, and
        the reaper enqueues it; and any flushed commit after it (the job's end,
        an email's sent mark) flushes it too, since the log is written in order.
        It saves a WAL flush, half of a job's commits (STACK_NOTES: ~190 µs).
        """
        if self.is_sqlite:
            return self.engine
        if self._unflushed is not None:  # (every claim: no lock once made)
            return self._unflushed
        with self._lock:
            if self._unflushed is None:
                self._unflushed = make_engine(
                    self.engine.url.render_as_string(hide_password=False),
                    flush_commits=False)
            return self._unflushed

    def dispose(self, close: bool = True) -> None:
        for engine in (self.engine, self._unflushed):
            if engine is not None:
                engine.dispose(close=close)


_current: Database | None = None
_configure_lock = threading.Lock()


def configure(url: str) -> Database:
    """Make the database at `url` this process's: the current one if it is that
    one already, else a new one (and the one before is disposed)."""
    global _current
    with _configure_lock:
        before = _current
        if before is not None and before.engine.url == make_url(url):
            return before
        _current = Database(url)
    if before is not None:
        before.dispose()
    return _current


def current() -> Database:
    """This process's database: configure()'s, or the settings' at first use."""
    found = _current
    if found is None:
        with _configure_lock:
            found = _current
        if found is None:
            found = configure(pa_settings.settings.database_url)
    return found


def engine() -> Engine:
    """The current database's engine."""
    return current().engine


def is_sqlite() -> bool:
    """Whether the current database is SQLite."""
    return current().is_sqlite


def runs_inline() -> bool:
    """SQLite runs inside this process: a short statement costs less than handing
    it to a thread, and a read never waits (WAL). PostgreSQL is a network round
    trip away."""
    return current().is_sqlite


async def open_on_loop() -> None:
    """Give this event loop its own PostgreSQL engine (a web app's lifespan calls it).

    With one, run_on_loop() runs a route's database work on the loop itself:
    each statement waits for its answer as a coroutine would, so the loop
    serves other requests meanwhile, and no thread is handed the work. Handing
    it to the thread pool cost more CPU than the statements (the hand-over and
    the pool's threads fighting for the GIL under load).
    """
    database = current()
    if database.is_sqlite:
        return  # SQLite runs inline (runs_inline)
    loop = asyncio.get_running_loop()
    if loop not in database.loop_engines:
        try:
            async_engine = create_async_engine(database.engine.url, pool_size=10,
                                               max_overflow=10)
        except InvalidRequestError as exc:  # a driver without asyncio (psycopg2)
            log.info("database work stays in the thread pool: %s", exc)
            return
        _ping_when_idle(async_engine.sync_engine)
        database.loop_engines[loop] = async_engine


async def close_on_loop() -> None:
    """Close this loop's engine (the end of the lifespan)."""
    async_engine = current().loop_engines.pop(asyncio.get_running_loop(), None)
    if async_engine is not None:
        await async_engine.dispose()


def runs_on_loop() -> bool:
    """Whether run_on_loop() has an engine on the running loop."""
    try:
        return asyncio.get_running_loop() in current().loop_engines
    except RuntimeError:
        return False


async def run_on_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run the blocking database code `fn(*args)` on the running loop.

    `fn` is ordinary code (db.begin(), read_one(), Prepared...): it runs in a
    greenlet, where this module's functions use the loop's engine, whose
    driver calls suspend the greenlet until the answer comes (SQLAlchemy's own
    asyncio bridge). Anything else `fn` does blocks the loop, so: database
    work only.
    """
    return await greenlet_spawn(fn, *args)


def _engine() -> Engine:
    """The engine for the code running now: the loop's, inside run_on_loop()."""
    database = current()
    if database.loop_engines and in_greenlet():
        # (A greenlet on a loop without an engine of its own, e.g. another app's
        # lifespan not run, gets the ordinary engine, as outside run_on_loop().)
        loop_engine = database.loop_engines.get(asyncio.get_running_loop())
        if loop_engine is not None:
            return loop_engine.sync_engine
    return database.engine


def _forget_connections_in_child() -> None:
    # A pooled connection must not cross a fork (Huey's process workers, `-k
    # process`): parent and child would share its file, whose SQLite locks are
    # per process, or its socket. The child starts with an empty pool; the
    # parent's connections stay the parent's (close=False, as SQLAlchemy advises).
    if _current is not None:
        _current.dispose(close=False)


os.register_at_fork(after_in_child=_forget_connections_in_child)

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
    def hold(self, wait: bool = True) -> Iterator[None]:
        """Hold the lock; with wait=False, raise WriterBusy instead of waiting."""
        if not self._thread_lock.acquire(blocking=wait):
            raise WriterBusy()
        try:
            if self._depth == 0:
                try:
                    fcntl.flock(self._file(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    raise WriterBusy() from None
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._file(), fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _file(self) -> int:
        # A forked child must not share its parent's open file (and so its lock).
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd


class WriterBusy(Exception):
    """Another writer holds SQLite's write lock, and this one was told not to wait."""


_no_wait = threading.local()


@contextmanager
def without_waiting() -> Iterator[None]:
    """In this block, a write that would wait for the write lock raises WriterBusy
    before it starts (for work on an event loop, which must not block)."""
    before = getattr(_no_wait, "on", False)
    _no_wait.on = True
    try:
        yield
    finally:
        _no_wait.on = before


@contextmanager
def _one_writer(write: bool) -> Iterator[None]:
    database = current()
    if write and database.writer is not None:
        database.checkpointer.ensure_running()
        with database.writer.hold(wait=not getattr(_no_wait, "on", False)):
            yield
    else:
        yield


class Checkpointer:
    """Moves SQLite's write-ahead log into the database, beside the writers.

    A thread in every process that writes runs a PASSIVE checkpoint every
    INTERVAL seconds on a connection of its own, outside SqliteWriteLock:
    PASSIVE waits for nobody, writers go on appending meanwhile, and the
    copying and syncing happen off the request path. Two processes' threads
    do not conflict (one checkpoints, the other's attempt returns at once).
    Once the log is longer than RESTART_FRAMES, one short pass runs under the
    lock, so that the log starts over (see checkpoint()).
    """

    INTERVAL = 1.0
    #: frames in the log (4 KB pages) past which a pass ends under the write lock
    RESTART_FRAMES = 4096
    #: a pass beside the writers this short leaves little for the one under the lock
    CAUGHT_UP = 0.02
    CATCH_UP_PASSES = 10

    def __init__(self, database: str | None, writer: SqliteWriteLock | None) -> None:
        self.database = database
        self.writer = writer
        self._pid = 0
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        if self._pid == os.getpid() or self.database is None:
            return
        with self._lock:
            if self._pid != os.getpid():  # first write of this process (or fork)
                self._pid = os.getpid()
                threading.Thread(target=self._run, daemon=True,
                                 name="pa-sqlite-checkpoint").start()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames < self.RESTART_FRAMES or self.writer is None:
            return
        # SQLite starts the log over only after a pass that copied all of it,
        # and under a steady stream of writes no pass does: each copies what was
        # there when it began while the writers append more (the log reached
        # 150 MB in a drain of 6,000 jobs). So once it is long, passes beside
        # the writers catch up until one is short (little was appended during
        # it); then the writers wait for one pass over the little left (1-5 ms
        # here), and the next writer starts the log over. (Without the catching
        # up, the pass under the lock copies all that was appended during a
        # long first pass: a 160 ms stall in one bench run may have been that.)
        for _ in range(self.CATCH_UP_PASSES):
            started = time.monotonic()
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if time.monotonic() - started < self.CAUGHT_UP:
                break
        else:
            return  # the writers outpace the passes: the next interval tries again
        with self.writer.hold():
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _run(self) -> None:
        assert self.database is not None
        conn = sqlite3.connect(self.database, isolation_level=None, check_same_thread=False)
        while current().checkpointer is self:  # (a configure() ends the thread)
            time.sleep(self.INTERVAL)
            try:
                self.checkpoint(conn)
            except sqlite3.Error as exc:  # e.g. the file was replaced by a restore
                log.warning("WAL checkpoint failed: %s", exc)
        conn.close()


@contextmanager
def session_scope(write: bool = True) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with _one_writer(write), current().sessions(bind=_engine()) as session:
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
    with _one_writer(True), _engine().connect() as conn:
        conn = conn.execution_options(pa_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read() -> Iterator[Connection]:
    """A Core connection for reads only (no write lock on SQLite)."""
    with _engine().connect() as conn:
        conn = conn.execution_options(pa_write=False)
        with conn.begin():
            yield conn


@dataclass(frozen=True)
class _Raw:
    """A pooled DB-API connection, for Prepared statements only."""

    dialect: Any
    dbapi_connection: Any


def read_one(statement: Prepared, params: dict[str, Any]) -> dict[str, Any] | None:
    """Run one reading statement on a snapshot of its own; its first row, or None.

    For the hot reads of one statement (a request's user, a job's row): in
    autocommit mode, one round trip to PostgreSQL instead of three (BEGIN, the
    statement, COMMIT), and no SQLAlchemy Connection around it.
    """
    return _one_statement(statement, params, write=False)


def write_one(statement: Prepared, params: dict[str, Any], *,
              flush: bool = True) -> dict[str, Any] | None:
    """Run one writing statement as a transaction of its own; its first row, or None.

    flush=False: on PostgreSQL the commit does not wait for the WAL flush
    (Database.unflushed), for a write whose loss in a crash loses nothing.

    For the commonest write, a job's claim or change: one UPDATE. The statement
    runs in autocommit mode, where it is its own transaction, as safe as
    BEGIN ... COMMIT around it and cheaper. On SQLite, which takes the write lock
    when the statement starts and commits when it finishes, it is one call into
    SQLite instead of three (each call releases the GIL, a hand-over to the other
    worker thread when it waits for it): with two worker threads this drained
    8-10% more tracked jobs per second. On PostgreSQL it is one round trip instead
    of two (the statement, then COMMIT), and the commit still waits for its WAL
    flush.
    """
    return _one_statement(statement, params, write=True, flush=flush)


def _one_statement(statement: Prepared, params: dict[str, Any], write: bool,
                   flush: bool = True) -> dict[str, Any] | None:
    with _one_writer(write):
        active = _engine() if flush or in_greenlet() else current().unflushed()
        pooled = active.raw_connection()
        try:
            dbapi_conn: Any = pooled.dbapi_connection
            raw = _Raw(active.dialect, dbapi_conn)
            if current().is_sqlite:
                # (the driver's own transactions are off: see make_engine)
                return statement.first(raw, params)
            dbapi_conn.autocommit = True
            try:
                return statement.first(raw, params)
            finally:
                try:
                    dbapi_conn.autocommit = False
                except active.dialect.loaded_dbapi.Error:  # broken: not back into the pool
                    pooled.invalidate()
        finally:
            pooled.close()


class Prepared:
    """A Core statement compiled once, run on the transaction's DB-API connection.

    For the few statements every job runs several times (claim, status change,
    insert, the user lookup of each request). SQLAlchemy's execution layer
    (execution context, parameter and result objects) cost 150-250 µs per
    statement here, three times SQLite's own work. The SQL text, parameter
    conversions and result conversions are still SQLAlchemy's: the statement is
    compiled for the engine's dialect and each value passes through its column
    type's bind and result processors, so SQLite and PostgreSQL see exactly what
    `Connection.execute()` would send. Not for statements with expanding (IN)
    parameters.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._plan: _Plan | None = None

    def _compile(self, conn: Connection | _Raw) -> _Plan:
        dialect = conn.dialect
        compiled: Any = self.statement.compile(dialect=dialect)
        wanted = [b.key for b in compiled.binds.values() if b.value is None and b.callable is None]
        processors = {
            name: param.type.dialect_impl(dialect).bind_processor(dialect)
            for name, param in compiled.binds.items()
        }
        bind = {k: f for k, f in processors.items() if f is not None}
        # Values written into the statement (.values(status="processing")) are
        # converted once here; a parameter the caller leaves out is SQL NULL, as
        # when Connection.execute() gets no value for an INSERT's column.
        defaults = compiled.construct_params(dict.fromkeys(wanted))
        defaults = {k: (bind[k](v) if k in bind and k not in wanted else v)
                    for k, v in defaults.items()}
        plan = _Plan(
            dialect=dialect.name,
            sql=str(compiled),
            order=list(compiled.positiontup) if compiled.positional else None,
            defaults=defaults,
            bind=bind,
            columns=[(c.key, c.type.dialect_impl(dialect).result_processor(dialect, None))
                     for c in self.statement.exported_columns],
        )
        self._plan = plan  # one assignment: other threads see the old plan or this one
        return plan

    def _cursor(self, conn: Connection | _Raw, params: dict[str, Any]) -> tuple[_Plan, Any]:
        plan = self._plan
        if plan is None or plan.dialect != conn.dialect.name:
            plan = self._compile(conn)
        values = dict(plan.defaults)
        bind = plan.bind
        for name, value in params.items():
            process = bind.get(name)
            values[name] = process(value) if process is not None else value
        args: Any = values if plan.order is None else [values[n] for n in plan.order]
        dbapi_conn: Any = (conn.dbapi_connection if isinstance(conn, _Raw)
                           else conn.connection.dbapi_connection)
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(plan.sql, args)
        except conn.dialect.loaded_dbapi.Error as exc:
            # The same exception classes as Connection.execute() raises
            # (sqlalchemy.exc.IntegrityError...), so callers catch one kind.
            cursor.close()
            raise DBAPIError.instance(plan.sql, args, exc, conn.dialect.loaded_dbapi.Error,
                                      dialect=conn.dialect) from exc
        return plan, cursor

    def first(self, conn: Connection | _Raw, params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row the statement returns, as a dict, or None."""
        plan, cursor = self._cursor(conn, params)
        try:
            raw = cursor.fetchone()
        finally:
            cursor.close()
        if raw is None:
            return None
        return {key: (f(v) if f is not None else v)
                for (key, f), v in zip(plan.columns, raw, strict=True)}

    def rowcount(self, conn: Connection | _Raw, params: dict[str, Any]) -> int:
        """Run a statement without rows; the number of rows it changed."""
        _plan, cursor = self._cursor(conn, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()


@dataclass(frozen=True)
class _Plan:
    """A statement compiled for one dialect, with its value conversions."""

    dialect: str
    sql: str
    #: the parameter names in order for a positional paramstyle (SQLite), else None
    order: list[str] | None
    defaults: dict[str, Any]
    bind: dict[str, Callable[[Any], Any]]
    columns: list[tuple[str, Callable[[Any], Any] | None]]
