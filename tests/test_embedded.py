"""Embedded mode end to end: `run_web.py` without PA_REDIS_URL serves the app and runs
the consumer in its own process (SQLite queue, in-process events)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from pa.auth_passwords import hash_password
from pa.db import make_engine, utcnow
from pa.models import Base, Review, User
from tests.services import SmtpServer, free_port, wait_for
from tests.web_fixtures import PASSWORD, job_reaches, next_message, read_until

ROOT = Path(__file__).resolve().parent.parent


def _seed(database_url: str) -> dict[str, int]:
    """Tables and people in the embedded database (not the test run's own)."""
    engine = make_engine(database_url)
    try:
        Base.metadata.create_all(engine)
        now = utcnow()
        password_hash = hash_password(PASSWORD)

        def user(email: str, role: str, manager_id: int | None = None) -> dict[str, Any]:
            return dict(email=email, name=email.split("@")[0].title(), role=role,
                        department="Sales", manager_id=manager_id,
                        password_hash=password_hash, created_at=now, updated_at=now)

        with engine.begin() as conn:
            ids = {}
            for email, role in (("mona@example.com", "manager"), ("hr1@example.com", "hr_admin"),
                                ("hr2@example.com", "hr_admin")):
                ids[email] = conn.execute(
                    insert(User).values(**user(email, role)).returning(User.id)).scalar_one()
            employee = conn.execute(
                insert(User).values(**user("alice@example.com", "employee",
                                           ids["mona@example.com"])).returning(User.id)
            ).scalar_one()
            ids["review"] = conn.execute(
                insert(Review).values(
                    employee_id=employee, manager_id=ids["mona@example.com"],
                    department="Sales", fiscal_year=now.year, status="manager_review",
                    ratings={"Delivery": 5}, overall_rating=5.0, goals="More",
                    manager_comments="Great", updated_at=now,
                ).returning(Review.id)
            ).scalar_one()
        return ids
    finally:
        engine.dispose()


@pytest.fixture
def embedded_web(tmp_path: Path, smtp_server: SmtpServer) -> Iterator[tuple[str, dict[str, int]]]:
    """`run_web.py` in embedded mode, in its own folder; stopped with SIGTERM."""
    port = free_port()
    database_url = f"sqlite:///{tmp_path / 'pa.db'}"
    ids = _seed(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PA_")}
    env.update(PA_DATABASE_URL=database_url, PA_DATA_DIR=str(tmp_path / "data"),
               PA_SMTP_URL=smtp_server.url, PA_HOST="127.0.0.1", PA_PORT=str(port))
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "run_web.py"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, log_path.read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=30, interval=0.1, message="run_web.py to answer")
        yield url, ids
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = log_path.read_text()
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output


def test_embedded_mode_end_to_end(embedded_web: tuple[str, dict[str, int]],
                                  smtp_server: SmtpServer) -> None:
    from websockets.asyncio.client import connect

    url, ids = embedded_web
    with httpx.Client(base_url=url, timeout=10) as http:
        # Given: no Redis at all
        health = http.get("/healthz").json()
        assert health == {"success": True, "data": {"database": "ok", "redis": "embedded"}}
        r = http.post("/api/session", json={"email": "mona@example.com", "password": PASSWORD})
        assert r.status_code == 200, r.text
        cookie = f"pa_session={http.cookies['pa_session']}"

        async def scenario() -> list[dict[str, Any]]:
            async with connect(url.replace("http", "ws") + "/ws", open_timeout=10,
                               additional_headers={"Cookie": cookie}) as ws:
                assert (await next_message(ws))["type"] == "snapshot"
                # When: the manager submits the review
                r = await asyncio.to_thread(http.post,
                                            f"/api/reviews/{ids['review']}/submit-to-hr")
                assert r.status_code == 202, r.text
                # Then: the socket sees the job through to the end
                return await read_until(ws, job_reaches(r.json()["jobId"], "completed"),
                                        timeout=30, what="the job to complete")

        seen = asyncio.run(scenario())
        job = seen[-1]["data"]
        assert job["result"] == {"sent": 2}
        for hr in ("hr1@example.com", "hr2@example.com"):
            [mail] = wait_for(partial(smtp_server.handler.to, hr), message=f"mail to {hr}")
            assert "Review submitted to HR" in mail["Subject"]
        assert http.get(f"/api/jobs/{job['id']}").json()["data"]["status"] == "completed"
        review = http.get(f"/api/reviews/{ids['review']}").json()["data"]
        assert review["status"] == "submitted_to_hr"

        # Failed logins are counted without Redis too (in the database): the sixth
        # try is refused, the right password included
        for _ in range(5):
            r = http.post("/api/session", json={"email": "mona@example.com", "password": "x"})
            assert r.status_code == 401, r.text
        r = http.post("/api/session", json={"email": "mona@example.com", "password": PASSWORD})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        assert int(r.headers["retry-after"]) > 0
