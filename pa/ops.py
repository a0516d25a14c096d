"""What operators see and do (DESIGN.md, "Operators"): the overview of the queues,
the job types, the consumers and the periodic tasks; pausing and resuming a job
type; retrying every failed job.

The overview reads the database only (every process sees the same one, embedded
mode included): the jobs table for counts and times, `consumers` for the
consumers' heartbeats, `paused_types` for the paused types. Its reads are bounded
whatever the table holds: the unfinished jobs are counted in SQL, and what finished
jobs say (run and wait times, finishes per minute) comes from pa.job_stats, which
reads only what is new since its last read.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter
from sqlalchemy import delete, func, insert, select

from pa import db, estimates, heartbeat, job_stats, jobs, queue
from pa.errors import NotFound
from pa.job_stats import MINUTE, seconds_between
from pa.models import JobStatus, iso
from pa.queue import JOB_SPECS, JobType, Priority, missing_from_queue
from pa.settings import settings

log = logging.getLogger(__name__)

jobs_table = jobs.jobs_table
paused_table = jobs.paused_table
consumers_table = heartbeat.consumers_table
#: the latest failed jobs the overview lists (with their errors)
FAILURES_SHOWN = 20
JOB_TYPE_NAMES = frozenset(t.value for t in JobType)
PRIORITY_NAMES = {Priority.HIGH: "high", Priority.MEDIUM: "medium", Priority.LOW: "low"}


def overview() -> dict[str, Any]:
    """The `data` of GET /api/ops/overview (DESIGN.md)."""
    now = db.utcnow()
    c = jobs_table.c
    with db.read() as conn:
        paused = set(conn.execute(select(paused_table.c.type)).scalars())
        # Unfinished jobs by type, status and whether they are due (a small result).
        due = jobs.due(now)
        unfinished = conn.execute(
            select(c.type, c.status, c.priority, due.label("due"),
                   func.count(), func.min(func.coalesce(c.run_after, c.created_at)))
            .where(c.status.in_((JobStatus.PENDING.value, JobStatus.PROCESSING.value)))
            .group_by(c.type, c.status, c.priority, due)
        ).all()
        finished = job_stats.finished_per_minute.last_hour(conn, now)
        timings = job_stats.recent_times.get(conn, now)
        running = conn.execute(
            select(c.id, c.type, c.worker_id, c.started_at, c.progress_current,
                   c.progress_total, c.progress_message)
            .where(c.status == JobStatus.PROCESSING.value)
            .order_by(c.started_at)
        ).all()
        consumers = conn.execute(
            select(consumers_table).order_by(consumers_table.c.started_at)).all()
        failures = conn.execute(
            select(c.id, c.type, c.error, c.attempts, c.user_id, c.completed_at)
            .where(c.status == JobStatus.FAILED.value)
            .order_by(c.updated_at.desc()).limit(FAILURES_SHOWN)
        ).all()
        # The scheduled backups' keys sort by their slot (backup.create_scheduled_backup):
        # the unique index on dedupe_key finds the latest.
        last_backup = conn.execute(
            select(c.id, c.status)
            .where(c.dedupe_key >= "database_backup:", c.dedupe_key < "database_backup;")
            .order_by(c.dedupe_key.desc()).limit(1)
        ).first()

    queues: dict[Priority, dict[str, Any]] = {
        p: {"priority": int(p), "name": PRIORITY_NAMES[p], "waiting": 0,
            "oldestWaitingSeconds": None} for p in Priority}
    totals = {"pending": 0, "scheduled": 0, "processing": 0,
              "completedLastHour": 0, "failedLastHour": 0}
    types: dict[str, dict[str, Any]] = {
        t.value: {"type": t.value, "paused": t.value in paused, "pending": 0, "processing": 0,
                  "completedLastHour": 0, "failedLastHour": 0,
                  "runSecondsP50": timings.run_p50.get(t.value),
                  "runSecondsP95": timings.run_p95.get(t.value),
                  "waitSecondsP95": timings.wait_p95.get(t.value)}
        for t in JobType
    }
    for job_type, status, priority, is_due, count, oldest in unfinished:
        entry = types.setdefault(job_type, {"type": job_type, "pending": 0, "processing": 0})
        entry[status] = entry.get(status, 0) + count
        if status == JobStatus.PROCESSING.value:
            totals["processing"] += count
        elif not is_due:
            totals["scheduled"] += count
        else:
            totals["pending"] += count
            if job_type not in paused and priority in queues:
                queue = queues[Priority(priority)]
                queue["waiting"] += count
                wait = round(seconds_between(now, oldest), 1)
                queue["oldestWaitingSeconds"] = max(queue["oldestWaitingSeconds"] or 0, wait)
    chart: dict[str, dict[str, int]] = defaultdict(lambda: {"completed": 0, "failed": 0})
    for (at, job_type, status), count in finished.items():
        key = "completedLastHour" if status == JobStatus.COMPLETED.value else "failedLastHour"
        entry = types.setdefault(job_type, {"type": job_type})
        entry[key] = entry.get(key, 0) + count
        totals[key] += count
        chart[at][status] += count

    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in running:
        by_worker[r.worker_id or ""].append({
            "jobId": r.id, "type": r.type, "startedAt": iso(r.started_at),
            "runningSeconds": (round(seconds_between(now, r.started_at), 1)
                               if r.started_at else None),
            "progress": jobs.progress_dict(r.progress_current, r.progress_total,
                                           r.progress_message),
        })
    silent_after = timedelta(seconds=settings.worker_ttl)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    minutes = [start + timedelta(minutes=i) for i in range(60)]
    return {
        "queues": [queues[p] for p in sorted(Priority, reverse=True)],
        "jobs": totals,
        "types": list(types.values()),
        "consumers": [{
            "id": r.id, "host": r.host, "pid": r.pid, "workers": r.workers,
            "startedAt": iso(r.started_at), "lastSeenAt": iso(r.last_seen_at),
            "silent": now - r.last_seen_at > silent_after,
            "running": by_worker.get(r.id, []), "processed": r.processed,
        } for r in consumers],
        "periodic": [_backup_schedule(now, last_backup)],
        "throughput": [{"minute": iso(m), **chart.get(m.strftime(MINUTE),
                                                        {"completed": 0, "failed": 0})}
                       for m in minutes],
        "failures": [{"id": r.id, "type": r.type, "error": r.error, "attempts": r.attempts,
                      "userId": r.user_id, "completedAt": iso(r.completed_at)}
                     for r in failures],
        "generatedAt": iso(now),
    }


def format_overview(data: dict[str, Any]) -> str:
    """The overview for a terminal (`python -m pa status`)."""
    def num(value: Any) -> str:
        return "-" if value is None else str(value)

    totals = data["jobs"]
    lines = [f"jobs: {totals['pending']} pending, {totals['scheduled']} scheduled, "
             f"{totals['processing']} processing; last hour: "
             f"{totals['completedLastHour']} completed, {totals['failedLastHour']} failed",
             "", "queue     waiting  oldest wait (s)"]
    lines += [f"{q['name']:<9} {q['waiting']:>7}  {num(q['oldestWaitingSeconds'])}"
              for q in data["queues"]]
    lines += ["", "type                  state   pending  running  done/h  failed/h"
                  "  run p50/p95 (s)  wait p95 (s)"]
    lines += [f"{t['type']:<21} {'PAUSED' if t['paused'] else 'on':<7} {t['pending']:>7}"
              f"  {t['processing']:>7}  {t['completedLastHour']:>6}  {t['failedLastHour']:>8}"
              f"  {num(t['runSecondsP50']) + ' / ' + num(t['runSecondsP95']):>15}"
              f"  {num(t['waitSecondsP95']):>12}" for t in data["types"]]
    lines += ["", f"consumers ({len(data['consumers'])}):"]
    for cons in data["consumers"]:
        state = "SILENT since " + cons["lastSeenAt"] if cons["silent"] else "alive"
        lines.append(f"  {cons['id']}  {cons['workers']} workers, {cons['processed']} run,"
                     f" {state}")
        for run in cons["running"]:
            percent = (run["progress"] or {}).get("percent")
            lines.append(f"    running {run['type']} {run['jobId']} for "
                         f"{num(run['runningSeconds'])} s"
                         + (f", {percent}%" if percent is not None else ""))
    if not data["consumers"]:
        lines.append("  none: no consumer has beaten lately")
    lines += ["", "periodic:"]
    lines += [f"  {p['name']} ({p['schedule']}): next {p['nextRunAt']}, last "
              f"{num(p['lastStatus'])}" for p in data["periodic"]]
    lines += ["", "last failures:"]
    lines += [f"  {f['completedAt']}  {f['type']}  {f['id']}: {f['error']}"
              for f in data["failures"][:10]] or ["  none"]
    return "\n".join(lines)


#: a schedule's next run, computed again once it has passed
_next_runs: dict[str, datetime] = {}


def _backup_schedule(now: datetime, last: Any) -> dict[str, Any]:
    expression = " ".join(settings.backup_cron.split())
    upcoming = _next_runs.get(expression)
    if upcoming is None or upcoming <= now:
        naive = now.astimezone(UTC).replace(tzinfo=None)
        upcoming = croniter(expression, naive).get_next(datetime).replace(tzinfo=UTC)
        _next_runs[expression] = upcoming
    return {"name": "database_backup", "schedule": expression, "nextRunAt": iso(upcoming),
            "lastJobId": last.id if last else None, "lastStatus": last.status if last else None}


def _job_type(name: str) -> JobType:
    try:
        return JobType(name)
    except ValueError:
        raise NotFound(f"No job type '{name[:60]}'.") from None


def pause(name: str) -> dict[str, Any]:
    """Stop consumers from claiming jobs of this type (they stay pending)."""
    job_type = _job_type(name)
    with db.begin() as conn:
        if conn.execute(select(paused_table.c.type)
                        .where(paused_table.c.type == job_type.value)).first() is None:
            conn.execute(insert(paused_table).values(type=job_type.value,
                                                     paused_at=db.utcnow()))
    estimates.forget()
    log.warning("job type %s paused", job_type.value)
    return {"type": job_type.value, "paused": True}


def resume(name: str) -> dict[str, Any]:
    """Let consumers claim this type's jobs again, and queue those the consumers
    dropped while it was paused."""
    job_type = _job_type(name)
    with db.begin() as conn:
        conn.execute(delete(paused_table).where(paused_table.c.type == job_type.value))
    estimates.forget()
    requeued = requeue_pending(job_type)
    log.warning("job type %s resumed; %d pending jobs queued again", job_type.value, requeued)
    return {"type": job_type.value, "paused": False}


def requeue_pending(job_type: JobType) -> int:
    """Enqueue the type's due pending jobs that the queue no longer holds."""
    with db.read() as conn:
        ids = list(conn.execute(
            select(jobs_table.c.id).where(jobs.due(db.utcnow()),
                                          jobs_table.c.type == job_type.value)).scalars())
    priority = int(JOB_SPECS[job_type].priority)
    missing = missing_from_queue(queue.huey(), ids) if ids else []
    return sum(1 for job_id in missing if jobs.enqueue(job_id, priority))


def retry_failed(job_type: str | None = None) -> int:
    """Every failed job (of `job_type`) back to pending and queued; how many."""
    c = jobs_table.c
    stmt = select(c.id).where(c.status == JobStatus.FAILED.value)
    if job_type is not None:
        stmt = stmt.where(c.type == job_type)
    with db.read() as conn:
        ids = list(conn.execute(stmt.order_by(c.created_at)).scalars())
    retried = 0
    for job_id in ids:
        if jobs.retry_as_operator(job_id) is not None:
            retried += 1
    return retried

