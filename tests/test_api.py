"""The HTTP API: jobs, reviews, submit-to-HR end to end, health, and bad input."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from pa import db, jobs, reviews
from pa.errors import Conflict
from pa.models import FiscalYear, Review, ReviewStatus, Role, User
from pa.queue import JobType
from pa.settings import settings
from tests.factories import make_review, make_user
from tests.services import RedisServer, SmtpServer, wait_for
from tests.web_fixtures import (
    app_client,
    error_of,
    job_reaches,
    live_server,
    login,
    open_socket,
    plain,
    read_until,
    user_with_password,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def client() -> Any:
    with app_client() as c:
        yield c


_error = error_of


def _finished_job(owner: User | None, relative: str, content: bytes) -> dict[str, Any]:
    """A completed job with a file, recorded the way the runner records one."""
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, owner.id if owner else None)
    path = settings.data_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    done = jobs.change(job["id"], {"status": "completed", "result_file": relative,
                                   "result": {"bytes": len(content)},
                                   "completed_at": db.utcnow()})
    assert done is not None
    return done


# ---------------------------------------------------------------- jobs


def test_get_and_list_own_jobs(client: TestClient) -> None:
    # Given: a manager's email jobs, a backup they started when they were an admin,
    # and a periodic job
    owner = user_with_password(Role.MANAGER)
    first = jobs.submit(JobType.EMAIL_NOTIFICATION, {"kind": "review_submitted",
                                                     "reviewId": 1}, owner.id)
    second = jobs.submit(JobType.EMAIL_NOTIFICATION, {"kind": "review_submitted",
                                                      "reviewId": 2}, owner.id)
    as_admin = jobs.submit(JobType.DATABASE_BACKUP, {}, owner.id)
    jobs.submit(JobType.DATABASE_BACKUP, {}, None)  # a periodic job: admins only
    login(client, owner)
    # When
    got = client.get(f"/api/jobs/{first['id']}")
    listed = client.get("/api/jobs")
    # Then: their email jobs; not the backup, which their role may not start
    assert got.status_code == 200
    assert got.json()["success"] is True and plain(got.json()["data"]) == first
    assert set(first) >= {"id", "type", "status", "priority", "progress", "attempts",
                          "maxRetries", "result", "error", "createdAt", "startedAt",
                          "completedAt", "updatedAt", "version", "userId", "downloadUrl"}
    assert [j["id"] for j in listed.json()["data"]] == [second["id"], first["id"]]
    assert client.get(f"/api/jobs/{as_admin['id']}").status_code == 404

    by_type = client.get("/api/jobs", params={"type": "email_notification"}).json()["data"]
    assert [j["id"] for j in by_type] == [second["id"], first["id"]]
    assert client.get("/api/jobs", params={"type": "database_backup"}).json()["data"] == []
    by_status = client.get("/api/jobs", params={"status": "completed"}).json()["data"]
    assert by_status == []
    limited = client.get("/api/jobs", params={"limit": 1}).json()["data"]
    assert [j["id"] for j in limited] == [second["id"]]


@pytest.mark.parametrize(("query", "field"), [
    ({"status": "done"}, "status"), ({"type": "nope"}, "type"), ({"limit": "ten"}, "limit"),
    ({"limit": 0}, "limit"), ({"limit": 10**30}, "limit"),
])
def test_list_jobs_rejects_bad_filters(client: TestClient, query: dict[str, Any],
                                       field: str) -> None:
    login(client, user_with_password())
    assert _error(client.get("/api/jobs", params=query), 400, "invalid")["field"] == field


def test_admin_sees_every_job(client: TestClient) -> None:
    owner = make_user()
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, owner.id)
    periodic = jobs.submit(JobType.DATABASE_BACKUP, {}, None)
    login(client, user_with_password(Role.ADMIN))
    assert client.get(f"/api/jobs/{job['id']}").status_code == 200
    ids = {j["id"] for j in client.get("/api/jobs").json()["data"]}
    assert ids == {job["id"], periodic["id"]}


def test_someone_elses_job_is_not_found(client: TestClient) -> None:
    # Given
    owner = make_user()
    job = _finished_job(owner, "backups/theirs.db", b"SQLite format 3\x00")
    pending = jobs.submit(JobType.DATABASE_BACKUP, {}, owner.id)
    login(client, user_with_password(Role.HR_ADMIN))
    # Then: 404 for everything, exactly as for a job that does not exist
    for path in (f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/download"):
        assert _error(client.get(path), 404, "not_found")
    assert _error(client.post(f"/api/jobs/{pending['id']}/cancel"), 404, "not_found")
    assert _error(client.post(f"/api/jobs/{job['id']}/retry"), 404, "not_found")
    assert client.get("/api/jobs").json()["data"] == []
    assert jobs.get(pending["id"], owner.id, Role.ADMIN)["status"] == "pending"


def test_cancel_and_retry(client: TestClient) -> None:
    # Given: a pending job (no consumer runs in this test)
    owner = user_with_password(Role.ADMIN)  # (backups: an admin's jobs)
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, owner.id)
    login(client, owner)
    # When
    cancelled = client.post(f"/api/jobs/{job['id']}/cancel")
    # Then
    assert cancelled.status_code == 200
    data = cancelled.json()["data"]
    assert data["status"] == "cancelled" and data["version"] == job["version"] + 1
    assert _error(client.post(f"/api/jobs/{job['id']}/cancel"), 409, "conflict")

    retried = client.post(f"/api/jobs/{job['id']}/retry")
    assert retried.status_code == 202
    body = retried.json()
    assert body["success"] is True and body["jobId"] == job["id"] and body["message"]
    assert body["data"]["status"] == "pending" and body["data"]["completedAt"] is None
    assert _error(client.post(f"/api/jobs/{job['id']}/retry"), 409, "conflict")


@pytest.mark.parametrize(("name", "media_type"), [
    ("reports/FY2026 report.pdf", "application/pdf"),
    ("imports/errors.csv", "text/csv; charset=utf-8"),
    ("archives/fy2025.jsonl.gz", "application/gzip"),
    ("backups/pa-2026.db", "application/vnd.sqlite3"),
])
def test_download(client: TestClient, name: str, media_type: str) -> None:
    owner = user_with_password(Role.ADMIN)  # (backups: an admin's jobs)
    content = os.urandom(3000)
    job = _finished_job(owner, name, content)
    assert job["downloadUrl"] == f"/api/jobs/{job['id']}/download"
    login(client, owner)

    r = client.get(job["downloadUrl"])

    assert r.status_code == 200
    assert r.content == content
    assert r.headers["content-type"] == media_type
    basename = Path(name).name
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert f'filename="{basename}"' in disposition or "filename*=utf-8''" in disposition


def test_download_of_a_job_without_a_file_or_whose_file_is_gone(client: TestClient) -> None:
    owner = user_with_password(Role.ADMIN)  # (backups: an admin's jobs)
    pending = jobs.submit(JobType.DATABASE_BACKUP, {}, owner.id)
    gone = _finished_job(owner, "backups/pruned.db", b"x")
    (settings.data_dir / "backups/pruned.db").unlink()
    login(client, owner)
    assert _error(client.get(f"/api/jobs/{pending['id']}/download"), 404, "not_found")
    assert _error(client.get(f"/api/jobs/{gone['id']}/download"), 404, "not_found")


def test_unknown_routes_wrong_methods_and_odd_ids(client: TestClient) -> None:
    login(client, user_with_password(Role.ADMIN))
    assert _error(client.get("/api/nothing-here"), 404, "not_found")
    r = client.put("/api/jobs/abc")
    assert _error(r, 405, "invalid") and "GET" in r.headers["allow"]
    assert _error(client.get("/api/session"), 405, "invalid")
    for odd in ("abc", "-1", "1.5", "99999999999999999999999999", "1e3"):
        assert _error(client.get(f"/api/reviews/{odd}"), 404, "not_found")
        assert _error(client.post(f"/api/reviews/{odd}/submit-to-hr"), 404, "not_found")
    # (A NUL anywhere in a path is refused before routing: PostgreSQL cannot hold one.)
    assert _error(client.get("/api/reviews/%00"), 400, "invalid")
    assert _error(client.get("/api/reviews/9223372036854775808"), 404, "not_found")
    assert _error(client.get("/api/jobs/" + "x" * 500), 404, "not_found")
    assert _error(client.get("/api/jobs/%E2%9C%93"), 404, "not_found")


def test_signed_out_callers_get_401(client: TestClient) -> None:
    for method, path in (("GET", "/api/me"), ("GET", "/api/jobs"), ("GET", "/api/jobs/x"),
                         ("POST", "/api/jobs/x/cancel"), ("GET", "/api/reviews"),
                         ("POST", "/api/reviews/1/submit-to-hr")):
        assert _error(client.request(method, path), 401, "unauthorized")


# ---------------------------------------------------------------- reviews


def _org() -> dict[str, Any]:
    """Two managers with reports, an employee who moved, HR and an admin."""
    mona = user_with_password(Role.MANAGER, name="Mona")
    max_ = user_with_password(Role.MANAGER, name="Max")
    alice = user_with_password(Role.EMPLOYEE, name="Alice", manager_id=mona.id)
    bob = user_with_password(Role.EMPLOYEE, name="Bob", manager_id=max_.id)
    # Carol moved from Mona to Max: her 2025 review names Mona, her 2026 one Max.
    carol = user_with_password(Role.EMPLOYEE, name="Carol", manager_id=mona.id)
    carol_2025 = make_review(carol, fiscal_year=2025, status=ReviewStatus.COMPLETED)
    _set_manager(carol, max_.id)
    carol_2026 = make_review(carol, fiscal_year=2026)
    return {
        "mona": mona, "max": max_, "alice": alice, "bob": bob, "carol": carol,
        "hr": user_with_password(Role.HR_ADMIN), "admin": user_with_password(Role.ADMIN),
        "alice_2026": make_review(alice, fiscal_year=2026),
        "alice_2025": make_review(alice, fiscal_year=2025, status=ReviewStatus.COMPLETED),
        "bob_2026": make_review(bob, fiscal_year=2026, status=ReviewStatus.SELF_REVIEW),
        "mona_2026": make_review(mona, fiscal_year=2026, status=ReviewStatus.DRAFT),
        "carol_2025": carol_2025, "carol_2026": carol_2026,
    }


def _set_manager(user: User, manager_id: int | None) -> None:
    with db.session_scope() as session:
        session.get_one(User, user.id).manager_id = manager_id
    user.manager_id = manager_id


def _visible_ids(client: TestClient, user: User, **query: Any) -> set[int]:
    login(client, user)
    r = client.get("/api/reviews", params=query)
    assert r.status_code == 200, r.text
    return {rv["id"] for rv in r.json()["data"]}


def test_who_sees_which_review(client: TestClient) -> None:
    o = _org()
    ids = {k: v.id for k, v in o.items() if isinstance(v, Review)}
    assert _visible_ids(client, o["alice"]) == {ids["alice_2026"], ids["alice_2025"]}
    # Mona: her own, Alice's, Carol's 2025 one (she was its manager), not Carol's 2026 one
    assert _visible_ids(client, o["mona"]) == {
        ids["mona_2026"], ids["alice_2026"], ids["alice_2025"], ids["carol_2025"]}
    # Max: Bob's, and both of Carol's (he is her manager now)
    assert _visible_ids(client, o["max"]) == {ids["bob_2026"], ids["carol_2025"],
                                              ids["carol_2026"]}
    assert _visible_ids(client, o["hr"]) == set(ids.values())
    assert _visible_ids(client, o["admin"]) == set(ids.values())

    login(client, o["bob"])
    assert client.get(f"/api/reviews/{ids['bob_2026']}").status_code == 200
    assert _error(client.get(f"/api/reviews/{ids['alice_2026']}"), 404, "not_found")


def test_review_object(client: TestClient) -> None:
    o = _org()
    login(client, o["mona"])
    r = client.get(f"/api/reviews/{o['alice_2026'].id}")
    assert r.json() == {"success": True, "data": {
        "id": o["alice_2026"].id, "employeeId": o["alice"].id, "employeeName": "Alice",
        "employeeEmail": o["alice"].email, "managerId": o["mona"].id, "managerName": "Mona",
        "department": "Engineering", "fiscalYear": 2026, "status": "manager_review",
        "ratings": {"Delivery": 4, "Collaboration": 5}, "overallRating": 4.5,
        "goals": "Ship the new billing system.", "managerComments": "Strong year.",
        "submittedAt": None, "updatedAt": r.json()["data"]["updatedAt"]}}
    assert r.json()["data"]["updatedAt"].endswith("Z")


def test_review_filters_and_paging(client: TestClient) -> None:
    o = _org()
    hr = o["hr"]
    assert _visible_ids(client, hr, fiscalYear=2025) == {o["alice_2025"].id,
                                                          o["carol_2025"].id}
    assert _visible_ids(client, hr, status="manager_review") == {o["alice_2026"].id,
                                                                  o["carol_2026"].id}
    assert _visible_ids(client, hr, fiscalYear=2026, status="draft") == {o["mona_2026"].id}
    everything = client.get("/api/reviews").json()["data"]
    pages = [client.get("/api/reviews", params={"limit": 2, "offset": n}).json()["data"]
             for n in range(0, 8, 2)]
    assert [rv["id"] for page in pages for rv in page] == [rv["id"] for rv in everything]
    assert [rv["fiscalYear"] for rv in everything] == sorted(
        (rv["fiscalYear"] for rv in everything), reverse=True)


@pytest.mark.parametrize(("query", "field"), [
    ({"fiscalYear": "last"}, "fiscalYear"), ({"fiscalYear": "99999"}, "fiscalYear"),
    ({"status": "approved"}, "status"), ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"),
    ({"offset": "-1"}, "offset"), ({"offset": "x"}, "offset"),
])
def test_bad_review_filters_are_400(client: TestClient, query: dict[str, str],
                                    field: str) -> None:
    login(client, user_with_password(Role.HR_ADMIN))
    error = _error(client.get("/api/reviews", params=query), 400, "invalid")
    assert error["field"] == field


# ---------------------------------------------------------------- submit to HR


def test_submit_to_hr_is_refused_to_the_wrong_people_and_states(client: TestClient) -> None:
    o = _org()
    alice_2026 = o["alice_2026"].id
    # Alice can see her review but may not submit it; HR sees all but is not her manager.
    for who in ("alice", "hr"):
        login(client, o[who])
        assert _error(client.post(f"/api/reviews/{alice_2026}/submit-to-hr"), 403,
                      "forbidden")
    # Max and Bob cannot see it at all.
    for who in ("max", "bob"):
        login(client, o[who])
        assert _error(client.post(f"/api/reviews/{alice_2026}/submit-to-hr"), 404,
                      "not_found")
    # Max manages Bob, but Bob's review is not in manager_review yet.
    login(client, o["max"])
    assert _error(client.post(f"/api/reviews/{o['bob_2026'].id}/submit-to-hr"), 409,
                  "conflict")
    # Nothing changed, no job was made.
    assert reviews.get_review(o["hr"].id, Role.HR_ADMIN, alice_2026)["status"] == \
        "manager_review"
    assert jobs.list_jobs(o["admin"].id, Role.ADMIN) == []


def test_submit_to_hr_twice_and_in_a_closed_year(client: TestClient) -> None:
    o = _org()
    login(client, o["max"])
    first = client.post(f"/api/reviews/{o['carol_2026'].id}/submit-to-hr")
    assert first.status_code == 202
    assert "submitted_to_hr" in first.json()["message"]
    assert _error(client.post(f"/api/reviews/{o['carol_2026'].id}/submit-to-hr"), 409,
                  "conflict")

    with db.session_scope() as session:
        session.add(FiscalYear(year=2026, closed_at=db.utcnow()))
    login(client, o["admin"])  # an admin may submit anyone's, but not in a closed year
    error = _error(client.post(f"/api/reviews/{o['alice_2026'].id}/submit-to-hr"), 409,
                   "conflict")
    assert "closed" in error["message"]


def test_the_employees_current_manager_may_submit(client: TestClient) -> None:
    # Given: the review names Mona, but Alice now reports to Max
    o = _org()
    _set_manager(o["alice"], o["max"].id)
    # Then: both may (the review's manager and the current one)
    login(client, o["max"])
    assert client.post(f"/api/reviews/{o['alice_2026'].id}/submit-to-hr").status_code == 202


def test_concurrent_submits_only_one_wins() -> None:
    # Given
    manager = make_user(Role.MANAGER)
    review = make_review(make_user(manager_id=manager.id))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def submit() -> None:
        barrier.wait()
        try:
            reviews.submit_to_hr(manager.id, Role.MANAGER, review.id)
            outcomes.append("ok")
        except Conflict:
            outcomes.append("conflict")

    # When
    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Then
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    assert len(jobs.list_jobs(manager.id, Role.MANAGER)) == 1


def test_submit_to_hr_end_to_end(consumer: Any, smtp_server: SmtpServer) -> None:
    """A manager submits: 202 at once, HR gets the mail, the socket sees it complete."""
    # Given
    manager = user_with_password(Role.MANAGER, name="Mona")
    review = make_review(make_user(name="Alice", manager_id=manager.id))
    hrs = [make_user(Role.HR_ADMIN), make_user(Role.HR_ADMIN)]

    with live_server() as server:
        cookie = server.cookie(manager)

        async def scenario() -> tuple[Any, list[dict[str, Any]]]:
            ws = await open_socket(server, cookie)
            try:
                await read_until(ws, lambda m: m["type"] == "snapshot", what="snapshot")
                # When
                with server.http() as http:
                    http.cookies.set("pa_session", cookie.split("=", 1)[1])
                    r = await asyncio.to_thread(
                        http.post, f"/api/reviews/{review.id}/submit-to-hr")
                assert r.status_code == 202, r.text
                seen = await read_until(ws, job_reaches(r.json()["jobId"], "completed"),
                                        what="the job to complete")
                return r, seen
            finally:
                await ws.close()

        r, seen = asyncio.run(scenario())
        body = r.json()
        job_id = body["jobId"]

        # Then
        assert body["success"] is True and body["data"]["id"] == job_id
        assert body["data"]["type"] == "email_notification"
        assert body["data"]["status"] == "pending" and body["data"]["userId"] == manager.id
        versions = [m["data"]["version"] for m in seen if m["type"] == "job"]
        assert versions[-1] == max(versions)
        assert seen[-1]["data"]["result"] == {"sent": 2}
        for hr in hrs:
            [mail] = wait_for(partial(smtp_server.handler.to, hr.email),
                              message=f"mail to {hr.email}")
            assert "Alice" in mail["Subject"]
        with server.http() as http:
            login(http, manager)
            polled = http.get(f"/api/jobs/{job_id}").json()["data"]
            assert plain(polled) == seen[-1]["data"]
            got = http.get(f"/api/reviews/{review.id}").json()["data"]
            assert got["status"] == "submitted_to_hr" and got["submittedAt"]


def test_other_users_see_none_of_the_events(consumer: Any) -> None:
    # Given: an owner, an admin and a stranger, each with a socket
    owner = user_with_password(Role.MANAGER)
    admin = user_with_password(Role.ADMIN)
    stranger = user_with_password(Role.MANAGER)
    review = make_review(make_user(manager_id=owner.id))
    make_user(Role.HR_ADMIN)

    with live_server() as server:
        cookies = {u.id: server.cookie(u) for u in (owner, admin, stranger)}

        async def scenario() -> None:
            sockets = {uid: await open_socket(server, c) for uid, c in cookies.items()}
            try:
                for ws in sockets.values():
                    await read_until(ws, lambda m: m["type"] == "snapshot", what="snapshot")
                # When
                job = await asyncio.to_thread(reviews.submit_to_hr, owner.id, Role.MANAGER,
                                              review.id)
                # Then: the owner and the admin see it complete
                for uid in (owner.id, admin.id):
                    await read_until(sockets[uid], job_reaches(job["id"], "completed"),
                                     what=f"user {uid} to see the job complete")
                # and the stranger's first event is about a job of their own, made after
                mine = await asyncio.to_thread(
                    jobs.submit, JobType.EMAIL_NOTIFICATION,
                    {"kind": "review_submitted", "reviewId": review.id}, stranger.id)
                seen = await read_until(sockets[stranger.id], lambda m: m["type"] == "job",
                                        what="the stranger's own job")
                assert [m["data"]["id"] for m in seen if m["type"] == "job"] == [mine["id"]]
            finally:
                for ws in sockets.values():
                    await ws.close()

        asyncio.run(scenario())


# ---------------------------------------------------------------- health and imports


def test_healthz(client: TestClient, redis_server: RedisServer) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"success": True, "data": {"database": "ok", "redis": "ok"}}

    redis_server.stop()
    try:
        r = client.get("/healthz")
        error = _error(r, 503, "unavailable")
        assert "Redis" in error["message"] and "database" not in error["message"]
        assert r.json()["data"] == {"database": "ok", "redis": "unavailable"}
    finally:
        redis_server.start()
    wait_for(lambda: client.get("/healthz").status_code == 200, message="healthz to recover")


def test_the_web_app_loads_no_task_code() -> None:
    code = (
        "import sys, pa.web.app\n"
        "pa.web.app.create_app()\n"
        "bad = sorted(m for m in sys.modules if m in ('pa.worker', 'pa.runner')"
        " or m.startswith(('pa.tasks', 'weasyprint')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
