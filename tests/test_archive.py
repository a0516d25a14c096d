"""Closing a fiscal year: the archive job through real consumers (threads, and a
`run_consumer.py` process killed with SIGKILL), the closed-year rule, the routes."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, insert, select, text, update

from pa import archive, db, reviews
from pa.errors import Conflict, NotFound
from pa.models import FiscalYear, Job, Review, ReviewStatus, Role, User
from pa.settings import settings
from pa.worker import start_embedded, stop_embedded
from tests.factories import make_review, make_user
from tests.services import job_now, wait_final, wait_for
from tests.web_fixtures import app_client, login, user_with_password

ROOT = Path(__file__).resolve().parent.parent
YEAR = 2025


@pytest.fixture(autouse=True)
def no_archives() -> None:
    """Archives of earlier tests (the database is emptied per test, files are not)."""
    shutil.rmtree(settings.data_dir / "archives", ignore_errors=True)


def archive_lines(year: int = YEAR) -> list[dict[str, Any]]:
    with gzip.open(settings.data_dir / archive.archive_relpath(year), "rt",
                   encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def statuses(year: int = YEAR) -> dict[str, int]:
    with db.read() as conn:
        rows = conn.execute(
            select(Review.status, func.count()).where(Review.fiscal_year == year)
            .group_by(Review.status)
        ).all()
    return {status: n for status, n in rows}


def archived_count(year: int = YEAR) -> int:
    return statuses(year).get(ReviewStatus.ARCHIVED.value, 0)


def closed_at(year: int = YEAR) -> Any:
    with db.read() as conn:
        return conn.execute(
            select(FiscalYear.closed_at).where(FiscalYear.year == year)
        ).scalar_one_or_none()


def spread_reviews(n: int, gap: int) -> list[int]:
    """`n` employees with one FY review each, ids `gap` apart (sparse ids mean many
    id ranges, so both passes of the job take long enough to be interrupted)."""
    manager = make_user(Role.MANAGER)
    now = db.utcnow()
    with db.begin() as conn:
        conn.execute(insert(User), [
            {"email": f"spread{i}@example.com", "name": f"Spread {i}", "role": "employee",
             "department": "Support", "manager_id": manager.id, "created_at": now,
             "updated_at": now}
            for i in range(n)
        ])
        staff = conn.execute(
            select(User.id).where(User.email.like("spread%")).order_by(User.id)
        ).scalars().all()
        ids = [100_000_000 + i * gap for i in range(n)]
        conn.execute(insert(Review), [
            {"id": rid, "employee_id": staff[i], "manager_id": manager.id,
             "department": "Support", "fiscal_year": YEAR,
             "status": ReviewStatus.COMPLETED.value, "ratings": {"Delivery": 1 + i % 5},
             "overall_rating": float(1 + i % 5), "goals": f"goal {i}",
             "manager_comments": "ok", "updated_at": now}
            for i, rid in enumerate(ids)
        ])
    return ids


@contextmanager
def writes_paused() -> Iterator[Connection]:
    """Hold the job's next review write: SQLite's write lock, or an EXCLUSIVE table
    lock on PostgreSQL. What is archived stays put until the block ends."""
    with db.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("LOCK TABLE reviews IN EXCLUSIVE MODE"))
        yield conn


def assert_whole_archive(ids: list[int]) -> None:
    lines = archive_lines()
    assert [line["id"] for line in lines] == sorted(ids)  # each review once, id order
    # the status each review had before it was archived, not "archived"
    assert {line["status"] for line in lines} == {ReviewStatus.COMPLETED.value}
    assert statuses() == {ReviewStatus.ARCHIVED.value: len(ids)}
    assert closed_at() is not None


# --- the job --------------------------------------------------------------------------


def test_closing_a_year_archives_every_review_then_closes_it(consumer):
    # Given
    manager = make_user(Role.MANAGER, name="Grace Hopper")
    hr = make_user(Role.HR_ADMIN)
    staff = [make_user(Role.EMPLOYEE, manager_id=manager.id) for _ in range(3)]
    made = [
        make_review(staff[0], status=ReviewStatus.COMPLETED, fiscal_year=YEAR,
                    goals='Say "hello" to Zoë\nand\ttabs \\ slashes', ratings={"Delivery": 5}),
        make_review(staff[1], status=ReviewStatus.MANAGER_REVIEW, fiscal_year=YEAR,
                    overall_rating=None, ratings={}),
        make_review(staff[2], status=ReviewStatus.DRAFT, fiscal_year=YEAR,
                    submitted_at=db.utcnow()),
    ]
    other_year = make_review(staff[0], status=ReviewStatus.DRAFT, fiscal_year=YEAR + 1)
    # When
    job = archive.request_close(YEAR, hr.id)
    done = wait_final(job["id"])
    # Then
    assert done["status"] == "completed", done
    assert done["result"] == {"archived": 3}
    assert done["userId"] == hr.id and done["downloadUrl"] == f"/api/jobs/{job['id']}/download"
    assert done["progress"]["current"] == done["progress"]["total"] == 6
    lines = archive_lines()
    assert [line["id"] for line in lines] == [r.id for r in made]
    first = lines[0]
    assert first["goals"] == 'Say "hello" to Zoë\nand\ttabs \\ slashes'
    assert first["employeeId"] == staff[0].id and first["employeeEmail"] == staff[0].email
    assert first["managerName"] == "Grace Hopper" and first["fiscalYear"] == YEAR
    assert first["ratings"] == {"Delivery": 5} and first["overallRating"] == 4.5
    assert first["status"] == "completed" and first["submittedAt"] is None
    assert first["updatedAt"].endswith("Z") and "T" in first["updatedAt"]
    assert lines[1]["overallRating"] is None and lines[1]["status"] == "manager_review"
    assert lines[2]["submittedAt"].endswith("Z")
    assert statuses() == {"archived": 3}
    assert statuses(YEAR + 1) == {"draft": 1}
    assert closed_at() is not None
    with db.read() as conn:
        untouched = conn.execute(select(Review.status).where(Review.id == other_year.id))
        assert untouched.scalar_one() == "draft"
    [listed] = [y for y in archive.list_years() if y["year"] == YEAR]
    assert listed["state"] == "closed" and listed["reviews"] == listed["archived"] == 3
    assert listed["jobId"] == job["id"] and listed["jobStatus"] == "completed"


def test_closing_twice_is_a_conflict_while_running_and_after(consumer):
    # Given
    employee = make_user(Role.EMPLOYEE)
    make_review(employee, fiscal_year=YEAR)
    first = archive.request_close(YEAR, None)
    # When / Then: while the first close is pending or running
    with pytest.raises(Conflict, match="already being closed"):
        archive.request_close(YEAR, None)
    assert wait_final(first["id"])["status"] == "completed"
    # When / Then: once closed
    with pytest.raises(Conflict, match="already closed"):
        archive.request_close(YEAR, None)
    with db.read() as conn:
        assert conn.execute(select(func.count()).select_from(Job)).scalar_one() == 1


def test_a_year_without_reviews_cannot_be_closed():
    with pytest.raises(NotFound):
        archive.request_close(1999, None)
    assert closed_at(1999) is None


def test_reviews_of_a_closing_or_closed_year_cannot_change(consumer):
    # Given
    manager = make_user(Role.MANAGER)
    employee = make_user(Role.EMPLOYEE, manager_id=manager.id)
    review = make_review(employee, status=ReviewStatus.MANAGER_REVIEW, fiscal_year=YEAR)
    with db.begin() as conn:
        archive.ensure_year_open(conn, YEAR)  # open: no error
    # When: closing (the request has frozen the year; the job may not have run yet)
    job = archive.request_close(YEAR, None)
    # Then
    with pytest.raises(Conflict, match=f"FY{YEAR}"), db.begin() as conn:
        archive.ensure_year_open(conn, YEAR)
    # When: closed
    assert wait_final(job["id"])["status"] == "completed"
    # Then: the rule, and the submit-to-hr path
    with pytest.raises(Conflict, match="is closed"), db.begin() as conn:
        archive.ensure_year_open(conn, YEAR)
    with pytest.raises(Conflict):
        reviews.submit_to_hr(manager.id, Role.MANAGER, review.id)
    with db.begin() as conn:
        archive.ensure_year_open(conn, YEAR + 1)  # other years stay open


def test_a_cancelled_close_is_finished_by_a_new_request_without_rewriting(consumer):
    # Given: a close cancelled while it was marking reviews
    ids = spread_reviews(200, gap=250_000)  # 1,000 id ranges to mark
    first = archive.request_close(YEAR, None)
    wait_for(lambda: archived_count() > 0, timeout=30, message="marking to start")
    with writes_paused() as conn:
        conn.execute(update(Job).where(Job.id == first["id"]).values(cancel_requested=True))
    cancelled = wait_final(first["id"])
    assert cancelled["status"] == "cancelled", cancelled
    part = archived_count()
    assert 0 < part < len(ids)
    archive_file = settings.data_dir / archive.archive_relpath(YEAR)
    written = archive_file.stat().st_mtime_ns
    # When: the year is still frozen, and closed again
    with pytest.raises(Conflict, match="being closed"), db.begin() as conn:
        archive.ensure_year_open(conn, YEAR)
    second = archive.request_close(YEAR, None)
    done = wait_final(second["id"])
    # Then
    assert done["status"] == "completed" and done["result"] == {"archived": len(ids)}
    assert archive_file.stat().st_mtime_ns == written  # the first run's archive kept
    assert_whole_archive(ids)


@pytest.mark.parametrize("phase", ["writing", "marking"])
def test_a_consumer_killed_halfway_leaves_a_job_that_a_rerun_finishes(phase, tmp_path):
    # Given: a consumer process running the close
    ids = spread_reviews(200, gap=250_000)
    folder = settings.data_dir / f"archives/FY{YEAR}"
    log = open(tmp_path / "consumer.log", "wb")
    env = dict(os.environ, PA_BACKUP_CRON="0 0 1 1 *")
    proc = subprocess.Popen([sys.executable, "run_consumer.py", "-w", "1"], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        job = archive.request_close(YEAR, None)
        # When: SIGKILL in the middle of the phase
        if phase == "writing":
            wait_for(lambda: any(folder.glob(".*.tmp")), timeout=120, interval=0.002,
                     message="the archive's temp file")
            proc.send_signal(signal.SIGKILL)
        else:
            wait_for(lambda: archived_count() > 0, timeout=120, interval=0.002,
                     message="marking to start")
            with writes_paused():
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    killed = job_now(job["id"])
    assert killed["status"] == "processing", (killed, (tmp_path / "consumer.log").read_text())
    part = archived_count()
    if phase == "writing":
        assert part == 0 and not (folder / f"pa-archive-FY{YEAR}.jsonl.gz").exists()
    else:
        assert 0 < part < len(ids)
    # Then: the reaper of a live consumer runs it again, and that run finishes the work
    consumer, maintenance = start_embedded(workers=1)
    try:
        done = wait_final(job["id"], timeout=60)
    finally:
        stop_embedded(consumer, maintenance)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2 and done["result"] == {"archived": len(ids)}
    assert_whole_archive(ids)
    assert not list(folder.glob(".*.tmp"))


# --- the routes ------------------------------------------------------------------------


def test_close_route_roles_and_answers():
    # Given
    manager = user_with_password(Role.MANAGER)
    employee = user_with_password(Role.EMPLOYEE, manager_id=manager.id)
    hr = user_with_password(Role.HR_ADMIN)
    make_review(employee, fiscal_year=YEAR)
    make_review(employee, fiscal_year=YEAR + 1)
    with app_client() as client:
        # When / Then: employees and managers may not
        for who in (employee, manager):
            login(client, who)
            assert client.post(f"/api/fiscal-years/{YEAR}/close").status_code == 403
            assert client.get("/api/fiscal-years").status_code == 403
        login(client, hr)
        r = client.post(f"/api/fiscal-years/{YEAR}/close")
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["success"] and body["jobId"] == body["data"]["id"]
        assert body["data"]["type"] == "archive_reviews" and body["data"]["userId"] == hr.id
        again = client.post(f"/api/fiscal-years/{YEAR}/close")
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
        assert client.post("/api/fiscal-years/1990/close").status_code == 404
        assert client.post("/api/fiscal-years/0/close").status_code == 400
        years = client.get("/api/fiscal-years").json()["data"]
        assert [(y["year"], y["state"], y["reviews"]) for y in years] == [
            (YEAR + 1, "open", 1), (YEAR, "closing", 1)]


def test_admin_may_close_and_a_closed_years_review_cannot_be_submitted(consumer):
    # Given
    admin = user_with_password(Role.ADMIN)
    manager = user_with_password(Role.MANAGER)
    employee = make_user(Role.EMPLOYEE, manager_id=manager.id)
    review = make_review(employee, status=ReviewStatus.MANAGER_REVIEW, fiscal_year=YEAR)
    with app_client() as client:
        login(client, admin)
        r = client.post(f"/api/fiscal-years/{YEAR}/close")
        assert r.status_code == 202, r.text
        assert wait_final(r.json()["jobId"])["status"] == "completed"
        # When
        login(client, manager)
        refused = client.post(f"/api/reviews/{review.id}/submit-to-hr")
        # Then
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "conflict"
        assert client.get(f"/api/fiscal-years/{YEAR}/archive").status_code == 403
        login(client, admin)
        [year] = client.get("/api/fiscal-years").json()["data"]
        assert year["state"] == "closed" and year["downloadUrl"] is not None
        for url in (f"/api/jobs/{r.json()['jobId']}/download", year["downloadUrl"]):
            download = client.get(url)
            assert download.status_code == 200
            [line] = [json.loads(x) for x in gzip.decompress(download.content).splitlines()]
            assert line["id"] == review.id and line["status"] == "manager_review"
        assert client.get(f"/api/fiscal-years/{YEAR + 1}/archive").status_code == 404
