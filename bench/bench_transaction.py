"""A submit's transaction (the job's INSERT), in db.begin() beside a raw DB-API
transaction (what `db.raw_begin()` was before it was removed): is the raw one
worth a second transaction API?

    .venv/bin/python bench/bench_transaction.py [--postgres] [-n 2000]

Prints wall and CPU µs per transaction, medians of five rounds, A B A B.
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
        db.engine().dispose()
        if pg is not None:
            pg.drop()


if __name__ == "__main__":
    main()
