"""The job spine, measured in one run against a local Redis and one web process.

1. drain rate of tracked jobs (2 worker threads) beside raw Huey running a no-op
   task with the same consumer in the same run, and the enqueue rates; three
   rounds and the median ratio (and, after part 2, one round with 2 worker
   processes, Huey's -k process, for both);
2. POST /api/reviews/{id}/submit-to-hr at a steady 200 req/s for 10 s (open loop)
   with a consumer (run_consumer.py -w 2) working beside the web process; then 32
   clients as fast as answers come (saturation), first with the consumer stopped
   (the web process's own rate and CPU per request), then with it draining on the
   same two cores;
3. completion -> WebSocket delivery latency, measured on an admin's socket.

Usage: .venv/bin/python bench/bench_spine.py [--jobs 5000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import closed_loop, open_loop, post  # noqa: E402
from tests.services import RedisServer, free_port, wait_for  # noqa: E402

PASSWORD = "bench-pass"


def setup_env(root: Path, database_url: str) -> RedisServer:
    redis_server = RedisServer(root / "redis")
    redis_server.start()
    os.environ.update(
        PA_REDIS_URL=redis_server.url,
        PA_DATABASE_URL=database_url,
        PA_DATA_DIR=str(root / "data"),
        PA_SECRET_KEY="bench-key-0123456789abcdef01234567",
    )
    os.environ.pop("PA_SMTP_URL", None)  # mail goes to the outbox: no SMTP server to load
    return redis_server


def seed(reviews: int) -> tuple[int, int]:
    """A manager with `reviews` reports, each with a review in manager_review."""
    from sqlalchemy import insert

    from pa import db
    from pa.auth_passwords import hash_password
    from pa.models import Review, User
    from pa.schema import migrate

    migrate(db.engine())  # the servers it starts refuse a database without migrations
    now = db.utcnow()
    pw = hash_password(PASSWORD)

    def user(email: str, role: str, manager_id: int | None = None) -> dict:
        return dict(email=email, name=email.split("@")[0].title(), role=role,
                    department="Engineering", manager_id=manager_id, password_hash=pw,
                    created_at=now, updated_at=now)

    with db.begin() as conn:
        conn.execute(insert(User), [user("admin@bench", "admin"), user("hr1@bench", "hr_admin"),
                                    user("hr2@bench", "hr_admin")])
        manager_id = conn.execute(insert(User).values(**user("mgr@bench", "manager"))
                                  .returning(User.id)).scalar_one()
        emp = [dict(user(f"e{i}@bench", "employee", manager_id), password_hash=None)
               for i in range(reviews)]
        for i in range(0, reviews, 5000):
            conn.execute(insert(User), emp[i:i + 5000])
        first = manager_id + 1
        rows = [dict(employee_id=first + i, manager_id=manager_id, department="Engineering",
                     fiscal_year=now.year, status="manager_review",
                     ratings={"Delivery": 4, "Quality": 3}, overall_rating=3.5,
                     goals="Goals", manager_comments="Comments", updated_at=now)
                for i in range(reviews)]
        for i in range(0, reviews, 5000):
            conn.execute(insert(Review), rows[i:i + 5000])
    with db.read() as conn:
        from sqlalchemy import func, select
        lo, hi = conn.execute(select(func.min(Review.id), func.max(Review.id))).one()
    return lo, hi


# ---------------------------------------------------------------- drain
#: what the run measured, for --json (bench/bench_all.py plots it)
figures: dict[str, list[dict[str, object]]] = {"drain": [], "sweep": [], "http": []}


def drain(n: int) -> Callable[[Sequence[tuple[int, str]]], list[str]]:
    """Set up the drain of `n` jobs; returns what runs rounds of it: (number, worker type)."""
    from huey.consumer import Consumer
    from huey.signals import SIGNAL_COMPLETE
    from sqlalchemy import func, select

    from pa import db, heartbeat, jobs
    from pa.handlers import HANDLERS
    from pa.models import Job
    from pa.queue import JobType
    from pa.worker import EmbeddedConsumer, consumer_huey

    huey = consumer_huey()

    # Shared memory, so that process workers (forked) count into it too.
    done = multiprocessing.Value("l", 0)

    @huey.task(name="bench.noop")
    def raw_noop(i: int) -> None:
        pass

    # Both drains count the same thing the same way: tasks Huey has finished
    # executing (a tracked job's row is final by then: the task commits it).
    @huey.signal(SIGNAL_COMPLETE)
    def finished(signal: str, task: object) -> None:
        with done.get_lock():
            done.value += 1

    # The tracked job's handler does nothing either: what is measured is the
    # tracking layer (claim, version bumps, commits, publishes), not a task's work.
    HANDLERS[JobType.DATABASE_BACKUP] = lambda ctx: {"name": "noop", "bytes": 0}

    # The naive tracking layer a first version would write: SQLAlchemy Core on an
    # engine of its own (default pool), two UPDATE + COMMIT and two PUBLISH per job.
    import redis
    from sqlalchemy import create_engine, insert, update

    naive_engine = create_engine(os.environ["PA_DATABASE_URL"],
                                 connect_args={"timeout": 30}
                                 if os.environ["PA_DATABASE_URL"].startswith("sqlite") else {})
    naive_bus = redis.Redis.from_url(os.environ["PA_REDIS_URL"])
    # As pa.db does for its own engine: a process worker must not use its parent's
    # connections (PostgreSQL: "prepared statement does not exist", broken sockets).
    os.register_at_fork(after_in_child=lambda: naive_engine.dispose(close=False))

    @huey.task(name="bench.naive")
    def naive_job(job_id: str) -> None:
        for status in ("processing", "completed"):
            with naive_engine.begin() as conn:
                conn.execute(update(Job).where(Job.id == job_id)
                             .values(status=status, version=Job.version + 1,
                                     updated_at=db.utcnow()))
            naive_bus.publish("bench:naive", json.dumps({"id": job_id, "status": status}))

    def naive_rows(count: int, round_: int) -> list[str]:
        now = db.utcnow()
        ids = [f"naive{round_}-{i}" for i in range(count)]
        with db.begin() as conn:
            conn.execute(insert(Job), [dict(id=i, type="database_backup", status="pending",
                                            priority=1, payload={}, attempts=0, max_retries=0,
                                            retry_base=0, time_limit=60, version=1,
                                            cancel_requested=False, created_at=now,
                                            updated_at=now) for i in ids])
        return ids

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def run_consumer(until: object, kind: str) -> tuple[float, float]:
        """Wall seconds, and CPU seconds of this process (all threads) and of its
        worker processes (counted once they have exited), to drain."""
        consumer: Consumer = EmbeddedConsumer(huey, workers=2, worker_type=kind,
                                              initial_delay=0.01, max_delay=0.1,
                                              periodic=False)
        t0, c0, k0 = time.perf_counter(), time.process_time(), children_cpu()
        consumer.start()
        wait_for(until, timeout=600, interval=0.01, message="drain")
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        consumer.stop(graceful=True)
        return elapsed, cpu + children_cpu() - k0

    def completed() -> int:
        with db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(Job)
                                    .where(Job.status == "completed")).scalar_one())

    def rounds(plan: Sequence[tuple[int, str]]) -> list[str]:
        lines = []
        ratios: list[float] = []
        for round_, kind in plan:
            huey.flush()
            done.value = 0
            t0 = time.perf_counter()
            for i in range(n):
                raw_noop(i, priority=1)
            raw_enq = n / (time.perf_counter() - t0)
            raw_s, raw_cpu = run_consumer(lambda: done.value >= n, kind)
            for job_id in naive_rows(n, round_):
                naive_job(job_id, priority=1)
            done.value = 0
            naive_s, _ = run_consumer(lambda: done.value >= n, kind)
            base = completed()
            t0 = time.perf_counter()
            for _ in range(n):
                jobs.submit(JobType.DATABASE_BACKUP, {}, None)
            tr_enq = n / (time.perf_counter() - t0)
            done.value = 0
            tr_s, tr_cpu = run_consumer(lambda: done.value >= n, kind)
            assert completed() - base == n, "every tracked job's row says completed"
            lines.append(
                f"round {round_} (2 {kind} workers): raw Huey: enqueue {raw_enq:,.0f}/s, "
                f"drain {n / raw_s:,.0f} jobs/s "
                f"({raw_cpu / n * 1e6:.0f} us CPU/job) | naive tracking: drain "
                f"{n / naive_s:,.0f} jobs/s | tracked: submit {tr_enq:,.0f}/s, drain "
                f"{n / tr_s:,.0f} jobs/s ({tr_cpu / n * 1e6:.0f} us CPU/job) | "
                f"tracked/raw drain = {raw_s / tr_s:.2f}"
            )
            print(lines[-1], flush=True)
            figures["drain"].append({"round": round_, "workers": kind, "raw": n / raw_s,
                                     "naive": n / naive_s, "tracked": n / tr_s})
            if kind == "thread":
                ratios.append(raw_s / tr_s)
        if len(ratios) > 1:
            lines.append("median tracked/raw drain with 2 thread workers: "
                         f"{statistics.median(ratios):.2f}")
            print(lines[-1], flush=True)
        heartbeat.stop()  # this process consumes no more (until the next rounds)
        return lines

    return rounds


# ---------------------------------------------------------------- HTTP + push
def login(port: int, email: str) -> str:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("POST", "/api/session", json.dumps({"email": email, "password": PASSWORD}),
              {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    cookie = r.getheader("set-cookie", "").split(";")[0]
    c.close()
    return cookie


async def http_phase(port: int, first_id: int, last_id: int, profile: bool,
                     web_pid: int, consumer: Consumers, rates: Sequence[int]) -> list[str]:
    import websockets

    manager = login(port, "mgr@bench")
    admin = login(port, "admin@bench")
    ids = iter(range(first_id, last_id + 1))
    host = f"127.0.0.1:{port}"

    def make() -> bytes:
        return post(f"/api/reviews/{next(ids)}/submit-to-hr", host, manager)

    push: list[float] = []
    ws = await websockets.connect(f"ws://{host}/ws", additional_headers={"Cookie": admin},
                                  max_queue=None)
    snapshot = json.loads(await ws.recv())
    assert snapshot["type"] == "snapshot"

    snapshots = [0]

    async def listen() -> None:
        async for raw in ws:
            now = time.time()
            msg = json.loads(raw)
            if msg.get("type") == "snapshot":
                snapshots[0] += 1  # the server found this socket too slow and resynced it
                continue
            job = msg.get("data") or {}
            if msg.get("type") == "job" and job.get("status") == "completed":
                done = datetime.fromisoformat(job["completedAt"].replace("Z", "+00:00"))
                push.append(now - done.timestamp())

    listener = asyncio.create_task(listen())
    # The load generator must not stall itself: a full collection over the heap
    # the drain phase left in this process paused it for ~100 ms, and every
    # request in flight was counted that much slower.
    gc.collect()
    gc.freeze()
    lines = []

    # The load generator's own stalls (its loop late by over 20 ms) would be
    # counted as the server's latency: they are watched and printed.
    lag: list[tuple[float, float]] = []

    async def watch() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            if (late := time.perf_counter() - t - 0.005) > 0.02:
                lag.append((t, late))

    watcher = asyncio.create_task(watch())
    # Each offered rate: 3 s of warm-up at that rate on the same connections, then
    # 10 s measured: the first fraction of a second (new connections, threads,
    # caches) is not the steady state the figure is about.
    for rate in rates:
        lag.clear()
        r = await open_loop("127.0.0.1", port, rate, 10, make, warmup=3)
        lines.append(f"submit-to-hr, open loop {rate} req/s for 10 s: {r.summary()}")
        print(lines[-1], flush=True)
        print(f"  the slowest 1% started at (s into the run: latency): {r.slowest()}",
              flush=True)
        print("  load generator's own stalls over 20 ms: "
              + (", ".join(f"{t - r.started:.2f}s:{late * 1000:.0f}ms" for t, late in lag)
                 or "none"),
              flush=True)
        figures["sweep"].append({"offered": rate, "achieved": r.rate, "p50": r.pct(50),
                                 "p90": r.pct(90), "p99": r.pct(99),
                                 "max": max(r.latencies) * 1000,
                                 "ok": r.statuses.get(202, 0), "requests": len(r.latencies)})
    watcher.cancel()
    # Saturation of the web process alone: the consumer drains gracefully and
    # stops, the jobs queue up (as they would behind consumers on other cores).
    await asyncio.to_thread(consumer.stop)
    prof = None
    if profile:
        spy = str(Path(sys.executable).parent / "py-spy")
        prof = subprocess.Popen([spy, "record", "--gil", "-d", "8", "-r", "200", "-f", "raw",
                                 "-o", "/tmp/pa-web-profile.txt", "--pid", str(web_pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu0 = process_cpu(web_pid)
    r = await closed_loop("127.0.0.1", port, 32, 10, make)
    cpu = (process_cpu(web_pid) - cpu0) / len(r.latencies) * 1000
    lines.append(f"submit-to-hr, 32 clients closed loop for 10 s, consumer stopped: "
                 f"{r.summary()}; web CPU {cpu:.2f} ms/request")
    print(lines[-1], flush=True)
    figures["http"].append({"client": "loadgen", "consumer": "stopped", "rps": r.rate,
                            "p50": r.pct(50), "p99": r.pct(99)})
    if prof:
        prof.wait()
    if shutil.which("wrk"):
        # A second, independent client (C, its own process) on the same route and
        # the same kind of request: distinct reviews, the manager's cookie.
        # Twice: as a plain client sends it, then with the load generator's exact
        # headers (Content-Type too), so that a difference between the two clients
        # is not the request's.
        for content_type in (False, True):
            first = next(ids)
            w = await asyncio.to_thread(run_wrk, port, manager, first, 32, 5, 10,
                                        content_type)
            for _ in range(w["requests"]):
                next(ids, None)
            client = "wrk, loadgen's headers" if content_type else "wrk"
            lines.append(f"submit-to-hr, {client}, 32 connections for 10 s (5 s warm-up), "
                         f"consumer stopped: {w['rps']:,.0f} req/s, p50 {w['p50']:.1f} ms, "
                         f"p99 {w['p99']:.1f} ms, non-2xx {w['non2xx']}")
            print(lines[-1], flush=True)
            figures["http"].append({"client": client, "consumer": "stopped", **w})
        # The load generator again, after wrk: what it sees then is not the order's.
        r = await closed_loop("127.0.0.1", port, 32, 10, make)
        lines.append(f"submit-to-hr, 32 clients closed loop for 10 s after wrk, consumer "
                     f"stopped: {r.summary()}")
        print(lines[-1], flush=True)
        figures["http"].append({"client": "loadgen, after wrk", "consumer": "stopped",
                                "rps": r.rate, "p50": r.pct(50), "p99": r.pct(99)})
    consumer.start()
    r = await closed_loop("127.0.0.1", port, 32, 10, make)
    lines.append(f"submit-to-hr, 32 clients closed loop for 10 s, consumer draining on the "
                 f"same cores: {r.summary()}")
    print(lines[-1], flush=True)
    figures["http"].append({"client": "loadgen", "consumer": "draining", "rps": r.rate,
                            "p50": r.pct(50), "p99": r.pct(99)})
    # Let the consumer finish the backlog so that every completion is pushed.
    await asyncio.sleep(1)
    n0 = -1
    while n0 != len(push):
        n0 = len(push)
        await asyncio.sleep(3)
    listener.cancel()
    await ws.close()
    push.sort()
    if push:
        figures["push"] = [{"jobs": len(push), "p50": push[len(push) // 2] * 1000,
                            "p99": push[int(len(push) * 0.99)] * 1000, "max": push[-1] * 1000}]
        lines.append(
            f"completion -> WebSocket push ({len(push)} jobs, {snapshots[0]} resyncs): "
            f"p50 {push[len(push) // 2] * 1000:.1f} ms, "
            f"p99 {push[int(len(push) * 0.99)] * 1000:.1f} ms, max {push[-1] * 1000:.1f} ms")
        print(lines[-1], flush=True)
    return lines


WRK_SCRIPT = """
counter = %(first)d
request = function()
  counter = counter + 1
  return wrk.format("POST", "/api/reviews/" .. counter .. "/submit-to-hr",
                    {["Cookie"] = "%(cookie)s", ["Content-Length"] = "0"%(extra)s}, "")
end
done = function(summary, latency, requests)
  io.write(string.format("PA %%d %%f %%f %%d %%d\\n", summary.requests,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status, summary.duration))
end
"""


def run_wrk(port: int, cookie: str, first: int, connections: int, warmup: float,
            seconds: float, content_type: bool = False) -> dict[str, float]:
    """wrk (one thread, so that every request names a review of its own) on
    submit-to-hr: a warm-up run, then the measured one on the reviews after it.
    content_type=True sends the load generator's exact headers."""
    extra = ', ["Content-Type"] = "application/json"' if content_type else ""
    script = Path(tempfile.mkdtemp(prefix="pa-wrk-")) / "submit.lua"
    total = 0
    out: dict[str, float] = {}
    for length in (warmup, seconds):
        script.write_text(WRK_SCRIPT % {"first": first + total, "cookie": cookie,
                                        "extra": extra})
        proc = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{length:.0f}s",
                               "-s", str(script), f"http://127.0.0.1:{port}"],
                              capture_output=True, text=True, check=True)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("PA "))
        requests, p50, p99, non2xx, micros = line.split()[1:]
        # Requests still in flight when wrk stopped used reviews too: skip past them.
        total += int(requests) + 2 * connections
        out = {"requests": int(requests), "rps": int(requests) / (int(micros) / 1e6),
               "p50": float(p50), "p99": float(p99), "non2xx": int(non2xx)}
    out["requests"] = total
    return out


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Consumers:
    """run_consumer.py -w 2 in a subprocess, stopped the way operators stop it (SIGINT)."""

    def __init__(self, env: dict[str, str], log: object) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "run_consumer.py", "-w", "2"], cwd=ROOT,
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
            self.proc = None


def start_web(port: int, env: dict[str, str], log: object) -> subprocess.Popen[bytes]:
    """run_web.py on `port` (the caller waits for answers())."""
    return subprocess.Popen([sys.executable, "run_web.py"], cwd=ROOT,
                            env=dict(env, PA_PORT=str(port)), stdout=log,
                            stderr=subprocess.STDOUT)


def answers(port: int) -> bool:
    """Whether the web process on `port` answers /healthz with 200."""
    import http.client
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/healthz")
        return c.getresponse().status == 200
    except OSError:
        return False


def top_frames(path: str, n: int = 15) -> str:
    """Self time per function from a py-spy raw (collapsed stacks) file."""
    totals: dict[str, int] = {}
    all_ = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        totals[leaf] = totals.get(leaf, 0) + int(count)
        all_ += int(count)
    rows = sorted(totals.items(), key=lambda kv: -kv[1])[:n]
    return "\n".join(f"  {100 * c / all_:5.1f}%  {name}" for name, c in rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rates", default="200",
                        help="offered loads of the open-loop phase, req/s (e.g. 100,200,400,800)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--only", choices=["drain", "http"],
                        help="one part only (for a quick A/B of one path)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pa-bench-"))
    pg = None
    if args.db == "postgres":
        from tests.services import PostgresDatabase

        pg = PostgresDatabase()
        pg.create()
        database_url = pg.url
    else:
        database_url = f"sqlite:///{root / 'pa.db'}"
    redis_server = setup_env(root, database_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        lo, hi = seed(80_000)
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"database {args.db}; redis {redis_server.url}")
        # The goal is about threads: three rounds (raw Huey's rate alone varies by
        # half between rounds here) and their median. One round with process
        # workers (run_consumer.py -k process) comes after the HTTP phase: in four
        # of six runs where it came before, the web's saturation rate was 640-840
        # req/s against 970-1,310 without it (cause not found).
        rounds = drain(args.jobs)
        lines = [] if args.only == "http" else rounds([(1, "thread"), (2, "thread"),
                                                       (3, "thread")])
        if args.only == "drain":
            return
        port = free_port()
        env = dict(os.environ, PA_PORT=str(port))
        log = open(root / "web.log", "wb")
        web = start_web(port, env, log)
        procs.append(web)
        consumers = Consumers(env, log)
        consumers.start()
        wait_for(lambda: answers(port), timeout=30, message="web to answer")
        try:
            rates = [int(r) for r in args.rates.split(",")]
            lines += asyncio.run(http_phase(port, lo, hi, args.profile, web.pid, consumers,
                                            rates))
        finally:
            consumers.stop()
        if args.only is None:
            lines += rounds([(4, "process")])
        if args.json:
            args.json.write_text(json.dumps({"db": args.db, "jobs": args.jobs,
                                             "lines": lines, **figures}, indent=1))
        if args.profile:
            print("web process, self time during saturation (py-spy):")
            print(top_frames("/tmp/pa-web-profile.txt"))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
        redis_server.stop()
        if pg is not None:
            from pa import db

            db.current().dispose()
            pg.drop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
