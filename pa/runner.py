"""Running one job in the consumer: claim, progress, cancellation, time limit, finish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from pa import db, heartbeat, jobs
from pa.errors import JobCancelled, JobLost, JobTimedOut, PermanentJobError
from pa.models import JobStatus
from pa.queue import JOB_SPECS, JobType
from pa.settings import settings

log = logging.getLogger(__name__)

#: progress is written (and published) at most this often
PROGRESS_INTERVAL = 0.25
#: cancellation is looked up at most this often
CHECK_INTERVAL = 0.5


class JobContext:
    """What a task handler gets: its job's data, progress, checks and files."""

    def __init__(self, row: Mapping[str, Any], worker_id: str) -> None:
        self.job_id: str = row["id"]
        self.type = JobType(row["type"])
        self.payload: dict[str, Any] = dict(row["payload"] or {})
        self.checkpoint: Any = row["checkpoint"]
        self.user_id: int | None = row["user_id"]
        self.attempt: int = row["attempts"]
        self.worker_id = worker_id
        self.time_limit: int = row["time_limit"]
        self.deadline = time.monotonic() + self.time_limit
        #: set by the handler: the file to download, relative to PA_DATA_DIR
        self.result_file: str | None = None
        self._last_progress = 0.0
        self._last_check = time.monotonic()
        self._progress: tuple[int | None, int | None, str | None] = (None, None, None)

    @property
    def _owner(self) -> dict[str, Any]:
        return {
            "status": JobStatus.PROCESSING.value,
            "worker_id": self.worker_id,
            "attempts": self.attempt,
        }

    def progress(
        self, current: int, total: int | None = None, message: str | None = None,
        *, force: bool = False, checkpoint: Any = None,
    ) -> None:
        """Report progress (throttled); raises if the job was cancelled or ran out of time.

        With `checkpoint`, the progress is written at once, together with it (one
        write instead of two).
        """
        self._progress = (current, total, message)
        now = time.monotonic()
        throttled = not force and now - self._last_progress < PROGRESS_INTERVAL
        if throttled and checkpoint is None:
            self._check_deadline()
            return
        if not throttled:
            self._last_progress = now
        values = {
            "progress_current": current,
            "progress_total": total,
            "progress_message": message[:300] if message else None,
            "heartbeat_at": db.utcnow(),
        }
        if checkpoint is not None:
            self.checkpoint = values["checkpoint"] = checkpoint
        # A checkpoint is always written; its event only when progress is due
        # (the next event, or the final one, carries the row as it is by then).
        job = jobs.change(self.job_id, values, expect=self._owner, publish=not throttled)
        if job is None:
            raise JobLost(self.job_id)
        self._last_check = now
        if job["cancelRequested"]:
            raise JobCancelled()
        self._check_deadline()

    def check(self) -> None:
        """Raise JobCancelled, JobTimedOut or JobLost when the job must stop now."""
        self._check_deadline()
        now = time.monotonic()
        if now - self._last_check < CHECK_INTERVAL:
            return
        self._last_check = now
        row = jobs.load_row(self.job_id)
        if row is None or any(row[k] != v for k, v in self._owner.items()):
            raise JobLost(self.job_id)
        if row["cancel_requested"]:
            raise JobCancelled()

    def _check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise JobTimedOut(f"Timed out after {self.time_limit} s.")

    def save_checkpoint(self, value: Any) -> None:
        """Remember how far the job got, so that a second run resumes there."""
        self.checkpoint = value
        if jobs.change(self.job_id, {"checkpoint": value}, expect=self._owner) is None:
            raise JobLost(self.job_id)

    def data_path(self, *parts: str) -> Path:
        """A path under PA_DATA_DIR (its folder created)."""
        path = settings.data_dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def finish_values(self) -> dict[str, Any]:
        current, total, message = self._progress
        if total is not None:
            current = total
        return {"progress_current": current, "progress_total": total,
                "progress_message": message}


Handler = Callable[[JobContext], Any]


def retry_delay(job_type: JobType, retry_number: int) -> float:
    """Seconds before automatic retry number `retry_number` (1, 2, ...)."""
    spec = JOB_SPECS[job_type]
    return float(spec.retry_delay * spec.backoff ** (retry_number - 1))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if text and (isinstance(exc, (PermanentJobError, JobTimedOut))
                 or type(exc).__module__.startswith("pa.")):
        return text  # our own errors are written for people
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def execute(job_id: str) -> None:
    """Run job `job_id` once: claim it, call its handler, record how it ended."""
    from pa.tasks import HANDLERS  # task modules load in the consumer only

    wid = heartbeat.worker_id()
    row = jobs.claim(job_id, wid)
    if row is None:
        log.info("job %s is not pending; delivery ignored", job_id)
        return
    ctx = JobContext(row, wid)
    heartbeat.running.add(job_id)
    try:
        _run(ctx, row, HANDLERS[ctx.type])
    finally:
        heartbeat.running.discard(job_id)


def _run(ctx: JobContext, row: Mapping[str, Any], handler: Handler) -> None:
    owner = ctx._owner
    # The job's last events wait for this thread's next read of the queue, which
    # follows at once and sends them (pa.queue.EventCarryingStorage).
    hold = jobs.queue_carries_events()
    try:
        result = handler(ctx)
    except JobLost:
        log.warning("job %s was taken over by the reaper; this run stops", ctx.job_id)
        return
    except JobCancelled:
        jobs.change(
            ctx.job_id,
            {"status": JobStatus.CANCELLED.value, "completed_at": db.utcnow(),
             "worker_id": None},
            expect=owner, hold=hold,
        )
        return
    except Exception as exc:
        # (BaseException, e.g. an interrupted process worker, is not a failure:
        # the consumer's interrupted-task handler puts the job back in the queue.)
        _failed(ctx, row, exc, hold)
        return
    jobs.change(
        ctx.job_id,
        {
            "status": JobStatus.COMPLETED.value,
            "result": result,
            "result_file": ctx.result_file,
            "error": None,
            "completed_at": db.utcnow(),
            "worker_id": None,
            **ctx.finish_values(),
        },
        expect=owner, hold=hold,
    )


def _failed(ctx: JobContext, row: Mapping[str, Any], exc: Exception, hold: bool) -> None:
    error = _describe(exc)
    retryable = not isinstance(exc, PermanentJobError)
    retry_number = ctx.attempt - row["retry_base"]
    if not isinstance(exc, (PermanentJobError, JobTimedOut)):
        log.exception("job %s (%s) attempt %d failed", ctx.job_id, ctx.type.value, ctx.attempt)
    if retryable and retry_number <= row["max_retries"]:
        delay = retry_delay(ctx.type, retry_number)
        job = jobs.change(
            ctx.job_id,
            {"status": JobStatus.PENDING.value, "error": error, "worker_id": None,
             "run_after": db.utcnow() + timedelta(seconds=delay)},
            expect=ctx._owner, hold=hold,
        )
        if job is not None:
            jobs.enqueue(ctx.job_id, row["priority"], delay=delay)
        return
    jobs.change(
        ctx.job_id,
        {"status": JobStatus.FAILED.value, "error": error, "completed_at": db.utcnow(),
         "worker_id": None},
        expect=ctx._owner, hold=hold,
    )
