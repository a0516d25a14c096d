"""`python -m pa`: in-process through pa.cli.main, and once as a real subprocess."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from pa import cli, db
from pa.auth_passwords import verify_password
from pa.models import ApiToken, FiscalYear, Review, Role, User
from tests.factories import make_user

ROOT = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def user(email: str) -> Any:
    with db.read() as conn:
        return conn.execute(select(User.__table__).where(User.email == email)).one()


def count(table: Any, *where: Any) -> int:
    with db.read() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def create_user(capsys: pytest.CaptureFixture[str], email: str, *extra: str,
                role: str = "employee", password: str = "s3cret-pass") -> tuple[int, str, str]:
    return run(capsys, "create-user", "--email", email, "--name", "Ada Lovelace",
               "--role", role, "--password", password, *extra)


# --- create-user ---------------------------------------------------------------------


def test_init_db_can_run_twice(capsys):
    assert run(capsys, "init-db")[0] == 0
    status, out, err = run(capsys, "init-db")
    assert status == 0 and "Schema already at revision" in out and err == ""


def test_create_user_stores_a_working_password_and_takes_the_managers_department(capsys):
    # Given
    boss = make_user(Role.MANAGER, email="boss@example.com", department="Sales")
    # When
    status, out, err = create_user(capsys, "ada@example.com", "--manager", "BOSS@example.com")
    # Then
    assert (status, err) == (0, "")
    assert "Created employee ada@example.com" in out
    ada = user("ada@example.com")
    assert (ada.name, ada.role, ada.manager_id, ada.department) == (
        "Ada Lovelace", "employee", boss.id, "Sales")
    assert verify_password(ada.password_hash, "s3cret-pass")
    assert not verify_password(ada.password_hash, "wrong")


def test_create_user_with_an_explicit_department(capsys):
    status, _, _ = create_user(capsys, "hr2@example.com", "--department", "People",
                               role="hr_admin")
    assert status == 0
    assert (user("hr2@example.com").role, user("hr2@example.com").department) == (
        "hr_admin", "People")


def test_duplicate_email_is_refused_whatever_its_case(capsys):
    assert create_user(capsys, "ada@example.com")[0] == 0
    status, out, err = create_user(capsys, "ADA@example.com")
    assert status == 2
    assert "error: A user with email ada@example.com already exists." in err
    assert "Traceback" not in err and out == ""
    assert count(User.__table__) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--role", "boss"), "invalid choice: 'boss'"),
        (("--manager", "nobody@example.com"), "No user with email nobody@example.com"),
        (("--password", ""), "The password must not be empty."),
    ],
)
def test_create_user_refuses_bad_input_with_a_plain_message(capsys, args, message):
    argv = ["create-user", "--email", "ada@example.com", "--name", "Ada",
            "--role", "employee", "--password", "pw123456", *args]
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err
    assert count(User.__table__) == 0


def test_invalid_email_is_refused(capsys):
    status, _, err = create_user(capsys, "ada@localhost")
    assert status == 2
    assert "Invalid email 'ada@localhost'" in err


# --- set-password and create-token ----------------------------------------------------


def test_set_password_reads_one_line_from_piped_stdin(capsys, monkeypatch):
    make_user(email="ada@example.com", password="old-password")
    monkeypatch.setattr(sys, "stdin", io.StringIO("new password 42\n"))
    status, out, err = run(capsys, "set-password", "ada@example.com")
    assert (status, err) == (0, "")
    assert "Password set for ada@example.com; their logins ended" in out
    stored = user("ada@example.com").password_hash
    assert verify_password(stored, "new password 42")
    assert not verify_password(stored, "old-password")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_set_password_on_a_terminal_asks_twice_and_refuses_a_mismatch(capsys, monkeypatch):
    make_user(email="ada@example.com", password="old-password")
    answers = iter(["first-try", "second-try"])
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    status, _, err = run(capsys, "set-password", "ada@example.com")
    assert status == 2 and "The passwords do not match." in err
    assert verify_password(user("ada@example.com").password_hash, "old-password")


def test_set_password_of_an_unknown_user(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("whatever\n"))
    status, _, err = run(capsys, "set-password", "ghost@example.com")
    assert status == 2 and "No user with email ghost@example.com." in err


def test_create_token_prints_the_token_alone_on_its_last_line_and_stores_its_hash(capsys):
    ada = make_user(email="ada@example.com")
    status, out, err = run(capsys, "create-token", "ada@example.com")
    assert (status, err) == (0, "")
    token = out.splitlines()[-1]
    assert token.strip() == token and len(token) >= 40
    with db.read() as conn:
        rows = conn.execute(select(ApiToken.user_id, ApiToken.token_hash)).all()
    assert [tuple(r) for r in rows] == [(ada.id, hashlib.sha256(token.encode()).hexdigest())]
    assert token not in str(rows)


def test_create_token_for_an_unknown_user(capsys):
    status, out, err = run(capsys, "create-token", "ghost@example.com")
    assert status == 2 and out == "" and "No user with email ghost@example.com." in err


# --- seed-demo -------------------------------------------------------------------------


def _reviews() -> list[Any]:
    with db.read() as conn:
        return list(conn.execute(select(Review.__table__)))


def test_seed_demo_gives_every_employee_one_review_per_year(capsys):
    # Given an employee who was there before
    old_timer = make_user(Role.EMPLOYEE, email="old.timer@example.com", department=None)
    this_year = datetime.now(UTC).year
    # When
    status, out, err = run(capsys, "seed-demo", "--employees", "20", "--years", "3")
    # Then
    assert (status, err) == (0, "")
    assert f"fiscal years {this_year - 2}-{this_year}" in out
    for login in ("hr@example.com", "admin@example.com", "manager@example.com",
                  "employee@example.com"):
        assert login in out
    assert "demo1234" in out
    assert user("hr@example.com").role == "hr_admin"
    assert user("admin@example.com").role == "admin"
    assert verify_password(user("manager@example.com").password_hash, "demo1234")
    employees = count(User.__table__, User.role == Role.EMPLOYEE.value)
    assert employees == 21
    assert count(User.__table__, User.role == Role.MANAGER.value) == 3  # one per 8
    reviews = _reviews()
    assert len(reviews) == employees * 3
    assert Counter((r.employee_id, r.fiscal_year) for r in reviews).most_common(1)[0][1] == 1
    assert {r.fiscal_year for r in reviews if r.employee_id == old_timer.id} == {
        this_year - 2, this_year - 1, this_year}
    assert {r.status for r in reviews if r.fiscal_year < this_year} == {"completed"}
    current = Counter(r.status for r in reviews if r.fiscal_year == this_year)
    assert set(current) == {"draft", "self_review", "manager_review", "submitted_to_hr",
                            "completed"}
    assert current.most_common(1)[0][0] == "manager_review"


def test_seeded_reviews_look_like_real_ones(capsys):
    assert run(capsys, "seed-demo", "--employees", "16", "--years", "2")[0] == 0
    with db.read() as conn:
        people = {u.id: u for u in conn.execute(select(User.__table__)).all()}
    for r in _reviews():
        employee = people[r.employee_id]
        assert (r.department, r.manager_id) == (employee.department, employee.manager_id)
        assert people[r.manager_id].role == "manager"
        assert 4 <= len(r.ratings) <= 5 and set(r.ratings.values()) <= {1, 2, 3, 4, 5}
        assert r.overall_rating == round(sum(r.ratings.values()) / len(r.ratings), 1)
        assert r.goals and r.manager_comments
        assert (r.submitted_at is not None) == (r.status in {"submitted_to_hr", "completed"})
        assert r.updated_at <= db.utcnow()
    assert len({r.manager_comments for r in _reviews()}) > 5


def test_seed_demo_runs_again_without_duplicates(capsys):
    assert run(capsys, "seed-demo", "--employees", "12", "--years", "2")[0] == 0
    users_before, reviews_before = count(User.__table__), len(_reviews())
    # When it runs again
    status, out, err = run(capsys, "seed-demo", "--employees", "12", "--years", "2")
    # Then nothing is added
    assert (status, err) == (0, "")
    assert "Added 0 users and 0 reviews" in out
    assert (count(User.__table__), len(_reviews())) == (users_before, reviews_before)
    # And a larger run only adds what is missing
    assert run(capsys, "seed-demo", "--employees", "12", "--years", "3")[0] == 0
    assert len(_reviews()) == reviews_before + 12


def test_seed_demo_leaves_a_closed_fiscal_year_alone(capsys):
    last_year = datetime.now(UTC).year - 1
    with db.begin() as conn:
        conn.execute(insert(FiscalYear).values(year=last_year, closed_at=db.utcnow()))
    status, out, _ = run(capsys, "seed-demo", "--employees", "4", "--years", "2")
    assert status == 0
    assert f"Closed fiscal years left unchanged: {last_year}." in out
    assert {r.fiscal_year for r in _reviews()} == {last_year + 1}


def test_seed_demo_keeps_an_existing_admins_password(capsys):
    make_user(Role.ADMIN, email="admin@example.com", password="my-own-password")
    status, out, _ = run(capsys, "seed-demo", "--employees", "3", "--years", "1")
    assert status == 0
    assert verify_password(user("admin@example.com").password_hash, "my-own-password")
    [line] = [ln for ln in out.splitlines() if "admin@example.com" in ln]
    assert "another password" in line


def test_seed_demo_refuses_a_negative_count(capsys):
    status, _, err = run(capsys, "seed-demo", "--employees", "-5")
    assert status == 2 and "-5 is not between 0" in err


# --- the real command line -------------------------------------------------------------


def _pa(*argv: str, env: dict[str, str],
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pa", *argv], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_python_m_pa_on_a_fresh_database(tmp_path):
    env = {**os.environ, "PA_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    # Without tables, the message says what to do
    refused = _pa("create-token", "ada@example.com", env=env)
    assert refused.returncode == 2
    assert "run `python -m pa init-db` first" in refused.stderr
    assert "Traceback" not in refused.stderr
    # With them, a user is made, gets a new password from a pipe and a token
    assert _pa("init-db", env=env).returncode == 0
    made = _pa("create-user", "--email", "ada@example.com", "--name", "Ada", "--role", "admin",
               "--password", "first-password", env=env)
    assert made.returncode == 0, made.stderr
    piped = _pa("set-password", "ada@example.com", env=env, stdin="second-password\n")
    assert piped.returncode == 0, piped.stderr
    token = _pa("create-token", "ada@example.com", env=env)
    assert token.returncode == 0, token.stderr
    assert len(token.stdout.splitlines()[-1]) >= 40
