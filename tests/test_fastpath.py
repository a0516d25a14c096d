"""The hot path's shortcuts give the same results as the general path: prepared
statements against SQLAlchemy's own execution, held events against plain publishing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import exc, func, insert, select

from pa import db, events, handlers, jobs, queue
from pa.models import Job
from pa.queue import EventCarryingStorage, JobType
from tests.services import RedisServer, subscribed, wait_for

_INSERT = insert(jobs.jobs_table).returning(*jobs.jobs_table.c)


def _values(**overrides: Any) -> dict[str, Any]:
    now = db.utcnow()
    values: dict[str, Any] = {
        "id": f"fast{time.perf_counter_ns()}", "type": JobType.DATABASE_BACKUP.value,
        "status": "pending", "priority": 1, "user_id": None,
        "payload": {"ünïcode": "✓", "n": [1, 2.5, None]}, "attempts": 0, "max_retries": 2,
        "retry_base": 0, "time_limit": 60, "cancel_requested": False, "version": 1,
        "created_at": now, "updated_at": now,
    }
    values.update(overrides)
    return values


def test_a_prepared_insert_returns_what_sqlalchemy_returns() -> None:
    prepared = db.Prepared(_INSERT)
    a = _values()
    b = dict(a, id=a["id"] + "b", result={"a": 1}, run_after=db.utcnow())
    with db.begin() as conn:
        fast = prepared.first(conn, a)
        slow = dict(conn.execute(_INSERT, b).one()._mapping)
    assert fast is not None
    assert fast.keys() == slow.keys()
    for key in fast:
        if key in ("id", "result", "run_after"):
            continue
        assert fast[key] == slow[key], key
        assert type(fast[key]) is type(slow[key]), key
    assert fast["created_at"].tzinfo is not None
    assert fast["payload"] == {"ünïcode": "✓", "n": [1, 2.5, None]}
    assert fast["cancel_requested"] is False
    # Columns left out are SQL NULL, as with Connection.execute(), not JSON 'null'.
    with db.read() as conn:
        nulls = conn.execute(
            select(func.count()).select_from(Job)
            .where(Job.id == a["id"], Job.result.is_(None), Job.checkpoint.is_(None))
        ).scalar_one()
    assert nulls == 1
    assert jobs.job_to_dict(fast)["runAfter"] is None


def test_a_prepared_statement_raises_sqlalchemys_exceptions() -> None:
    prepared = db.Prepared(_INSERT)
    values = _values(dedupe_key=f"slot-{time.perf_counter_ns()}")
    with db.begin() as conn:
        prepared.first(conn, values)
    twin = dict(values, id=values["id"] + "-twin")
    with pytest.raises(exc.IntegrityError), db.begin() as conn:
        prepared.first(conn, twin)
    assert jobs.load_row(twin["id"]) is None


def test_a_prepared_select_reads_none_for_a_missing_row() -> None:
    assert jobs.load_row("no-such-job") is None


# -- held events ---------------------------------------------------------------------


@pytest.fixture
def channel(redis_server: RedisServer) -> Iterator[list[str]]:
    """Every message on the jobs channel, in arrival order (a real subscriber)."""
    seen: list[str] = []
    with subscribed(redis_server.url, seen.append):
        yield seen


def test_a_held_event_travels_before_the_next_one(channel: list[str]) -> None:
    events.hold("held-1")
    events.publish("next-1")
    wait_for(lambda: len(channel) >= 2, timeout=5, message="two events")
    assert channel[:2] == ["held-1", "next-1"]


def test_a_held_event_is_sent_alone_when_nothing_follows(channel: list[str]) -> None:
    events.hold("lonely")
    wait_for(lambda: "lonely" in channel, timeout=5, message="the held event")


def test_held_events_keep_their_order(channel: list[str]) -> None:
    events.hold("first")
    events.hold("second")
    wait_for(lambda: "second" in channel, timeout=5, message="both events")
    assert channel.index("first") < channel.index("second")


@pytest.fixture
def carrying_queue(redis_server: RedisServer) -> Iterator[EventCarryingStorage]:
    """A queue of its own (not the suite's consumers'), on the bus's Redis."""
    storage = EventCarryingStorage(name=f"carry-{time.perf_counter_ns()}",
                                   url=redis_server.url, read_timeout=1)
    yield storage
    storage.conn.delete(storage.queue_key)


def test_a_queue_read_sends_the_threads_held_events(
        channel: list[str], carrying_queue: EventCarryingStorage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Held for a minute: only the read can have sent them.
    monkeypatch.setattr(events, "HOLD_SECONDS", 60.0)
    task = queue.huey().serialize_task(queue.huey().run_job.s("job-1", id="job-1", priority=5))
    carrying_queue.enqueue(task, priority=5)
    events.hold("processing-1")
    events.hold("completed-1")
    assert carrying_queue.dequeue() == task
    assert events.take_held() == ()
    wait_for(lambda: "completed-1" in channel, timeout=5, message="the carried events")
    assert channel.index("processing-1") < channel.index("completed-1")
    # An empty queue: the read waits (up to its read_timeout) after sending them.
    events.hold("completed-2")
    assert carrying_queue.dequeue() is None
    wait_for(lambda: "completed-2" in channel, timeout=5, message="the carried event")


def test_a_queue_read_that_fails_still_sends_the_held_events(
        channel: list[str], carrying_queue: EventCarryingStorage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "HOLD_SECONDS", 60.0)
    carrying_queue.conn.set(carrying_queue.queue_key, "not a sorted set")
    events.hold("completed-3")
    # Huey's own read fails the same way after them: its worker logs it and waits.
    with pytest.raises(redis.ResponseError):
        carrying_queue.dequeue()
    wait_for(lambda: "completed-3" in channel, timeout=5, message="the held event")
    assert events.take_held() == ()


def test_threads_keep_their_own_order(channel: list[str]) -> None:
    def worker(name: str) -> None:
        for i in range(50):
            events.hold(f"{name}:{i}:held")
            events.publish(f"{name}:{i}:next")

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: len(channel) >= 300, timeout=10, message="300 events")
    for name in ("a", "b", "c"):
        mine = [m for m in channel if m.startswith(f"{name}:")]
        expected = [f"{name}:{i}:{k}" for i in range(50) for k in ("held", "next")]
        assert mine == expected


def test_flush_sends_what_is_held(channel: list[str]) -> None:
    events.hold("at-exit")
    events.flush()
    wait_for(lambda: "at-exit" in channel, timeout=2, message="the flushed event")


def test_a_checkpoint_inside_the_throttle_window_is_written_but_not_published(
    channel: list[str],
) -> None:
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, None)
    row = jobs.claim(job["id"], "test-worker")
    assert row is not None
    ctx = handlers.JobContext(row, "test-worker")
    ctx.progress(1, 3, "one", checkpoint={"n": 1})  # due: written and published
    ctx.progress(2, 3, "two", checkpoint={"n": 2})  # within the window: written only
    stored = jobs.load_row(job["id"])
    assert stored is not None and stored["checkpoint"] == {"n": 2}
    assert stored["version"] == 4

    def versions() -> list[int]:
        return [e["data"]["version"] for e in map(json.loads, channel)
                if e["data"]["id"] == job["id"]]

    wait_for(lambda: 3 in versions(), timeout=5, message="the first progress event")
    time.sleep(handlers.PROGRESS_INTERVAL + 0.1)
    assert versions() == [1, 2, 3]
    ctx.progress(3, 3, "three", force=True)
    wait_for(lambda: 5 in versions(), timeout=5, message="the forced progress event")
    assert versions() == [1, 2, 3, 5]


# -- SQLite work on the event loop ---------------------------------------------------


class AnotherWriter:
    """A thread holding a writing transaction until released."""

    def __init__(self) -> None:
        self.held, self.released = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._write)

    def _write(self) -> None:
        with db.begin():
            self.held.set()
            self.released.wait(10)

    def start(self) -> None:
        self.thread.start()
        assert self.held.wait(5)

    def release(self) -> None:
        self.released.set()
        self.thread.join()


@pytest.mark.skipif(not db.runs_inline(), reason="SQLite only: PostgreSQL waits on the loop")
def test_a_write_that_would_wait_raises_writer_busy_before_it_starts() -> None:
    other = AnotherWriter()
    other.start()
    try:
        with pytest.raises(db.WriterBusy), db.without_waiting(), db.begin():
            pytest.fail("the block must not run while another thread writes")
        with db.without_waiting():  # reads never wait
            assert db.read_one(jobs._LOAD, {"id": "none"}) is None
    finally:
        other.release()
    with db.without_waiting(), db.begin():
        pass  # free again


@pytest.mark.skipif(not db.runs_inline(), reason="SQLite's write lock")
def test_a_write_whose_lock_frees_soon_runs_on_the_loop_and_one_held_long_in_a_thread(
) -> None:
    import asyncio

    from pa.web.offload import run_db

    def write() -> int:
        with db.begin():
            return threading.get_ident()

    async def run_while_held(release_from_the_loop: bool) -> int:
        other = AnotherWriter()
        other.start()
        if release_from_the_loop:
            # The first pause on the loop lets the other writer finish.
            asyncio.get_running_loop().call_soon(other.release)
        else:
            threading.Timer(0.3, other.released.set).start()
        try:
            return await run_db(write)
        finally:
            other.release()

    loop_thread = threading.get_ident()  # asyncio.run() runs the loop in this thread
    assert asyncio.run(run_while_held(release_from_the_loop=True)) == loop_thread
    assert asyncio.run(run_while_held(release_from_the_loop=False)) != loop_thread


@pytest.mark.skipif(not db.runs_inline(), reason="SQLite's write lock")
def test_submit_to_hr_answers_while_another_writer_holds_the_lock() -> None:
    """The route's write goes to a thread and waits there, not on the loop."""
    from pa.models import ReviewStatus, Role
    from tests.factories import make_review, make_user
    from tests.web_fixtures import app_client, login, user_with_password

    manager = user_with_password(Role.MANAGER)
    employee = make_user(Role.EMPLOYEE, manager_id=manager.id)
    review = make_review(employee, status=ReviewStatus.MANAGER_REVIEW)
    other = AnotherWriter()
    with app_client() as client:
        login(client, manager)
        other.start()
        threading.Timer(0.3, other.released.set).start()
        started = time.monotonic()
        r = client.post(f"/api/reviews/{review.id}/submit-to-hr")
        waited = time.monotonic() - started
        other.release()
    assert r.status_code == 202, r.text
    assert waited >= 0.2  # it waited for the other writer instead of failing
    job = jobs.load_row(r.json()["data"]["id"])
    assert job is not None and job["status"] in ("pending", "processing", "completed")


@pytest.mark.skipif(db.is_sqlite(), reason="PostgreSQL's WAL flush")
def test_a_claim_does_not_wait_for_the_wal_flush_and_a_jobs_end_does() -> None:
    from sqlalchemy import text

    # Given: a write that does not flush, beside one that does
    setting = db.Prepared(select(func.current_setting("synchronous_commit").label("s")))
    assert db.write_one(setting, {}, flush=False) == {"s": "off"}
    assert db.write_one(setting, {}) == {"s": "on"}
    # When: a job is claimed, then ends
    job_id = jobs.submit(JobType.DATABASE_BACKUP, {}, None)["id"]
    assert jobs.claim(job_id, "tests:1") is not None

    def unflushed_statements() -> list[str]:
        with db.read() as conn:
            return list(conn.execute(text(
                "SELECT query FROM pg_stat_activity WHERE application_name = 'pa-unflushed'"
                " AND datname = current_database()")).scalars())

    # Then: the claim went through a connection that does not wait for the flush
    # (its UPDATE counts the attempt), the job's end did not
    assert any("attempts + " in q for q in unflushed_statements())
    assert jobs.change(job_id, {"status": "completed", "completed_at": db.utcnow()},
                       expect={"status": "processing"}) is not None
    assert not any("completed_at=$" in q for q in unflushed_statements())
    assert jobs.load_row(job_id)["status"] == "completed"  # type: ignore[index]


@pytest.mark.skipif(db.is_sqlite(), reason="PostgreSQL's asyncio connections")
def test_postgres_work_runs_on_the_loop_which_a_slow_statement_does_not_block() -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from pa.web.offload import run_db

    order: list[str] = []

    def slow() -> int:
        with db.read() as conn:
            conn.execute(text("SELECT pg_sleep(0.3)"))
        order.append("slow")
        return threading.get_ident()

    def quick() -> int:
        assert db.read_one(jobs._LOAD, {"id": "none"}) is None
        order.append("quick")
        return threading.get_ident()

    def insert_twice(job_id: str) -> None:
        with db.begin() as conn:
            for _ in range(2):
                jobs._INSERT.first(conn, {"id": job_id, "type": "database_backup",
                                          "status": "pending", "priority": 1, "payload": {},
                                          "attempts": 0, "max_retries": 0, "retry_base": 0,
                                          "time_limit": 60, "cancel_requested": False,
                                          "version": 1, "created_at": db.utcnow(),
                                          "updated_at": db.utcnow()})

    async def main() -> None:
        await db.open_on_loop()
        try:
            assert db.runs_on_loop()
            slow_thread, quick_thread = await asyncio.gather(run_db(slow), run_db(quick))
            # Both ran in the loop's thread, and the quick one did not wait for the slow.
            assert slow_thread == quick_thread == threading.get_ident()
            assert order == ["quick", "slow"]
            # Errors are SQLAlchemy's, as in a thread, and the transaction rolls back.
            with pytest.raises(IntegrityError):
                await run_db(insert_twice, "twice")
        finally:
            await db.close_on_loop()
        assert not db.runs_on_loop()

    asyncio.run(main())
    assert jobs.load_row("twice") is None


# -- one statement, one transaction ------------------------------------------------


def test_write_one_commits_its_statement_and_returns_the_row() -> None:
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, None)
    params = {"c_id": job["id"], "c_now": db.utcnow(), "c_worker": "w-1"}
    row = db.write_one(jobs._CLAIM, params)
    assert row is not None and row["status"] == "processing" and row["version"] == 2
    with db.read() as conn:  # another connection sees it: committed
        assert conn.execute(select(Job.status).where(Job.id == job["id"])).scalar_one() \
            == "processing"
    assert db.write_one(jobs._CLAIM, params) is None  # no longer pending: nothing matches
    assert jobs.load_row(job["id"])["version"] == 2  # type: ignore[index]


def test_write_one_leaves_nothing_behind_when_its_statement_fails() -> None:
    prepared = db.Prepared(_INSERT)
    values = _values(dedupe_key=f"slot-{time.perf_counter_ns()}")
    assert db.write_one(prepared, values) is not None
    twin = dict(values, id=values["id"] + "-twin")
    with pytest.raises(exc.IntegrityError):
        db.write_one(prepared, twin)
    assert jobs.load_row(twin["id"]) is None
    # the write lock and the connection were given back: the next write goes through
    assert db.write_one(prepared, _values()) is not None


# -- Huey's revocation bookkeeping -------------------------------------------------


def _revocation_commands(client: Any) -> tuple[int, int]:
    stats = client.info("commandstats")
    return (stats.get("cmdstat_hmget", {}).get("calls", 0),
            stats.get("cmdstat_hdel", {}).get("calls", 0))


def _run_next_task() -> None:
    """What a consumer's worker thread does with the next message: dequeue, execute."""
    from pa.worker import consumer_huey

    huey = consumer_huey()  # this test acts as the consumer: its runner runs the job
    task = huey.dequeue()
    assert task is not None
    huey.execute(task)


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def test_a_job_costs_huey_no_revocation_round_trips(redis_client: Any) -> None:
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, None)
    before = _revocation_commands(redis_client)
    _run_next_task()
    after = _revocation_commands(redis_client)
    assert jobs.load_row(job["id"])["status"] == "completed"  # type: ignore[index]
    assert after == before  # no HMGET before the run, no HDEL after it


def test_other_tasks_keep_hueys_revocation(redis_client: Any) -> None:
    huey = queue.huey()

    ran: list[int] = []

    @huey.task(name="tests.revocable")
    def revocable(n: int) -> None:
        ran.append(n)

    kept, dropped = revocable.s(1), revocable.s(2)
    huey.enqueue(kept)
    huey.enqueue(dropped)
    huey.revoke_by_id(dropped.id)
    before = _revocation_commands(redis_client)
    _run_next_task()
    _run_next_task()
    after = _revocation_commands(redis_client)
    assert ran == [1]
    # each task: one read of its revocation keys, one delete after a run (or a restore)
    assert after[0] - before[0] == 2 and after[1] > before[1]


# -- fork ------------------------------------------------------------------------------


def test_a_forked_child_does_not_use_its_parents_connections() -> None:
    """Huey's process workers fork a consumer that has used the database already."""
    import os

    with db.read() as conn:  # the pool now holds this connection
        parents = conn.connection.dbapi_connection
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running any exit handler
        try:
            with db.read() as conn:
                mine = conn.connection.dbapi_connection
                conn.execute(select(func.count()).select_from(Job)).scalar_one()
            os.write(write_end, b"new" if mine is not parents else b"parent's")
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    assert os.read(read_end, 16) == b"new"
    os.close(read_end)
    cursor = parents.cursor()  # and the parent's own connection still answers
    cursor.execute("SELECT 1")
    assert cursor.fetchone()[0] == 1
    cursor.close()
    parents.rollback()  # (PostgreSQL: leave it in the pool as it was, outside a transaction)


# -- the write-ahead log -------------------------------------------------------------


@pytest.mark.skipif(not db.is_sqlite(), reason="SQLite's write-ahead log")
def test_the_log_starts_over_under_a_steady_stream_of_writes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    database = db.engine().url.database
    assert database is not None
    conn = sqlite3.connect(database, isolation_level=None)

    def frames() -> int:
        # The process's own checkpointer may be mid-pass: SQLite then answers busy
        # with -1 frames (seen in CI), and a moment later it has finished.
        for _ in range(200):
            busy, log_frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy:
                return int(log_frames)
            time.sleep(0.005)
        raise AssertionError("the log stayed busy for a second")

    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            jobs.submit(JobType.DATABASE_BACKUP, {}, None)

    # The process's own checkpointer must not start the log over while it grows
    # (it would, past RESTART_FRAMES, on its next tick).
    monkeypatch.setattr(db.current().checkpointer, "RESTART_FRAMES", 10**9)
    writer = threading.Thread(target=write)
    writer.start()
    try:
        # (Each frames() is a plain pass too: few of them, so that none catches up
        # with the writer by luck.)
        time.sleep(0.5)
        grown = frames()
        assert grown > 200
        # A pass that ends under the write lock lets the next writer start it over.
        monkeypatch.setattr(db.current().checkpointer, "RESTART_FRAMES", 200)
        db.current().checkpointer.checkpoint(conn)
        time.sleep(0.05)
        assert frames() < grown
    finally:
        stop.set()
        writer.join()
        conn.close()
