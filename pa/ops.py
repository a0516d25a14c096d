"""What operators see and do (DESIGN.md, "Operators"): the overview of the queues,
the job types, the consumers and the periodic tasks; pausing and resuming a job
type; retrying every failed job.

The overview reads the database only (every process sees the same one, embedded
mode included): the jobs table for counts and times, `consumers` for the
consumers' heartbeats, `paused_types` for the paused types. Its reads are bounded
whatever the table holds: counts are grouped in SQL, and run and wait times come
from the latest STATS_SAMPLE finished jobs of the last hour (read every STATS_TTL s).
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter
from sqlalchemy import and_, delete, func, insert, or_, select
from sqlalchemy.sql.elements import ColumnElement

from pa import db, heartbeat, jobs, queue
from pa.errors import NotFound
from pa.models import JobStatus
from pa.queue import JOB_SPECS, JobType, Priority, missing_from_queue
from pa.settings import settings

log = logging.getLogger(__name__)

jobs_table = jobs.jobs_table
paused_table = jobs.paused_table
consumers_table = heartbeat.consumers_table
#: finished jobs of the last hour whose times make the percentiles
STATS_SAMPLE = 2000
#: seconds those times are reused
STATS_TTL = 10.0
#: the latest failed jobs the overview lists (with their errors)
FAILURES_SHOWN = 20
JOB_TYPE_NAMES = frozenset(t.value for t in JobType)
PRIORITY_NAMES = {Priority.HIGH: "high", Priority.MEDIUM: "medium", Priority.LOW: "low"}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _seconds(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())


def _percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of `values`, rounded to 0.01 s; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _minute(column: Any) -> ColumnElement[Any]:
    """The minute of a timestamp column, as text that sorts (SQLite and PostgreSQL)."""
    if db.engine().dialect.name == "postgresql":
        return func.to_char(column, "YYYY-MM-DD\"T\"HH24:MI")
    return func.strftime("%Y-%m-%dT%H:%M", column)


def _due(now: datetime) -> ColumnElement[bool]:
    c = jobs_table.c
    return and_(c.status == JobStatus.PENDING.value,
                or_(c.run_after.is_(None), c.run_after <= now))


def overview() -> dict[str, Any]:
    """The `data` of GET /api/ops/overview (DESIGN.md)."""
    now = db.utcnow()
    c = jobs_table.c
    with db.read() as conn:
        paused = set(conn.execute(select(paused_table.c.type)).scalars())
        # Unfinished jobs by type, status and whether they are due (a small result).
        due = _due(now)
        unfinished = conn.execute(
            select(c.type, c.status, c.priority, due.label("due"),
                   func.count(), func.min(func.coalesce(c.run_after, c.created_at)))
            .where(c.status.in_((JobStatus.PENDING.value, JobStatus.PROCESSING.value)))
            .group_by(c.type, c.status, c.priority, due)
        ).all()
        # Finished in the last hour by type, status and minute: counts and the chart.
        per_minute = _finished.last_hour(conn, now)
        runs, waits = _recent.times(conn, now)
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
                  "completedLastHour": 0, "failedLastHour": 0, "runSecondsP50": None,
                  "runSecondsP95": None, "waitSecondsP95": None}
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
                wait = round(_seconds(now, oldest), 1)
                queue["oldestWaitingSeconds"] = max(queue["oldestWaitingSeconds"] or 0, wait)
    chart: dict[str, dict[str, int]] = defaultdict(lambda: {"completed": 0, "failed": 0})
    for job_type, status, at, count in per_minute:
        key = "completedLastHour" if status == JobStatus.COMPLETED.value else "failedLastHour"
        types[job_type][key] += count
        totals[key] += count
        chart[at][status] += count
    for job_type, entry in types.items():
        entry["runSecondsP50"] = _percentile(runs.get(job_type, []), 0.5)
        entry["runSecondsP95"] = _percentile(runs.get(job_type, []), 0.95)
        entry["waitSecondsP95"] = _percentile(waits.get(job_type, []), 0.95)

    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in running:
        by_worker[r.worker_id or ""].append({
            "jobId": r.id, "type": r.type, "startedAt": _iso(r.started_at),
            "runningSeconds": round(_seconds(now, r.started_at), 1) if r.started_at else None,
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
            "startedAt": _iso(r.started_at), "lastSeenAt": _iso(r.last_seen_at),
            "silent": now - r.last_seen_at > silent_after,
            "running": by_worker.get(r.id, []), "processed": r.processed,
        } for r in consumers],
        "periodic": [_backup_schedule(now, last_backup)],
        "throughput": [{"minute": _iso(m), **chart.get(m.strftime(MINUTE),
                                                         {"completed": 0, "failed": 0})}
                       for m in minutes],
        "failures": [{"id": r.id, "type": r.type, "error": r.error, "attempts": r.attempts,
                      "userId": r.user_id, "completedAt": _iso(r.completed_at)}
                     for r in failures],
        "generatedAt": _iso(now),
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


class RecentTimes:
    """Run and wait seconds by type of the latest STATS_SAMPLE jobs completed in the
    last hour (waits of first attempts only: a later attempt's claim no longer knows
    when it fell due). The overview and the estimates share them, read again at most
    every STATS_TTL seconds: they move slowly, and turning thousands of rows into
    durations was the larger part of an overview's cost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at: float | None = None
        self._times: tuple[dict[str, list[float]], dict[str, list[float]]] = ({}, {})

    def times(self, conn: Any, now: datetime
              ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """({type: run seconds}, {type: wait seconds})."""
        with self._lock:
            if self._at is None or time.monotonic() - self._at > STATS_TTL:
                c = jobs_table.c
                sample = conn.execute(
                    select(c.type, c.created_at, c.attempts, c.started_at, c.completed_at)
                    .where(c.status == JobStatus.COMPLETED.value,
                           c.updated_at >= now - timedelta(hours=1),
                           c.started_at.is_not(None))
                    .order_by(c.updated_at.desc()).limit(STATS_SAMPLE)).all()
                runs: dict[str, list[float]] = defaultdict(list)
                waits: dict[str, list[float]] = defaultdict(list)
                for job_type, created, attempts, started, completed in sample:
                    runs[job_type].append(_seconds(completed, started))
                    if attempts == 1:
                        waits[job_type].append(_seconds(started, created))
                self._times, self._at = (dict(runs), dict(waits)), time.monotonic()
            return self._times

    def forget(self) -> None:
        with self._lock:
            self._at = None


class FinishedPerMinute:
    """The finished jobs of the last hour by minute, type and status (the chart and
    the hour's counts). A minute that has passed is counted once and kept: each
    overview then counts the current minute only, not the whole hour (with 100,000
    jobs that was most of its cost). A job that changes after its minute was counted
    (a retry) stays counted there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: minute ("YYYY-MM-DDTHH:MM") → [(type, status, count)], for passed minutes
        self._passed: dict[str, list[tuple[str, str, int]]] = {}

    def last_hour(self, conn: Any, now: datetime) -> list[tuple[str, str, str, int]]:
        """(type, status, minute, count) for the 59 minutes before this one, and this one."""
        current = now.replace(second=0, microsecond=0)
        minutes = [current - timedelta(minutes=i) for i in range(59, 0, -1)]
        with self._lock:
            missing = [m for m in minutes if m.strftime(MINUTE) not in self._passed]
            since = missing[0] if missing else current
            c = jobs_table.c
            minute = _minute(c.updated_at)
            rows = conn.execute(
                select(c.type, c.status, minute, func.count())
                .where(c.status.in_((JobStatus.COMPLETED.value, JobStatus.FAILED.value)),
                       c.updated_at >= since)
                .group_by(c.type, c.status, minute)).all()
            fresh: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
            for job_type, status, at, count in rows:
                fresh[at].append((job_type, status, count))
            for m in missing:
                self._passed[m.strftime(MINUTE)] = fresh.get(m.strftime(MINUTE), [])
            keep = {m.strftime(MINUTE) for m in minutes}
            for key in [k for k in self._passed if k not in keep]:
                del self._passed[key]
            hour = {**{k: self._passed[k] for k in keep},
                    current.strftime(MINUTE): fresh.get(current.strftime(MINUTE), [])}
        return [(t, st, at, n) for at, counts in hour.items() for t, st, n in counts]

    def forget(self) -> None:
        with self._lock:
            self._passed.clear()


MINUTE = "%Y-%m-%dT%H:%M"
_finished = FinishedPerMinute()
_recent = RecentTimes()


def _backup_schedule(now: datetime, last: Any) -> dict[str, Any]:
    expression = " ".join(settings.backup_cron.split())
    naive = now.astimezone(UTC).replace(tzinfo=None)
    upcoming = croniter(expression, naive).get_next(datetime).replace(tzinfo=UTC)
    return {"name": "database_backup", "schedule": expression, "nextRunAt": _iso(upcoming),
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
    forget_queue_state()
    log.warning("job type %s paused", job_type.value)
    return {"type": job_type.value, "paused": True}


def resume(name: str) -> dict[str, Any]:
    """Let consumers claim this type's jobs again, and queue those the consumers
    dropped while it was paused."""
    job_type = _job_type(name)
    with db.begin() as conn:
        conn.execute(delete(paused_table).where(paused_table.c.type == job_type.value))
    forget_queue_state()
    requeued = requeue_pending(job_type)
    log.warning("job type %s resumed; %d pending jobs queued again", job_type.value, requeued)
    return {"type": job_type.value, "paused": False}


def requeue_pending(job_type: JobType) -> int:
    """Enqueue the type's due pending jobs that the queue no longer holds."""
    with db.read() as conn:
        ids = list(conn.execute(
            select(jobs_table.c.id).where(_due(db.utcnow()),
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





# --- the queue estimate of a job (DESIGN.md: the job object's `queue`) -----------------

#: seconds a computed queue state is reused (the pages refresh the estimate anyway)
ESTIMATE_TTL = 1.0
_PENDING, _PROCESSING = JobStatus.PENDING.value, JobStatus.PROCESSING.value


class QueueState:
    """What the estimates of every unfinished job are computed from: the due jobs
    in the order the consumers will claim them, the recent run times per type, the
    running jobs' remaining times and the consumers' threads."""

    def __init__(self, now: datetime) -> None:
        c = jobs_table.c
        order = func.coalesce(c.run_after, c.created_at)
        with db.read() as conn:
            self.paused = set(conn.execute(select(paused_table.c.type)).scalars())
            due = conn.execute(
                select(c.priority, order, c.type)
                .where(_due(now), c.type.not_in(select(paused_table.c.type)))
                .order_by(c.priority.desc(), order)).all()
            runs = _recent.times(conn, now)[0]
            running = conn.execute(
                select(c.type, c.started_at, c.progress_current, c.progress_total)
                .where(c.status == _PROCESSING)).all()
            seen_since = now - timedelta(seconds=settings.worker_ttl)
            self.workers = int(conn.execute(
                select(func.coalesce(func.sum(consumers_table.c.workers), 0))
                .where(consumers_table.c.last_seen_at >= seen_since)).scalar_one())
        self.now = now
        #: the median run of each type seen in the last hour
        self.run = {t: _percentile(v, 0.5) or 0.0 for t, v in runs.items()}
        every = [x for v in runs.values() for x in v]
        fallback = _percentile(every, 0.5)
        # The claim order, without the paused types' jobs (nobody claims them).
        self.keys: list[tuple[int, datetime]] = []
        self.before: list[float | None] = [0.0]  # seconds of work ahead of each place
        for priority, at, job_type in due:
            self.keys.append((-priority, at))
            cost = self.run.get(job_type, fallback)
            previous = self.before[-1]
            self.before.append(None if previous is None or cost is None else previous + cost)
        self.busy: float | None = 0.0  # seconds the running jobs still need, together
        for job_type, started, current, total in running:
            left = self.remaining(job_type, started, current, total)
            self.busy = None if left is None or self.busy is None else self.busy + left

    def remaining(self, job_type: str, started: datetime | None, current: int | None,
                  total: int | None) -> float | None:
        """Seconds a running job still needs: by its progress rate, else its type's median."""
        elapsed = _seconds(self.now, started) if started else 0.0
        if current and total:
            return max(0.0, elapsed * (total - current) / current)
        if job_type in self.run:
            return max(0.0, self.run[job_type] - elapsed)
        return None

    def estimate(self, job: dict[str, Any]) -> dict[str, Any]:
        progress = job["progress"] or {}
        if job["status"] == _PROCESSING:
            started = datetime.fromisoformat(job["startedAt"]) if job["startedAt"] else None
            left = self.remaining(job["type"], started, progress.get("current"),
                                  progress.get("total"))
            return {"ahead": 0, "startsIn": 0, "finishesIn": _round(left)}
        at = job["runAfter"] or job["createdAt"]
        key = (-job["priority"], datetime.fromisoformat(at))
        ahead = bisect_left(self.keys, key)
        starts = None
        if self.workers and job["type"] not in self.paused:
            work, busy = self.before[ahead], self.busy
            starts = None if work is None or busy is None else (work + busy) / self.workers
        if job["runAfter"] is not None:
            wait = _seconds(datetime.fromisoformat(job["runAfter"]), self.now)
            starts = None if starts is None else max(starts, wait)
        run = self.run.get(job["type"])
        finishes = None if starts is None or run is None else starts + run
        return {"ahead": ahead, "startsIn": _round(starts), "finishesIn": _round(finishes)}


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


_state: dict[str, Any] = {}
_state_lock = threading.Lock()


def queue_state() -> QueueState:
    """The current QueueState, recomputed at most every ESTIMATE_TTL seconds."""
    with _state_lock:
        made = _state.get("at")
        if made is None or time.monotonic() - made > ESTIMATE_TTL:
            _state["state"], _state["at"] = QueueState(db.utcnow()), time.monotonic()
        state: QueueState = _state["state"]
        return state


def forget_queue_state() -> None:
    """The next estimate and overview compute afresh (tests; a paused or resumed type)."""
    with _state_lock:
        _state.clear()
    _finished.forget()
    _recent.forget()


def annotate(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add `paused` and `queue` to Job objects of the API and the snapshots: both
    for pending and processing jobs only (`queue` is null for final jobs)."""
    unfinished = [j for j in listed if j["status"] in (_PENDING, _PROCESSING)]
    for job in listed:
        job["paused"], job["queue"] = False, None
    if unfinished:
        state = queue_state()
        for job in unfinished:
            job["paused"] = job["status"] == _PENDING and job["type"] in state.paused
            job["queue"] = state.estimate(job)
    return listed
