"""Multi-year analytics over 1,000,000 reviews: SQL aggregation against a naive baseline.

    .venv/bin/python bench/bench_analytics.py [--employees 100000] [--years 10] [--postgres]

Fills a temporary SQLite database (and with --postgres then a temporary PostgreSQL
database on 127.0.0.1:5432) with `employees` × `years` reviews, then times, in the
same run, over the whole range and with a department filter:
- `count_reviews()`: what a request for a range without a cache entry costs;
- `fingerprint()`: what a request for a range with a cache entry costs (is it fresh?);
- `figures()`: the SQL aggregation;
- `compute()`: what the job does (fingerprint, figures, cache upsert);
- a naive baseline: load the same rows into Python and aggregate them in loops.
The baseline's figures are checked against the SQL ones, so the bench is also a test
of the aggregation on a million rows.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEPARTMENTS = ["Engineering", "Sales", "Marketing", "Finance", "Support", "Operations",
               "Legal", "People", "Product", "Design", "Research", "Security"]
CRITERIA = ["Delivery", "Collaboration", "Ownership", "Craft"]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _rows(employees: int, years: int, last_year: int) -> tuple[list[tuple[Any, ...]],
                                                                 list[tuple[Any, ...]]]:
    """Users and reviews as tuples, reproducibly (seeded)."""
    rng = random.Random(7)
    stamp = "2026-11-29 12:00:00.000000"
    users = [(i, f"user{i}@example.com", f"Employee {i}", "employee",
              DEPARTMENTS[i % len(DEPARTMENTS)], None, None, stamp, stamp)
             for i in range(1, employees + 1)]
    statuses = ["draft", "self_review", "manager_review", "submitted_to_hr", "completed"]
    reviews: list[tuple[Any, ...]] = []
    rid = 0
    first_year = last_year - years + 1
    for year in range(first_year, last_year + 1):
        for emp in range(1, employees + 1):
            rid += 1
            dept = DEPARTMENTS[(emp + (year if emp % 17 == 0 else 0)) % len(DEPARTMENTS)]
            if year == last_year:
                status = statuses[rng.randrange(5)]
            elif year >= last_year - 2:
                status = "completed"
            else:
                status = "archived"
            scores = {c: rng.randint(1, 5) for c in CRITERIA}
            overall = round(sum(scores.values()) / len(scores) + rng.choice((-0.1, 0, 0.1)), 1)
            overall = min(5.0, max(1.0, overall))
            rating = None if status == "draft" and rng.random() < 0.5 else overall
            ratings = "{" + ", ".join(f'"{c}": {v}' for c, v in scores.items()) + "}"
            reviews.append((
                rid, emp, None, dept, year, status, ratings, rating,
                "Grow the team's test coverage and mentor two new engineers.",
                "Solid year with clear ownership of the billing migration.",
                stamp if status != "draft" else None, stamp,
            ))
    return users, reviews


USER_COLS = ("id, email, name, role, department, manager_id, password_hash, created_at, "
             "updated_at")
REVIEW_COLS = ("id, employee_id, manager_id, department, fiscal_year, status, ratings, "
               "overall_rating, goals, manager_comments, submitted_at, updated_at")


def fill_sqlite(path: Path, users: list[tuple[Any, ...]], reviews: list[tuple[Any, ...]]) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    with con:
        con.executemany(f"INSERT INTO users ({USER_COLS}) VALUES ({','.join('?' * 9)})", users)
        con.executemany(f"INSERT INTO reviews ({REVIEW_COLS}) VALUES ({','.join('?' * 12)})",
                        reviews)
    con.execute("ANALYZE")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def fill_postgres(url: str, users: list[tuple[Any, ...]], reviews: list[tuple[Any, ...]]) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        with con.cursor() as cur:
            with cur.copy(f"COPY users ({USER_COLS}) FROM STDIN") as copy:
                for row in users:
                    copy.write_row(row)
            with cur.copy(f"COPY reviews ({REVIEW_COLS}) FROM STDIN") as copy:
                for row in reviews:
                    copy.write_row(row)
        con.commit()
        con.autocommit = True
        con.execute("VACUUM ANALYZE users")
        con.execute("VACUUM ANALYZE reviews")


def naive(engine: Any, scope: Any) -> dict[str, Any]:
    """The baseline: every row into Python, then loops (same rules as pa.analytics)."""
    from sqlalchemy import select

    from pa.analytics import DONE_STATUSES, MOVERS, RATED_STATUSES, reviews
    from pa.models import User

    stmt = select(reviews.c.employee_id, reviews.c.fiscal_year, reviews.c.department,
                  reviews.c.status, reviews.c.overall_rating).where(
        reviews.c.fiscal_year.between(scope.from_year, scope.to_year))
    if scope.department is not None:
        stmt = stmt.where(reviews.c.department == scope.department)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
        names = dict(conn.execute(select(User.id, User.name)).all())

    def blank() -> dict[str, Any]:
        return {"n": 0, "done": 0, "rated": 0, "sum": 0.0, "dist": [0] * 5}

    years: dict[int, dict[str, Any]] = {y: blank() for y in range(scope.from_year,
                                                                   scope.to_year + 1)}
    depts: dict[Any, dict[str, Any]] = {}
    first: dict[int, float] = {}
    last: dict[int, tuple[float, Any]] = {}
    for emp, year, dept, status, rating in rows:
        for t in (years[year], depts.setdefault(dept, blank())):
            t["n"] += 1
            t["done"] += status in DONE_STATUSES
            if status in RATED_STATUSES and rating is not None:
                t["rated"] += 1
                t["sum"] += rating
                bucket = 1 if rating < 1.5 else 2 if rating < 2.5 else 3 if rating < 3.5 \
                    else 4 if rating < 4.5 else 5
                t["dist"][bucket - 1] += 1
        if status in RATED_STATUSES and rating is not None:
            if year == scope.from_year:
                first[emp] = rating
            if year == scope.to_year:
                last[emp] = (rating, dept)
    movers = []
    if scope.from_year != scope.to_year:
        for emp, before in first.items():
            if emp in last:
                movers.append((last[emp][0] - before, emp, before, last[emp]))
    up = sorted((m for m in movers if m[0] > 0), key=lambda m: (-m[0], m[1]))[:MOVERS]
    down = sorted((m for m in movers if m[0] < 0), key=lambda m: (m[0], m[1]))[:MOVERS]

    def avg(t: dict[str, Any]) -> float | None:
        return round(t["sum"] / t["rated"], 2) if t["rated"] else None

    def mover(m: Any) -> dict[str, Any]:
        change, emp, before, (after, dept) = m
        return {"employeeId": emp, "name": names.get(emp), "department": dept,
                "fromRating": before, "toRating": after, "change": round(change, 2)}

    return {
        "reviews": sum(t["n"] for t in years.values()),
        "years": [{"year": y, "reviews": t["n"], "averageRating": avg(t),
                   "distribution": {str(i + 1): c for i, c in enumerate(t["dist"])},
                   "completed": t["done"]} for y, t in sorted(years.items())],
        "departments": {d: (t["n"], avg(t)) for d, t in depts.items()},
        "movers": {"up": [mover(m) for m in up], "down": [mover(m) for m in down]},
    }


def check_same(sql: dict[str, Any], loops: dict[str, Any]) -> None:
    assert sql["reviews"] == loops["reviews"], (sql["reviews"], loops["reviews"])
    for a, b in zip(sql["years"], loops["years"], strict=True):
        for k in ("year", "reviews", "averageRating", "distribution", "completed"):
            assert a[k] == b[k], (k, a[k], b[k])
    assert {d["department"]: (d["reviews"], d["averageRating"])
            for d in sql["departments"]} == loops["departments"]
    assert sql["movers"] == loops["movers"], (sql["movers"], loops["movers"])


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float, Any]:
    """Median wall and CPU seconds (this process) of `runs` calls, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def bench(runs: int, last_year: int, years: int) -> None:
    from pa import analytics, db

    engine = db.engine()
    name = "SQLite " + sqlite3.sqlite_version if engine.dialect.name == "sqlite" \
        else "PostgreSQL"
    # On SQLite the work is done in this process, so CPU time is the cost undisturbed by
    # other load on the machine; on PostgreSQL it is done by the server: wall time only.
    cpu_too = engine.dialect.name == "sqlite"
    print(f"\n## {name}: median of {runs} runs (naive: of {max(1, runs // 2)}), seconds"
          + (" wall (CPU)" if cpu_too else " wall"))

    def fmt(wall: float, cpu: float) -> str:
        return f"{wall:6.3f} ({cpu:5.3f})" if cpu_too else f"{wall:6.3f}"

    first = last_year - years + 1
    for label, scope in (("all departments", analytics.Scope(first, last_year)),
                         ("department=Engineering",
                          analytics.Scope(first, last_year, "Engineering"))):

        def count(scope: analytics.Scope = scope) -> int:
            with db.read() as conn:
                return analytics.count_reviews(conn, scope)

        def stamp(scope: analytics.Scope = scope) -> analytics.Fingerprint:
            with db.read() as conn:
                return analytics.fingerprint(conn, scope)

        def sql(scope: analytics.Scope = scope) -> dict[str, Any]:
            with db.read() as conn:
                return analytics.figures(conn, scope)

        def job(scope: analytics.Scope = scope) -> dict[str, Any]:
            return analytics.compute(scope)

        def loops(scope: analytics.Scope = scope) -> dict[str, Any]:
            return naive(engine, scope)

        t_count = timed(count, runs)
        t_stamp = timed(stamp, runs)
        t_sql = timed(sql, runs)
        t_job = timed(job, runs)
        t_naive = timed(loops, max(1, runs // 2))
        check_same(t_sql[2], t_naive[2])
        print(f"{label} ({t_stamp[2].reviews:,} reviews, {first}-{last_year}):")
        print(f"  count (request, no cache entry)      {fmt(*t_count[:2])}")
        print(f"  fingerprint (request, cache entry)   {fmt(*t_stamp[:2])}")
        print(f"  SQL figures                          {fmt(*t_sql[:2])}")
        print(f"  job: fingerprint + figures + cache   {fmt(*t_job[:2])}")
        print(f"  naive: rows into Python + loops      {fmt(*t_naive[:2])}")
        print(f"  naive / SQL figures = {t_naive[0] / t_sql[0]:.1f}x wall"
              + (f", {t_naive[1] / t_sql[1]:.1f}x CPU" if cpu_too else "")
              + "; figures identical")


def run(args: argparse.Namespace) -> None:
    last_year = 2026
    tmp = Path(tempfile.mkdtemp(prefix="pa-bench-analytics-"))
    pg_name = f"pa_bench_{uuid.uuid4().hex[:8]}"
    postgres = args.db == "postgres"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}" if postgres \
        else f"sqlite:///{tmp / 'pa.db'}"
    # pa reads its settings once, at import: point it at the temporary database first.
    os.environ["PA_DATABASE_URL"] = url
    os.environ["PA_DATA_DIR"] = str(tmp / "data")
    os.environ.pop("PA_REDIS_URL", None)
    try:
        start = time.perf_counter()
        users, reviews = _rows(args.employees, args.years, last_year)
        print(f"[{args.db}] generated {len(reviews):,} reviews of {len(users):,} employees "
              f"over {args.years} years in {time.perf_counter() - start:.1f} s")
        if postgres:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as con:
                con.execute(f'CREATE DATABASE "{pg_name}"')
        from pa import db
        from pa.models import Base

        Base.metadata.create_all(db.engine())
        start = time.perf_counter()
        if postgres:
            fill_postgres(url, users, reviews)
        else:
            fill_sqlite(tmp / "pa.db", users, reviews)
        print(f"[{args.db}] loaded (with indexes, ANALYZE) in "
              f"{time.perf_counter() - start:.1f} s")
        del users, reviews
        bench(args.runs, last_year, args.years)
    finally:
        if postgres:
            from pa import db

            db.current().dispose()
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as con:
                con.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--employees", type=int, default=100_000)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--postgres", action="store_true",
                        help="after SQLite, the same on a temporary PostgreSQL database")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    run(args)
    if args.postgres and args.db == "sqlite":
        # A process of its own: pa's engine is made once, from the environment.
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--db", "postgres", "--employees",
                        str(args.employees), "--years", str(args.years), "--runs",
                        str(args.runs)], check=True)


if __name__ == "__main__":
    main()
