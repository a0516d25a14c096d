"""Running one job in the consumer: claim, call its handler, record how it ended."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pa.tasks  # noqa: F401  (registers every handler; task code loads in the consumer only)
from pa import db, heartbeat, jobs, metrics
from pa.errors import JobCancelled, JobLost, JobTimedOut, PermanentJobError
from pa.handlers import HANDLERS, Handler, JobContext
from pa.models import JobStatus
from pa.queue import JOB_SPECS, JobType

log = logging.getLogger(__name__)


def retry_delay(job_type: JobType, retry_number: int) -> float:
    """Seconds before automatic retry number `retry_number` (1, 2, ...)."""
    spec = JOB_SPECS[job_type]
    return float(spec.retry_delay * spec.backoff ** (retry_number - 1))


def _describe(exc: BaseException, incident: str) -> str:
    """What the job's owner reads: our own errors are written for people; anything
    else may carry details they must not see (paths, addresses, SQL)."""
    text = str(exc).strip()
    if text and (isinstance(exc, (PermanentJobError, JobTimedOut))
                 or type(exc).__module__.startswith("pa.")):
        return text
    return f"Internal error (logged as {incident})."


def execute(job_id: str) -> None:
    """Run job `job_id` once: claim it, call its handler, record how it ended."""
    wid = heartbeat.worker_id()
    row = jobs.claim(job_id, wid)
    if row is None:
        log.info("job %s is not pending (or its type is paused); delivery ignored", job_id)
        return
    ctx = JobContext(row, wid)
    heartbeat.running.add(job_id)
    started = time.monotonic()
    ended: str | None = None
    try:
        ended = _run(ctx, row, HANDLERS[ctx.type])
    finally:
        heartbeat.running.discard(job_id)
        heartbeat.ran_one()
        first = row["attempts"] == 1
        metrics.attempt_ended(
            ctx.type.value, ended or "lost", time.monotonic() - started,
            (row["started_at"] - row["created_at"]).total_seconds() if first else None)


def _run(ctx: JobContext, row: Mapping[str, Any], handler: Handler) -> str | None:
    """Run the handler and record how the attempt ended; that status (None when
    the job was taken over)."""
    owner = ctx._owner
    try:
        result = handler(ctx)
    except JobLost:
        log.warning("job %s was taken over by the reaper; this run stops", ctx.job_id)
        return None
    except JobCancelled:
        jobs.change(
            ctx.job_id,
            {"status": JobStatus.CANCELLED.value, "completed_at": db.utcnow(),
             "worker_id": None},
            expect=owner, last=True,
        )
        return JobStatus.CANCELLED.value
    except Exception as exc:
        # (BaseException, e.g. an interrupted process worker, is not a failure:
        # the consumer's interrupted-task handler puts the job back in the queue.)
        return _failed(ctx, row, exc)
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
        expect=owner, last=True,
    )
    return JobStatus.COMPLETED.value


def _failed(ctx: JobContext, row: Mapping[str, Any], exc: Exception) -> str:
    incident = uuid.uuid4().hex[:12]
    error = _describe(exc, incident)
    retryable = not isinstance(exc, PermanentJobError)
    retry_number = ctx.attempt - row["retry_base"]
    if not isinstance(exc, (PermanentJobError, JobTimedOut)):
        log.exception("job %s (%s) attempt %d failed (incident %s)", ctx.job_id,
                      ctx.type.value, ctx.attempt, incident)
    if retryable and retry_number <= row["max_retries"]:
        delay = retry_delay(ctx.type, retry_number)
        job = jobs.change(
            ctx.job_id,
            {"status": JobStatus.PENDING.value, "error": error, "worker_id": None,
             "run_after": db.utcnow() + timedelta(seconds=delay)},
            expect=ctx._owner, last=True,
        )
        if job is not None:
            jobs.enqueue(ctx.job_id, row["priority"], delay=delay)
        return JobStatus.PENDING.value
    jobs.change(
        ctx.job_id,
        {"status": JobStatus.FAILED.value, "error": error, "completed_at": db.utcnow(),
         "worker_id": None},
        expect=ctx._owner, last=True,
    )
    return JobStatus.FAILED.value
