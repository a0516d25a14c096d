"""The chaos run (issue 13): jobs under load while faults come one after another, then
a check that nothing was lost, repeated or left half-written.

Two web processes (A serves the sockets and the JSON submits, B the CSV uploads)
and two consumers (`-w 2`, pa's default recovery settings) on a redis-server of the
run's own, a database of its own on the machine's PostgreSQL, an aiosmtpd server,
and a data folder on a tmpfs of its own. Four clients submit all along: reviews to HR
(an email job each, one mail to each of two HR admins), PDF reports (HR), user
imports (an admin's CSV uploads, through B) and backups (admin). Sockets on A of the
manager, of an HR admin and of the admin watch their jobs. The faults, in turn:

  consumer-kill  a consumer SIGKILLed every 3 s, ten times (a fresh one started each time)
  redis          redis-server stopped for 20 s, then started empty
  postgres       PostgreSQL restarted (pg_ctlcluster; every connection drops)
  smtp           the SMTP server away for 60 s (connections refused)
  disk-full      the data folder full (a ballast file) for 30 s while reports are written
  web-kill       web process B SIGKILLed during uploads, started again

For each fault: jobs in flight when it began, jobs accepted until it ended, the jobs
still unfinished at its end, and two times from its end: until each of those was
queued again (a retry put off by its delay is queued when Huey holds it scheduled),
running or done (DESIGN.md's recovery times), and until every job accepted before its
end was final (the backlog included). Then, for all of them: every job that got a 202
is final; lost (not final),
duplicated (a mail delivered twice, an import's users twice), failed; every mail of a
completed email job arrived once; every completed report is a whole PDF; no temporary
or orphaned file is left in the data folder; each socket saw every job of its user end.

Needs root (tmpfs, pg_ctlcluster). Usage: .venv/bin/python bench/chaos.py [--only F,...]
[--kills 10] [--redis-down 20] [--smtp-down 60] [--disk-full 30] [--fast]
(tests/test_chaos.py runs a short form of it in the PostgreSQL pass of `make test`.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.processes import ConsumerProcess, WebProcess, default_env  # noqa: E402
from tests.services import PostgresDatabase, RedisServer, SmtpServer  # noqa: E402

FINAL = {"completed", "failed", "cancelled"}
DEPARTMENTS = [f"Dept {i}" for i in range(12)]
HR_ADMINS = 2
#: seconds after the last fault by which every accepted job must be final
SETTLE = 240


@dataclass
class Accepted:
    """Jobs that got a 202, by id: their kind and when."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[str, tuple[str, float]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)

    def add(self, job_id: str, kind: str) -> None:
        with self.lock:
            self.jobs.setdefault(job_id, (kind, time.time()))

    def before(self, moment: float) -> list[str]:
        with self.lock:
            return [i for i, (_, at) in self.jobs.items() if at <= moment]


class Scene:
    def __init__(self, employees: int) -> None:
        from pa import db
        from pa.models import ReviewStatus, Role
        from pa.schema import migrate
        from tests.factories import make_review, make_token, make_user

        migrate(db.engine())
        self.manager = make_user(Role.MANAGER, email="manager@chaos")
        self.hrs = [make_user(Role.HR_ADMIN, email=f"hr{i}@chaos") for i in range(HR_ADMINS)]
        self.admin = make_user(Role.ADMIN, email="admin@chaos")
        self.tokens = {u.email: make_token(u) for u in (self.manager, self.admin, *self.hrs)}
        self.reviews: list[int] = []
        self.names: dict[int, str] = {}
        for i in range(employees):
            e = make_user(Role.EMPLOYEE, manager_id=self.manager.id,
                          department=DEPARTMENTS[i % len(DEPARTMENTS)])
            self.reviews.append(make_review(e, status=ReviewStatus.MANAGER_REVIEW).id)
            self.names[self.reviews[-1]] = e.name
        # last year's completed reviews: what the reports render (a few per department)
        for i in range(120):
            e = make_user(Role.EMPLOYEE, manager_id=self.manager.id,
                          department=DEPARTMENTS[i % len(DEPARTMENTS)])
            make_review(e, status=ReviewStatus.COMPLETED, fiscal_year=2025)


class Load:
    """Clients submitting all along; each counts what was accepted, and what not."""

    def __init__(self, scene: Scene, web_a: Callable[[], WebProcess],
                 web_b: Callable[[], WebProcess], accepted: Accepted) -> None:
        self.scene, self.web_a, self.web_b, self.accepted = scene, web_a, web_b, accepted
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(fn, pause), daemon=True)
                        for fn, pause in ((self._email, 0.1), (self._report, 1.0),
                                          (self._import, 0.5), (self._backup, 5.0))]
        self.reviews = iter(scene.reviews)
        self.imports = 0

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def _loop(self, fn: Callable[[], tuple[str, httpx.Response]], pause: float) -> None:
        while not self.stop.is_set():
            try:
                kind, r = fn()
            except StopIteration:
                return  # every review went to HR
            except httpx.HTTPError as exc:
                with self.accepted.lock:
                    self.accepted.refused[type(exc).__name__] += 1
            else:
                if r.status_code == 202:
                    self.accepted.add(r.json()["jobId"], kind)
                else:
                    with self.accepted.lock:
                        self.accepted.refused[f"{kind} {r.status_code}"] += 1
            self.stop.wait(pause)

    def _post(self, web: WebProcess, email: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(web.url + path, timeout=20, **kw,
                          headers={"Authorization": f"Bearer {self.scene.tokens[email]}"})

    def _email(self) -> tuple[str, httpx.Response]:
        review = next(self.reviews)
        return "email", self._post(self.web_a(), self.scene.manager.email,
                                   f"/api/reviews/{review}/submit-to-hr")

    def _report(self) -> tuple[str, httpx.Response]:
        return "report", self._post(self.web_a(), self.scene.hrs[0].email, "/api/reports",
                                    json={"fiscalYear": 2025,
                                          "department": random.choice(DEPARTMENTS)})

    def _import(self) -> tuple[str, httpx.Response]:
        self.imports += 1
        n = self.imports
        csv = ("email,name,role,department,manager_email\n"
               + "".join(f"imp{n}-{k}@chaos.example.com,Imported {n} {k},employee,Sales,\n"
                         for k in range(50)))
        return "import", self._post(self.web_b(), self.scene.admin.email, "/api/users/import",
                                    files={"file": (f"u{n}.csv", csv.encode(), "text/csv")})

    def _backup(self) -> tuple[str, httpx.Response]:
        return "backup", self._post(self.web_a(), self.scene.admin.email, "/api/admin/backups")


class Watcher:
    """A socket per user on web A, in a thread: the final statuses each one saw."""

    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url, self.tokens = url, tokens
        self.seen: dict[str, dict[str, str]] = {e: {} for e in tokens}
        self.closed: dict[str, str] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        for email in self.tokens:
            asyncio.run_coroutine_threadsafe(self._watch(email), self.loop)

    async def _watch(self, email: str) -> None:
        from websockets.asyncio.client import connect

        try:
            async with connect(self.url, max_queue=None, additional_headers={
                    "Authorization": f"Bearer {self.tokens[email]}"}) as ws:
                async for raw in ws:
                    msg = json.loads(raw)
                    listed = (msg["data"]["jobs"] if msg["type"] == "snapshot"
                              else [msg["data"]] if msg["type"] == "job" else [])
                    for job in listed:
                        if job["status"] in FINAL:
                            self.seen[email][job["id"]] = job["status"]
        except Exception as exc:  # the table says which socket closed, and why
            self.closed[email] = repr(exc)


class Chaos:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir, self.args = workdir, args
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.redis = RedisServer(workdir / "redis")
        self.redis.start()
        self.smtp = SmtpServer()
        self.smtp.start()
        self.data = workdir / "data"
        self.data.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(self.data)],
                       check=True)
        self.database = PostgresDatabase()
        self.database.create()
        self.env = default_env(
            PA_REDIS_URL=self.redis.url, PA_DATABASE_URL=self.database.url,
            PA_DATA_DIR=str(self.data), PA_SMTP_URL=self.smtp.url,
            PA_SECRET_KEY="chaos-key-0123456789abcdef0123456789", PA_BACKUP_CRON="0 3 * * *")
        if args.fast:  # the test suite's short form: lost consumers noticed in seconds
            self.env.update(PA_WORKER_TTL="3", PA_REAPER_INTERVAL="2")
        os.environ.update(self.env)
        self.consumers: list[ConsumerProcess] = []
        self.webs: list[WebProcess] = []
        self.accepted = Accepted()
        #: jobs a killed consumer was running when it died
        self.held_at_kill: set[str] = set()
        self.rows: list[tuple[str, int, int, int, float | None, float | None]] = []

    # ---------------------------------------------------------------- processes
    def consumer(self) -> ConsumerProcess:
        proc = ConsumerProcess(self.logs / f"consumer-{len(self.consumers)}.log", self.env)
        self.consumers.append(proc)
        return proc

    def web(self, port: int | None = None) -> WebProcess:
        proc = WebProcess(self.logs / f"web-{len(self.webs)}.log", self.env, port)
        self.webs.append(proc)
        proc.wait_healthy(60)
        return proc

    def live_consumers(self) -> list[ConsumerProcess]:
        return [c for c in self.consumers if c.proc.poll() is None]

    # ---------------------------------------------------------------- faults
    def consumer_kill(self) -> None:
        for i in range(self.args.kills):
            time.sleep(3)
            victim = self.live_consumers()[i % 2]
            victim.send(signal.SIGKILL)
            victim.wait_exit()
            self.held_at_kill |= self.held_by(victim)
            self.consumers.remove(victim)
            self.consumers.append(victim)  # (kept for its log)
            self.consumer()

    def held_by(self, consumer: ConsumerProcess) -> set[str]:
        """The jobs a consumer was running (read before the reaper takes them back)."""
        from sqlalchemy import select

        from pa import db
        from pa.models import Job

        with db.read() as conn:
            rows = conn.execute(select(Job.id, Job.worker_id)
                                .where(Job.status == "processing")).all()
        return {r.id for r in rows if consumer.runs(r.worker_id)}

    def redis_down(self) -> None:
        self.redis.stop()
        time.sleep(self.args.redis_down)
        self.redis.start()  # it keeps nothing on disk: empty

    def postgres(self) -> None:
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                        "restart"], check=True)

    def smtp_down(self) -> None:
        from aiosmtpd.controller import Controller

        self.smtp.stop()
        time.sleep(self.args.smtp_down)
        self.smtp.controller = Controller(self.smtp.handler, hostname="127.0.0.1",
                                          port=self.smtp.port)
        self.smtp.start()

    def disk_full(self) -> None:
        ballast = self.data / "ballast"
        free = shutil.disk_usage(self.data).free
        subprocess.run(["fallocate", "-l", str(max(free - 64 * 1024, 0)), str(ballast)],
                       check=True)
        try:
            time.sleep(self.args.disk_full)
        finally:
            ballast.unlink()

    def web_kill(self) -> None:
        web_b = self.webs[1]
        time.sleep(1)  # uploads under way
        web_b.proc.send_signal(signal.SIGKILL)
        web_b.proc.wait(timeout=30)
        time.sleep(2)
        self.webs[1] = WebProcess(self.logs / "web-b-again.log", self.env, web_b.port)
        self.webs[1].wait_healthy(60)

    FAULTS = {"consumer-kill": consumer_kill, "redis": redis_down, "postgres": postgres,
              "smtp": smtp_down, "disk-full": disk_full, "web-kill": web_kill}

    # ---------------------------------------------------------------- the run
    def statuses(self, ids: list[str]) -> dict[str, str]:
        from sqlalchemy import select

        from pa import db
        from pa.models import Job

        with db.read() as conn:
            return dict(conn.execute(select(Job.id, Job.status).where(Job.id.in_(ids))).all())

    def wait_moving(self, ids: list[str], since: float, timeout: float) -> float | None:
        """Seconds until each job of `ids` is final, has started an attempt after
        `since`, or is pending with its task back in Huey's queue (DESIGN.md's recovery
        times: a caught job is queued or runs again)."""
        from datetime import UTC, datetime

        from sqlalchemy import select

        from pa import db
        from pa.models import Job
        from pa.queue import create_huey, missing_from_queue

        huey = create_huey(self.redis.url, self.data)
        moment = datetime.fromtimestamp(since, UTC).replace(tzinfo=None)
        start = time.time()
        while time.time() - start < timeout:
            try:
                with db.read() as conn:
                    rows = conn.execute(select(Job.id, Job.status, Job.started_at)
                                        .where(Job.id.in_(ids))).all()
                # not final, and not started since: each must be pending and queued
                waiting = [(i, st) for i, st, at in rows if st not in FINAL
                           and (at is None or at.replace(tzinfo=None) <= moment)]
                if all(st == "pending" for _, st in waiting) and not missing_from_queue(
                        huey, [i for i, _ in waiting]):
                    return time.time() - start
            except Exception:
                pass  # the database or Redis may be down at this moment
            time.sleep(0.2)
        return None

    def slowest(self, ids: list[str], since: float) -> None:
        """Print the jobs that ended last after a fault (what its recovery waited on)."""
        from sqlalchemy import select

        from pa import db
        from pa.models import Job

        with db.read() as conn:
            rows = conn.execute(
                select(Job.type, Job.attempts, Job.created_at, Job.started_at,
                       Job.completed_at)
                .where(Job.id.in_(ids)).order_by(Job.completed_at.desc()).limit(3)).all()
        for r in rows:
            print(f"  ended last: {r.type}, attempt {r.attempts}, created "
                  f"{r.created_at:%H:%M:%S}, started {r.started_at:%H:%M:%S}, ended "
                  f"{r.completed_at:%H:%M:%S}", flush=True)

    def wait_final(self, ids: list[str], timeout: float) -> float | None:
        """Seconds until every job of `ids` is final (None: not within `timeout`)."""
        start = time.time()
        while time.time() - start < timeout:
            try:
                st = self.statuses(ids)
                if all(st.get(i) in FINAL for i in ids):
                    return time.time() - start
            except Exception:
                pass  # the database may be down at this moment
            time.sleep(0.5)
        return None

    def run(self) -> int:
        scene = Scene(self.args.employees)
        self.scene = scene
        for _ in range(2):
            self.consumer()
        self.webs = [self.web(), self.web()]
        watcher = Watcher(self.webs[0].ws_url, scene.tokens)
        watcher.start()
        time.sleep(1)
        load = Load(scene, lambda: self.webs[0], lambda: self.webs[1], self.accepted)
        load.start()
        time.sleep(5)
        names = self.args.only.split(",") if self.args.only else list(self.FAULTS)
        for name in names:
            begun = time.time()
            try:
                in_flight = len([s for s in self.statuses(self.accepted.before(begun)).values()
                                 if s not in FINAL])
            except Exception:
                in_flight = -1
            print(f"{time.strftime('%H:%M:%S')} fault {name}: begins ({in_flight} in flight)",
                  flush=True)
            self.FAULTS[name](self)
            ended = time.time()
            before = self.accepted.before(ended)
            accepted = len([i for i in before if self.accepted.jobs[i][1] >= begun])
            try:
                caught = [i for i, st in self.statuses(before).items() if st not in FINAL]
            except Exception:  # (the database is still coming back)
                time.sleep(2)
                caught = [i for i, st in self.statuses(before).items() if st not in FINAL]
            moving = self.wait_moving(caught, ended, 180)
            final = self.wait_final(before, 180)
            recovered = None if final is None else time.time() - ended
            print(f"{time.strftime('%H:%M:%S')} fault {name}: over; {len(caught)} caught, "
                  f"queued or running again in {'-' if moving is None else f'{moving:.1f} s'}, all "
                  f"final in {'-' if recovered is None else f'{recovered:.1f} s'}", flush=True)
            self.rows.append((name, in_flight, accepted, len(caught), moving, recovered))
            if recovered is not None and recovered > 30:
                self.slowest(before, ended)
            time.sleep(3)
        load.finish()
        return self.check(watcher)

    def check(self, watcher: Watcher) -> int:
        from sqlalchemy import func, select

        from pa import db
        from pa.models import Job, User

        ids = list(self.accepted.jobs)
        settled = self.wait_final(ids, SETTLE)
        with db.read() as conn:
            rows = {r.id: r for r in conn.execute(select(Job.__table__))}
            imported = Counter(conn.execute(
                select(User.email).where(User.email.like("imp%@chaos.example.com"))).scalars())
            users_total = conn.execute(select(func.count()).select_from(User)).scalar_one()
        kind = {i: k for i, (k, _) in self.accepted.jobs.items()}
        lost = [i for i in ids if i not in rows or rows[i].status not in FINAL]
        unaccepted_unfinished = [i for i, r in rows.items()
                                 if i not in kind and r.status not in FINAL]
        statuses = Counter((kind[i], rows[i].status) for i in ids if i in rows)
        # mails: each completed email job's two, once each
        with self.smtp.handler.lock:
            received = Counter((str(m["To"]), str(m["Subject"]))
                               for m in self.smtp.handler.messages)
        mail_dupes = {k: n for k, n in received.items() if n > 1}
        job_of = {}
        for i in ids:
            r = rows.get(i)
            if kind[i] == "email" and r is not None and r.status == "completed":
                review = r.payload["reviewId"]
                for hr in self.scene.hrs:
                    job_of[(hr.email, f"Review submitted to HR: {self.scene.names[review]} "
                                      f"(FY2026)")] = i
        expected = set(job_of)
        # A mail's "sent" mark is committed just before its final dot (pa.mail): a
        # consumer killed between the two loses that mail, and never sends one twice.
        # Such a loss is one mail at most of a job that a killed consumer held.
        missing_by_job = Counter(job_of[k] for k in expected - set(received))
        lost_at_kill = {i: n for i, n in missing_by_job.items()
                        if i in self.held_at_kill and n == 1}
        mail_missing = {i: n for i, n in missing_by_job.items() if i not in lost_at_kill}
        # imports: all of a completed one's users, once; none of a failed one's
        import_dupes = {e: n for e, n in imported.items() if n > 1}
        partial = []
        for i in ids:
            r = rows.get(i)
            if kind[i] != "import" or r is None:
                continue
            n = int(r.payload["filename"][1:-4])  # (u<n>.csv)
            mine = sum(1 for k in range(50) if f"imp{n}-{k}@chaos.example.com" in imported)
            if mine not in ((50,) if r.status == "completed" else (0,)):
                partial.append((i, r.status, mine))
        # files: whole PDFs, and nothing temporary or orphaned
        bad_files = []
        for i in ids:
            r = rows.get(i)
            if kind[i] == "report" and r is not None and r.status == "completed":
                path = self.data / r.result_file
                if not path.exists() or not path.read_bytes().rstrip().endswith(b"%%EOF"):
                    bad_files.append(str(path))
        stray = [str(p.relative_to(self.data)) for p in self.data.rglob("*")
                 if p.is_file() and (p.name.startswith(".") or p.suffix in (".tmp", ".part"))]
        uploads = self.data / "uploads"
        referenced = {Path(r.payload["path"]).name for r in rows.values()
                      if r.type == "bulk_import"}
        orphans = [p.name for p in uploads.glob("*")
                   if p.name not in referenced] if uploads.exists() else []
        # sockets
        owner = {self.scene.manager.email: "email", self.scene.hrs[0].email: "report"}
        unseen = {}
        for email, k in owner.items():
            if email in watcher.closed:
                continue
            missing = [i for i in ids if kind[i] == k and i not in watcher.seen[email]
                       and i in rows and rows[i].status in FINAL]
            unseen[email] = len(missing)
        admin_unseen = len([i for i in ids if kind[i] in ("import", "backup")
                            and i not in watcher.seen[self.scene.admin.email]])

        print()
        def secs(value: float | None) -> str:
            return "not within 180 s" if value is None else f"{value:.1f} s"

        print("| fault | in flight at its start | accepted during it | unfinished at its end "
              "| time to recover: each of those queued again, running or done | every job "
              "accepted before its end final |")
        print("|---|---|---|---|---|---|")
        for name, in_flight, accepted, caught, moving, recovered in self.rows:
            print(f"| {name} | {in_flight} | {accepted} | {caught} | {secs(moving)} | "
                  f"{secs(recovered)} |")
        print()
        print(f"jobs accepted (202): {len(ids):,}; by kind and status: "
              + ", ".join(f"{k} {s} {n}" for (k, s), n in sorted(statuses.items())))
        print(f"refused or cut off while a fault lasted (not accepted, nothing to keep): "
              f"{dict(self.accepted.refused)}")
        when = f"after {settled:.1f} s" if settled is not None else f"NOT within {SETTLE} s"
        print(f"all final {when}; lost (accepted, not final): {len(lost)}; "
              f"unfinished jobs nobody got a 202 for: {len(unaccepted_unfinished)}")
        print(f"mails: {sum(received.values()):,} received, {len(expected):,} expected, "
              f"{sum(mail_missing.values())} missing, {len(mail_dupes)} delivered more than "
              f"once; {len(lost_at_kill)} lost with a killed consumer between a mail's sent "
              f"mark and its final dot (of the {len(self.held_at_kill)} jobs the killed "
              f"consumers held)")
        print(f"imports: {len(import_dupes)} users twice, {len(partial)} partly applied "
              f"{partial[:3]}; {users_total:,} users in all")
        print(f"files: {len(bad_files)} completed reports not whole, temporary files left "
              f"{stray[:5]}, uploads without a job {orphans[:5]}")
        print(f"sockets: closed {watcher.closed or 'none'}; jobs whose end the owner's "
              f"socket did not see: {unseen}, admin's: {admin_unseen}")
        failed = [(kind[i], rows[i].error) for i in ids
                  if i in rows and rows[i].status == "failed"]
        if failed:
            print("failed jobs (first 5): " + "; ".join(f"{k}: {e}" for k, e in failed[:5]))
        # a fault shorter than a job's retries must not make it fail
        problems = (len(failed) + sum(r[4] is None or r[5] is None for r in self.rows)
                    + len(lost)
                    + len(unaccepted_unfinished) + len(mail_missing) + len(mail_dupes)
                    + len(import_dupes) + len(partial) + len(bad_files) + len(stray)
                    + len(orphans) + sum(unseen.values()) + admin_unseen)
        return 1 if problems else 0

    def close(self) -> None:
        for proc in self.live_consumers():
            proc.stop()
        for web in self.webs:
            web.stop()
        from pa import db
        db.engine().dispose()
        self.database.drop()
        self.smtp.stop()
        self.redis.stop()
        subprocess.run(["umount", str(self.data)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated faults (default: all, in order)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--redis-down", type=float, default=20)
    parser.add_argument("--smtp-down", type=float, default=60)
    parser.add_argument("--disk-full", type=float, default=30)
    parser.add_argument("--employees", type=int, default=4000,
                        help="reviews that can go to HR (one email job each)")
    parser.add_argument("--fast", action="store_true",
                        help="the suite's recovery settings instead of pa's defaults")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pa-chaos-"))
    chaos = Chaos(workdir, args)
    code = 1
    try:
        code = chaos.run()
    finally:
        chaos.close()
        print(f"logs: {workdir / 'logs'}" if args.keep or code else "")
        if not (args.keep or code):
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
