"""Alembic migrations on the test run's database kind (SQLite, or PA_TEST_DB=postgres):
a fresh database, one made by an init-db from before migrations, and the servers'
refusal of a database that is not at this pa's revision."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, select

from pa.db import make_engine, utcnow
from pa.models import Base, Job, Review, User
from pa.schema import current_revision, head_revision, migrate, schema_problem
from tests.factories import make_database_the_old_way
from tests.services import PostgresDatabase

ROOT = Path(__file__).resolve().parent.parent
#: what an init-db of the first release left out (both came later)
FIRST_RELEASE_LACKS = ("ended_sessions", "ix_users_role")


@pytest.fixture
def empty_url(tmp_path: Path) -> Iterator[str]:
    """A database of its own, empty, of the kind the test run uses."""
    if os.environ.get("PA_TEST_DB") != "postgres":
        yield f"sqlite:///{tmp_path / 'schema.db'}"
        return
    pg = PostgresDatabase()
    pg.create()
    try:
        yield pg.url
    finally:
        pg.drop()


def differences(url: str) -> list[Any]:
    """What Alembic's autogenerate finds between the database and pa.models."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def problem_of(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return schema_problem(engine)
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def run(*argv: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, timeout=60, capture_output=True,
                          text=True, env={**os.environ, "PA_DATABASE_URL": url, **env})


def test_a_fresh_database_migrates_to_head_and_matches_the_models(empty_url):
    # When
    migrate(empty_url)
    # Then
    assert revision_of(empty_url) == head_revision()
    assert differences(empty_url) == []
    assert problem_of(empty_url) is None
    migrate(empty_url)  # again: nothing to do
    assert revision_of(empty_url) == head_revision()


@pytest.mark.parametrize("lacking", [(), FIRST_RELEASE_LACKS], ids=["latest", "first-release"])
def test_init_db_brings_a_database_made_the_old_way_to_head_with_its_rows(empty_url, lacking):
    # Given: a database made by an init-db from before migrations, in use
    make_database_the_old_way(empty_url, lacking=lacking)
    if lacking:
        assert differences(empty_url) != []
    engine = make_engine(empty_url)
    now = utcnow()
    with engine.begin() as conn:
        boss = conn.execute(insert(User).values(
            email="boss@example.com", name="Boss", role="manager", created_at=now,
            updated_at=now).returning(User.id)).scalar_one()
        conn.execute(insert(Review).values(
            employee_id=boss, fiscal_year=2026, status="draft", ratings={}, goals="",
            manager_comments="", updated_at=now))
        conn.execute(insert(Job).values(
            id="j1", type="email_notification", status="pending", priority=5, payload={},
            attempts=0, max_retries=3, retry_base=0, time_limit=60, cancel_requested=False,
            version=1, created_at=now, updated_at=now))
    engine.dispose()
    assert "run `python -m pa init-db` first" in (problem_of(empty_url) or "")
    # When
    done = run("-m", "pa", "init-db", url=empty_url)
    # Then
    assert done.returncode == 0, done.stderr
    assert f"from no revision to revision {head_revision()}" in done.stdout
    assert revision_of(empty_url) == head_revision()
    assert differences(empty_url) == []
    assert problem_of(empty_url) is None
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        counts = [conn.execute(select(func.count()).select_from(t)).scalar_one()
                  for t in (User, Review, Job)]
    engine.dispose()
    assert counts == [1, 1, 1]
    again = run("-m", "pa", "init-db", url=empty_url)
    assert again.returncode == 0 and "already at revision" in again.stdout


def test_two_init_db_at_once_both_succeed(empty_url):
    """A deploy that runs init-db on two machines at the same moment."""
    env = {**os.environ, "PA_DATABASE_URL": empty_url}
    procs = [subprocess.Popen([sys.executable, "-m", "pa", "init-db"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = [(proc.wait(timeout=60), proc.communicate()[1]) for proc in procs]
    assert outcomes == [(0, ""), (0, "")]
    assert revision_of(empty_url) == head_revision()


def test_alembic_command_line_upgrades_and_finds_nothing_to_generate(empty_url):
    """What an operator runs from the repository root (alembic.ini)."""
    upgraded = run("-m", "alembic", "upgrade", "head", url=empty_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert revision_of(empty_url) == head_revision()
    checked = run("-m", "alembic", "check", url=empty_url)
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected" in checked.stdout


def _set_revision(url: str, revision: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{revision}'")
    engine.dispose()


@pytest.mark.parametrize("state", ["empty", "old-init-db", "newer-pa"])
def test_servers_refuse_a_database_not_at_their_revision(empty_url, state):
    # Given
    if state == "old-init-db":
        make_database_the_old_way(empty_url, lacking=FIRST_RELEASE_LACKS)
        expected = ("made by an older pa", "run `python -m pa init-db` first")
    elif state == "newer-pa":
        migrate(empty_url)
        _set_revision(empty_url, "9999")
        expected = ("revision 9999, which this pa does not know", "a newer pa")
    else:
        expected = ("has no tables yet", "run `python -m pa init-db` first")
    redis_url = os.environ.get("PA_REDIS_URL", "redis://127.0.0.1:1/0")
    for script in ("run_consumer.py", "run_web.py"):
        # When: production mode
        done = run(script, url=empty_url, PA_REDIS_URL=redis_url)
        # Then
        assert done.returncode == 2, (script, done.stderr)
        for words in expected:
            assert words in done.stderr, (script, done.stderr)
        assert "Traceback" not in done.stderr


def test_embedded_web_and_init_db_refuse_a_database_of_a_newer_pa(empty_url):
    # Given
    migrate(empty_url)
    _set_revision(empty_url, "9999")
    embedded = {k: v for k, v in os.environ.items() if k != "PA_REDIS_URL"}
    for argv in (["run_web.py"], ["-m", "pa", "init-db"]):
        # When
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, timeout=60,
                              capture_output=True, text=True,
                              env={**embedded, "PA_DATABASE_URL": empty_url})
        # Then
        assert done.returncode == 2, (argv, done.stderr)
        assert "revision 9999, which this pa does not know" in done.stderr
        assert "Traceback" not in done.stderr
