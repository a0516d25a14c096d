"""Bulk import of 100,000 users: the real job beside a naive ORM baseline.

    .venv/bin/python bench/bench_import.py [--rows 100000] [--existing 0.1] [--postgres]

Writes a CSV of `rows` users in a temporary folder: a hierarchy (one head, directors,
managers, employees) in shuffled order, so many managers come after their reports,
and about 3 % invalid lines (bad email, unknown role, empty name, unknown manager,
duplicate). A share of the emails (`existing`) is in the database beforehand, some
with capitals, so the import both creates and updates.

pa: the real path in embedded mode (PA_REDIS_URL unset): `pa.jobs.submit` and an
in-process consumer (`pa.worker.start_embedded`), timed from submit to `completed`.
Baseline, on a copy of the same database: the same checks (pa.imports), then one
ORM SELECT and INSERT or UPDATE per row with a commit per 1,000, then one SELECT
and UPDATE per row to link managers. Both databases must end with the same users.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEPARTMENTS = ["Engineering", "Sales", "Marketing", "Finance", "Support", "Operations",
               "Legal", "People", "Product", "Design"]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
HEADER = "email,name,role,department,manager_email\n"


def make_csv(path: Path, rows: int, seed: int = 11) -> tuple[list[str], int]:
    """The CSV; returns the emails of valid lines and how many lines are invalid."""
    rng = random.Random(seed)
    directors = max(1, rows // 2000)
    managers = max(1, rows // 25)
    people: list[tuple[str, str, str, str, str]] = [
        ("head@example.com", "Head Of Everything", "admin", "Board", "")]
    for i in range(directors):
        people.append((f"director{i}@example.com", f"Director {i}", "manager",
                       DEPARTMENTS[i % 10], "head@example.com"))
    for i in range(managers):
        people.append((f"manager{i}@example.com", f"Manager {i}", "manager",
                       DEPARTMENTS[i % 10], f"director{i % directors}@example.com"))
    while len(people) < rows:
        i = len(people)
        people.append((f"employee{i}@example.com", f"Employee {i}",
                       rng.choice(["employee", "employee", "employee", "hr_admin"]),
                       DEPARTMENTS[i % 10], f"manager{rng.randrange(managers)}@example.com"))
    head, rest = people[0], people[1:]
    rng.shuffle(rest)
    lines: list[tuple[str, str, str, str, str]] = [head, *rest]
    # ~3 % invalid, on employees only (nobody reports to them: no cascades)
    targets = rng.sample([i for i, p in enumerate(lines) if p[0].startswith("employee")],
                         len(lines) * 3 // 100)
    for n, i in enumerate(targets):
        email, name, role, dept, manager = lines[i]
        kind = n % 5
        if kind == 0:
            lines[i] = (email.replace("@", "@@"), name, role, dept, manager)
        elif kind == 1:
            lines[i] = (email, name, "boss", dept, manager)
        elif kind == 2:
            lines[i] = (email, "", role, dept, manager)
        elif kind == 3:
            lines[i] = (email, name, role, dept, f"ghost{i}@example.com")
        else:
            lines.append((email.upper(), name, role, dept, manager))  # a later duplicate
    invalid = len(targets)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(HEADER)
        for row in lines:
            f.write(",".join(row) + "\n")
    return [p[0] for p in people], invalid


def setup_env(tmp: Path, postgres: bool) -> tuple[str, str]:
    """Two empty databases (pa's, the baseline's); PA_* set before pa is imported."""
    if postgres:
        import psycopg

        names = [f"pa_bench_import_{uuid.uuid4().hex[:8]}" for _ in range(2)]
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}"')
        urls = [f"postgresql+psycopg://postgres@127.0.0.1:5432/{n}" for n in names]
    else:
        urls = [f"sqlite:///{tmp / 'pa.db'}", f"sqlite:///{tmp / 'baseline.db'}"]
    os.environ.pop("PA_REDIS_URL", None)
    os.environ.update(PA_DATABASE_URL=urls[0], PA_DATA_DIR=str(tmp / "data"),
                      PA_SECRET_KEY="bench-key-0123456789abcdef01234567", PA_REAPER_INTERVAL="3600")
    return urls[0], urls[1]


def seed_existing(engine: Any, emails: list[str], share: float) -> int:
    """Some of the file's users exist already (a tenth of them with capitals)."""
    from sqlalchemy import insert

    from pa import db
    from pa.models import Base, User

    Base.metadata.create_all(engine)
    rng = random.Random(5)
    now = db.utcnow()
    chosen = rng.sample(emails, int(len(emails) * share))
    rows = [{"email": e.capitalize() if i % 10 == 0 else e, "name": "Old name",
             "role": "employee", "department": None, "created_at": now, "updated_at": now}
            for i, e in enumerate(chosen)]
    with engine.begin() as conn:
        for i in range(0, len(rows), 5000):
            conn.execute(insert(User), rows[i:i + 5000])
    return len(rows)


def run_job(csv_path: Path) -> tuple[float, float, dict[str, Any]]:
    from pa import imports, jobs
    from pa.queue import JobType
    from pa.settings import settings
    from pa.worker import start_embedded, stop_embedded

    uploads = settings.data_dir / imports.UPLOADS_DIR
    uploads.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.csv"
    shutil.copy(csv_path, uploads / name)
    consumer, maintenance = start_embedded(workers=1)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        job = jobs.submit(JobType.BULK_IMPORT,
                          {"path": f"{imports.UPLOADS_DIR}/{name}", "filename": "bench.csv"},
                          None)
        while True:
            row = jobs.load_row(job["id"])
            assert row is not None
            if row["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.01)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        stop_embedded(consumer, maintenance)
    done = jobs.job_to_dict(row)
    assert done["status"] == "completed", done["error"]
    return elapsed, cpu, done


def run_baseline(engine: Any, csv_path: Path) -> tuple[float, float, dict[str, int]]:
    """The same checks, then one ORM round trip per row (and per link)."""
    from sqlalchemy import func, select, update
    from sqlalchemy.orm import Session

    from pa import db, imports
    from pa.models import User

    start, cpu = time.perf_counter(), time.process_time()
    with Session(engine) as session:
        session.execute(update(User).where(User.email != func.lower(User.email))
                        .values(email=func.lower(User.email)))
        session.commit()
    plan = imports.Plan()
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        cols, width, records = imports.data_records(f)
        for line, fields in records:
            plan.add(line, fields, cols, width)

    def lookup(emails: Any) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        with Session(engine) as session:
            for email in emails:
                user = session.scalars(
                    select(User).where(User.email == email)).first()
                if user is not None:
                    boss = session.get(User, user.manager_id) if user.manager_id else None
                    found[email] = boss.email.lower() if boss else None
        return found

    imports.resolve_managers(plan, lookup)
    counts = {"created": 0, "updated": 0}
    with Session(engine) as session:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            cols, _width, records = imports.data_records(f)
            for n, row in enumerate(imports.rows_to_import(
                    records, cols, plan, lambda line: True), 1):
                now = db.utcnow()
                user = session.scalars(
                    select(User).where(User.email == row.email)).first()
                if user is None:
                    session.add(User(email=row.email, name=row.name, role=row.role,
                                     department=row.department, created_at=now,
                                     updated_at=now))
                    counts["created"] += 1
                else:
                    user.name, user.role = row.name, row.role
                    user.department, user.updated_at = row.department, now
                    counts["updated"] += 1
                if n % 1000 == 0:
                    session.commit()
        session.commit()
        for n, (email, manager) in enumerate(plan.manager_of.items(), 1):
            user = session.scalars(select(User).where(User.email == email)).one()
            boss = (session.scalars(select(User).where(User.email == manager))
                    .first() if manager else None)
            user.manager_id = boss.id if boss else None
            if n % 1000 == 0:
                session.commit()
        session.commit()
    return time.perf_counter() - start, time.process_time() - cpu, counts


def snapshot(engine: Any) -> set[tuple[Any, ...]]:
    from sqlalchemy import select
    from sqlalchemy.orm import aliased

    from pa.models import User

    boss = aliased(User)
    with engine.connect() as conn:
        rows = conn.execute(select(User.email, User.name, User.role, User.department,
                                   boss.email).outerjoin(boss, boss.id == User.manager_id))
        # Emails compared lowercased: the job leaves the stored case of users whose
        # line it rejects; the baseline lowercased every stored email first.
        return {(r[0].lower(), *r[1:]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--existing", type=float, default=0.1)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pa-bench-import-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    pa_url, base_url = setup_env(tmp, args.postgres)
    from pa import db

    base_engine = db.make_engine(base_url)
    try:
        compare(args, tmp, db.engine(), base_engine)
    finally:
        db.current().dispose()
        base_engine.dispose()
        if args.postgres:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                for url in (pa_url, base_url):
                    name = url.rsplit("/", 1)[1]
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def compare(args: argparse.Namespace, tmp: Path, engine: Any, base_engine: Any) -> None:
    csv_path = tmp / "users.csv"
    emails, invalid = make_csv(csv_path, args.rows)
    existing = seed_existing(engine, emails, args.existing)
    seed_existing(base_engine, emails, args.existing)
    size = csv_path.stat().st_size
    dialect = engine.dialect.name
    print(f"{args.rows:,} users, {invalid:,} invalid lines, {existing:,} already in the "
          f"database; {size / 1e6:.1f} MB CSV; {dialect} "
          f"{sqlite3.sqlite_version if dialect == 'sqlite' else ''}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    elapsed, cpu, job = run_job(csv_path)
    result = job["result"]
    ran = _seconds(job["startedAt"], job["completedAt"])
    print(f"pa job      {elapsed:7.2f} s  {args.rows / elapsed:9,.0f} rows/s  CPU {cpu:6.2f} s  "
          f"(handler {ran:.2f} s; created {result['created']:,}, updated "
          f"{result['updated']:,}, rejected {result['rejected']:,})")

    base_elapsed, base_cpu, counts = run_baseline(base_engine, csv_path)
    print(f"baseline    {base_elapsed:7.2f} s  {args.rows / base_elapsed:9,.0f} rows/s  "
          f"CPU {base_cpu:6.2f} s  (created {counts['created']:,}, "
          f"updated {counts['updated']:,})")
    print(f"ratio       {base_elapsed / elapsed:7.1f} x faster than the baseline "
          f"({base_cpu / cpu:.1f} x less CPU); load average now "
          f"{os.getloadavg()[0]:.1f}")
    same = snapshot(engine) == snapshot(base_engine)
    print(f"same users in both databases: {same}")
    if not same or (counts["created"], counts["updated"]) != (result["created"],
                                                              result["updated"]):
        raise SystemExit("the job and the baseline disagree")


def _seconds(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


if __name__ == "__main__":
    main()
