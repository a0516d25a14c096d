"""Bulk import of users: the job through real consumer threads, and the upload route
through a real app (TestClient, and a real uvicorn for the streamed 413)."""

from __future__ import annotations

import csv
import io
import random
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import httpx2
import pytest
import uvicorn
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import aliased
from starlette.testclient import TestClient

from pa import db, imports, jobs
from pa.auth_passwords import new_token
from pa.models import ApiToken, Job, Role, User
from pa.queue import JobType
from pa.settings import settings
from pa.tasks.bulk_import import BATCH
from pa.web.app import create_app
from tests.factories import make_user
from tests.services import free_port, job_now, wait_final, wait_for

HEADER = "email,name,role,department,manager_email"
UPLOADS = settings.data_dir / imports.UPLOADS_DIR


# -- helpers ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def empty_uploads() -> Iterator[None]:
    shutil.rmtree(UPLOADS, ignore_errors=True)
    UPLOADS.mkdir(parents=True)
    yield


def csv_bytes(*lines: str, header: str = HEADER, bom: bool = False) -> bytes:
    text = "\r\n".join([header, *lines]) + "\r\n"
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


def submit_file(content: bytes, user_id: int | None = None, **options: Any) -> dict[str, Any]:
    """What the route does after its checks: the file in uploads/, then the job."""
    name = f"{uuid.uuid4().hex}.csv"
    (UPLOADS / name).write_bytes(content)
    return jobs.submit(JobType.BULK_IMPORT,
                       {"path": f"{imports.UPLOADS_DIR}/{name}", "filename": "users.csv"},
                       user_id, **options)


def run_import(content: bytes, user_id: int | None = None) -> dict[str, Any]:
    job = wait_final(submit_file(content, user_id)["id"])
    assert job["status"] == "completed", job
    return job


def people() -> dict[str, tuple[str, str, str | None, str | None]]:
    """email → (name, role, department, manager's email) of every user."""
    manager = aliased(User)
    with db.read() as conn:
        rows = conn.execute(
            select(User.email, User.name, User.role, User.department, manager.email)
            .outerjoin(manager, manager.id == User.manager_id)
        ).all()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def user_count() -> int:
    with db.read() as conn:
        return int(conn.scalar(select(func.count()).select_from(User)) or 0)


def job_count() -> int:
    with db.read() as conn:
        return int(conn.scalar(select(func.count()).select_from(Job)) or 0)


def errors_csv(job: dict[str, Any]) -> list[list[str]]:
    _, relative = jobs.result_file(job["id"], 0, Role.ADMIN)
    text = (settings.data_dir / relative).read_text(encoding="utf-8-sig")
    return list(csv.reader(io.StringIO(text)))


def token_for(user: User) -> str:
    token, digest = new_token()
    with db.begin() as conn:
        conn.execute(insert(ApiToken).values(user_id=user.id, token_hash=digest,
                                             created_at=db.utcnow()))
    return token


@pytest.fixture
def admin() -> tuple[User, dict[str, str]]:
    user = make_user(Role.ADMIN)
    return user, {"authorization": f"Bearer {token_for(user)}"}


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app())


def post_csv(client: TestClient, headers: dict[str, str], content: bytes,
             name: str = "users.csv") -> httpx2.Response:
    return client.post("/api/users/import", headers=headers,
                       files={"file": (name, content, "text/csv")})


def nothing_left() -> None:
    assert list(UPLOADS.iterdir()) == []
    assert job_count() == 0


# -- the job ------------------------------------------------------------------------


def test_import_creates_users_and_links_managers_defined_later_or_existing(consumer):
    # Given: a manager already in the database, and one defined after her report
    make_user(Role.MANAGER, email="boss@example.com", name="Boss")
    content = csv_bytes(
        "eve@example.com,Eve,employee,Engineering,carol@example.com",
        "carol@example.com,Carol,manager,Engineering,boss@example.com",
        "dan@example.com,Dan,employee,,carol@example.com",
    )
    # When
    job = run_import(content)
    # Then
    assert job["result"] == {"created": 3, "updated": 0, "rejected": 0, "errors": []}
    assert job["downloadUrl"] is None
    assert job["progress"]["percent"] == 100.0
    found = people()
    assert found["eve@example.com"] == ("Eve", "employee", "Engineering", "carol@example.com")
    assert found["carol@example.com"] == ("Carol", "manager", "Engineering", "boss@example.com")
    assert found["dan@example.com"] == ("Dan", "employee", None, "carol@example.com")
    with db.read() as conn:
        hashes = conn.scalars(select(User.password_hash).where(User.email != "boss@example.com"))
        assert set(hashes) == {None}  # no login until a password is set
        stamps = conn.execute(select(User.created_at, User.updated_at)
                              .where(User.email == "eve@example.com")).one()
    started = datetime.fromisoformat(job["startedAt"])
    assert all(started <= t <= datetime.now(UTC) for t in stamps), stamps
    assert list(UPLOADS.iterdir()) == []  # done: the upload is deleted


def test_bom_other_column_order_extra_columns_and_case(consumer):
    # Given: Excel's BOM, shuffled and extra columns, capitals in emails, roles, header
    content = csv_bytes(
        'HR,Manager,"X, Y",Ada.L@Example.COM,Ada Lovelace,,ignored',
        ",Employee,x,Grace@example.com,Grace Hopper,ADA.L@example.com,ignored",
        header="Department,ROLE,note,Email,name,Manager_Email,zzz",
        bom=True,
    )
    # When
    job = run_import(content)
    # Then
    assert job["result"]["created"] == 2, job["result"]
    assert people() == {
        "ada.l@example.com": ("Ada Lovelace", "manager", "HR", None),
        "grace@example.com": ("Grace Hopper", "employee", None, "ada.l@example.com"),
    }


def test_invalid_lines_are_reported_and_valid_ones_still_imported(consumer):
    # Given
    content = csv_bytes(
        "ok1@example.com,Ok One,employee,Eng,",                        # 2
        "not-an-email,Bad Email,employee,Eng,",                        # 3
        "boss4@example.com,Role Bad,boss,Eng,",                        # 4
        "OK1@example.com,Again,employee,Eng,",                         # 5
        "orphan@example.com,Orphan,employee,Eng,ghost@example.com",    # 6
        "noname@example.com,,employee,Eng,",                           # 7
        "self@example.com,Self,manager,Eng,SELF@example.com",          # 8
        "report@example.com,Report,employee,Eng,boss4@example.com",    # 9
        "short@example.com,Short,employee",                            # 10
        "loopa@example.com,Loop A,manager,Eng,loopb@example.com",      # 11
        "loopb@example.com,Loop B,manager,Eng,loopa@example.com",      # 12
        "ok2@example.com,Ok Two,employee,,ok1@example.com",            # 13
        "nul@example.com,N\x00L,employee,Eng,",                         # 14
    )
    # When
    job = run_import(content)
    # Then
    result = job["result"]
    assert (result["created"], result["updated"], result["rejected"]) == (2, 0, 11)
    errors = {e["line"]: (e["email"], e["message"]) for e in result["errors"]}
    assert sorted(errors) == [*range(3, 13), 14]
    expected = {
        3: ("not-an-email", "Email is not valid: An email address must have an @-sign."),
        4: ("boss4@example.com", "Role 'boss' is not one of employee, manager, hr_admin, admin."),
        5: ("OK1@example.com", "Duplicate: ok1@example.com is already on line 2."),
        6: ("orphan@example.com",
            "Manager ghost@example.com is neither in this file nor a user."),
        7: ("noname@example.com", "Name is empty."),
        8: ("self@example.com", "A user cannot be their own manager."),
        9: ("report@example.com", "Manager boss4@example.com is on line 4, which was rejected."),
        10: ("short@example.com", "The line has 3 fields; the header has 5."),
        14: ("nul@example.com", "The line holds a NUL character."),  # (PostgreSQL's text)
    }
    for line, (email, message) in expected.items():
        assert errors[line] == (email, message), line
    for line in (11, 12):
        assert errors[line][1].startswith("The manager chain loops: "), errors[line]
    assert people() == {
        "ok1@example.com": ("Ok One", "employee", "Eng", None),
        "ok2@example.com": ("Ok Two", "employee", None, "ok1@example.com"),
    }
    # The errors CSV holds every rejected line, in file order.
    assert job["downloadUrl"] == f"/api/jobs/{job['id']}/download"
    rows = errors_csv(job)
    assert rows[0] == ["line", "email", "message"]
    assert [(int(r[0]), r[1], r[2]) for r in rows[1:]] == [
        (e["line"], e["email"], e["message"]) for e in result["errors"]]
    # A failed or cancelled job would keep its upload; a finished one does not.
    assert list(UPLOADS.iterdir()) == []


def test_line_numbers_count_physical_lines_and_blank_lines_are_skipped(consumer):
    content = csv_bytes(
        'a@example.com,"Ann\nMultiline",employee,Eng,',  # 2-3
        "",                                               # 4
        "b@example.com,Bob,chief,Eng,",                   # 5
        "c@example.com,=cmd(),employee,Eng,=HYPERLINK(1)",  # 6
    )
    job = run_import(content)
    assert job["result"]["created"] == 1
    assert [(e["line"], e["email"]) for e in job["result"]["errors"]] == [
        (5, "b@example.com"), (6, "c@example.com")]
    assert people()["a@example.com"][0] == "Ann\nMultiline"


def test_errors_csv_defuses_formulas():
    path = settings.data_dir / "errors-test.csv"
    imports.write_errors_csv(path, [imports.Rejection(2, "=1+1", "Email is not valid.")])
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    assert rows[1] == ["2", "'=1+1", "Email is not valid."]


def team(changed: bool = False) -> bytes:
    lines = [f"u{i}@example.com,User {i},employee,Eng,{'u0@example.com' if i else ''}"
             for i in range(50)]
    if changed:
        lines[7] = "u7@example.com,Seven,employee,Ops,u1@example.com"
    return csv_bytes(*lines)


def test_reimport_updates_and_never_duplicates(consumer):
    # Given
    assert run_import(team())["result"]["created"] == 50
    # When: the same file again, then one with a changed line
    second = run_import(team())
    changed = run_import(team(changed=True))
    # Then
    assert second["result"] == {"created": 0, "updated": 50, "rejected": 0, "errors": []}
    assert changed["result"] == {"created": 0, "updated": 50, "rejected": 0, "errors": []}
    assert user_count() == 50
    found = people()
    assert found["u7@example.com"] == ("Seven", "employee", "Ops", "u1@example.com")
    assert found["u8@example.com"] == ("User 8", "employee", "Eng", "u0@example.com")
    assert found["u0@example.com"] == ("User 0", "employee", "Eng", None)


def test_existing_mixed_case_email_is_updated_not_duplicated(consumer):
    # Given: a user created elsewhere with capitals in the local part
    make_user(Role.MANAGER, email="Mixed.Case@example.com", name="Old Name")
    make_user(Role.MANAGER, email="Chief@example.com", name="Chief")
    content = csv_bytes("mixed.case@example.com,New Name,manager,Eng,chief@example.com")
    # When
    job = run_import(content)
    # Then
    assert job["result"]["created"] == 0 and job["result"]["updated"] == 1
    found = people()
    assert found["mixed.case@example.com"] == ("New Name", "manager", "Eng", "Chief@example.com")
    assert user_count() == 2


def test_a_loop_through_existing_users_is_rejected(consumer):
    # Given: x is managed by y in the database; the file makes y managed by x
    y = make_user(Role.MANAGER, email="y@example.com")
    make_user(Role.MANAGER, email="x@example.com", manager_id=y.id)
    # When
    job = run_import(csv_bytes("y@example.com,Y,manager,Eng,x@example.com"))
    # Then
    [err] = job["result"]["errors"]
    assert err["line"] == 2
    assert err["message"] == (
        "The manager chain loops: y@example.com → x@example.com → y@example.com.")


def big_file(n: int) -> bytes:
    lines = [f"m{i}@example.com,Manager {i},manager,Dept {i},"
             for i in range(n // 100)]
    lines += [f"e{i}@example.com,Employee {i},employee,Dept {i % 7},m{i % (n // 100)}@example.com"
              for i in range(n - n // 100)]
    return csv_bytes(*lines)


def test_interrupted_import_resumes_without_duplicates(consumer):
    # Given: a big import, cancelled while it writes
    n = 60_000
    job = submit_file(big_file(n))
    wait_for(lambda: (job_now(job["id"])["progress"] or {}).get("message", "")
             .startswith("Imported"), timeout=60, message="the write phase")
    jobs.cancel(job["id"], 0, Role.ADMIN)
    stopped = wait_final(job["id"])
    assert stopped["status"] == "cancelled", "the import finished before the cancel landed"
    partial = user_count()
    assert 0 < partial < n
    assert list(UPLOADS.iterdir()) != []  # kept for the retry
    # When
    jobs.retry(job["id"], 0, Role.ADMIN)
    done = wait_final(job["id"])
    # Then: every row once, and counts as if it had run in one go
    assert done["status"] == "completed", done
    assert done["result"] == {"created": n, "updated": 0, "rejected": 0, "errors": []}
    assert done["attempts"] == 2
    assert user_count() == n
    with db.read() as conn:
        unlinked = conn.scalar(select(func.count()).select_from(User).where(
            User.email.like("e%"), User.manager_id.is_(None)))
    assert unlinked == 0


def tree_file(managers: int, employees: int) -> tuple[bytes, list[str]]:
    """Managers in a binary tree, employees under them, shuffled; and the file order."""
    rows = [f"m{i}@example.com,M {i},manager,Eng,{f'm{(i - 1) // 2}@example.com' if i else ''}"
            for i in range(managers)]
    rows += [f"e{i}@example.com,E {i},employee,Eng,m{i % managers}@example.com"
             for i in range(employees)]
    random.Random(1).shuffle(rows)
    return csv_bytes(*rows), [r.split(",", 1)[0] for r in rows]


@contextmanager
def failing_insert(email: str) -> Iterator[None]:
    """A database trigger that makes inserting `email` fail: a crash at a known row."""
    sqlite = db.engine().dialect.name == "sqlite"
    with db.begin() as conn:
        if sqlite:
            conn.exec_driver_sql(
                "CREATE TRIGGER pa_test_crash BEFORE INSERT ON users "
                f"WHEN NEW.email = '{email}' BEGIN SELECT RAISE(ABORT, 'simulated crash'); END")
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION pa_test_crash() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.email = '{email}' THEN RAISE EXCEPTION 'simulated crash'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql")
            conn.exec_driver_sql("CREATE TRIGGER pa_test_crash BEFORE INSERT ON users "
                                 "FOR EACH ROW EXECUTE FUNCTION pa_test_crash()")
    try:
        yield
    finally:
        with db.begin() as conn:
            if sqlite:
                conn.exec_driver_sql("DROP TRIGGER pa_test_crash")
            else:
                conn.exec_driver_sql("DROP TRIGGER pa_test_crash ON users")
                conn.exec_driver_sql("DROP FUNCTION pa_test_crash()")


@pytest.mark.parametrize("crash_on", ["a manager", "an employee"])
def test_a_crash_mid_import_then_a_retry_ends_with_every_row_once(consumer, crash_on):
    # Given: 6,000 managers (written first, in two batches) and 6,000 employees; the
    # insert of the last one of either kind in the file fails, so that a batch beyond
    # the first of its step fails after earlier batches committed
    content, order = tree_file(6_000, 6_000)
    prefix = "m" if crash_on == "a manager" else "e"
    victim = [e for e in order if e.startswith(prefix)][-1]
    with failing_insert(victim):
        job = submit_file(content, max_retries=0)
        failed = wait_final(job["id"])
        assert failed["status"] == "failed", failed
        assert failed["error"].startswith("Internal error (logged as "), failed  # (unforeseen)
    # every batch before the failing one committed: managers' first batch (and, for an
    # employee, every manager and the employees' first batch)
    assert user_count() == (BATCH if prefix == "m" else 6_000 + BATCH)
    assert list(UPLOADS.iterdir()) != []  # kept for the retry
    # When
    jobs.retry(job["id"], 0, Role.ADMIN)
    done = wait_final(job["id"])
    # Then
    assert done["status"] == "completed", done
    assert done["result"] == {"created": 12_000, "updated": 0, "rejected": 0, "errors": []}
    assert user_count() == 12_000
    found = people()
    assert found["m0@example.com"][3] is None
    assert found["m5@example.com"][3] == "m2@example.com"
    assert found["e7@example.com"][3] == "m7@example.com"
    with db.read() as conn:
        unlinked = conn.scalar(select(func.count()).select_from(User)
                               .where(User.manager_id.is_(None)))
    assert unlinked == 1


def test_a_rerun_that_lost_its_checkpoint_still_creates_nothing_twice(consumer):
    # Given: a finished import
    content = big_file(5_000)
    job = run_import(content)
    assert job["result"]["created"] == 5_000
    # When: the job runs again from nothing, as after a crash before its first
    # checkpoint, over rows it had already written
    row = jobs.load_row(job["id"])
    assert row is not None
    (settings.data_dir / row["payload"]["path"]).write_bytes(content)
    with db.begin() as conn:
        conn.execute(update(Job).where(Job.id == job["id"])
                     .values(status="failed", checkpoint=None))
    jobs.retry(job["id"], 0, Role.ADMIN)
    again = wait_final(job["id"])
    # Then
    assert again["status"] == "completed", again
    assert again["result"]["created"] == 0 and again["result"]["updated"] == 5_000
    assert user_count() == 5_000


def test_fast_email_check_agrees_with_email_validator():
    cases = ["a@example.com", "A.B+c@Example.COM", "x@localhost", "a..b@example.com",
             ".a@example.com", "a@example", "a@-example.com", "a@example..com", "a b@x.com",
             "a@b@c.com", "ü@exämple.com", "o'neil@example.com", "a@example.invalid",
             "a@example.local", f"{'a' * 65}@example.com", f"a@{'b' * 250}.com",
             "a@[127.0.0.1]", '"q"@example.com', "a@exam_ple.com", "user@sub.example.co.uk"]
    for value in cases:
        try:
            expected: str | None = validate_email(
                value, check_deliverability=False).normalized.lower()
        except EmailNotValidError:
            expected = None
        try:
            got: str | None = imports.normalize_email(value)
        except ValueError:
            got = None
        assert got == expected, value


# -- the route ----------------------------------------------------------------------


def test_upload_is_kept_on_disk_and_enqueued(client, admin):
    # Given: no consumer yet, so the upload waits for its job
    user, headers = admin
    content = csv_bytes("new@example.com,New,employee,Eng,")
    # When
    response = post_csv(client, headers, content, name="team.csv")
    # Then
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["success"] is True and body["jobId"] == body["data"]["id"]
    assert (body["data"]["type"], body["data"]["status"]) == ("bulk_import", "pending")
    assert body["data"]["userId"] == user.id
    row = jobs.load_row(body["jobId"])
    assert row is not None and row["payload"]["filename"] == "team.csv"
    assert (settings.data_dir / row["payload"]["path"]).read_bytes() == content
    # And the consumer's side runs it (here in this thread: claim, handler, finish)
    from pa.runner import execute

    execute(body["jobId"])
    done = job_now(body["jobId"])
    assert done["status"] == "completed" and done["result"]["created"] == 1
    assert "new@example.com" in people()
    assert list(UPLOADS.iterdir()) == []


def test_template_downloads_and_imports_as_is(client, admin, consumer):
    _, headers = admin
    response = client.get("/api/users/import/template", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    assert response.text == imports.TEMPLATE_CSV
    posted = post_csv(client, headers, response.content)
    assert posted.status_code == 202
    assert wait_final(posted.json()["jobId"])["result"]["created"] == 3


def test_old_mac_line_ends_are_accepted(client, admin, consumer):
    _, headers = admin
    content = csv_bytes("cr@example.com,Carriage Return,employee,,").replace(b"\r\n", b"\r")
    response = post_csv(client, headers, content)
    assert response.status_code == 202, response.text
    assert wait_final(response.json()["jobId"])["result"]["created"] == 1


def test_only_admins_may_import(client):
    manager = make_user(Role.MANAGER)
    hr = make_user(Role.HR_ADMIN)
    content = csv_bytes("a@example.com,A,employee,,")
    assert post_csv(client, {}, content).status_code == 401
    for user in (manager, hr):
        headers = {"authorization": f"Bearer {token_for(user)}"}
        response = post_csv(client, headers, content)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        assert client.get("/api/users/import/template", headers=headers).status_code == 403
    nothing_left()


def test_not_utf8_is_refused_before_anything_is_kept(client, admin):
    _, headers = admin
    content = csv_bytes("jose@example.com,José,employee,Eng,").decode().encode("latin-1")
    response = post_csv(client, headers, content)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid"
    assert "UTF-8" in response.json()["error"]["message"]
    assert "line 2" in response.json()["error"]["message"]
    nothing_left()


@pytest.mark.parametrize("line, message", [
    ("," * 40 * 1024 * 1024, "Line 3 is longer than 64 KiB."),  # the review's 40 MB line
    ("a" * (64 * 1024 + 1), "Line 3 is longer than 64 KiB."),
    ('x,"' + "y" * (64 * 1024) + '"', "Line 3 is longer than 64 KiB."),  # in quotes too
    ("," * 100, "Line 3 has more than 100 fields."),
])
def test_a_line_too_long_or_too_wide_is_refused_before_it_is_split(client, admin, line,
                                                                     message):
    _, headers = admin
    response = post_csv(client, headers, csv_bytes("ok@example.com,Ok,employee,Eng,", line))
    assert response.status_code == 422, response.text
    assert response.json()["error"] == {"code": "invalid", "message": message, "field": "file"}
    # No job: nothing will split the line (the 40 MB one took a process from 108 to
    # 478 MB as csv's 40 million fields)
    nothing_left()


def test_commas_in_quotes_are_not_fields(client, admin, consumer):
    _, headers = admin
    name = '"' + "," * 150 + '"'  # one field of 150 commas: over no limit
    response = post_csv(client, headers, csv_bytes(f"q@example.com,{name},employee,Eng,"))
    assert response.status_code == 202, response.text


def test_missing_columns_are_named(client, admin):
    _, headers = admin
    content = csv_bytes("a@example.com,employee,Eng", header="Email,role,department")
    response = post_csv(client, headers, content)
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "name, manager_email" in message
    nothing_left()


@pytest.mark.parametrize("content, status", [(b"", 422), (b"\xef\xbb\xbf", 422)])
def test_empty_file_is_refused(client, admin, content, status):
    _, headers = admin
    assert post_csv(client, headers, content).status_code == status
    nothing_left()


@contextmanager
def full_uploads_folder(free: int) -> Iterator[None]:
    """The uploads folder on a tmpfs of its own with `free` bytes free (needs root)."""
    import subprocess

    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(UPLOADS)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"no tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        ballast = UPLOADS / ".ballast"
        ballast.write_bytes(b"\0" * (shutil.disk_usage(UPLOADS).free - free))
        yield
    finally:
        (UPLOADS / ".ballast").unlink(missing_ok=True)
        subprocess.run(["umount", str(UPLOADS)], check=True)


# A small file fails only as it is closed (the write was buffered), a large one
# while it streams.
@pytest.mark.parametrize("rows, free", [(10, 0), (5000, 16 * 1024)])
def test_a_full_disk_refuses_the_upload_with_503_and_keeps_nothing(client, admin, rows, free):
    _, headers = admin
    content = csv_bytes(*(f"u{i}@example.com,U {i},employee,Eng," for i in range(rows)))
    with full_uploads_folder(free):
        refused = post_csv(client, headers, content)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == {
            "code": "unavailable", "field": "file",
            "message": "The server has no room for the file now; try again later."}
        assert [p.name for p in UPLOADS.iterdir()] == [".ballast"]
        assert job_count() == 0
    # and once there is room again, the same file goes through
    assert post_csv(client, headers, content).status_code == 202


def test_an_upload_no_job_names_is_removed_once_it_is_an_hour_old():
    # Given: what a web process killed mid-upload leaves, an hour old and fresh, and
    # the upload of a job that has not run yet, as old
    import os

    from pa import retention

    UPLOADS.mkdir(parents=True, exist_ok=True)
    hour_ago = datetime.now(UTC).timestamp() - 3601
    orphan, fresh = UPLOADS / f"{uuid.uuid4().hex}.csv", UPLOADS / f"{uuid.uuid4().hex}.csv"
    waiting = submit_file(csv_bytes("w@example.com,W,employee,Eng,"))
    row = jobs.load_row(waiting["id"])
    assert row is not None
    kept = settings.data_dir / row["payload"]["path"]
    for path in (orphan, fresh):
        path.write_bytes(b"email,name\n")
    for path in (orphan, kept):
        os.utime(path, (hour_ago, hour_ago))
    # When
    removed = retention.prune_orphan_uploads()
    # Then
    assert removed == [orphan.name]
    assert not orphan.exists() and fresh.exists() and kept.exists()
    fresh.unlink()


def test_no_file_is_a_bad_request(client, admin):
    _, headers = admin
    cases: list[dict[str, Any]] = [
        {"files": {"upload": ("users.csv", csv_bytes(), "text/csv")}},  # wrong field
        {"data": {"file": HEADER}},  # a form, not multipart
        {"data": {"file": HEADER},  # multipart, but `file` is a text field
         "files": {"other": ("x.txt", b"x", "text/plain")}},
        {"json": {"file": HEADER}},  # not multipart
        {"files": [("file", ("a.csv", csv_bytes(), "text/csv")),
                   ("file", ("b.csv", csv_bytes(), "text/csv"))]},
    ]
    for kwargs in cases:
        response = client.post("/api/users/import", headers=headers, **kwargs)
        assert response.status_code == 400, (kwargs, response.text)
        assert response.json()["error"]["code"] == "invalid"
        assert "'file'" in response.json()["error"]["message"]
    nothing_left()
    response = client.post("/api/users/import", headers=headers,
                           files={"file": ("a.csv", csv_bytes(), "text/csv")}, data={"note": "x"})
    assert response.status_code == 202  # other small fields are ignored


@pytest.fixture
def server() -> Iterator[str]:
    """The app served by a real uvicorn in a thread: request bodies really stream."""
    port = free_port()
    config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, lifespan="off",
                            ws="none", log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started, timeout=10, message="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_upload_over_the_limit_is_refused_while_streaming(server, admin):
    # Given: PA_MAX_UPLOAD_MB (50) plus one, sent chunked, never whole in memory
    _, headers = admin
    assert settings.max_upload_mb == 50
    boundary = uuid.uuid4().hex
    row = b"someone@example.com,Some One,employee,Engineering,\r\n"
    chunk = row * ((1 << 20) // len(row) + 1)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"big.csv\"\r\nContent-Type: text/csv\r\n\r\n{HEADER}\r\n").encode()
        for _ in range(51):
            sent += len(chunk)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    # When
    with httpx.Client(base_url=server, timeout=60) as http:
        response = http.post("/api/users/import", content=body(), headers={
            **headers, "content-type": f"multipart/form-data; boundary={boundary}"})
    # Then
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert "50 MB" in response.json()["error"]["message"]
    nothing_left()


def test_declared_length_over_the_limit_is_refused_before_reading(server, admin):
    _, headers = admin
    host, port = server.removeprefix("http://").split(":")
    request = (
        f"POST /api/users/import HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: {headers['authorization']}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {60 * 1024 * 1024}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)  # and not one byte of the body
        answer = s.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    nothing_left()


def test_errors_csv_downloads_through_the_api(client, admin, consumer):
    _, headers = admin
    response = post_csv(client, headers, csv_bytes("bad,Bad,employee,,"))
    job = wait_final(response.json()["jobId"])
    download = client.get(job["downloadUrl"], headers=headers)
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(download.content.decode("utf-8-sig"))))
    assert rows == [["line", "email", "message"],
                    ["2", "bad", "Email is not valid: An email address must have an @-sign."]]
