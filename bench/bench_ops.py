"""What the operators' overview costs (issue 12): with 10,000 pending jobs in the
table (100,000 jobs in all), submits and the drain with an admin's socket open (the
web process builds the overview and pushes it to it at most once a second) beside
the same run without a socket, and with the manager's socket, which gets the same
job events without the overviews. Admin against manager is the overview's own cost.

One web process (run_web.py) and one consumer (run_consumer.py -w 2) on a local
Redis and the chosen database; the 10,000 jobs are reports of a paused type, so
they stay pending (counted by every overview) while email jobs flow. Each mode:
16 clients submit-to-hr as fast as answers come for --seconds, then the time until
the consumer has finished every email of it (the drain), and the CPU the web
process and the consumer used meanwhile, per job. The modes take turns in every
order (ABC, BCA, CAB, CBA, ACB, BAC, ...): the machine drifts during a run and the
table grows, so a fixed order would charge the drift to the mode that comes last.
Also: one overview's build time, in this process, on the same table.

Usage: .venv/bin/python bench/bench_ops.py [--db sqlite|postgres] [--rounds 6] [--seconds 8]
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

from bench.bench_spine import (  # noqa: E402
    Consumers,
    answers,
    login,
    process_cpu,
    seed,
    setup_env,
    start_web,
)
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


async def one_round(port: int, ids: object, manager: str, admin: str | None,
                    seconds: float, pids: tuple[int, int]) -> dict:
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
    cpu_before = [process_cpu(pid) for pid in pids]
    db_before = postgres_cpu()
    built_before = overviews_built(port)

    def make() -> bytes:
        return post(f"/api/reviews/{next(ids)}/submit-to-hr", host, manager)  # type: ignore[call-overload]

    r = await closed_loop("127.0.0.1", port, 16, seconds, make)
    submitted = r.statuses.get(202, 0)
    await asyncio.to_thread(wait_for, lambda: emails_done() - before >= submitted, 300, 0.05,
                            "the drain")
    drain_s = time.perf_counter() - r.started
    web_cpu, consumer_cpu = (process_cpu(pid) - b for pid, b in zip(pids, cpu_before,
                                                                        strict=True))
    db_cpu = postgres_cpu() - db_before
    builds, build_s = (a - b for a, b in zip(overviews_built(port), built_before, strict=True))
    if ws is not None:
        listener.cancel()  # type: ignore[union-attr]
        await ws.close()
    return {"rps": r.rate, "p99": r.pct(99), "submitted": submitted,
            "drain": submitted / drain_s, "ops": ops_messages[0],
            "web_us": web_cpu / submitted * 1e6, "consumer_us": consumer_cpu / submitted * 1e6,
            "db_us": db_cpu / submitted * 1e6,
            "build_ms": build_s / builds * 1000 if builds else 0.0,
            "build_share": build_s / drain_s}


def postgres_cpu() -> float:
    """CPU seconds every PostgreSQL process on this machine has used so far."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += process_cpu(int(entry.name))
            except OSError:
                pass  # (it ended meanwhile)
    return total


def overviews_built(port: int) -> tuple[float, float]:
    """(overviews built, seconds they took) so far, from the web's GET /metrics."""
    import http.client

    from prometheus_client.parser import text_string_to_metric_families

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return found["pa_ops_overviews_total"], found["pa_ops_overview_seconds_total"]


#: every order of the three modes once, so that each mode is first, second and third
#: equally often over six rounds
ORDERS = ((0, 1, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0), (0, 2, 1), (1, 0, 2))


def total(run: dict) -> float:
    """The CPU per job of the web process, the consumer and PostgreSQL together."""
    return float(run["web_us"] + run["consumer_us"] + run["db_us"])


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):+.1%}, "
            f"{min(values):+.1%} to {max(values):+.1%}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="how long the clients submit in each mode")
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
        # A review per submit: up to ~1,000 submits a second in each mode and round.
        lo, hi = seed(int(args.rounds * 3 * args.seconds * 1_200))
        add_jobs(PENDING, FINISHED)
        from pa import ops

        for _ in range(3):  # (the first reads the hour's finishes and the sample)
            ops.overview()
        builds, cpu = [], []
        db_before = postgres_cpu()
        for _ in range(20):
            t0, c0 = time.perf_counter(), time.process_time()
            ops.overview()
            builds.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        db_ms = (postgres_cpu() - db_before) / 20 * 1000
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"database {args.db}; {PENDING:,} pending jobs, {PENDING + FINISHED:,} in the table")
        print(f"one overview, built in this process: median {statistics.median(builds):.1f} ms, "
              f"max {max(builds):.1f} ms (20 builds); CPU {statistics.median(cpu):.1f} ms here"
              + (f", {db_ms:.1f} ms in PostgreSQL" if pg else " (SQLite's work included)"))
        if args.rounds == 0:
            return
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
            for round_ in range(args.rounds):
                for index in ORDERS[round_ % len(ORDERS)]:
                    name, cookie = modes[index]
                    got = asyncio.run(one_round(port, ids, manager, cookie, args.seconds,
                                                (web.pid, consumers.proc.pid)))  # type: ignore[union-attr]
                    results[name].append(got)
                    print(f"round {round_ + 1}, {name}: submit {got['rps']:,.0f} req/s "
                          f"(p99 {got['p99']:.1f} ms), drain {got['drain']:,.0f} jobs/s, "
                          f"{got['submitted']:,} jobs, CPU per job: web {got['web_us']:,.0f} us, "
                          f"consumer {got['consumer_us']:,.0f} us"
                          + (f", PostgreSQL {got['db_us']:,.0f} us" if pg else "") + "; "
                          f"{got['ops']} overviews pushed"
                          + (f" ({got['build_ms']:.1f} ms each, {got['build_share']:.1%} of "
                             "the time)" if got["ops"] else ""), flush=True)
        finally:
            consumers.stop()
        for name, runs in results.items():
            print(f"median, {name}: submit "
                  f"{statistics.median(r['rps'] for r in runs):,.0f} req/s, drain "
                  f"{statistics.median(r['drain'] for r in runs):,.0f} jobs/s, CPU per job: web "
                  f"{statistics.median(r['web_us'] for r in runs):,.0f} us, consumer "
                  f"{statistics.median(r['consumer_us'] for r in runs):,.0f} us"
                  + (f", PostgreSQL {statistics.median(r['db_us'] for r in runs):,.0f} us"
                     if pg else ""))
        # Paired by round: each round ran the three modes back to back.
        names = [name for name, _ in modes]
        for a, b in ((names[2], names[1]), (names[1], names[0])):
            pairs = list(zip(results[a], results[b], strict=True))
            print(f"{a} against {b}, by round: "
                  f"submit {spread([x['rps'] / y['rps'] - 1 for x, y in pairs])}; "
                  f"drain {spread([x['drain'] / y['drain'] - 1 for x, y in pairs])}; "
                  f"web CPU per job {spread([x['web_us'] / y['web_us'] - 1 for x, y in pairs])}; "
                  f"all CPU per job {spread([total(x) / total(y) - 1 for x, y in pairs])}")
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
