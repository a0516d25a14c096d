"""Real services for the whole run, and pa configured for them (the environment
of the servers the tests start): a redis-server, an SMTP server, a SQLite file or
a PostgreSQL database (PA_TEST_DB=postgres)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import PostgresDatabase, RedisServer, SmtpServer

_state: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    root = Path(tempfile.mkdtemp(prefix="pa-test-"))
    redis_server = RedisServer(root / "redis")
    redis_server.start()
    smtp = SmtpServer()
    smtp.start()
    _state.update(root=root, redis=redis_server, smtp=smtp)
    if os.environ.get("PA_TEST_DB") == "postgres":
        pg = PostgresDatabase()
        pg.create()
        _state["pg"] = pg
        db_url = pg.url
    else:
        db_url = f"sqlite:///{root / 'pa.db'}"
    os.environ.update(
        PA_DATABASE_URL=db_url,
        PA_REDIS_URL=redis_server.url,
        PA_DATA_DIR=str(root / "data"),
        PA_SMTP_URL=smtp.url,
        PA_SECRET_KEY="test-secret-key-of-at-least-32-characters",
        PA_WORKER_TTL="3",
        PA_REAPER_INTERVAL="2",
    )
    from pa import db, runtime
    from pa.schema import migrate
    from pa.settings import load_settings

    config = load_settings(env_file=None)
    _state["settings"] = config
    runtime.configure(config)
    migrate(db.engine())


def pytest_unconfigure(config: pytest.Config) -> None:
    if "smtp" in _state:
        _state["smtp"].stop()
    if "redis" in _state:
        _state["redis"].stop()
    if "pg" in _state:
        from pa import db

        db.current().dispose()
        _state["pg"].drop()
    if "root" in _state:
        shutil.rmtree(_state["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    return _state["redis"]


@pytest.fixture(scope="session")
def smtp_server() -> SmtpServer:
    return _state["smtp"]


@pytest.fixture(scope="session")
def test_root() -> Path:
    return _state["root"]


@pytest.fixture(autouse=True)
def clean_state(redis_server: RedisServer, smtp_server: SmtpServer) -> Iterator[None]:
    """Every test starts with empty tables, an empty Redis and a quiet SMTP server."""
    import redis
    from sqlalchemy import delete

    from pa import db, runtime
    from pa.models import Base
    from pa.settings import current

    # A test that built an app or a consumer with settings of its own (a metrics
    # token...) leaves them to this process: the next test gets the suite's again.
    if current() != _state["settings"]:
        runtime.configure(_state["settings"])
    with db.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Every table is emptied: no foreign key needs checking. Checked, each
            # deleted user costs a scan of every table that refers to users, and
            # those scans cover every row the suite ever left dead there: a test
            # that left 60,000 users made this take 70 s.
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    smtp_server.handler.reset()
    from pa import estimates, job_stats

    # (estimates are reused for a second, recent run times for longer)
    estimates.forget()
    job_stats.forget()
    yield


@pytest.fixture
def consumer() -> Iterator[Any]:
    """Two real Huey consumer threads (and the heartbeat and reaper) in this process."""
    from pa.worker import start_embedded, stop_embedded

    # No periodic tasks: a test running at PA_BACKUP_CRON's minute would get a backup job.
    c, maintenance = start_embedded(workers=2, periodic=False)
    yield c
    stop_embedded(c, maintenance)


#: the system Chromium the browser tests drive (never a downloaded one)
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Chromium for the `browser` tests: missing, they skip locally but fail in CI."""
    if not os.path.exists(CHROMIUM):
        message = f"Chromium is not installed at {CHROMIUM} (make system-deps)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM
