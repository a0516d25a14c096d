"""Database backups: made online, kept in PA_DATA_DIR/backups, pruned, restored.

A backup is one file named `pa-backup-YYYYMMDDTHHMMSSZ.sqlite.gz` (SQLite: the
online backup API, an integrity check of the copy, gzip) or `...Z.pgdump`
(PostgreSQL: `pg_dump` in its custom format). The name carries the time (UTC); the
job that made it is found through its result (`{name, bytes}`).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from pa import db, jobs
from pa.errors import Conflict, Invalid, NotFound, PaError, PermanentJobError, Unavailable
from pa.models import Job, JobStatus, iso
from pa.queue import JobType
from pa.settings import settings

jobs_table = cast(Table, Job.__table__)

NAME_RE = re.compile(r"pa-backup-(\d{8}T\d{6}Z)\.(sqlite\.gz|pgdump)")
_STAMP = "%Y%m%dT%H%M%SZ"
SQLITE_EXT, PG_EXT = "sqlite.gz", "pgdump"
#: tables that every pa database has: a file without them is not a pa backup
PA_TABLES = frozenset({"users", "reviews", "jobs"})
GZIP_LEVEL = 6
_CHUNK = 1 << 20

Check = Callable[[], None]
Step = Callable[[int, int, str], None]


def backups_dir() -> Path:
    return settings.data_dir / "backups"


@dataclass(frozen=True)
class Backup:
    name: str
    path: Path
    bytes: int
    created_at: datetime


def _parse(path: Path) -> Backup | None:
    match = NAME_RE.fullmatch(path.name)
    if match is None or not path.is_file():
        return None
    created = datetime.strptime(match.group(1), _STAMP).replace(tzinfo=UTC)
    return Backup(path.name, path, path.stat().st_size, created)


def list_backups() -> list[Backup]:
    """The backups on disk, newest first."""
    folder = backups_dir()
    if not folder.is_dir():
        return []
    found = [b for p in folder.iterdir() if (b := _parse(p)) is not None]
    return sorted(found, key=lambda b: b.name, reverse=True)


def find_backup(name: str) -> Backup:
    """The backup called `name`; NotFound for anything else (other files, other folders)."""
    if NAME_RE.fullmatch(name):  # no separators or dots: it cannot leave the folder
        found = _parse(backups_dir() / name)
        if found is not None:
            return found
    raise NotFound(f"No backup {name!r}.")


def listing() -> list[dict[str, Any]]:
    """The API's list: `[{name, bytes, createdAt, jobId, downloadUrl}]`, newest first."""
    with db.read() as conn:
        rows = conn.execute(
            select(jobs_table.c.id, jobs_table.c.result).where(
                jobs_table.c.type == JobType.DATABASE_BACKUP.value,
                jobs_table.c.status == JobStatus.COMPLETED.value)
        ).all()
    job_of = {r.result["name"]: r.id for r in rows if isinstance(r.result, dict)
              and "name" in r.result}
    return [
        {"name": b.name, "bytes": b.bytes, "createdAt": iso(b.created_at),
         # None when the job was pruned (PA_JOB_RETENTION_DAYS) or ran elsewhere
         "jobId": job_of.get(b.name), "downloadUrl": f"/api/admin/backups/{b.name}"}
        for b in list_backups()
    ]


def prune(keep: int) -> list[str]:
    """Delete all but the `keep` newest backups (at least one is kept); returns their names."""
    old = list_backups()[max(1, keep):]
    for b in old:
        b.path.unlink(missing_ok=True)
    return [b.name for b in old]


# --- requests -------------------------------------------------------------------------


def submit_backup(user_id: int | None) -> dict[str, Any]:
    """An admin's backup job; Conflict while another backup is pending or running."""
    with db.begin() as conn:
        running = conn.execute(
            select(jobs_table.c.id).where(
                jobs_table.c.type == JobType.DATABASE_BACKUP.value,
                jobs_table.c.status.in_((JobStatus.PENDING.value,
                                         JobStatus.PROCESSING.value)))
        ).first()
        if running is not None:
            raise Conflict(f"A backup is already under way (job {running.id}).")
        job = jobs.create(conn, JobType.DATABASE_BACKUP, {"trigger": "manual"}, user_id)
    jobs.dispatch(job)
    return job


def create_scheduled_backup(slot: datetime) -> dict[str, Any] | None:
    """The backup job of schedule slot `slot`, once however many consumers ask; else None."""
    stamp = iso(slot.astimezone(UTC).replace(second=0, microsecond=0))
    try:
        with db.begin() as conn:
            # Periodic jobs belong to nobody (only admins see them).
            job = jobs.create(conn, JobType.DATABASE_BACKUP,
                              {"trigger": "schedule", "slot": stamp}, None,
                              dedupe_key=f"database_backup:{stamp}")
    except IntegrityError:
        return None  # another consumer created this slot's job first
    jobs.dispatch(job)
    return job


# --- making a backup --------------------------------------------------------------------


def _sqlite_path() -> Path:
    database = make_url(settings.database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise PermanentJobError(f"Cannot back up the SQLite database {database!r}: "
                                "PA_DATABASE_URL must name a database file.")
    return Path(database)


def _libpq() -> tuple[str, dict[str, str]]:
    """The libpq URL of PA_DATABASE_URL (without the password) and the environment."""
    url = make_url(settings.database_url)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    dsn = url.set(drivername="postgresql", password=None)
    return dsn.render_as_string(hide_password=False), env


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PermanentJobError(
            f"{name} was not found on PATH: install the PostgreSQL client programs "
            "(postgresql-client, the server's major version or newer) on the consumer."
        )
    return path


def _publish(tmp: Path, ext: str) -> Backup:
    """Give the finished temp file its final name (a later second if the name is taken)."""
    moment = db.utcnow().replace(microsecond=0)
    while True:
        final = tmp.parent / f"pa-backup-{moment.strftime(_STAMP)}.{ext}"
        try:
            os.link(tmp, final)  # unlike rename, never replaces an existing backup
            break
        except FileExistsError:
            moment += timedelta(seconds=1)
    tmp.unlink()
    found = _parse(final)
    assert found is not None
    return found


def _integrity_check(conn: sqlite3.Connection, what: str,
                     error: type[Exception] = RuntimeError) -> None:
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise error(f"Integrity check of {what} failed: {exc}") from None
    if [tuple(r) for r in rows] != [("ok",)]:
        problems = "; ".join(str(r[0]) for r in rows[:5])
        raise error(f"Integrity check of {what} failed: {problems}")


def _sqlite_backup(tmp: Path, check: Check, step: Step) -> Backup:
    copy = tmp.with_name(tmp.name + ".db")
    try:
        step(0, 3, "Copying the database")
        source = sqlite3.connect(_sqlite_path(), timeout=30)
        target = sqlite3.connect(copy)
        try:
            # One step (pages=-1): a copy made in steps restarts whenever another
            # connection writes in between, which on a busy database may be forever.
            source.backup(target)
            # A self-contained file: no -wal beside it once restored or opened.
            target.execute("PRAGMA journal_mode=DELETE")
            check()
            step(1, 3, "Checking the copy")
            _integrity_check(target, "the copy")
        finally:
            target.close()
            source.close()
        check()
        step(2, 3, "Compressing")
        with open(copy, "rb") as src, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename=copy.name, mode="wb", fileobj=raw,
                               compresslevel=GZIP_LEVEL) as gz:
                while chunk := src.read(_CHUNK):
                    gz.write(chunk)
                    check()
            raw.flush()
            os.fsync(raw.fileno())
    finally:
        copy.unlink(missing_ok=True)
    return _publish(tmp, SQLITE_EXT)


def _wait(proc: subprocess.Popen[bytes], check: Check) -> None:
    try:
        while proc.poll() is None:
            check()
            time.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _pg_backup(tmp: Path, check: Check, step: Step) -> Backup:
    pg_dump = _program("pg_dump")
    dsn, env = _libpq()
    step(0, 2, "Dumping the database (pg_dump)")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [pg_dump, "--format=custom", "--no-password", f"--file={tmp}", f"--dbname={dsn}"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )
        _wait(proc, check)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"pg_dump failed (exit {proc.returncode}): "
                               f"{err.read().decode(errors='replace').strip()}")
    step(1, 2, "Checking the dump")
    _check_pgdump(tmp, error=RuntimeError)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    return _publish(tmp, PG_EXT)


def make_backup(job_id: str, check: Check, step: Step) -> Backup:
    """Back up the configured database into a new file in backups_dir()."""
    folder = backups_dir()
    folder.mkdir(parents=True, exist_ok=True)
    day_ago = time.time() - 24 * 3600
    for stale in folder.glob(".*.tmp*"):  # left by killed runs (not by running ones)
        if stale.name.startswith(f".{job_id}.") or stale.stat().st_mtime < day_ago:
            stale.unlink(missing_ok=True)
    tmp = folder / f".{job_id}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        if settings.is_sqlite:
            return _sqlite_backup(tmp, check, step)
        return _pg_backup(tmp, check, step)
    finally:
        tmp.unlink(missing_ok=True)


# --- restoring ---------------------------------------------------------------------------


def _check_pgdump(path: Path, error: type[Exception] = Invalid) -> None:
    """The dump's table of contents must list pa's tables."""
    pg_restore = _program("pg_restore")
    listed = subprocess.run([pg_restore, "--list", str(path)], capture_output=True)
    if listed.returncode != 0:
        raise error(f"{path.name} is not a readable pg_dump archive: "
                    f"{listed.stderr.decode(errors='replace').strip()}")
    text = listed.stdout.decode(errors="replace")
    tables = set(re.findall(r" TABLE \S+ (\w+) ", text))
    if not PA_TABLES <= tables:
        raise error(f"{path.name} is a pg_dump archive but not of a pa database.")


def _restore_sqlite(path: Path) -> None:
    live = _sqlite_path()
    tmp = live.parent / f".restore-{uuid.uuid4().hex[:8]}.db"
    try:
        try:
            with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        except (gzip.BadGzipFile, EOFError, OSError) as exc:
            raise Invalid(
                f"{path.name} is not a pa backup (not a whole gzip file: {exc})."
            ) from None
        with open(tmp, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise Invalid(f"{path.name} is not a pa backup (no SQLite database inside).")
        copy = sqlite3.connect(tmp)
        try:
            _integrity_check(copy, path.name, error=Invalid)
            names = {r[0] for r in copy.execute("SELECT name FROM sqlite_master")}
            if not PA_TABLES <= names:
                raise Invalid(f"{path.name} is not a pa backup (it lacks pa's tables).")
            target = sqlite3.connect(live, timeout=30)
            try:
                copy.backup(target)  # the online backup API, into the live database
            finally:
                target.close()
        finally:
            copy.close()
    finally:
        tmp.unlink(missing_ok=True)


def _restore_pg(path: Path) -> None:
    _check_pgdump(path)
    pg_restore = _program("pg_restore")
    dsn, env = _libpq()
    done = subprocess.run(
        [pg_restore, "--clean", "--if-exists", "--no-owner", "--single-transaction",
         "--no-password", f"--dbname={dsn}", str(path)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True,
    )
    if done.returncode != 0:
        raise PaError(f"pg_restore failed (exit {done.returncode}): "
                      f"{done.stderr.decode(errors='replace').strip()}")


def restore_backup(path: Path) -> None:
    """Replace the configured database's contents with the backup at `path`."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"No backup file {path}.")
    with open(path, "rb") as f:
        magic = f.read(5)
    if magic.startswith(b"\x1f\x8b"):
        if not settings.is_sqlite:
            raise Invalid(f"{path.name} is a SQLite backup; PA_DATABASE_URL is PostgreSQL.")
        _restore_sqlite(path)
    elif magic == b"PGDMP":
        if settings.is_sqlite:
            raise Invalid(f"{path.name} is a PostgreSQL backup; PA_DATABASE_URL is SQLite.")
        try:
            _restore_pg(path)
        except PermanentJobError as exc:  # pg_restore missing
            raise Unavailable(str(exc)) from None
    else:
        raise Invalid(f"{path.name} is not a pa backup (neither .sqlite.gz nor .pgdump).")
    db.current().dispose()  # pooled connections may hold the old schema's state
