"""What the operators' overview costs (issue 12): with 10,000 pending jobs in the
table (100,000 jobs in all), submits and the drain with an admin's socket open (the
web process builds the overview and pushes it to it at most once a second) beside
the same run without a socket, and with the manager's socket, which gets the same
job events without the overviews; each mode in turn, every round.

One web process (run_web.py) and one consumer (run_consumer.py -w 2) on a local
Redis and the chosen database; the 10,000 jobs are reports of a paused type, so
they stay pending (counted by every overview) while email jobs flow. Each round:
16 clients submit-to-hr as fast as answers come for 10 s, then the time until the
consumer has finished every email of the round (the drain). Also: one overview's
build time, in this process, on the same table.

Usage: .venv/bin/python bench/bench_ops.py [--db sqlite|postgres] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_spine import Consumers, answers, login, seed, setup_env, start_web  # noqa: E402
from bench.loadgen import closed_loop, post  # noqa: E402
from tests.services import free_port, wait_for  # noqa: E402

PENDING = 10_000
#: finished jobs beside them: 100,000 in the table
FINISHED = 90_000


def add_jobs(pending: int, finished: int) -> None:
    """`pending` report jobs of a paused type (they stay pending), and `finished`
    completed and failed ones over the last two hours (half in the overview's hour)."""
    import random
    import uuid
    from datetime import timedelta

    from sqlalchemy import insert

    from pa import db, ops
    from pa.models import Job

    now = db.utcnow()

    def row(status: str, ago: float, ran: float) -> dict:
        at = now - timedelta(seconds=ago)
        return dict(id=uuid.uuid4().hex, type=random.choice(TYPES), status=status,
                    priority=5, payload={}, attempts=1, max_retries=2, retry_base=0,
                    time_limit=900, version=3, cancel_requested=False,
                    created_at=at - timedelta(seconds=ran + 1), updated_at=at,
                    started_at=at - timedelta(seconds=ran) if status != "pending" else None,
                    completed_at=at if status != "pending" else None)

    rows = [dict(row("pending", 0, 0), type="generate_report") for _ in range(pending)]
    rows += [row("failed" if i % 20 == 0 else "completed", random.uniform(0, 7200),
                 random.uniform(0.1, 2)) for i in range(finished)]
    with db.begin() as conn:
        for i in range(0, len(rows), 5000):
            conn.execute(insert(Job), rows[i:i + 5000])
    ops.pause("generate_report")


TYPES = ["email_notification", "generate_report", "bulk_import", "database_backup"]


def emails_done() -> int:
    from sqlalchemy import func, select

    from pa import db
    from pa.models import Job

    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(Job).where(
            Job.type == "email_notification", Job.status == "completed")).scalar_one())


async def one_round(port: int, ids: object, manager: str, admin: str | None) -> dict:
    import websockets

    host = f"127.0.0.1:{port}"
    ops_messages = [0]
    ws = listener = None
    if admin is not None:
        ws = await websockets.connect(f"ws://{host}/ws", additional_headers={"Cookie": admin},
                                      max_queue=None)

        async def listen() -> None:
            async for raw in ws:
                if json.loads(raw).get("type") == "ops":
                    ops_messages[0] += 1

        listener = asyncio.create_task(listen())
    before = await asyncio.to_thread(emails_done)

    def make() -> bytes:
        return post(f"/api/reviews/{next(ids)}/submit-to-hr", host, manager)  # type: ignore[call-overload]

    r = await closed_loop("127.0.0.1", port, 16, 10, make)
    submitted = r.statuses.get(202, 0)
    await asyncio.to_thread(wait_for, lambda: emails_done() - before >= submitted, 300, 0.05,
                            "the drain")
    drain_s = time.perf_counter() - r.started
    if ws is not None:
        listener.cancel()  # type: ignore[union-attr]
        await ws.close()
    return {"rps": r.rate, "p99": r.pct(99), "submitted": submitted,
            "drain": submitted / drain_s, "ops": ops_messages[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pa-bench-ops-"))
    pg = None
    if args.db == "postgres":
        from tests.services import PostgresDatabase

        pg = PostgresDatabase()
        pg.create()
        database_url = pg.url
    else:
        database_url = f"sqlite:///{root / 'pa.db'}"
    redis_server = setup_env(root, database_url)
    web = None
    try:
        lo, hi = seed(120_000)  # (a review per submit: ~8,000 per mode and round)
        add_jobs(PENDING, FINISHED)
        from pa import ops

        builds = []
        for _ in range(20):
            t0 = time.perf_counter()
            ops.overview()
            builds.append((time.perf_counter() - t0) * 1000)
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"database {args.db}; {PENDING:,} pending jobs, {PENDING + FINISHED:,} in the table")
        print(f"one overview, built in this process: median {statistics.median(builds):.1f} ms, "
              f"max {max(builds):.1f} ms (20 builds)")
        port = free_port()
        env = dict(os.environ, PA_PORT=str(port))
        log = open(root / "web.log", "wb")
        web = start_web(port, env, log)
        consumers = Consumers(env, log)
        consumers.start()
        wait_for(lambda: answers(port), timeout=30, message="web to answer")
        manager, admin = login(port, "mgr@bench"), login(port, "admin@bench")
        ids = iter(range(lo, hi + 1))
        # The manager submits every job, so their socket gets the same job events as
        # an admin's, without the overviews: admin vs manager is the overview's cost.
        modes = (("no socket", None), ("manager socket (same events)", manager),
                 ("admin socket (events + overviews)", admin))
        results: dict[str, list[dict]] = {name: [] for name, _ in modes}
        try:
            for round_ in range(1, args.rounds + 1):
                for name, cookie in modes:
                    got = asyncio.run(one_round(port, ids, manager, cookie))
                    results[name].append(got)
                    print(f"round {round_}, {name}: submit {got['rps']:,.0f} req/s "
                          f"(p99 {got['p99']:.1f} ms), drain {got['drain']:,.0f} jobs/s, "
                          f"{got['submitted']:,} jobs, {got['ops']} overviews pushed",
                          flush=True)
        finally:
            consumers.stop()
        for name, runs in results.items():
            print(f"median, {name}: submit "
                  f"{statistics.median(r['rps'] for r in runs):,.0f} req/s, drain "
                  f"{statistics.median(r['drain'] for r in runs):,.0f} jobs/s")
    finally:
        if web is not None:
            web.terminate()
            web.wait(timeout=30)
        redis_server.stop()
        if pg is not None:
            from pa import db

            db.current().dispose()
            pg.drop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
