"""The operators' side (DESIGN.md, "Operators"): the overview against jobs in known
states, the queue estimate against a queue of known jobs, pausing and resuming a
type with a real consumer, retrying every failed job, the consumers' rows, the
overview pushed live to admins' sockets only, and `python -m pa status`."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from starlette.testclient import TestClient
from websockets.asyncio.client import connect

from pa import db, estimates, job_stats, jobs, ops, queue
from pa.models import ConsumerProcess, JobStatus, Role
from pa.queue import JobType
from pa.web import hub
from pa.worker import reap, start_embedded, stop_embedded
from tests.factories import make_token, make_user
from tests.services import wait_final, wait_for
from tests.test_metrics import samples
from tests.web_fixtures import LiveServer, app_client, live_server, next_message

EMAIL, REPORT, BACKUP = JobType.EMAIL_NOTIFICATION, JobType.GENERATE_REPORT, JobType.DATABASE_BACKUP
PAYLOADS: dict[JobType, dict[str, Any]] = {
    EMAIL: {"kind": "review_submitted", "reviewId": 1}, REPORT: {"fiscalYear": 2026},
    BACKUP: {}}


def _job(job_type: JobType, *, status: str = "pending", ran: float | None = None,
         user_id: int | None = None, **values: Any) -> dict[str, Any]:
    """A job row in a known state; `ran`: it completed after that many seconds."""
    job = jobs.submit(job_type, PAYLOADS[job_type], user_id)
    now = db.utcnow()
    if ran is not None:
        values.update(status="completed", started_at=now - timedelta(seconds=ran),
                      completed_at=now)
    elif status != "pending":
        values["status"] = status
    if values:
        changed = jobs.change(job["id"], values)
        assert changed is not None
        return changed
    return job


def _consumer(worker_id: str, workers: int, seen_ago: float = 0.0) -> None:
    now = db.utcnow()
    with db.begin() as conn:
        conn.execute(insert(ConsumerProcess).values(
            id=worker_id, host="box", pid=4242, workers=workers, processed=7,
            started_at=now - timedelta(minutes=5),
            last_seen_at=now - timedelta(seconds=seen_ago)))


@pytest.fixture
def admin() -> TestClient:
    with app_client() as client:
        client.headers["Authorization"] = f"Bearer {make_token(make_user(Role.ADMIN))}"
        yield client


def test_the_overview_counts_jobs_in_known_states(admin: TestClient) -> None:
    # Given: 3 due emails, a report waiting for its retry, a running backup, four
    # reports that ran 10, 20, 30 and 40 s, a failed email; a live and a silent consumer
    for _ in range(3):
        _job(EMAIL)
    _job(REPORT, run_after=db.utcnow() + timedelta(minutes=5))
    running = _job(BACKUP, status="processing", worker_id="box:1:live",
                   started_at=db.utcnow() - timedelta(seconds=30),
                   progress_current=1, progress_total=4)
    for seconds in (10, 20, 30, 40):
        _job(REPORT, ran=seconds)
    failed = _job(EMAIL, status="failed", error="The SMTP server refused.",
                  completed_at=db.utcnow())
    _consumer("box:1:live", workers=2)
    _consumer("box:2:gone", workers=4, seen_ago=60)
    # When
    r = admin.get("/api/ops/overview")
    # Then
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    high, medium, low = data["queues"]
    assert (high["name"], high["waiting"], medium["waiting"], low["waiting"]) == ("high", 3, 0, 0)
    assert high["oldestWaitingSeconds"] >= 0 and medium["oldestWaitingSeconds"] is None
    assert data["jobs"] == {"pending": 3, "scheduled": 1, "processing": 1,
                            "completedLastHour": 4, "failedLastHour": 1}
    types = {t["type"]: t for t in data["types"]}
    assert types["generate_report"] | {"waitSecondsP95": None} == {
        "type": "generate_report", "paused": False, "pending": 1, "processing": 0,
        "completedLastHour": 4, "failedLastHour": 0, "runSecondsP50": 30.0,
        "runSecondsP95": 40.0, "waitSecondsP95": None}
    assert types["email_notification"]["pending"] == 3
    assert types["email_notification"]["failedLastHour"] == 1
    assert types["database_backup"]["processing"] == 1
    live, gone = data["consumers"]
    assert (live["id"], live["workers"], live["processed"], live["silent"]) == (
        "box:1:live", 2, 7, False)
    assert [(j["jobId"], j["progress"]["percent"]) for j in live["running"]] == [
        (running["id"], 25.0)]
    assert live["running"][0]["runningSeconds"] >= 30
    assert (gone["id"], gone["silent"], gone["running"]) == ("box:2:gone", True, [])
    assert len(data["throughput"]) == 60
    assert sum(m["completed"] for m in data["throughput"]) == 4
    assert sum(m["failed"] for m in data["throughput"]) == 1
    assert data["throughput"][-1]["completed"] + data["throughput"][-2]["completed"] == 4
    [backup] = data["periodic"]
    assert backup["schedule"] == "0 2 * * *" and backup["nextRunAt"].endswith("T02:00:00Z")
    assert [(f["id"], f["error"]) for f in data["failures"]] == [
        (failed["id"], "The SMTP server refused.")]
    # The passed minutes are counted once and kept; this minute is counted afresh.
    _job(EMAIL, status="failed", error="Again.", completed_at=db.utcnow())
    again = admin.get("/api/ops/overview").json()["data"]
    assert again["jobs"]["failedLastHour"] == 2 and again["jobs"]["completedLastHour"] == 4


def _finished_at(job_type: JobType, status: str, at: Any) -> None:
    """A job that finished (`status`) at `at`."""
    job = jobs.submit(job_type, PAYLOADS[job_type], None)
    with db.begin() as conn:
        conn.execute(jobs.jobs_table.update().where(jobs.jobs_table.c.id == job["id"])
                     .values(status=status, started_at=at, completed_at=at, updated_at=at))


def test_finishes_per_minute_are_counted_once_as_time_passes() -> None:
    # Given: finishes two minutes and 30 s before T (10 s into a minute) and at T, and
    # a counter that reads them as time goes by (each read is given its `now`)
    t = db.utcnow().replace(second=10, microsecond=0)
    for _ in range(3):
        _finished_at(EMAIL, "completed", t - timedelta(minutes=2))
    _finished_at(REPORT, "failed", t - timedelta(seconds=30))
    _finished_at(EMAIL, "completed", t)
    counter = job_stats.FinishedPerMinute()

    def read(now: Any) -> dict[tuple[str, str], int]:
        with db.read() as conn:
            counts = counter.last_hour(conn, now)
        totals: dict[tuple[str, str], int] = {}
        for (_, job_type, status), n in counts.items():
            totals[job_type, status] = totals.get((job_type, status), 0) + n
        return totals

    expected = {("email_notification", "completed"): 4, ("generate_report", "failed"): 1}
    # When / Then: the newest finish is counted afresh, then for good, never twice
    assert read(t + timedelta(seconds=1)) == expected
    assert read(t + timedelta(seconds=2)) == expected
    assert read(t + timedelta(seconds=job_stats.SETTLE + 5)) == expected
    # ... a finish after the last read is counted by the next, and so is one whose
    # commit came a few seconds after its stamp (it waited for a lock)
    _finished_at(EMAIL, "failed", t + timedelta(seconds=job_stats.SETTLE + 6))
    _finished_at(REPORT, "completed", t + timedelta(seconds=job_stats.SETTLE + 2))
    expected["email_notification", "failed"] = 1
    expected["generate_report", "completed"] = 1
    assert read(t + timedelta(seconds=job_stats.SETTLE + 7)) == expected
    # ... each in its minute
    with db.read() as conn:
        counts = counter.last_hour(conn, t + timedelta(seconds=job_stats.SETTLE + 8))
    early = (t - timedelta(minutes=2)).strftime(job_stats.MINUTE)
    assert counts[early, "email_notification", "completed"] == 3
    # ... and the minutes older than the hour drop out
    assert read(t + timedelta(minutes=59, seconds=30)) == {
        ("email_notification", "completed"): 1, ("email_notification", "failed"): 1,
        ("generate_report", "completed"): 1}
    assert read(t + timedelta(minutes=62)) == {}


def test_the_estimate_of_a_queue_of_known_jobs(admin: TestClient) -> None:
    # Given: emails that ran 6 s each, two consumer threads, five emails waiting and
    # a report behind them (reports have not run lately: nothing to estimate from)
    for _ in range(4):
        _job(EMAIL, ran=6)
    _consumer("box:1:live", workers=2)
    owner = make_user(Role.ADMIN)
    waiting = [_job(EMAIL, user_id=owner.id) for _ in range(5)]
    report = _job(REPORT, user_id=owner.id)
    admin.headers["Authorization"] = f"Bearer {make_token(owner)}"
    # When
    listed = {j["id"]: j for j in admin.get("/api/jobs").json()["data"]}
    # Then: each email waits for those before it, two at a time
    for ahead, job in enumerate(waiting):
        assert listed[job["id"]]["queue"] == {
            "ahead": ahead, "startsIn": ahead * 6 / 2, "finishesIn": ahead * 6 / 2 + 6}
        assert listed[job["id"]]["paused"] is False
    assert listed[report["id"]]["queue"] == {"ahead": 5, "startsIn": 15.0,
                                             "finishesIn": None}
    # ... final jobs have none, and one job's answer says the same as the list
    assert all(j["queue"] is None for j in listed.values() if j["status"] == "completed")
    got = admin.get(f"/api/jobs/{waiting[2]['id']}").json()["data"]
    assert got["queue"] == listed[waiting[2]["id"]]["queue"]
    # ... and without a consumer, nobody can say when a job starts
    with db.begin() as conn:
        conn.execute(ConsumerProcess.__table__.delete())
    estimates.forget()
    got = admin.get(f"/api/jobs/{waiting[2]['id']}").json()["data"]
    assert got["queue"] == {"ahead": 2, "startsIn": None, "finishesIn": None}


def test_a_paused_type_stays_pending_until_it_is_resumed(admin: TestClient,
                                                        consumer: Any) -> None:
    # Given: backups paused
    r = admin.post("/api/ops/types/database_backup/pause")
    assert r.json()["data"] == {"type": "database_backup", "paused": True}
    # When: a backup is asked for, and a consumer has taken its task from the queue
    job = admin.post("/api/admin/backups").json()["data"]
    wait_for(lambda: queue.huey().pending_count() == 0, message="the task to be read")
    other = _job(EMAIL)  # a job of another type is still claimed and run
    assert wait_final(other["id"])["attempts"] == 1
    # Then: the backup is still pending, and says it is paused
    got = admin.get(f"/api/jobs/{job['id']}").json()["data"]
    assert (got["status"], got["paused"], got["queue"]["startsIn"]) == ("pending", True, None)
    # ... a reaper's run does not send it round again
    assert reap(pending_grace=0)["reenqueued"] == 0
    types = {t["type"]: t for t in admin.get("/api/ops/overview").json()["data"]["types"]}
    assert types["database_backup"]["paused"] and types["database_backup"]["pending"] == 1
    # When: resumed, it runs
    assert admin.post("/api/ops/types/database_backup/resume").json()["data"]["paused"] is False
    assert wait_final(job["id"])["status"] == "completed"
    # ... and an unknown type is a 404
    assert admin.post("/api/ops/types/nothing/pause").status_code == 404


def test_retry_failed_retries_every_failed_job_of_a_type_or_all(admin: TestClient) -> None:
    emails = [_job(EMAIL, status="failed", error="x") for _ in range(2)]
    report = _job(REPORT, status="failed", error="y")
    done = _job(REPORT, ran=1)
    r = admin.post("/api/ops/retry-failed", json={"type": "email_notification"})
    assert r.json()["data"] == {"retried": 2}
    assert [jobs.load_row(j["id"])["status"] for j in emails] == ["pending", "pending"]
    assert jobs.load_row(report["id"])["status"] == "failed"
    assert admin.post("/api/ops/retry-failed").json()["data"] == {"retried": 1}
    assert jobs.load_row(done["id"])["status"] == "completed"
    bad = admin.post("/api/ops/retry-failed", json={"type": "nothing"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "type"


def test_a_consumer_has_its_row_while_it_runs() -> None:
    consumer, maintenance = start_embedded(workers=3, periodic=False)
    try:
        job = _job(EMAIL)
        wait_final(job["id"])
        row = wait_for(lambda: [c for c in ops.overview()["consumers"] if c["processed"]],
                       message="the consumer's row to count its job")
        assert [(c["pid"], c["workers"], c["processed"], c["silent"]) for c in row] == [
            (os.getpid(), 3, 1, False)]
    finally:
        stop_embedded(consumer, maintenance)
    assert ops.overview()["consumers"] == []  # stopped: gone, not silent


def test_admins_sockets_get_the_overview_live_and_others_never() -> None:
    with live_server() as server:
        admin, manager = make_user(Role.ADMIN), make_user(Role.MANAGER)

        async def scenario() -> None:
            admin_ws = await _socket(server, make_token(admin))
            manager_ws = await _socket(server, make_token(manager))
            try:
                assert (await next_message(admin_ws))["type"] == "snapshot"
                assert (await next_message(manager_ws))["type"] == "snapshot"
                # When: a job is submitted, then a type is paused
                await asyncio.to_thread(_job, EMAIL, user_id=manager.id)
                seen = await _ops_until(admin_ws, lambda d: d["jobs"]["pending"] == 1)
                assert seen["queues"][0]["waiting"] == 1
                await asyncio.to_thread(ops.pause, "generate_report")
                from pa import events

                await asyncio.to_thread(events.publish, events.ops_event())
                await _ops_until(admin_ws, lambda d: any(
                    t["paused"] for t in d["types"] if t["type"] == "generate_report"))
                # Then: the manager's socket got their job's event, and no overview
                got = [await next_message(manager_ws)]
                with pytest.raises(TimeoutError):
                    got.append(await next_message(manager_ws, timeout=2.5))
                assert [m["type"] for m in got] == ["job"]
                # ... and the web's metrics count the overviews and what they cost
                async with httpx.AsyncClient() as client:
                    scrape = (await client.get(f"{server.url}/metrics")).text
                got_metrics = samples(scrape)
                assert got_metrics[("pa_ops_overviews_total", ())] >= 2
                assert got_metrics[("pa_ops_overview_seconds_total", ())] > 0
            finally:
                await admin_ws.close()
                await manager_ws.close()

        asyncio.run(scenario())


def test_a_slow_overview_is_built_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given: a hub that may build an overview every 0.05 s, and overviews that take
    # at least 0.05 s to build
    monkeypatch.setattr(hub, "OPS_INTERVAL", 0.05)
    monkeypatch.setattr(hub, "OPS_IDLE", 0.0)  # (one each time, changes or not)
    built: list[tuple[float, float]] = []  # (start, end) of each build

    def slow_overview() -> dict[str, Any]:
        started = time.monotonic()
        time.sleep(0.05)
        built.append((started, time.monotonic()))
        return {"built": len(built)}

    async def scenario() -> list[str | hub.Signal]:
        event_hub = hub.Hub(overview=slow_overview)
        sub = event_hub.register(1, is_admin=True)
        await event_hub.start()
        deadline = time.monotonic() + 30
        while len(built) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        queued = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        await event_hub.stop()
        assert event_hub.overviews_built == len(built)
        assert event_hub.overview_seconds >= 0.05 * len(built)
        return queued

    # When
    queued = asyncio.run(scenario())
    # Then: after each build the next waits long enough that building takes at most
    # OPS_BUDGET of the time (without that, one would start every 0.1 s)
    assert len(built) >= 2
    for (start, end), (next_start, _) in zip(built, built[1:], strict=False):
        took = end - start
        assert next_start - end >= took / hub.OPS_BUDGET - took - 0.01, built
    sent = [json.loads(m)["data"]["built"] for m in queued if isinstance(m, str)]
    assert sent == list(range(1, len(sent) + 1)) and len(sent) >= 2


async def _socket(server: LiveServer, token: str) -> Any:
    return await connect(server.ws_url, open_timeout=10,
                         additional_headers={"Authorization": f"Bearer {token}"})


async def _ops_until(ws: Any, predicate: Any) -> dict[str, Any]:
    for _ in range(30):
        message = await next_message(ws, timeout=10, ops=True)
        if message["type"] == "ops" and predicate(message["data"]):
            data: dict[str, Any] = message["data"]
            return data
    raise AssertionError("no overview showed the change")


def test_status_prints_the_overview(capsys: pytest.CaptureFixture[str]) -> None:
    from pa import cli

    _job(EMAIL)
    _job(REPORT, status="failed", error="The PDF could not be written.")
    assert cli.main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["jobs"]["pending"] == 1 and data["jobs"]["failedLastHour"] == 1
    assert cli.main(["status"]) == 0
    text = capsys.readouterr().out
    assert "high            1" in text and "The PDF could not be written." in text
    assert JobStatus.PENDING.value in text
