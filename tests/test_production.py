"""Production mode as deployed: two `run_web.py` and two `run_consumer.py -w 2` processes
on one Redis and one PostgreSQL behave as one system (DESIGN.md, "Production")."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import delete, select
from websockets.asyncio.client import connect

from pa import db
from pa.models import Base, Job, Review, ReviewStatus, Role, User
from pa.queue import JobType
from tests.factories import make_review, make_user
from tests.processes import ConsumerProcess, WebProcess
from tests.services import RedisServer, SmtpServer, free_port, wait_for
from tests.web_fixtures import PASSWORD, job_reaches, login, read_until, user_with_password

pytestmark = pytest.mark.skipif(
    os.environ.get("PA_TEST_DB") != "postgres",
    reason="production mode runs on PostgreSQL (PA_TEST_DB=postgres)",
)

#: reviews submitted to HR under load (one email job each), beside the socket's one
LOAD_REVIEWS = 300
#: bulk imports submitted beside them (a second, cheap job type)
IMPORTS = 10
HR_ADMINS = 2
FINAL = {"completed", "failed", "cancelled"}


@dataclass
class Cluster:
    webs: list[WebProcess]
    consumers: list[ConsumerProcess]
    manager: User
    admin: User
    hrs: list[User]
    #: reviews in manager_review, one per employee
    reviews: list[Review]
    employee_names: dict[int, str]
    data_dir: Path


def _clean(redis_url: str, smtp: SmtpServer) -> None:
    with db.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    smtp.handler.reset()


def _minute_has_room() -> bool:
    # Both consumers check their periodic tasks as they start: starting them early
    # in a minute makes both trigger the backup of that same minute.
    return datetime.now(UTC).second < 45


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer, smtp_server: SmtpServer, tmp_path_factory: Any,
            test_root: Path) -> Iterator[Cluster]:
    # The processes share the test run's Redis, database and SMTP server; this
    # module's tests share the processes, so the tables are emptied once, here.
    _clean(redis_server.url, smtp_server)
    logs = tmp_path_factory.mktemp("production")
    manager = user_with_password(Role.MANAGER)
    admin = user_with_password(Role.ADMIN)
    hrs = [make_user(Role.HR_ADMIN) for _ in range(HR_ADMINS)]
    employees = [make_user(Role.EMPLOYEE, manager_id=manager.id)
                 for _ in range(LOAD_REVIEWS + 1)]
    reviews = [make_review(e, status=ReviewStatus.MANAGER_REVIEW) for e in employees]
    # A data folder of the cluster's own: the suite's holds what earlier tests wrote
    # (their backups among it).
    env = dict(os.environ, PA_REDIS_URL=redis_server.url, PA_BACKUP_CRON="* * * * *",
               PA_DATA_DIR=str(logs / "data"),
               # a lost consumer is noticed within seconds (the defaults are for production)
               PA_WORKER_TTL="3", PA_REAPER_INTERVAL="2")
    wait_for(_minute_has_room, timeout=20, interval=0.2, message="the start of a minute")
    webs = [WebProcess(logs / f"web-{i}.log", env, free_port()) for i in (1, 2)]
    consumers = [ConsumerProcess(logs / f"consumer-{i}.log", env) for i in (1, 2)]
    try:
        for web in webs:
            web.wait_healthy()
        for consumer in consumers:
            wait_for(lambda c=consumer: "Huey consumer started" in c.output(), timeout=30,
                     message=f"consumer {consumer.pid} to start")
        yield Cluster(webs, consumers, manager, admin, hrs, reviews,
                      {e.id: e.name for e in employees}, Path(env["PA_DATA_DIR"]))
    finally:
        for consumer in consumers:
            consumer.stop()
        codes = [web.stop() for web in webs]
        # pytest shows this only when a test failed
        for proc in (*webs, *consumers):
            print(f"--- {proc.log_path.name} (pid {proc.proc.pid}, exit "
                  f"{proc.proc.returncode}) ---\n{proc.output()}")
        assert codes == [0, 0], codes


@pytest.fixture(autouse=True)
def clean_state(cluster: Cluster) -> None:
    """Replaces conftest's per-test clean-up: the processes live for the whole module."""


@contextmanager
def _session(web: WebProcess, user: User) -> Iterator[httpx.Client]:
    with web.http() as client:
        login(client, user, PASSWORD)
        yield client


def _job_rows(*where: Any) -> list[Any]:
    with db.read() as conn:
        return list(conn.execute(select(Job.__table__).where(*where)).mappings())


# -- events cross processes ------------------------------------------------------------


def test_a_socket_on_web_a_sees_a_job_submitted_through_web_b(cluster: Cluster) -> None:
    web_a, web_b = cluster.webs
    review = cluster.reviews[-1]
    with _session(web_a, cluster.manager) as http_a:
        cookie = f"pa_session={http_a.cookies['pa_session']}"

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        async with connect(web_a.ws_url, additional_headers={"Cookie": cookie},
                           open_timeout=10) as ws:
            [snapshot] = await read_until(ws, lambda m: m["type"] == "snapshot",
                                          what="the snapshot")
            assert snapshot["data"]["jobs"] == []
            # When: the manager submits the review through the other web process
            with _session(web_b, cluster.manager) as http_b:
                r = await asyncio.to_thread(http_b.post,
                                            f"/api/reviews/{review.id}/submit-to-hr")
            assert r.status_code == 202, r.text
            job_id = r.json()["jobId"]
            seen = await read_until(ws, job_reaches(job_id, "completed"), timeout=30,
                                    what="the job to complete on web A's socket")
            return job_id, [m["data"] for m in seen
                            if m["type"] == "job" and m["data"]["id"] == job_id]

    job_id, events = asyncio.run(scenario())
    # Then: web A's socket saw it go pending -> processing -> completed, by version
    # (the web and the consumer publish on their own connections, so arrival order
    # may differ from version order; the page keeps the highest version)
    by_version = sorted(events, key=lambda j: j["version"])
    statuses = [j["status"] for j in by_version]
    assert len({j["version"] for j in events}) == len(events), events
    assert by_version[0]["version"] == 1 and statuses[0] == "pending", statuses
    assert "processing" in statuses and statuses[-1] == "completed", statuses
    assert statuses == sorted(statuses, key=["pending", "processing", "completed"].index)
    done = by_version[-1]
    assert done["result"] == {"sent": HR_ADMINS} and done["attempts"] == 1
    with _session(web_a, cluster.manager) as http_a:
        polled = http_a.get(f"/api/jobs/{job_id}").json()["data"]
    assert polled["version"] == done["version"] and polled["status"] == "completed"


# -- the periodic backup -----------------------------------------------------------------


_ENQUEUED = re.compile(r"Enqueueing periodic task \S*schedule_backup")
_TRIGGER = re.compile(r"backup slot (\S+): (job \S+ created|its job exists already)")


def _triggers(cluster: Cluster) -> Counter[str]:
    """How often each backup slot's trigger ran, across the consumers' logs."""
    return Counter(m.group(1) for c in cluster.consumers
                   for m in _TRIGGER.finditer(c.output()))


def test_the_backup_runs_once_per_slot_however_many_consumers_trigger_it(
        cluster: Cluster) -> None:
    # Given: two consumers whose schedule is every minute, started in the same minute
    # When: each one's scheduler has enqueued the trigger, and the triggers ran
    for consumer in cluster.consumers:
        wait_for(lambda c=consumer: _ENQUEUED.search(c.output()), timeout=30,
                 message=f"consumer {consumer.pid}'s trigger")
    triggers = wait_for(lambda: (t := _triggers(cluster)) and max(t.values()) >= 2 and t,
                        timeout=75, message="two triggers of one backup slot")
    # Then: one backup job per slot, and one backup made by it
    rows = _job_rows(Job.type == JobType.DATABASE_BACKUP.value)
    slots = Counter(r["payload"]["slot"] for r in rows)
    assert set(slots.values()) == {1}, slots
    doubled = [slot for slot, n in triggers.items() if n >= 2]
    assert doubled and all(s in slots for s in doubled), (triggers, slots)
    for row in rows:
        done = wait_for(lambda i=row["id"]: (r := _job_rows(Job.id == i)[0])["status"]
                        in FINAL and r, timeout=30, message=f"backup {row['id']}")
        assert done["status"] == "completed", dict(done)
        assert done["user_id"] is None
    names = {r["result"]["name"] for r in _job_rows(Job.type == JobType.DATABASE_BACKUP.value,
                                                    Job.status == "completed")}
    made = {p.name for p in (cluster.data_dir / "backups").iterdir()
            if not p.name.startswith(".")}
    assert names <= made and len(made) == len(names), (names, made)


# -- a consumer killed under load ---------------------------------------------------------


def _submit_reviews(web: WebProcess, manager: User, reviews: list[Review]) -> list[str]:
    with _session(web, manager) as http:
        ids = []
        for review in reviews:
            r = http.post(f"/api/reviews/{review.id}/submit-to-hr")
            assert r.status_code == 202, r.text
            ids.append(r.json()["jobId"])
        return ids


def _submit_imports(web: WebProcess, admin: User) -> list[str]:
    with _session(web, admin) as http:
        ids = []
        for i in range(IMPORTS):
            csv = (f"email,name,role,department,manager_email\n"
                   f"imported{i}a@example.com,Imported {i} A,employee,Sales,\n"
                   f"imported{i}b@example.com,Imported {i} B,employee,Sales,\n")
            r = http.post("/api/users/import",
                          files={"file": (f"users{i}.csv", csv.encode(), "text/csv")})
            assert r.status_code == 202, r.text
            ids.append(r.json()["jobId"])
        return ids


def test_a_consumer_killed_mid_drain_loses_no_job_and_sends_no_mail_twice(
        cluster: Cluster, smtp_server: SmtpServer) -> None:
    web_a, web_b = cluster.webs
    victim, survivor = cluster.consumers
    load = cluster.reviews[:LOAD_REVIEWS]
    half = LOAD_REVIEWS // 2
    # Given: hundreds of jobs submitted through both web processes at once, and a
    # mail server slow to answer (it keeps each message first, as MTAs do): a
    # consumer's threads spend most of their time in the middle of a message
    smtp_server.handler.delay = 0.05
    with ThreadPoolExecutor(3) as pool:
        submitted = [pool.submit(_submit_reviews, web_a, cluster.manager, load[:half]),
                     pool.submit(_submit_reviews, web_b, cluster.manager, load[half:]),
                     pool.submit(_submit_imports, web_b, cluster.admin)]
        # When: one consumer dies without a word while both drain them
        running = wait_for(
            lambda: len(_job_rows(Job.type == JobType.EMAIL_NOTIFICATION.value,
                                  Job.status == "completed")) >= LOAD_REVIEWS // 4
            and [r["id"] for r in _job_rows(Job.status == "processing")
                 if victim.runs(r["worker_id"])],
            timeout=60, interval=0.005, message="the victim to run a job mid-drain")
        victim.send(signal.SIGKILL)
        assert victim.wait_exit() == -signal.SIGKILL
        email_ids = submitted[0].result() + submitted[1].result()
        import_ids = submitted[2].result()
    # the jobs the victim held when it died: nothing but the rows knows of them now
    stranded = {r["id"] for r in _job_rows(Job.status == "processing")
                if victim.runs(r["worker_id"])}
    assert stranded, running
    # Then: every job completes, each exactly once more for those the victim held
    ids = email_ids + import_ids
    wait_for(lambda: all(r["status"] in FINAL for r in _job_rows(Job.id.in_(ids))),
             timeout=90, interval=0.2, message="every job to finish")
    rows = {r["id"]: r for r in _job_rows(Job.id.in_(ids))}
    assert len(rows) == len(ids) == LOAD_REVIEWS + IMPORTS
    assert Counter(r["status"] for r in rows.values()) == {"completed": len(ids)}
    assert {i for i, r in rows.items() if r["attempts"] != 1} <= stranded
    assert all(rows[i]["attempts"] == 2 for i in stranded if i in rows), \
        {i: rows[i]["attempts"] for i in stranded if i in rows}
    assert all(r["error"] is None for r in rows.values())
    assert all(rows[i]["result"] == {"sent": HR_ADMINS} for i in email_ids)
    assert all(rows[i]["result"]["created"] == 2 for i in import_ids)
    # every review went to HR once, and each HR admin got one mail per review
    with db.read() as conn:
        statuses = Counter(conn.execute(
            select(Review.status).where(Review.id.in_([r.id for r in load]))).scalars())
        imported = conn.execute(
            select(User.email).where(User.email.like("imported%"))).scalars().all()
    assert statuses == {"submitted_to_hr": LOAD_REVIEWS}
    assert len(imported) == 2 * IMPORTS
    job_of = {(hr.email, f"Review submitted to HR: {cluster.employee_names[r.employee_id]} "
                         f"(FY{r.fiscal_year})"): job_id
              for hr in cluster.hrs for r, job_id in zip(load, email_ids, strict=True)}
    with smtp_server.handler.lock:
        received = Counter((str(m["To"]), str(m["Subject"]))
                           for m in smtp_server.handler.messages)
    duplicates = {k: n for k, n in received.items() if n > 1}
    missing = Counter(job_of[k] for k in set(job_of) - set(received))
    # A mail's "sent" mark is committed just before its final dot (pa.mail): a consumer
    # killed between the commit and the dot loses that one mail and never sends any
    # twice. So a mail may be missing only from a job the victim held, one at most.
    assert not duplicates, (len(stranded), duplicates)
    assert set(missing) <= stranded and set(missing.values()) <= {1}, (stranded, missing)
    smtp_server.handler.delay = 0.0
    assert survivor.proc.poll() is None
