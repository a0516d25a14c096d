"""The factories build pa's parts from the Settings they are given, in this process:
an embedded configuration (a SQLite file of its own, no Redis) runs beside the
suite's, and the suite's is whole again afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from huey import SqliteHuey
from sqlalchemy import func, select

from pa import db, events, queue, runtime
from pa.models import Job, Role
from pa.queue import EventCarryingStorage, JobType
from pa.schema import migrate
from pa.settings import Settings, current, settings
from pa.worker import start_embedded, stop_embedded
from tests.factories import make_review, make_user
from tests.services import SmtpServer, wait_for
from tests.web_fixtures import (
    job_reaches,
    live_server,
    next_message,
    open_socket,
    read_until,
    user_with_password,
)


@pytest.fixture
def embedded(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[Settings]:
    """An embedded configuration; the suite's is configured again afterwards."""
    suite = current()
    yield dataclasses.replace(suite, database_url=f"sqlite:///{tmp_path / 'pa.db'}",
                              redis_url=None, data_dir=tmp_path / "data")
    runtime.configure(suite)


def _jobs() -> int:
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(Job)).scalar_one())


def test_each_configuration_gets_its_own_parts(embedded: Settings) -> None:
    suite = current()
    # When: pa is configured for the embedded settings, then for the suite's again
    runtime.configure(embedded)
    # Then: each time, every part is the configuration's
    assert settings.data_dir == embedded.data_dir
    assert db.engine().url.database == str(embedded.data_dir.parent / "pa.db")
    assert isinstance(events.bus(), events.LocalBus)
    assert isinstance(queue.huey(), SqliteHuey)
    assert (embedded.data_dir / "queue.db").exists()
    runtime.configure(suite)
    assert settings.data_dir == suite.data_dir
    assert db.engine().url.render_as_string(hide_password=False) == suite.database_url
    assert isinstance(events.bus(), events.RedisBus)
    assert isinstance(queue.huey().storage, EventCarryingStorage)


def test_an_embedded_app_and_consumer_run_in_the_suites_process(
        embedded: Settings, smtp_server: SmtpServer) -> None:
    # Given: the suite's database holds no job, and the app and a consumer are built,
    # in this process, for an embedded configuration with a database of its own
    suite = current()
    assert _jobs() == 0
    with live_server(config=embedded) as server:
        migrate(db.engine())
        manager = user_with_password(Role.MANAGER, email="mona@example.com")
        for hr in ("hr1@example.com", "hr2@example.com"):
            make_user(Role.HR_ADMIN, email=hr)
        review = make_review(make_user(manager_id=manager.id))
        cookie = server.cookie(manager)
        consumer, maintenance = start_embedded(workers=1, config=embedded, periodic=False)
        try:
            async def scenario() -> list[dict[str, Any]]:
                ws = await open_socket(server, cookie)
                try:
                    assert (await next_message(ws))["type"] == "snapshot"
                    # When: the manager submits the review
                    with server.http() as http:
                        r = await asyncio.to_thread(
                            http.post, f"/api/reviews/{review.id}/submit-to-hr",
                            headers={"Cookie": cookie})
                    assert r.status_code == 202, r.text
                    # Then: the job runs on the embedded queue, its events on the
                    # in-process bus
                    return await read_until(ws, job_reaches(r.json()["jobId"], "completed"),
                                            timeout=30, what="the job to complete")
                finally:
                    await ws.close()

            seen = asyncio.run(scenario())
        finally:
            stop_embedded(consumer, maintenance)
        job = seen[-1]["data"]
        assert job["type"] == JobType.EMAIL_NOTIFICATION.value and job["result"] == {"sent": 2}
        for hr in ("hr1@example.com", "hr2@example.com"):
            wait_for(partial(smtp_server.handler.to, hr), message=f"mail to {hr}")
        assert _jobs() == 1
    # And: the suite's configuration, once given back, never saw that job
    runtime.configure(suite)
    assert _jobs() == 0
