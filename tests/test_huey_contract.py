"""What pa relies on inside Huey (pyproject pins the tested range): these fail when a
Huey release changes it.

- The layout of a priority queue's member: an 8-byte ordering prefix, then the
  serialized task, scored by minus the priority. pa writes members itself (the
  submit's one round trip: jobs.queue_commands) and reads them itself (the
  worker's read that carries events: queue.EventCarryingStorage).
- The revocation calls Huey makes around a task, which pa skips for run_job
  (tests/test_fastpath.py counts them on a real Redis).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from huey.storage import PriorityRedisStorage

from pa import events, jobs, queue
from pa.queue import RUN_JOB, EventCarryingStorage, JobType
from tests.services import RedisServer


@pytest.fixture
def queue_name() -> str:
    """A queue of its own, so that no consumer of the suite reads it."""
    return f"contract-{time.perf_counter_ns()}"


@pytest.fixture
def stock(redis_server: RedisServer, queue_name: str) -> Iterator[PriorityRedisStorage]:
    """Huey's own priority storage, unchanged by pa."""
    storage = PriorityRedisStorage(name=queue_name, url=redis_server.url, read_timeout=1)
    yield storage
    storage.conn.delete(storage.queue_key)


@pytest.fixture
def carrying(redis_server: RedisServer, queue_name: str) -> EventCarryingStorage:
    """pa's storage on the same queue."""
    return EventCarryingStorage(name=queue_name, url=redis_server.url, read_timeout=1)


def _job(job_id: str, priority: int) -> dict[str, Any]:
    return {"id": job_id, "priority": priority}


def _write_as_pa(storage: PriorityRedisStorage, job: dict[str, Any]) -> None:
    """What jobs.dispatch() sends for a job, aimed at `storage`'s queue."""
    pipe = storage.conn.pipeline(transaction=False)
    jobs.queue_commands(pipe, job, queue_key=storage.queue_key)
    pipe.execute()


def _read(data: bytes | None) -> tuple[str, tuple[Any, ...], str, int | None]:
    assert data is not None
    task = queue.huey().deserialize_task(data)
    return task.name, tuple(task.args), task.id, task.priority


def test_hueys_own_storage_reads_a_job_that_pa_wrote(stock: PriorityRedisStorage) -> None:
    _write_as_pa(stock, _job("job-low", 1))
    _write_as_pa(stock, _job("job-high", 10))
    # Higher priority first, and each member whole after Huey strips its prefix.
    assert _read(stock.dequeue()) == (RUN_JOB, ("job-high",), "job-high", 10)
    assert _read(stock.dequeue()) == (RUN_JOB, ("job-low",), "job-low", 1)
    assert stock.dequeue() is None


def test_pa_reads_what_huey_wrote_while_it_carries_events(
        stock: PriorityRedisStorage, carrying: EventCarryingStorage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "HOLD_SECONDS", 60.0)  # only the read sends it
    task = queue.huey().run_job.s("job-1", id="job-1", priority=5)
    stock.enqueue(queue.huey().serialize_task(task), priority=5)
    events.hold("held")
    assert _read(carrying.dequeue()) == (RUN_JOB, ("job-1",), "job-1", 5)
    assert events.take_held() == ()


def test_equal_priorities_keep_their_order_across_both_writers(
        stock: PriorityRedisStorage) -> None:
    _write_as_pa(stock, _job("first", 5))
    huey = queue.huey()
    stock.enqueue(huey.serialize_task(huey.run_job.s("second", id="second", priority=5)),
                  priority=5)
    _write_as_pa(stock, _job("third", 5))
    order = [_read(stock.dequeue())[2] for _ in range(3)]
    assert order == ["first", "second", "third"]


def test_a_job_type_enqueued_through_submit_lands_in_hueys_queue() -> None:
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, None)
    pending = [t.id for t in queue.huey().pending()]
    assert job["id"] in pending


def test_the_index_tells_which_jobs_are_queued(redis_server: RedisServer) -> None:
    """The reaper's question (pa.queue.missing_from_queue), on the app's own queue."""
    from pa.queue import index_key, missing_from_queue

    storage: Any = queue.huey().storage
    index = index_key(storage.queue_key)
    # Given: one job written by the submit's round trip, one through Huey's enqueue
    submitted = jobs.submit(JobType.DATABASE_BACKUP, {}, None)["id"]
    assert jobs.enqueue("through-huey", 1)
    never = "never-enqueued"
    assert missing_from_queue(queue.huey(), [submitted, "through-huey", never]) == [never]
    # When: a worker thread reads one; Then: it is missing at once, and the thread's
    # next read drops its index entry
    task = queue.huey().dequeue()
    assert task is not None
    assert missing_from_queue(queue.huey(), [submitted, "through-huey"]) == [task.id]
    assert storage.conn.hexists(index, "through-huey" if task.id == submitted else submitted)
    queue.huey().dequeue()
    queue.huey().dequeue()  # the queue is empty now: this read only forgets the last one
    assert storage.conn.hlen(index) == 0
    # And a Redis that lost its data lost the index with it
    assert jobs.enqueue("again", 1)
    storage.conn.flushall()
    assert missing_from_queue(queue.huey(), ["again"]) == ["again"]


def test_threads_that_end_give_their_bus_connection_back(redis_server: RedisServer) -> None:
    """Each thread talks to Redis on a connection of its own (events.RedisBus); the
    test suite's consumers and the web's thread pool start and end threads all the
    time, and kept for good those connections filled the pool (100) within a run."""
    import gc
    import threading

    bus = events.RedisBus(redis_server.url)
    for _ in range(150):
        thread = threading.Thread(target=bus.publish, args=("ping",))
        thread.start()
        thread.join()
    gc.collect()
    pool = bus._client.connection_pool
    assert len(pool._in_use_connections) == 0
    assert len(pool._available_connections) <= 1
    bus.close()
