"""`database_backup`: on demand, and daily at PA_BACKUP_CRON (the periodic trigger).

The trigger is declared here, in the consumer's modules only. Huey's scheduler in
every consumer enqueues it at each scheduled minute; each run computes the same slot
(the scheduled minute, UTC) and the job's unique dedupe key lets exactly one backup
job through however many consumers run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from croniter import croniter

from pa import backup, db
from pa.errors import NotFound
from pa.handlers import JobContext, handler
from pa.queue import JobType, PaHuey, Priority
from pa.settings import settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CronSchedule:
    """PA_BACKUP_CRON: five cron fields, in UTC."""

    expression: str

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        fields = expression.split()
        if len(fields) != 5 or not croniter.is_valid(" ".join(fields)):
            raise ValueError(
                f"PA_BACKUP_CRON {expression!r} is not a cron schedule: give five fields, "
                "minute hour day-of-month month day-of-week (UTC), e.g. '0 2 * * *'."
            )
        return cls(" ".join(fields))

    def matches(self, moment: datetime) -> bool:
        """Whether the minute of `moment` (UTC; naive means UTC) is scheduled."""
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        return bool(croniter.match(self.expression, moment))

    def slot(self, now: datetime) -> datetime:
        """The latest scheduled minute at or before `now` (aware UTC)."""
        minute = now.astimezone(UTC).replace(tzinfo=None, second=0, microsecond=0)
        prev = croniter(self.expression, minute + timedelta(minutes=1)).get_prev(datetime)
        return cast(datetime, prev).replace(tzinfo=UTC)


# A bad PA_BACKUP_CRON stops the consumer at start with the parse error's message.
# croniter rather than huey's crontab() decides: it knows names (MON, JAN), 7 for
# Sunday, and cron's rule that a restricted day-of-month OR day-of-week matches.
def schedule() -> CronSchedule:
    """PA_BACKUP_CRON, parsed."""
    return CronSchedule.parse(settings.backup_cron)


def trigger_scheduled_backup(now: datetime | None = None) -> dict[str, Any] | None:
    """Create the backup job of the latest scheduled slot, unless another consumer did."""
    slot = schedule().slot(now or db.utcnow())
    job = backup.create_scheduled_backup(slot)
    stamp = slot.strftime("%Y-%m-%dT%H:%M:%SZ")  # as in the job's payload
    if job is None:
        log.info("backup slot %s: its job exists already (another consumer made it)", stamp)
    else:
        log.info("backup slot %s: job %s created", stamp, job["id"])
    return job


#: the periodic task's name (Huey's consumer logs it when it enqueues the task)
SCHEDULE_BACKUP = "pa.schedule_backup"


def register_periodic(huey: PaHuey) -> None:
    """Declare the daily backup on a consumer's Huey (pa.worker's factory calls it)."""
    # High priority: it only inserts a row, and its slot is computed when it runs.
    huey.periodic_task(schedule().matches, priority=int(Priority.HIGH),
                       name=SCHEDULE_BACKUP)(trigger_scheduled_backup)


@handler(JobType.DATABASE_BACKUP)
def database_backup(ctx: JobContext) -> dict[str, Any]:
    made: backup.Backup | None = None
    name = (ctx.checkpoint or {}).get("name")
    if name:
        # An earlier run made this backup and died before finishing the job.
        try:
            made = backup.find_backup(name)
        except NotFound:
            made = None
    if made is None:
        made = backup.make_backup(
            ctx.job_id, ctx.check,
            lambda done, total, message: ctx.progress(done, total, message, force=True),
        )
        ctx.save_checkpoint({"name": made.name})
    ctx.result_file = f"backups/{made.name}"
    backup.prune(settings.backup_keep)
    return {"name": made.name, "bytes": made.bytes}

