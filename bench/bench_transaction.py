"""The submit's transaction, two ways each, A B A B, medians of the rounds:

1. the job's INSERT in db.begin() beside a raw DB-API transaction (what
   `db.raw_begin()` was before it was removed): is the raw one worth a second
   transaction API?
2. PostgreSQL only (--postgres): submit-to-hr's UPDATE and the job's INSERT as one
   statement in autocommit (jobs.create_after) beside the four round trips of a
   transaction (BEGIN, UPDATE, INSERT, COMMIT), on the event loop's engine with
   16 concurrent tasks, as the web runs them.

    .venv/bin/python bench/bench_transaction.py [--postgres] [-n 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true",
                        help="a scratch database on 127.0.0.1:5432 (else a SQLite file)")
    parser.add_argument("-n", type=int, default=2000, help="transactions per round")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pa-bench-tx-"))
    pg = None
    if args.postgres:
        from tests.services import PostgresDatabase

        pg = PostgresDatabase()
        pg.create()
        url = pg.url
    else:
        url = f"sqlite:///{tmp / 'pa.db'}"
    os.environ.update(PA_DATABASE_URL=url, PA_DATA_DIR=str(tmp / "data"))
    from pa import db, jobs, runtime
    from pa.queue import JobType
    from pa.schema import migrate
    from pa.settings import load_settings

    runtime.configure(load_settings(env_file=None))
    migrate(db.engine())

    @contextmanager
    def raw_transaction() -> Iterator[Any]:
        # The removed raw_begin(): the pooled DB-API connection, our own BEGIN on
        # SQLite, commit through the driver; same write gate.
        with db._one_writer(True):
            pooled = db.engine().raw_connection()
            try:
                conn = pooled.dbapi_connection
                if db.is_sqlite():
                    conn.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
                try:
                    yield db._Raw(db.engine().dialect, conn)
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
            finally:
                pooled.close()

    def raw() -> None:
        with raw_transaction() as conn:
            jobs.create(conn, JobType.EMAIL_NOTIFICATION, {"kind": "bench"}, None)

    def begin() -> None:
        with db.begin() as conn:
            jobs.create(conn, JobType.EMAIL_NOTIFICATION, {"kind": "bench"}, None)

    ways: dict[str, Callable[[], None]] = {"raw transaction": raw, "db.begin()": begin}
    try:
        if pg is not None:
            submit_on_the_loop(args.n)
        for way in ways.values():
            for _ in range(200):
                way()
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for _ in range(5):
            for name, way in ways.items():
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.n):
                    way()
                figures[name].append(((time.perf_counter() - t0) / args.n * 1e6,
                                      (time.process_time() - c0) / args.n * 1e6))
        print(f"{'PostgreSQL' if pg else 'SQLite'}, {args.n} transactions x 5 rounds")
        base_cpu = statistics.median(c for _, c in figures["raw transaction"])
        for name, rows in figures.items():
            wall = statistics.median(w for w, _ in rows)
            cpu = statistics.median(c for _, c in rows)
            print(f"  {name:16} wall {wall:7.0f} µs   cpu {cpu:6.0f} µs   "
                  f"cpu / raw {cpu / base_cpu:5.2f}")
    finally:
        db.current().dispose()
        if pg is not None:
            pg.drop()


def submit_on_the_loop(n: int) -> None:
    """Part 2: create_after's one statement beside BEGIN, UPDATE, INSERT, COMMIT."""
    import asyncio

    from sqlalchemy import func, insert, select

    from pa import db, jobs, reviews
    from pa.models import Review, User
    from pa.queue import JobType

    now = db.utcnow()
    person = dict(department="S", created_at=now, updated_at=now)
    with db.begin() as conn:
        manager = conn.execute(insert(User).values(email="m@example.com", name="M",
                                                   role="manager", **person)
                               .returning(User.id)).scalar_one()
        employee = conn.execute(insert(User).values(email="e@example.com", name="E",
                                                    role="employee", manager_id=manager,
                                                    **person).returning(User.id)).scalar_one()
        rounds, tasks, per_task = 6, 16, max(1, n // 16)
        total = 2 * rounds * tasks * per_task
        conn.execute(insert(Review), [
            dict(employee_id=employee, manager_id=manager, department="S",
                 fiscal_year=1000 + i, status="manager_review", ratings={}, updated_at=now)
            for i in range(total)])
        first = conn.execute(select(func.min(Review.id))).scalar_one()
    review_ids = iter(range(first, first + total))
    change = reviews._SUBMIT_AS_MANAGER
    combined, apart = jobs._prepare_create_after(change)

    def params() -> dict[str, Any]:
        return {"review_id": next(review_ids), "now": db.utcnow(), "user_id": manager}

    def one_statement() -> Any:
        new = jobs._new_row(JobType.EMAIL_NOTIFICATION, {"kind": "bench"}, manager)
        return db.write_one(combined, {**params(), **{f"j_{k}": v for k, v in new.items()}})

    def transaction() -> Any:
        new = jobs._new_row(JobType.EMAIL_NOTIFICATION, {"kind": "bench"}, manager)
        with db.begin() as conn:
            return jobs._INSERT.first(conn, new) if apart.rowcount(conn, params()) else None

    async def run() -> None:
        await db.open_on_loop()
        figures: dict[str, list[tuple[float, float]]] = {
            "one statement": [], "BEGIN..COMMIT": []}

        async def task(way: Callable[[], Any]) -> None:
            for _ in range(per_task):
                assert await db.run_on_loop(way) is not None

        try:
            for _ in range(rounds):
                for name, way in (("one statement", one_statement),
                                  ("BEGIN..COMMIT", transaction)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    await asyncio.gather(*(task(way) for _ in range(tasks)))
                    done = tasks * per_task
                    figures[name].append(((time.perf_counter() - t0) / done * 1e6,
                                          (time.process_time() - c0) / done * 1e6))
        finally:
            await db.close_on_loop()
        print(f"PostgreSQL, submit-to-hr's writes on the event loop, {tasks} tasks, "
              f"{rounds} rounds of {tasks * per_task}")
        base_cpu = statistics.median(c for _, c in figures["BEGIN..COMMIT"])
        for name, rows in figures.items():
            cpu = statistics.median(c for _, c in rows)
            print(f"  {name:16} wall {statistics.median(w for w, _ in rows):7.0f} µs   "
                  f"cpu {cpu:6.0f} µs   cpu / transaction {cpu / base_cpu:5.2f}   "
                  f"(cpu per round: {', '.join(f'{c:.0f}' for _, c in rows)})")

    asyncio.run(run())


if __name__ == "__main__":
    main()
