"""The Huey instance and the table of job types (priority, retries, backoff, time limit).

The instance is built by configure() at start (pa.runtime.configure), or from the
settings at first use, and carries pa's one task, `run_job(job_id)`.
"""

from __future__ import annotations

import enum
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis
from huey import Huey, PriorityRedisHuey, SqliteHuey
from huey.api import Task, TaskWrapper
from huey.serializer import Serializer
from huey.storage import PriorityRedisStorage

from pa import events
from pa import settings as pa_settings

log = logging.getLogger(__name__)


class JobType(str, enum.Enum):
    EMAIL_NOTIFICATION = "email_notification"
    GENERATE_REPORT = "generate_report"
    MULTI_YEAR_ANALYTICS = "multi_year_analytics"
    BULK_IMPORT = "bulk_import"
    ARCHIVE_REVIEWS = "archive_reviews"
    DATABASE_BACKUP = "database_backup"


class Priority(enum.IntEnum):
    HIGH = 10
    MEDIUM = 5
    LOW = 1


@dataclass(frozen=True)
class JobSpec:
    priority: Priority
    #: automatic retries after the first attempt
    retries: int
    #: first retry delay in seconds, multiplied by `backoff` each time
    retry_delay: float
    backoff: float
    #: seconds one attempt may run
    time_limit: int
    #: whether the job leaves a file to download
    has_file: bool = False


JOB_SPECS: dict[JobType, JobSpec] = {
    JobType.EMAIL_NOTIFICATION: JobSpec(Priority.HIGH, 5, 5, 2, 120),
    JobType.GENERATE_REPORT: JobSpec(Priority.MEDIUM, 2, 30, 2, 900, has_file=True),
    JobType.MULTI_YEAR_ANALYTICS: JobSpec(Priority.MEDIUM, 1, 30, 2, 600),
    JobType.BULK_IMPORT: JobSpec(Priority.MEDIUM, 1, 30, 2, 900, has_file=True),
    JobType.ARCHIVE_REVIEWS: JobSpec(Priority.LOW, 3, 60, 2, 1800, has_file=True),
    JobType.DATABASE_BACKUP: JobSpec(Priority.LOW, 2, 60, 2, 1800, has_file=True),
}


#: the name of pa's one task (pa.jobs.run_job)
RUN_JOB = "pa.run_job"

_skipped_delete = threading.local()

#: what runs a job in this process; the consumer binds it (pa.worker), so that the
#: web process, which only enqueues, never loads the runner and the task code
_executor: Callable[[str], None] | None = None


def bind_executor(execute: Callable[[str], None]) -> None:
    """Make `run_job` call `execute(job_id)` in this process (the consumer's runner)."""
    global _executor
    _executor = execute


def _run_job(job_id: str) -> None:
    """The one Huey task: run job `job_id` in the consumer."""
    if _executor is None:
        raise RuntimeError("no job runner in this process: a consumer calls pa.worker's factory")
    _executor(job_id)


class _PaHuey:
    """Huey with pa's one task, `run_job`, and without its revocation bookkeeping
    for that task.

    Before each task Huey reads two revocation keys, and after it deletes one:
    two of the three round trips to Redis (or queries on embedded mode's SQLite
    file) that Huey makes per task. pa never revokes run_job through Huey: a
    job is cancelled in its row (`cancel_requested`), which the task reads. So
    for run_job both are skipped; every other task (the periodic ones) keeps
    them. `huey.revoke_by_id(job_id)` therefore does nothing to a job: cancel
    it through the API instead (docs/OPERATIONS.md).
    """

    run_job: TaskWrapper

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_job = cast(Huey, self).task(name=RUN_JOB)(_run_job)

    def is_revoked(self, task: Any, timestamp: Any = None, peek: bool = True) -> bool:
        if isinstance(task, Task) and task.name == RUN_JOB:
            # Huey deletes this key after the task has run (Huey._execute),
            # in this same thread: that delete is skipped too.
            _skipped_delete.key = task.revoke_id
            return False
        return super().is_revoked(task, timestamp, peek)  # type: ignore[misc]

    def delete(self, key: str) -> Any:
        if key == getattr(_skipped_delete, "key", None):
            _skipped_delete.key = None
            return False
        return super().delete(key)  # type: ignore[misc]


def queue_member(data: bytes) -> bytes:
    """A serialized task as Huey's Redis priority queue stores it: an 8-byte
    big-endian microsecond stamp first, which keeps equal priorities in order
    (huey.storage.RedisPriorityQueue; tests/test_huey_contract.py)."""
    return struct.pack(">Q", int(time.time() * 1e6)) + data


def queue_score(priority: int) -> int:
    """The member's score: the queue pops the lowest first, Huey the highest priority."""
    return -priority


def member_data(member: bytes) -> bytes:
    """The serialized task inside a queue member."""
    return member[8:]


# Which jobs are in the queue, without reading the queue: a hash beside it maps each
# queued task's id to its member, written with the member (add_commands) and dropped
# by the thread that popped it (with its next read). The reaper asks Redis, for the
# few ids it wonders about, whether that member is still in the queue (one HGET and
# one ZSCORE each): an entry whose member was popped or lost says "not queued", and
# a Redis that restarted empty lost both together.


def index_key(queue_key: str) -> str:
    """The hash of task id -> queue member beside the queue `queue_key`."""
    return events.key("queued", queue_key)


def add_commands(pipe: Any, queue_key: str, task_id: str, data: bytes,
                 priority: int) -> None:
    """Add a serialized task to the queue, and to its index, on a Redis pipeline."""
    member = queue_member(data)
    # The index first: cut off between the two, the task is simply not queued.
    pipe.hset(index_key(queue_key), task_id, member)
    pipe.zadd(queue_key, {member: queue_score(priority)})


#: drop an index entry, unless it points at another member (the task enqueued again)
_FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

#: of the task ids in ARGV, those whose member is not in the queue (stale entries go)
_MISSING = """
local members = redis.call('HMGET', KEYS[1], unpack(ARGV))
local probe = {}
for i = 1, #ARGV do probe[i] = members[i] or '' end
local scores = redis.call('ZMSCORE', KEYS[2], unpack(probe))
local missing = {}
for i = 1, #ARGV do
  if not scores[i] then
    missing[#missing + 1] = ARGV[i]
    if members[i] then redis.call('HDEL', KEYS[1], ARGV[i]) end
  end
end
return missing
"""

#: ids per script call: each call holds Redis for well under a millisecond
MISSING_BATCH = 1000


class EventCarryingStorage(PriorityRedisStorage):
    """Huey's priority queue on Redis, whose read also sends the reading thread's
    held job events (events.hold) when the event bus is the same Redis.

    A worker thread reads the queue again the moment its task returns, and a
    job's last events (`processing`, then how it ended) are held until then:
    they cost no round trip of their own, the one that fetches the next task
    carries them, and so does the index entry of the task it read last. Should
    that read fail, the events go the ordinary way and Huey waits to read again.
    """

    #: reads a task's id from its data (TrackedRedisHuey gives it its own)
    serializer = Serializer()

    def __init__(self, *args: Any, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, url=url, **kwargs)
        #: the bus on this Redis carries events with the reads (events.bus_on)
        self.redis_url = url
        self._popped = threading.local()

    def enqueue(self, data: bytes, priority: int | None = None) -> None:
        """Huey's enqueue (retries, the scheduler, the reaper), with the index."""
        task_id = self.serializer.deserialize(data).id
        pipe = self.conn.pipeline(transaction=False)
        add_commands(pipe, self.queue_key, task_id, data, priority or 0)
        pipe.execute()

    def popped(self, task_id: str) -> None:
        """The task this thread just read is `task_id`: forget it with the next read."""
        member = getattr(self._popped, "member", None)
        self._popped.forget = (task_id, member) if member is not None else None

    def _forget(self) -> tuple[Any, ...] | None:
        forget = getattr(self._popped, "forget", None)
        self._popped.forget = self._popped.member = None
        if forget is None:
            return None
        return ("EVAL", _FORGET, 1, index_key(self.queue_key), *forget)

    def dequeue(self) -> bytes | None:
        held = events.take_held()
        before: list[tuple[Any, ...]] = [("PUBLISH", events.JOBS_CHANNEL, m) for m in held]
        forget = self._forget()
        if forget is not None:
            before.append(forget)
        bus = events.bus_on(self.redis_url)
        # (The bus's client times out after 5 s: wait less than that.)
        timeout = min(self.read_timeout, 4) if self.blocking else None
        try:
            if bus is not None:
                member = bus.commands_then_pop(before, self.queue_key, timeout)
            else:
                member = self._commands_then_pop(before, timeout)
        except redis.RedisError as exc:
            # Huey logs the error and waits before its next read; the events go
            # alone (or are logged as lost); an entry not forgotten is harmless.
            log.warning("queue read failed (%s); sending its events alone", exc)
            events.publish(*held)
            raise
        if member is None:
            return None
        self._popped.member = member
        return member_data(member)

    def _commands_then_pop(self, before: list[tuple[Any, ...]],
                           timeout: float | None) -> bytes | None:
        pipe = self.conn.pipeline(transaction=False)
        for command in before:
            pipe.execute_command(*command)
        if timeout is None:
            pipe.zpopmin(self.queue_key)
        else:
            pipe.bzpopmin(self.queue_key, timeout=timeout)
        reply = pipe.execute()[-1]
        if not reply:
            return None
        # BZPOPMIN: (key, member, score); ZPOPMIN: [(member, score)]
        return bytes(reply[1] if timeout is not None else reply[0][0])

    def missing(self, task_ids: list[str]) -> list[str]:
        """Those of `task_ids` whose task is not in the queue now."""
        keys = (index_key(self.queue_key), self.queue_key)
        pipe = self.conn.pipeline(transaction=False)
        for start in range(0, len(task_ids), MISSING_BATCH):
            pipe.eval(_MISSING, 2, *keys, *task_ids[start:start + MISSING_BATCH])
        return [i.decode() for batch in pipe.execute() for i in batch]


class TrackedRedisHuey(_PaHuey, PriorityRedisHuey):
    """PriorityRedisHuey, minus revocation for run_job, its reads carrying events,
    its queue indexed by task id."""

    storage_class = EventCarryingStorage

    def create_storage(self) -> EventCarryingStorage:
        storage: EventCarryingStorage = super().create_storage()
        storage.serializer = self.serializer
        return storage

    def dequeue(self) -> Task | None:
        task: Task | None = super().dequeue()
        if task is not None:
            cast(EventCarryingStorage, self.storage).popped(task.id)
        return task


def queued_job_ids(queue: Huey) -> set[str]:
    """The ids of every task in `queue` and its schedule: reads them all (SQLite)."""
    return {t.id for t in (*queue.pending(), *queue.scheduled())}


def missing_from_queue(queue: Huey, job_ids: list[str]) -> list[str]:
    """Those of `job_ids` whose task is neither queued nor scheduled."""
    if isinstance(queue.storage, EventCarryingStorage):
        return queue.storage.missing(job_ids)
    queued = queued_job_ids(queue)
    return [i for i in job_ids if i not in queued]


class TrackedSqliteHuey(_PaHuey, SqliteHuey):
    """SqliteHuey (embedded mode), minus revocation for run_job."""


PaHuey = TrackedRedisHuey | TrackedSqliteHuey


def create_huey(redis_url: str | None, data_dir: Path) -> PaHuey:
    """Redis with priorities when there is a Redis, else a SQLite file (embedded mode)."""
    # Results live in the Job rows, so Huey keeps none.
    if redis_url:
        return TrackedRedisHuey("pa", url=redis_url, results=False, utc=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    return TrackedSqliteHuey("pa", filename=str(data_dir / "queue.db"), results=False,
                             utc=True)


_huey: PaHuey | None = None
_where: tuple[str | None, Path] | None = None
_configure_lock = threading.Lock()


def configure(redis_url: str | None, data_dir: Path) -> PaHuey:
    """Make the queue on Redis at `redis_url` (None: a SQLite file in `data_dir`) this
    process's: the current one if it is that one already."""
    global _huey, _where
    with _configure_lock:
        if _huey is None or _where != (redis_url, data_dir):
            _huey, _where = create_huey(redis_url, data_dir), (redis_url, data_dir)
        return _huey


def huey() -> PaHuey:
    """This process's Huey: configure()'s, or the settings' at first use."""
    found = _huey
    if found is None:
        found = configure(pa_settings.settings.redis_url, pa_settings.settings.data_dir)
    return found
