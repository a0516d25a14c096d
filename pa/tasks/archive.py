"""`archive_reviews`: close a fiscal year.

1. Write every review of the year, in id order, one JSON line each (the API's Review
   object, with the status it had before archiving), to a temp file, then move it to
   `archives/FY<year>/pa-archive-FY<year>.jsonl.gz` and write a manifest beside it.
2. Mark the reviews `archived`, one id range per transaction.
3. Set `fiscal_years.closed_at`.

The year is frozen from the close request on (pa.archive.ensure_year_open), so a
second run (after a crash, an automatic retry, or a new close request after a failed
job) keeps the archive whose manifest still matches the year and only finishes the
marking: every review is in the archive exactly once and every review ends archived.
"""

from __future__ import annotations

import gzip
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Table, Text, func, literal, select, text, update
from sqlalchemy import cast as sql_cast

from pa import archive, db
from pa.archive import ARCHIVED, reviews
from pa.errors import PermanentJobError
from pa.handlers import JobContext, handler
from pa.models import User
from pa.queue import JobType
from pa.settings import settings

users = cast(Table, User.__table__)

#: ids read per query while writing the archive
READ_SPAN = 20_000
#: ids marked archived per transaction. Larger spans write far less: a span rewrites
#: each index page it touches, and the analytics index spreads a span's rows over
#: most of the year's pages (1M reviews: 6 GB written with 10,000, 2.4 GB with
#: 50,000). On SQLite a span holds the write lock for about a second at most.
MARK_SPAN = 50_000
#: SQLite page cache while marking a span (KiB)
SPAN_CACHE_KB = 128_000
#: SQLite: longest pause between two spans, for other writers (seconds)
MAX_PAUSE = 0.1
#: zlib level. On 1M bench reviews (540 MB of JSON) here: level 1 takes 1.8 s of CPU
#: for 57 MB, 3 takes 2.3 s for 47 MB, 6 takes 6 s for 39 MB.
GZIP_LEVEL = 3

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Summary:
    """The year's reviews, by count and id range: what a complete archive holds."""

    reviews: int
    first_id: int | None
    last_id: int | None


def summarize(year: int) -> Summary:
    with db.read() as conn:
        n, lo, hi = conn.execute(
            select(func.count(), func.min(reviews.c.id), func.max(reviews.c.id))
            .where(reviews.c.fiscal_year == year)
        ).one()
    return Summary(int(n), lo, hi)


@dataclass(frozen=True)
class Manifest:
    """Written beside a complete archive, after it: what the archive holds."""

    year: int
    reviews: int
    first_id: int | None
    last_id: int | None
    bytes: int
    #: the job that wrote it
    job_id: str
    #: the first close job since the year was frozen (see pa.archive.request_close)
    freeze_id: str

    def describes(self, summary: Summary, freeze_id: str) -> bool:
        """Whether the archive on disk holds exactly the reviews of `summary`.

        Only an archive written since the same freeze counts: an older one (say, from
        before a database restore that reopened the year) may hold other content.
        """
        path = settings.data_dir / archive.archive_relpath(self.year)
        return (
            self.freeze_id == freeze_id
            and (self.reviews, self.first_id, self.last_id)
            == (summary.reviews, summary.first_id, summary.last_id)
            and path.is_file() and path.stat().st_size == self.bytes
        )


def _manifest_path(year: int) -> Path:
    return settings.data_dir / f"archives/FY{year}/pa-archive-FY{year}.manifest.json"


def read_manifest(year: int) -> Manifest | None:
    try:
        return Manifest(**json.loads(_manifest_path(year).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temp file, fsync, rename: `path` is whole or absent."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _spans(first: int, last: int, span: int) -> Iterator[tuple[int, int]]:
    for lo in range(first, last + 1, span):
        yield lo, min(lo + span - 1, last)


def _in_year(year: int, lo: int, hi: int) -> tuple[Any, ...]:
    # `fiscal_year + 0` keeps the planners off the fiscal_year indexes: without
    # statistics SQLite would walk the whole year's index entries for every id range
    # (quadratic); the primary key range is the cheap path on SQLite and PostgreSQL.
    return (reviews.c.id >= lo, reviews.c.id <= hi, reviews.c.fiscal_year + 0 == year)


# The database writes each line (json_object on SQLite, json_build_object on
# PostgreSQL): building a million lines in Python took as long as reading the rows.
# A line is the API's Review object, with the status the review had when archived.


def _iso(column: Any, dialect: str) -> Any:
    """A stored UTC time as ISO 8601 text ('2026-01-31T09:30:00[.ffffff]Z'), NULL kept."""
    if dialect == "postgresql":
        stamp = func.to_char(column, 'YYYY-MM-DD"T"HH24:MI:SS.US')
    else:  # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff'
        stamp = func.replace(column, " ", "T")
    return func.replace(stamp, ".000000", "").op("||")("Z")


def _archive_query(year: int, lo: int, hi: int, dialect: str) -> Any:
    employee, manager = users.alias("employee"), users.alias("manager")
    r = reviews.c
    ratings = r.ratings if dialect == "postgresql" else func.json(r.ratings)
    fields = {
        "id": r.id, "employeeId": r.employee_id, "employeeName": employee.c.name,
        "employeeEmail": employee.c.email, "managerId": r.manager_id,
        "managerName": manager.c.name, "department": r.department,
        "fiscalYear": r.fiscal_year, "status": r.status, "ratings": ratings,
        "overallRating": r.overall_rating, "goals": r.goals,
        "managerComments": r.manager_comments,
        "submittedAt": _iso(r.submitted_at, dialect), "updatedAt": _iso(r.updated_at, dialect),
    }
    build = func.json_build_object if dialect == "postgresql" else func.json_object
    pairs = [x for name, value in fields.items() for x in (literal(name), value)]
    return (
        select(sql_cast(build(*pairs), Text))
        .select_from(
            reviews.join(employee, employee.c.id == r.employee_id)
            .outerjoin(manager, manager.c.id == r.manager_id)
        )
        .where(*_in_year(year, lo, hi))
        .order_by(r.id)
    )


def write_archive(year: int, summary: Summary, job_id: str, freeze_id: str,
                  on_progress: Progress) -> Manifest:
    """Write every review of `year` (one JSON line each, id order), then the manifest."""
    path = settings.data_dir / archive.archive_relpath(year)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(".*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)
    _manifest_path(year).unlink(missing_ok=True)
    written = 0

    def write(raw: Any) -> None:
        nonlocal written
        if summary.first_id is None or summary.last_id is None:
            return
        with gzip.GzipFile(filename=path.name[:-3], mode="wb", fileobj=raw,
                           compresslevel=GZIP_LEVEL, mtime=0) as gz:
            for lo, hi in _spans(summary.first_id, summary.last_id, READ_SPAN):
                with db.read() as conn:
                    query = _archive_query(year, lo, hi, conn.dialect.name)
                    lines = conn.execute(query).scalars().all()
                if lines:
                    gz.write(("\n".join(lines) + "\n").encode())
                    written += len(lines)
                on_progress(written)

    _write_atomic(path, write)
    if written != summary.reviews:
        # The year changed while it was read (a write that skipped ensure_year_open).
        raise RuntimeError(f"FY{year} changed while its archive was written; retrying.")
    manifest = Manifest(year, written, summary.first_id, summary.last_id,
                        path.stat().st_size, job_id, freeze_id)
    body = json.dumps(asdict(manifest)).encode()
    _write_atomic(_manifest_path(year), lambda f: f.write(body))
    return manifest


def mark_archived(manifest: Manifest, on_progress: Progress) -> int:
    """Mark the year's reviews archived, one id range per transaction; returns rows changed."""
    if manifest.first_id is None or manifest.last_id is None:
        return 0
    first, last = manifest.first_id, manifest.last_id
    changed = 0
    for lo, hi in _spans(first, last, MARK_SPAN):
        started = time.monotonic()
        with db.begin() as conn, _span_cache(conn):
            # Rows an earlier run archived are left alone.
            changed += conn.execute(
                update(reviews)
                .where(*_in_year(manifest.year, lo, hi), reviews.c.status != ARCHIVED)
                .values(status=ARCHIVED, updated_at=db.utcnow())
            ).rowcount
        if conn.dialect.name == "sqlite":
            # SQLite has one write lock and no queue for it: a writer of another
            # process retries every 1-100 ms in its busy handler and would rarely
            # find it free between two spans. Leave it free a fifth of the time.
            time.sleep(min(MAX_PAUSE, (time.monotonic() - started) / 4))
        on_progress(manifest.reviews * (hi - first + 1) // (last - first + 1))
    return changed


@contextmanager
def _span_cache(conn: Connection) -> Iterator[None]:
    """SQLite: a page cache that holds one span's pages, for that transaction only.

    With the default 2 MB the span's index pages are evicted and read again many
    times; 1M reviews took a third less time with this. The size goes back before
    the commit (only clean pages are dropped), so pooled connections stay small.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    default = conn.exec_driver_sql("PRAGMA cache_size").scalar_one()
    conn.exec_driver_sql(f"PRAGMA cache_size = -{int(SPAN_CACHE_KB)}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size = {int(default)}")


def finish_close(year: int, job_id: str) -> int:
    """Mark the year closed once all its reviews are archived; returns their number."""
    fiscal_years = archive.fiscal_years
    with db.begin() as conn:
        left = conn.execute(
            select(func.count()).where(reviews.c.fiscal_year == year,
                                       reviews.c.status != ARCHIVED)
        ).scalar_one()
        if left:
            # A review was added or changed behind ensure_year_open's back: the
            # next attempt sees a changed year and writes the archive again.
            raise RuntimeError(f"{left} reviews of FY{year} are not archived; retrying.")
        conn.execute(
            update(fiscal_years)
            .where(fiscal_years.c.year == year, fiscal_years.c.job_id == job_id,
                   fiscal_years.c.closed_at.is_(None))
            .values(closed_at=db.utcnow())
        )
        owner = conn.execute(
            select(fiscal_years.c.job_id).where(fiscal_years.c.year == year)
        ).scalar_one_or_none()
        if owner != job_id:
            raise PermanentJobError(f"FY{year} is now being closed by job {owner}.")
        archived: int = conn.execute(
            select(func.count()).where(reviews.c.fiscal_year == year)
        ).scalar_one()
    return archived


def wait_for_writers() -> None:
    """PostgreSQL: let review changes that began before the close request commit first.

    A change that checked the year in its UPDATE's own WHERE (one statement) holds the
    table's ROW EXCLUSIVE lock until it commits; SHARE waits for every such holder.
    (Changes that check first through ensure_year_open are ordered by its lock.)
    SQLite runs writing transactions one at a time, so they have all committed.
    """
    with db.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("LOCK TABLE reviews IN SHARE MODE"))


@handler(JobType.ARCHIVE_REVIEWS)
def archive_reviews(ctx: JobContext) -> dict[str, int]:
    year = int(ctx.payload["year"])
    state = archive.close_state(year)
    if state is None or state.job_id != ctx.job_id:
        # An old job retried after a newer close request took the year over.
        owner = state.job_id if state else None
        raise PermanentJobError(f"FY{year} is being closed by job {owner}, not this one.")
    ctx.result_file = archive.archive_relpath(year)
    if state.closed_at is not None:
        # An earlier run closed the year and died before recording its result.
        return {"archived": summarize(year).reviews}
    wait_for_writers()
    summary = summarize(year)
    n = summary.reviews
    # Progress counts both passes over the reviews: writing, then marking.
    total = 2 * n
    ctx.progress(0, total, f"Closing FY{year}: {n:,} reviews", force=True)
    freeze_id = str(ctx.payload.get("freezeId") or ctx.job_id)
    manifest = read_manifest(year)
    if manifest is None or not manifest.describes(summary, freeze_id):
        manifest = write_archive(
            year, summary, ctx.job_id, freeze_id,
            lambda done: ctx.progress(done, total, f"Writing the archive: {done:,} of {n:,}"),
        )
    mark_archived(
        manifest,
        lambda done: ctx.progress(n + done, total, f"Marking archived: {done:,} of {n:,}"),
    )
    ctx.check()
    # Nothing may raise JobCancelled after this: the year is closed for good.
    return {"archived": finish_close(year, ctx.job_id)}
