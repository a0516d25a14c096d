"""What finished jobs say, read from the jobs table at a cost that stays bounded
however many jobs it holds: how long each type has been running and waiting lately,
and how many jobs finished in each minute of the last hour. The operators' overview
(pa.ops) and the queue estimates (pa.estimates) share them in each process.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.sql.elements import ColumnElement

from pa import db, jobs
from pa.models import JobStatus

#: completed jobs of the last hour whose times make the percentiles
SAMPLE = 2000
#: seconds those percentiles are reused: they move slowly
SAMPLE_TTL = 10.0
#: seconds after which a finish is counted for good (FinishedPerMinute)
SETTLE = 5.0
#: the minute of a finish, as the SQL below writes it: "YYYY-MM-DDTHH:MM"
MINUTE = "%Y-%m-%dT%H:%M"

jobs_table = jobs.jobs_table


def seconds_between(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of `values`, rounded to 0.01 s; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


@dataclass(frozen=True)
class Timings:
    """Run and wait percentiles (seconds) by job type; a type missing has not
    completed a job in the last hour."""

    run_p50: dict[str, float] = field(default_factory=dict)
    run_p95: dict[str, float] = field(default_factory=dict)
    wait_p95: dict[str, float] = field(default_factory=dict)
    #: the median run of every type together (for a type without runs of its own)
    run_p50_any: float | None = None


class RecentTimes:
    """The Timings of the latest SAMPLE jobs completed in the last hour (waits of first
    attempts only: a later attempt's claim no longer knows when it fell due), read
    again at most every SAMPLE_TTL seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at: float | None = None
        self._timings = Timings()

    def get(self, conn: Connection, now: datetime) -> Timings:
        with self._lock:
            if self._at is None or time.monotonic() - self._at > SAMPLE_TTL:
                self._timings, self._at = self._read(conn, now), time.monotonic()
            return self._timings

    @staticmethod
    def _read(conn: Connection, now: datetime) -> Timings:
        c = jobs_table.c
        sample = conn.execute(
            select(c.type, c.created_at, c.attempts, c.started_at, c.completed_at)
            .where(c.status == JobStatus.COMPLETED.value,
                   c.updated_at >= now - timedelta(hours=1), c.started_at.is_not(None))
            .order_by(c.updated_at.desc()).limit(SAMPLE)).all()
        runs: dict[str, list[float]] = defaultdict(list)
        waits: dict[str, list[float]] = defaultdict(list)
        for job_type, created, attempts, started, completed in sample:
            runs[job_type].append(seconds_between(completed, started))
            if attempts == 1:
                waits[job_type].append(seconds_between(started, created))

        def each(values: dict[str, list[float]], q: float) -> dict[str, float]:
            return {t: p for t, v in values.items() if (p := percentile(v, q)) is not None}

        return Timings(run_p50=each(runs, 0.5), run_p95=each(runs, 0.95),
                       wait_p95=each(waits, 0.95),
                       run_p50_any=percentile([x for v in runs.values() for x in v], 0.5))

    def forget(self) -> None:
        with self._lock:
            self._at = None


def _minute(column: Any) -> ColumnElement[Any]:
    """The minute of a timestamp column, as MINUTE text (SQLite and PostgreSQL)."""
    if db.engine().dialect.name == "postgresql":
        return func.to_char(column, "YYYY-MM-DD\"T\"HH24:MI")
    return func.strftime(MINUTE, column)


class FinishedPerMinute:
    """The jobs that finished (completed or failed) in each minute of the last hour,
    by type and status: the chart and the hour's counts.

    Each read counts the finishes stamped since the previous read's `now` - SETTLE:
    those older than SETTLE seconds are kept (counted for good, into their minute),
    the newer ones are counted again by the next read. With 100 jobs finishing a
    second, that is a few hundred rows a read instead of the up to 6,000 of the
    current minute. The price: a finish whose commit came more than SETTLE seconds
    after its stamp is not counted, and a job counted when it finished stays counted
    if it is retried.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: finishes stamped before this are counted in _settled
        self._until: datetime | None = None
        self._settled: Counter[tuple[str, str, str]] = Counter()

    def last_hour(self, conn: Connection, now: datetime) -> Counter[tuple[str, str, str]]:
        """(minute, type, status) → jobs, for this minute and the 59 before it."""
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
        settle = now - timedelta(seconds=SETTLE)
        c = jobs_table.c
        minute = _minute(c.updated_at)
        settled = (c.updated_at < settle).label("settled")
        with self._lock:
            if self._until is None or self._until < start:
                self._until, self._settled = start, Counter()
            rows = conn.execute(
                select(minute, c.type, c.status, settled, func.count())
                .where(c.status.in_((JobStatus.COMPLETED.value, JobStatus.FAILED.value)),
                       c.updated_at >= self._until)
                .group_by(minute, c.type, c.status, settled)).all()
            fresh: Counter[tuple[str, str, str]] = Counter()
            for at, job_type, status, is_settled, count in rows:
                (self._settled if is_settled else fresh)[at, job_type, status] += count
            self._until = max(self._until, settle)
            first = start.strftime(MINUTE)
            for key in [k for k in self._settled if k[0] < first]:
                del self._settled[key]
            return self._settled + fresh

    def forget(self) -> None:
        with self._lock:
            self._until = None


recent_times = RecentTimes()
finished_per_minute = FinishedPerMinute()


def forget() -> None:
    """The next reads start afresh (tests)."""
    recent_times.forget()
    finished_per_minute.forget()
