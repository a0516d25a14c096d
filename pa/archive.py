"""Fiscal years: whether one is open, closing or closed, and the request to close one.

Closing a year (the `archive_reviews` job, pa/tasks/archive.py) writes every review of
the year to a `.jsonl.gz` archive, then marks them `archived`, then the year closed.

The `fiscal_years` row records the state of a year:
- no row: **open**; its reviews may change;
- a row with `closed_at` NULL: **closing**; `job_id` is the archive job that closes it.
  The reviews are frozen from the moment the close is requested, so that the archive
  (written once, first) stays true while they are marked. If that job fails or is
  cancelled, the year stays frozen until a new close request finishes the work;
- a row with `closed_at` set: **closed**, for good.

A second run of the job (after a crash, a retry or a new close request) reuses the
archive when its manifest still describes the year's reviews, so every review is in
it exactly once and keeps the status it had before it was archived.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Table, func, insert, select, text, update

from pa import db, jobs
from pa.errors import Conflict, NotFound
from pa.models import FiscalYear, Job, JobStatus, Review, ReviewStatus, iso
from pa.queue import JobType
from pa.settings import settings

fiscal_years = cast(Table, FiscalYear.__table__)
reviews = cast(Table, Review.__table__)
jobs_table = cast(Table, Job.__table__)

ARCHIVED = ReviewStatus.ARCHIVED.value
_RUNNING = (JobStatus.PENDING.value, JobStatus.PROCESSING.value)
#: first key of PostgreSQL advisory locks on a fiscal year ("pa")
_LOCK_SPACE = 0x7061


class YearState(enum.StrEnum):
    #: its reviews may change
    OPEN = "open"
    #: a close was requested; its reviews are frozen
    CLOSING = "closing"
    #: archived and closed
    CLOSED = "closed"


def archive_relpath(year: int) -> str:
    """Where the archive of `year` lives, relative to PA_DATA_DIR."""
    return f"archives/FY{year}/pa-archive-FY{year}.jsonl.gz"


def archive_file(year: int) -> Path:
    """The archive of a closed year; NotFound before the year is closed."""
    state = close_state(year)
    path = settings.data_dir / archive_relpath(year)
    if state is None or state.closed_at is None or not path.is_file():
        raise NotFound(f"FY{year} has no archive: it is not closed.")
    return path


def _lock_year(conn: Connection, year: int, *, exclusive: bool) -> None:
    # PostgreSQL: a change to a review holds the year's lock shared until it commits,
    # and a close request takes it exclusively, so no change that checked an open year
    # can commit after the close (and after the archive read the reviews). SQLite needs
    # nothing: BEGIN IMMEDIATE already runs writing transactions one at a time.
    if conn.dialect.name != "postgresql":
        return
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(text(f"SELECT {fn}(:space, :year)"), {"space": _LOCK_SPACE, "year": year})


def ensure_year_open(conn: Connection, year: int) -> None:
    """Raise Conflict (409) when reviews of `year` may no longer change (closing or closed).

    Call it inside the writing transaction that changes or creates the review.
    """
    _lock_year(conn, year, exclusive=False)
    row = conn.execute(
        select(fiscal_years.c.closed_at).where(fiscal_years.c.year == year)
    ).first()
    if row is None:
        return
    if row.closed_at is not None:
        raise Conflict(f"FY{year} is closed: its reviews can no longer change.")
    raise Conflict(f"FY{year} is being closed: its reviews can no longer change.")


def request_close(year: int, user_id: int | None) -> dict[str, Any]:
    """Freeze `year` and submit its archive job; Conflict if closed or being closed."""
    with db.begin() as conn:
        _lock_year(conn, year, exclusive=True)
        row = conn.execute(
            select(fiscal_years.c.closed_at, fiscal_years.c.job_id, jobs_table.c.status,
                   jobs_table.c.payload)
            .select_from(fiscal_years.outerjoin(
                jobs_table, jobs_table.c.id == fiscal_years.c.job_id))
            .where(fiscal_years.c.year == year)
        ).first()
        if row is not None and row.closed_at is not None:
            raise Conflict(f"FY{year} is already closed.")
        if row is not None and row.status in _RUNNING:
            raise Conflict(f"FY{year} is already being closed (job {row.job_id}).")
        if row is None:
            any_review = conn.execute(
                select(reviews.c.id).where(reviews.c.fiscal_year == year).limit(1)
            ).first()
            if any_review is None:
                raise NotFound(f"FY{year} has no reviews to close.")
        payload: dict[str, Any] = {"year": year}
        if row is not None:
            # The year has stayed frozen since the first close job of this freeze: an
            # archive written by any job of the same freeze still holds its reviews.
            payload["freezeId"] = (row.payload or {}).get("freezeId") or row.job_id
        job = jobs.create(conn, JobType.ARCHIVE_REVIEWS, payload, user_id)
        if row is None:
            conn.execute(insert(fiscal_years).values(year=year, closed_at=None,
                                                     job_id=job["id"]))
        else:  # the last close job failed or was cancelled: this one takes over
            conn.execute(update(fiscal_years).where(fiscal_years.c.year == year)
                         .values(job_id=job["id"]))
    jobs.dispatch(job)
    return job


def list_years() -> list[dict[str, Any]]:
    """Every fiscal year with reviews or a close, newest first, with counts and state."""
    with db.read() as conn:
        counts = conn.execute(
            select(reviews.c.fiscal_year, reviews.c.status, func.count())
            .group_by(reviews.c.fiscal_year, reviews.c.status)
        ).all()
        closes = conn.execute(
            select(fiscal_years.c.year, fiscal_years.c.closed_at, fiscal_years.c.job_id,
                   jobs_table.c.status)
            .select_from(fiscal_years.outerjoin(
                jobs_table, jobs_table.c.id == fiscal_years.c.job_id))
        ).all()
    years: dict[int, dict[str, Any]] = {}

    def entry(year: int) -> dict[str, Any]:
        return years.setdefault(year, {
            "year": year, "reviews": 0, "archived": 0, "state": YearState.OPEN.value,
            "closedAt": None, "jobId": None, "jobStatus": None, "downloadUrl": None,
        })

    for year, status, n in counts:
        e = entry(year)
        e["reviews"] += n
        if status == ARCHIVED:
            e["archived"] += n
    for c in closes:
        e = entry(c.year)
        closed = c.closed_at is not None
        e["state"] = (YearState.CLOSED if closed else YearState.CLOSING).value
        e["closedAt"] = iso(c.closed_at)
        e["jobId"], e["jobStatus"] = c.job_id, c.status
        if closed:
            e["downloadUrl"] = f"/api/fiscal-years/{c.year}/archive"
    return sorted(years.values(), key=lambda e: e["year"], reverse=True)


@dataclass(frozen=True)
class CloseState:
    """A year's `fiscal_years` row."""

    closed_at: datetime | None
    job_id: str | None


def close_state(year: int) -> CloseState | None:
    """The year's row, or None when the year is open."""
    with db.read() as conn:
        row = conn.execute(
            select(fiscal_years.c.closed_at, fiscal_years.c.job_id)
            .where(fiscal_years.c.year == year)
        ).first()
    return CloseState(row.closed_at, row.job_id) if row else None
