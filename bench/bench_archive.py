"""Closing a fiscal year of 1,000,000 reviews (SQLite), beside a naive ORM baseline.

    .venv/bin/python bench/bench_archive.py [--reviews N] [--baseline-sample N]

A temporary SQLite database gets N employees with one FY2025 review each, a tenth
of them also an FY2026 review (interleaved ids, as `seed-demo` writes them) and a
sample year FY2024 for the baseline; no ANALYZE is run (a production file has no
statistics either). The pa run is the real path: `request_close`
(the route's work) then `pa.runner.execute` (claim, the real handler, finish).
The baseline (ORM objects, `json.dumps`, per-row writes to gzip at its default level
9, a commit per 100 reviews)
runs on the FY2024 sample in the same database and is extrapolated linearly to N.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STATUSES = ("completed", "completed", "completed", "submitted_to_hr", "manager_review")
DEPARTMENTS = ("Engineering", "Sales", "Support", "Marketing", "Finance", "Operations")
GOALS = ("Ship the quarterly roadmap items on time. Mentor a new team member.",
         "Reduce open customer escalations by a third; automate monthly reporting.")
COMMENTS = ("A strong year with consistently good results and clear growth.",
            "Solid delivery; keep working on cross-team communication.")


def _ts(dt: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format (naive UTC).
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")


def build(path: Path, employees: int, sample: int) -> None:
    """Bulk-load users and reviews with raw sqlite3 (the schema comes from pa.models)."""
    from sqlalchemy import create_engine

    from pa.models import Base

    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    # Load without the secondary indexes, then build them: several times faster.
    indexes = [ix for t in Base.metadata.sorted_tables for ix in t.indexes]
    with engine.begin() as conn:
        for ix in indexes:
            conn.exec_driver_sql(f"DROP INDEX {ix.name}")
    rnd = random.Random(7)
    now = datetime(2026, 1, 15, tzinfo=UTC)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    managers = max(1, employees // 100)
    users = []
    for i in range(1, managers + employees + 1):
        is_mgr = i <= managers
        users.append((i, f"user{i}@example.com", f"Person {i}",
                      "manager" if is_mgr else "employee", DEPARTMENTS[i % 6],
                      None if is_mgr else 1 + i % managers, None, _ts(now), _ts(now)))
    con.executemany("INSERT INTO users (id, email, name, role, department, manager_id, "
                    "password_hash, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)", users)
    del users
    rows: list[tuple[Any, ...]] = []
    for i in range(managers + 1, managers + employees + 1):
        # seed-demo writes an employee's years together, so years interleave by id
        years = [2025] + ([2024] if i - managers <= sample else []) + \
                ([2026] if i % 10 == 0 else [])
        for year in years:
            ratings = {"Delivery": rnd.randint(1, 5), "Quality": rnd.randint(1, 5),
                       "Collaboration": rnd.randint(1, 5), "Communication": rnd.randint(1, 5)}
            overall = round(sum(ratings.values()) / 4, 2)
            updated = now - timedelta(seconds=rnd.randint(0, 3_000_000))
            rows.append((i, 1 + i % managers, DEPARTMENTS[i % 6], year, rnd.choice(STATUSES),
                         json.dumps(ratings), overall, rnd.choice(GOALS), rnd.choice(COMMENTS),
                         _ts(updated), _ts(updated)))
        if len(rows) >= 100_000:
            _insert_reviews(con, rows)
            rows = []
    _insert_reviews(con, rows)
    con.commit()
    con.close()
    for ix in indexes:
        ix.create(engine)
    engine.dispose()


def _insert_reviews(con: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    con.executemany(
        "INSERT INTO reviews (employee_id, manager_id, department, fiscal_year, status, "
        "ratings, overall_rating, goals, manager_comments, submitted_at, updated_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)


def run_pa(year: int) -> tuple[float, dict[str, Any]]:
    """The real path: the route's request_close, then the consumer's execute."""
    from pa import archive, jobs, runner

    start = time.perf_counter()
    job = archive.request_close(year, None)
    runner.execute(job["id"])
    elapsed = time.perf_counter() - start
    row = jobs.load_row(job["id"])
    assert row is not None
    return elapsed, dict(row)


def run_baseline(year: int, out: Path) -> tuple[float, int]:
    """Naive: ORM objects, json.dumps per row, gzip's default level 9, commit per 100."""
    from sqlalchemy import select

    from pa import db
    from pa.models import Review, User

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    start = time.perf_counter()
    n = 0
    with db.session_scope(write=False) as session:
        ids = session.scalars(
            select(Review.id).where(Review.fiscal_year == year).order_by(Review.id)
        ).all()
    with gzip.open(out, "wt", encoding="utf-8") as f:
        for at in range(0, len(ids), 100):
            with db.session_scope() as session:
                batch = session.scalars(
                    select(Review).where(Review.id.in_(ids[at:at + 100])).order_by(Review.id)
                ).all()
                for review in batch:
                    employee = session.get(User, review.employee_id)
                    manager = session.get(User, review.manager_id) if review.manager_id else None
                    assert employee is not None
                    f.write(json.dumps({
                        "id": review.id, "employeeId": review.employee_id,
                        "employeeName": employee.name, "employeeEmail": employee.email,
                        "managerId": review.manager_id,
                        "managerName": manager.name if manager else None,
                        "department": review.department, "fiscalYear": review.fiscal_year,
                        "status": review.status, "ratings": review.ratings,
                        "overallRating": review.overall_rating, "goals": review.goals,
                        "managerComments": review.manager_comments,
                        "submittedAt": iso(review.submitted_at),
                        "updatedAt": iso(review.updated_at),
                    }) + "\n")
                    review.status = "archived"
                    review.updated_at = db.utcnow()
                    n += 1
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reviews", type=int, default=1_000_000)
    parser.add_argument("--baseline-sample", type=int, default=5_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pa-bench-archive-"))
    # pa reads its settings at first use: set them first.
    os.environ.pop("PA_REDIS_URL", None)
    os.environ.update(PA_DATABASE_URL=f"sqlite:///{tmp / 'pa.db'}",
                      PA_DATA_DIR=str(tmp / "data"),
                      PA_SECRET_KEY="bench-key-0123456789abcdef01234567")
    try:
        t = time.perf_counter()
        build(tmp / "pa.db", args.reviews, args.baseline_sample)
        size = (tmp / "pa.db").stat().st_size
        print(f"setup: {args.reviews:,} FY2025 reviews (+{args.reviews // 10:,} FY2026, "
              f"+{args.baseline_sample:,} FY2024 sample) in {time.perf_counter() - t:.1f} s, "
              f"database {size / 1e6:.0f} MB")

        from pa import archive
        from pa.tasks import archive as archive_task

        base_s, base_n = run_baseline(2024, tmp / "baseline.jsonl.gz")
        base_rate = base_n / base_s
        print(f"baseline (naive ORM, sample of {base_n:,} FY2024 reviews): {base_s:.2f} s, "
              f"{base_rate:,.0f} reviews/s -> {args.reviews:,} extrapolated: "
              f"{args.reviews / base_rate:.1f} s")

        pa_s, row = run_pa(2025)
        archived = (row["result"] or {}).get("archived")
        assert row["status"] == "completed", row["error"]
        assert archived == args.reviews, archived
        path = tmp / "data" / archive.archive_relpath(2025)
        with gzip.open(path, "rb") as f:
            lines = sum(1 for _ in f)
        assert lines == args.reviews, lines
        rate = args.reviews / pa_s
        print(f"pa archive_reviews (FY2025, request_close + runner.execute): {pa_s:.2f} s, "
              f"{rate:,.0f} reviews/s, archive {path.stat().st_size / 1e6:.1f} MB "
              f"gzip level {archive_task.GZIP_LEVEL}, {lines:,} lines")
        print(f"ratio: pa is {rate / base_rate:.1f}x the baseline's reviews/s")
        print("load average (1, 5, 15 min) at the end: "
              + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
