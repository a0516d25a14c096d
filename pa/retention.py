"""Pruning: finished jobs older than PA_JOB_RETENTION_DAYS go, with their own files;
so do uploads no job names (a web process killed while it received one)."""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select

from pa import db
from pa.jobs import jobs_table
from pa.models import FINAL_STATUSES
from pa.queue import JobType
from pa.settings import settings

log = logging.getLogger(__name__)

#: rows deleted per transaction (keeps SQLite's write lock short)
BATCH = 500
#: an upload no job names is removed once it is this old (its request is long over)
ORPHAN_AGE = timedelta(hours=1)


def _job_files(job_id: str, result_file: str | None, payload: dict | None) -> list[Path]:
    """The files that belong to this job alone.

    A result in a folder named after the job (reports, import errors) and an
    upload named in the payload go with the job. Archives of closed years and
    backups live in shared folders with retention rules of their own, and stay.
    """
    root = settings.data_dir.resolve()
    paths: list[Path] = []
    if result_file:
        folder = (root / result_file).resolve().parent
        if folder.name == job_id and root in folder.parents:
            paths.append(folder)
    upload = (payload or {}).get("path")
    if isinstance(upload, str):
        path = (root / upload).resolve()
        if (root / "uploads") in path.parents:
            paths.append(path)
    return paths


def prune(now: datetime | None = None) -> int:
    """Delete finished jobs completed before the retention cutoff; returns how many."""
    cutoff = (now or db.utcnow()) - timedelta(days=settings.job_retention_days)
    final = [s.value for s in FINAL_STATUSES]
    table = jobs_table
    total = 0
    while True:
        with db.read() as conn:
            rows = conn.execute(
                select(table.c.id, table.c.result_file, table.c.payload)
                .where(table.c.status.in_(final), table.c.completed_at < cutoff)
                .limit(BATCH)
            ).all()
        if not rows:
            break
        # Files first: a crash between the two leaves a row without its file
        # (its download answers 404), never a file no row points at.
        for r in rows:
            for path in _job_files(r.id, r.result_file, r.payload):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        with db.begin() as conn:
            conn.execute(delete(table).where(table.c.id.in_([r.id for r in rows])))
        total += len(rows)
        log.info("pruned %d finished jobs older than %s", len(rows), cutoff.date())
    prune_orphan_uploads(now)
    return total


def prune_orphan_uploads(now: datetime | None = None) -> list[str]:
    """Remove uploads older than ORPHAN_AGE that no job names; returns their names.

    A web process killed while it received a file leaves it without a job (one that
    fails to store or to record it removes it itself)."""
    folder = settings.data_dir / "uploads"
    if not folder.is_dir():
        return []
    before = ((now or db.utcnow()) - ORPHAN_AGE).timestamp()
    old = [p for p in folder.iterdir() if p.is_file() and p.stat().st_mtime < before]
    if not old:
        return []
    with db.read() as conn:
        named = {Path(payload["path"]).name for (payload,) in conn.execute(
            select(jobs_table.c.payload).where(jobs_table.c.type == JobType.BULK_IMPORT.value))
            if isinstance((payload or {}).get("path"), str)}
    removed = [p.name for p in old if p.name not in named]
    for name in removed:
        (folder / name).unlink(missing_ok=True)
    if removed:
        log.warning("removed %d uploads that no job names: %s", len(removed),
                    ", ".join(removed[:5]))
    return removed
