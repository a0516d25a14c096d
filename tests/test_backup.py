"""Database backups: the job through real consumer threads (SQLite, or pg_dump with
PA_TEST_DB=postgres), retention, restore, the daily trigger, the routes."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from pa import backup, db
from pa.errors import Conflict, Invalid, PermanentJobError
from pa.models import Job, Review, Role, User
from pa.queue import JobType
from pa.settings import settings
from pa.tasks import backup as backup_task
from pa.worker import consumer_huey
from tests.factories import make_review, make_user
from tests.services import wait_final, wait_for
from tests.web_fixtures import app_client, login, user_with_password

ROOT = Path(__file__).resolve().parent.parent
sqlite_only = pytest.mark.skipif(not settings.is_sqlite, reason="SQLite backups")
postgres_only = pytest.mark.skipif(settings.is_sqlite, reason="PostgreSQL backups")


@pytest.fixture(autouse=True)
def no_backups() -> None:
    """Backups of earlier tests (the database is emptied per test, files are not)."""
    shutil.rmtree(backup.backups_dir(), ignore_errors=True)


def backup_now(user_id: int | None = None) -> dict[str, Any]:
    job = wait_final(backup.submit_backup(user_id)["id"])
    assert job["status"] == "completed", job
    return job


def count_jobs(*where: Any) -> int:
    with db.read() as conn:
        return conn.execute(select(func.count()).select_from(Job).where(*where)).scalar_one()


# --- making backups ---------------------------------------------------------------------


@sqlite_only
def test_sqlite_backup_is_a_checked_gzip_copy_with_the_rows(consumer, tmp_path):
    # Given
    admin = make_user(Role.ADMIN, email="admin@example.com")
    make_review(make_user(Role.EMPLOYEE, email="ada@example.com"))
    # When
    job = backup_now(admin.id)
    # Then
    name, size = job["result"]["name"], job["result"]["bytes"]
    assert backup.NAME_RE.fullmatch(name) and name.endswith(".sqlite.gz")
    assert job["userId"] == admin.id and job["downloadUrl"] is not None
    path = backup.backups_dir() / name
    assert path.stat().st_size == size
    copy = tmp_path / "copy.db"
    copy.write_bytes(gzip.decompress(path.read_bytes()))
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        emails = {r[0] for r in conn.execute("SELECT email FROM users")}
        assert conn.execute("SELECT count(*) FROM reviews").fetchone() == (1,)
    assert {"admin@example.com", "ada@example.com"} <= emails
    [listed] = backup.listing()
    assert listed == {"name": name, "bytes": size, "createdAt": listed["createdAt"],
                      "jobId": job["id"], "downloadUrl": f"/api/admin/backups/{name}"}


@postgres_only
def test_postgres_backup_is_a_pg_dump_custom_archive(consumer):
    make_user(Role.EMPLOYEE, email="ada@example.com")
    job = backup_now()
    name = job["result"]["name"]
    assert name.endswith(".pgdump")
    path = backup.backups_dir() / name
    assert path.read_bytes()[:5] == b"PGDMP"
    listed = subprocess.run(["pg_restore", "--list", str(path)], capture_output=True,
                            check=True).stdout.decode()
    assert " TABLE public reviews " in listed and " TABLE public jobs " in listed


@postgres_only
def test_postgres_backup_without_pg_dump_fails_saying_so(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PermanentJobError, match="pg_dump was not found"):
        backup.make_backup("job", lambda: None, lambda *step: None)


def test_retention_keeps_the_newest_backups(consumer):
    # Given: eight older backups
    folder = backup.backups_dir()
    folder.mkdir(parents=True)
    ext = backup.SQLITE_EXT if settings.is_sqlite else backup.PG_EXT
    old = [f"pa-backup-2020010{d}T020000Z.{ext}" for d in range(1, 9)]
    for name in old:
        (folder / name).write_bytes(b"old")
    (folder / "notes.txt").write_text("not a backup: never deleted")
    # When
    job = backup_now()
    # Then
    kept = [b.name for b in backup.list_backups()]
    assert settings.backup_keep == 7
    assert kept == [job["result"]["name"], *sorted(old, reverse=True)[:6]]
    assert (folder / "notes.txt").exists()


def test_a_second_backup_request_while_one_is_pending_is_a_conflict():
    first = backup.submit_backup(None)
    with pytest.raises(Conflict, match=first["id"]):
        backup.submit_backup(None)


def test_restore_brings_the_data_back(consumer):
    # Given: a backup
    employee = make_user(Role.EMPLOYEE, email="ada@example.com", name="Ada")
    review = make_review(employee, goals="Before the backup")
    path = backup.backups_dir() / backup_now()["result"]["name"]
    # When: the data changes, then the backup is restored
    make_user(Role.EMPLOYEE, email="later@example.com")
    with db.begin() as conn:
        conn.execute(update(User).where(User.id == employee.id).values(name="Changed"))
        conn.execute(delete(Review).where(Review.id == review.id))
    from pa import cli

    assert cli.main(["restore-backup", str(path)]) == 0  # python -m pa restore-backup FILE
    # Then
    with db.read() as conn:
        names = conn.execute(select(User.email, User.name).order_by(User.email)).all()
        goals = conn.execute(select(Review.goals)).scalars().all()
    assert [tuple(n) for n in names] == [("ada@example.com", "Ada")]
    assert goals == ["Before the backup"]


def test_restore_refuses_files_that_are_not_pa_backups(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("hello")
    not_sqlite = tmp_path / "x.sqlite.gz"
    not_sqlite.write_bytes(gzip.compress(b"hello"))
    other_db = tmp_path / "other.db"
    with sqlite3.connect(other_db) as conn:
        conn.execute("CREATE TABLE t (x)")
    foreign = tmp_path / "foreign.sqlite.gz"
    foreign.write_bytes(gzip.compress(other_db.read_bytes()))
    cases = [plain, foreign, not_sqlite] if settings.is_sqlite else [plain, not_sqlite]
    for path in cases:
        with pytest.raises(Invalid, match="not a pa backup|SQLite backup"):
            backup.restore_backup(path)


# --- the daily trigger --------------------------------------------------------------------


def test_the_schedule_is_parsed_checked_and_sloted():
    schedule = backup_task.CronSchedule.parse("0 2 * * *")
    assert schedule.matches(datetime(2026, 11, 29, 2, 0, 40))
    assert not schedule.matches(datetime(2026, 11, 29, 2, 1))
    slot = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    assert schedule.slot(datetime(2026, 11, 29, 2, 0, 59, tzinfo=UTC)) == slot
    assert schedule.slot(datetime(2026, 11, 29, 7, 30, tzinfo=UTC)) == slot
    assert backup_task.CronSchedule.parse("30 1 * * MON").matches(datetime(2026, 11, 30, 1, 30))
    for bad in ("0 2 * *", "61 2 * * *", "0 2 * * * *", "every day"):
        with pytest.raises(ValueError, match="PA_BACKUP_CRON"):
            backup_task.CronSchedule.parse(bad)


def test_every_consumer_schedules_the_trigger_at_pa_backup_cron():
    # (PA_BACKUP_CRON is the default, 0 2 * * *, in the tests.)
    huey = consumer_huey()
    due = {t.name for t in huey.read_periodic(datetime(2026, 11, 29, 2, 0, 5))}
    assert backup_task.SCHEDULE_BACKUP in due
    assert not huey.read_periodic(datetime(2026, 11, 29, 2, 1, 5))


def test_two_consumers_triggering_the_same_slot_make_one_job():
    # Given: the moment two consumers run the trigger of the 02:00 slot
    moments = [datetime(2026, 11, 29, 2, 0, 1, tzinfo=UTC),
               datetime(2026, 11, 29, 2, 0, 40, tzinfo=UTC)]
    # When: one after the other, then two at once
    first = backup_task.trigger_scheduled_backup(moments[0])
    assert backup_task.trigger_scheduled_backup(moments[1]) is None
    made: list[Any] = []
    racers = [threading.Thread(target=lambda: made.append(
        backup_task.trigger_scheduled_backup(datetime(2026, 11, 30, 2, 0, 3, tzinfo=UTC))))
        for _ in range(2)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    # Then: one job per slot, belonging to nobody
    assert first is not None and first["userId"] is None
    assert sum(1 for m in made if m is not None) == 1
    assert count_jobs(Job.type == JobType.DATABASE_BACKUP.value) == 2
    with db.read() as conn:
        keys = conn.execute(select(Job.dedupe_key).order_by(Job.dedupe_key)).scalars().all()
    assert keys == ["database_backup:2026-11-29T02:00:00Z", "database_backup:2026-11-30T02:00:00Z"]


def test_two_consumer_processes_make_one_backup_per_slot(tmp_path):
    # Given: two run_consumer.py processes whose schedule is every minute (a consumer
    # checks its periodic tasks when it starts, then once a minute)
    env = dict(os.environ, PA_BACKUP_CRON="* * * * *")
    logs = [tmp_path / f"consumer-{i}.log" for i in (1, 2)]
    procs = []
    for log in logs:
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "run_consumer.py", "-w", "1"], cwd=ROOT, env=env,
                stdout=out, stderr=subprocess.STDOUT))

    def count(what: str) -> list[int]:
        name = backup_task.SCHEDULE_BACKUP
        return [sum(1 for line in log.read_text(errors="replace").splitlines()
                    if what in line and f"{name}: " in line) for log in logs]

    def slots() -> list[str | None]:
        with db.read() as conn:
            return list(conn.execute(
                select(Job.dedupe_key).where(Job.type == JobType.DATABASE_BACKUP.value)
            ).scalars())

    try:
        # When: both have run the trigger, at least once for the same minute
        # (Each scheduler enqueues the trigger; any worker may run it.)
        wait_for(lambda: min(count("Enqueueing periodic task")) >= 1
                 and sum(count("Executing ")) > len(slots()),
                 timeout=90, message="both consumers to trigger the same slot")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # Then: one backup job per slot, however many consumers triggered it
    keys = slots()
    assert 1 <= len(keys) < sum(count("Executing "))
    assert all(k and k.startswith("database_backup:") for k in keys)


# --- the routes ------------------------------------------------------------------------


def test_backup_routes_are_for_admins_and_serve_only_backups(consumer):
    # Given
    admin = user_with_password(Role.ADMIN)
    hr = user_with_password(Role.HR_ADMIN)
    employee = user_with_password(Role.EMPLOYEE)
    with app_client() as client:
        for who in (employee, hr):
            login(client, who)
            assert client.post("/api/admin/backups").status_code == 403
            assert client.get("/api/admin/backups").status_code == 403
        # When
        login(client, admin)
        r = client.post("/api/admin/backups")
        assert r.status_code == 202, r.text
        job = wait_final(r.json()["jobId"])
        name = job["result"]["name"]
        # Then
        [listed] = client.get("/api/admin/backups").json()["data"]
        assert listed["name"] == name and listed["jobId"] == job["id"]
        got = client.get(listed["downloadUrl"])
        assert got.status_code == 200
        assert got.content == (backup.backups_dir() / name).read_bytes()
        login(client, hr)
        assert client.get(listed["downloadUrl"]).status_code == 403
        login(client, admin)
        (backup.backups_dir() / "notes.txt").write_text("x")
        Path(settings.data_dir / "pa-backup-20200101T000000Z.sqlite.gz").write_text("x")
        for bad in ("notes.txt", "pa-backup-20200101T000000Z.sqlite.gz", "..%2Fsecret_key",
                    "..%2Fpa-backup-20200101T000000Z.sqlite.gz", "%2e%2e", "..",
                    f"{name}%00", f"{name}/x"):
            refused = client.get(f"/api/admin/backups/{bad}")
            # (a NUL is refused before routing, as in any path: 400)
            assert refused.status_code == (400 if "%00" in bad else 404), (bad, refused.text)
