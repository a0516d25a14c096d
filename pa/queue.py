"""The Huey instance and the table of job types (priority, retries, backoff, time limit)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from huey import Huey, PriorityRedisHuey, SqliteHuey

from pa.settings import settings


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


def create_huey() -> Huey:
    """Redis with priorities when PA_REDIS_URL is set, else a SQLite file (embedded mode)."""
    # Results live in the Job rows, so Huey keeps none.
    if settings.redis_url:
        return PriorityRedisHuey("pa", url=settings.redis_url, results=False, utc=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(
        "pa", filename=str(settings.data_dir / "queue.db"), results=False, utc=True
    )


huey = create_huey()
