"""One reaper run with a large backlog: the index of queued jobs beside reading the queue.

    .venv/bin/python bench/bench_reaper.py [--jobs 10000 100000] [--postgres]

For each size: that many pending jobs, committed an hour ago and queued as a submit
queues them (a redis-server of its own, a fresh database). Timed, best of 3:
- old reap: what the reaper did before the index, on every run: select every pending
  job past the grace, then read and unpickle the queue and the schedule to see which
  are queued (huey.pending() + huey.scheduled());
- full check: `reap()` as a consumer runs it every 30 s (and after Redis lost its
  data): the same selection, then Redis answers through the index which are missing;
- between: `reap()` on the runs between, which look only at jobs that outgrew the
  grace since the run before (none here);
- and the two ways of telling which jobs are queued, alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import PostgresDatabase, RedisServer  # noqa: E402


def best_of(fn: Callable[[], Any], runs: int = 3) -> tuple[float, Any]:
    """The fastest of `runs` calls, in seconds, and the last answer."""
    best, answer = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        answer = fn()
        best = min(best, time.perf_counter() - start)
    return best, answer


def fill(n: int) -> list[str]:
    """`n` pending email jobs, committed, then queued with their index entries."""
    from sqlalchemy import delete, insert

    from pa import db
    from pa.models import Job
    from pa.queue import add_commands, huey

    queue = huey()

    with db.begin() as conn:
        conn.execute(delete(Job))
    queue.storage.conn.flushall()
    now = db.utcnow() - timedelta(hours=1)
    ids = [uuid.uuid4().hex for _ in range(n)]
    rows = [{"id": i, "type": "email_notification", "status": "pending", "priority": 10,
             "payload": {"kind": "review_submitted", "reviewId": 1}, "attempts": 0,
             "max_retries": 5, "retry_base": 0, "time_limit": 120,
             "cancel_requested": False, "version": 1, "created_at": now,
             "updated_at": now} for i in ids]
    with db.begin() as conn:
        for start in range(0, n, 5000):
            conn.execute(insert(Job), rows[start:start + 5000])
    storage: Any = queue.storage
    pipe = storage.conn.pipeline(transaction=False)
    for job_id in ids:
        data = queue.serialize_task(queue.run_job.s(job_id, id=job_id, priority=10))
        add_commands(pipe, storage.queue_key, job_id, data, 10)
    pipe.execute()
    return ids


def measure(n: int) -> None:
    """Fill the queue with `n` jobs, time the ways, print one line."""
    from sqlalchemy import func, select

    from pa import db
    from pa.models import Job
    from pa.queue import huey, missing_from_queue, queued_job_ids

    queue = huey()
    from pa.settings import settings
    from pa.worker import FULL_CHECK_KEY, reap

    ids = fill(n)
    client = queue.storage.conn

    def full_check() -> dict[str, int]:
        client.delete(FULL_CHECK_KEY)
        return reap(lock=False)

    def old_reap() -> set[str]:
        with db.read() as conn:
            rows = conn.execute(select(Job.id, Job.priority).where(
                Job.status == "pending",
                func.coalesce(Job.run_after, Job.updated_at)
                < db.utcnow() - timedelta(seconds=settings.reaper_interval),
            )).all()
        return {r.id for r in rows} - queued_job_ids(queue)

    old_s, lost = best_of(old_reap)
    assert lost == set()
    full_s, counts = best_of(full_check)
    assert counts["reenqueued"] == 0, counts
    between_s, counts = best_of(lambda: reap(lock=False))
    assert counts["reenqueued"] == 0, counts
    index_s, missing = best_of(lambda: missing_from_queue(queue, ids))
    assert missing == []
    read_s, queued = best_of(lambda: set(ids) - queued_job_ids(queue))
    assert queued == set()
    print(f"{n:>8,} | {old_s * 1000:>5.0f} ms | {full_s * 1000:>7.0f} ms "
          f"({old_s / full_s:.1f}x) | {between_s * 1000:>5.1f} ms "
          f"({old_s / between_s:.0f}x) | {index_s * 1000:>5.0f} ms "
          f"| {read_s * 1000:>5.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pa-bench-reaper-"))
    redis_server = RedisServer(tmp / "redis")
    redis_server.start()
    pg = PostgresDatabase() if args.postgres else None
    if pg is not None:
        pg.create()
    os.environ.update(
        PA_DATABASE_URL=pg.url if pg else f"sqlite:///{tmp / 'pa.db'}",
        PA_REDIS_URL=redis_server.url, PA_DATA_DIR=str(tmp / "data"),
        PA_SECRET_KEY="bench-key-0123456789abcdef01234567",
    )
    try:
        from pa import db
        from pa.models import create_schema

        create_schema(db.engine())
        version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                 text=True).stdout.split()[2]
        print(f"database: {'PostgreSQL' if pg else 'SQLite'}; redis {version}")
        print("pending  | old reap | full check (gain) | between (gain) | index alone "
              "| queue read alone")
        for n in args.jobs:
            measure(n)
    finally:
        if pg is not None:
            from pa import db

            db.current().dispose()
            pg.drop()
        redis_server.stop()


if __name__ == "__main__":
    main()
