"""The queue estimate of an unfinished job (DESIGN.md: the job object's `queue`): how
many jobs will be claimed before it, and when it should start and finish, from the
claim order of the due jobs, the recent run times of their types, what the running
jobs still need and how many consumer threads beat lately."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from pa import db, heartbeat, jobs
from pa.job_stats import recent_times, seconds_between
from pa.models import JobStatus
from pa.settings import settings

#: seconds a computed queue state is reused (the pages refresh the estimate anyway)
TTL = 1.0
_PENDING, _PROCESSING = JobStatus.PENDING.value, JobStatus.PROCESSING.value


class QueueState:
    """What the estimates of every unfinished job are computed from: the due jobs
    in the order the consumers will claim them, the recent run times per type, the
    running jobs' remaining times and the consumers' threads."""

    def __init__(self, now: datetime) -> None:
        c = jobs.jobs_table.c
        paused_types = select(jobs.paused_table.c.type)
        order = func.coalesce(c.run_after, c.created_at)
        consumers = heartbeat.consumers_table.c
        with db.read() as conn:
            self.paused = set(conn.execute(paused_types).scalars())
            due = conn.execute(
                select(c.priority, order, c.type)
                .where(jobs.due(now), c.type.not_in(paused_types))
                .order_by(c.priority.desc(), order)).all()
            timings = recent_times.get(conn, now)
            running = conn.execute(
                select(c.type, c.started_at, c.progress_current, c.progress_total)
                .where(c.status == _PROCESSING)).all()
            seen_since = now - timedelta(seconds=settings.worker_ttl)
            self.workers = int(conn.execute(
                select(func.coalesce(func.sum(consumers.workers), 0))
                .where(consumers.last_seen_at >= seen_since)).scalar_one())
        self.now = now
        #: the median run of each type seen in the last hour
        self.run = timings.run_p50
        # The claim order, without the paused types' jobs (nobody claims them).
        self.keys: list[tuple[int, datetime]] = []
        self.before: list[float | None] = [0.0]  # seconds of work ahead of each place
        for priority, at, job_type in due:
            self.keys.append((-priority, at))
            cost = self.run.get(job_type, timings.run_p50_any)
            previous = self.before[-1]
            self.before.append(None if previous is None or cost is None else previous + cost)
        self.busy: float | None = 0.0  # seconds the running jobs still need, together
        for job_type, started, current, total in running:
            left = self.remaining(job_type, started, current, total)
            self.busy = None if left is None or self.busy is None else self.busy + left

    def remaining(self, job_type: str, started: datetime | None, current: int | None,
                  total: int | None) -> float | None:
        """Seconds a running job still needs: by its progress rate, else its type's median."""
        elapsed = seconds_between(self.now, started) if started else 0.0
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
            wait = seconds_between(datetime.fromisoformat(job["runAfter"]), self.now)
            starts = None if starts is None else max(starts, wait)
        run = self.run.get(job["type"])
        finishes = None if starts is None or run is None else starts + run
        return {"ahead": ahead, "startsIn": _round(starts), "finishesIn": _round(finishes)}


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


_state: dict[str, Any] = {}
_state_lock = threading.Lock()


def queue_state() -> QueueState:
    """The current QueueState, recomputed at most every TTL seconds."""
    with _state_lock:
        made = _state.get("at")
        if made is None or time.monotonic() - made > TTL:
            _state["state"], _state["at"] = QueueState(db.utcnow()), time.monotonic()
        state: QueueState = _state["state"]
        return state


def forget() -> None:
    """The next estimate computes afresh (a paused or resumed type; tests)."""
    with _state_lock:
        _state.clear()


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
