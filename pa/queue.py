"""The Huey instance and the table of job types (priority, retries, backoff, time limit)."""

from __future__ import annotations

import enum
import logging
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from huey import Huey, PriorityRedisHuey, SqliteHuey
from huey.api import Task
from huey.storage import PriorityRedisStorage

from pa import events
from pa.settings import settings

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


class _JobsAreNotRevoked:
    """Huey without its revocation bookkeeping for pa's own task.

    Before each task Huey reads two revocation keys, and after it deletes one:
    two of the three round trips to Redis (or queries on embedded mode's SQLite
    file) that Huey makes per task. pa never revokes run_job through Huey: a
    job is cancelled in its row (`cancel_requested`), which the task reads. So
    for run_job both are skipped; every other task (the periodic ones) keeps
    them. `huey.revoke_by_id(job_id)` therefore does nothing to a job: cancel
    it through the API instead (docs/OPERATIONS.md).
    """

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


class EventCarryingStorage(PriorityRedisStorage):
    """Huey's priority queue on Redis, whose read also sends the reading thread's
    held job events (events.hold) when the event bus is the same Redis.

    A worker thread reads the queue again the moment its task returns, and a
    job's last events (`processing`, then how it ended) are held until then:
    they cost no round trip of their own, the one that fetches the next task
    carries them. Should that read fail, the events go the ordinary way and
    Huey's own read runs.
    """

    def dequeue(self) -> bytes | None:
        held = events.take_held()
        if not held:
            return super().dequeue()
        bus = events.bus_on(settings.redis_url)
        if bus is not None:
            # (The bus's client times out after 5 s: wait less than that.)
            timeout = min(self.read_timeout, 4) if self.blocking else None
            try:
                data = bus.publish_then_pop(held, self.queue_key, timeout)
            except redis.RedisError as exc:
                log.warning("queue read with events failed (%s); sending them alone", exc)
            else:
                return member_data(data) if data is not None else None
        events.publish(*held)
        return super().dequeue()


class TrackedRedisHuey(_JobsAreNotRevoked, PriorityRedisHuey):
    """PriorityRedisHuey, minus revocation for run_job, its reads carrying events."""

    storage_class = EventCarryingStorage


class TrackedSqliteHuey(_JobsAreNotRevoked, SqliteHuey):
    """SqliteHuey (embedded mode), minus revocation for run_job."""


def create_huey() -> Huey:
    """Redis with priorities when PA_REDIS_URL is set, else a SQLite file (embedded mode)."""
    # Results live in the Job rows, so Huey keeps none.
    if settings.redis_url:
        return TrackedRedisHuey("pa", url=settings.redis_url, results=False, utc=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return TrackedSqliteHuey(
        "pa", filename=str(settings.data_dir / "queue.db"), results=False, utc=True
    )


huey = create_huey()
