"""Prometheus metrics (DESIGN.md, "Operators"): the web's GET /metrics and a
consumer's --metrics-port, scraped and read with prometheus-client's own parser."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from pa import jobs
from pa.models import Role
from pa.queue import JobType
from pa.settings import settings
from pa.web.app import create_app
from tests.factories import make_review, make_token, make_user
from tests.processes import ConsumerProcess, default_env
from tests.services import free_port, wait_final, wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) → value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_web_metrics_count_requests_jobs_queues_and_sockets() -> None:
    # Given: two pending emails, a failed report, a socket open, a few requests
    for _ in range(2):
        jobs.submit(JobType.EMAIL_NOTIFICATION, {"kind": "review_submitted", "reviewId": 1},
                    None)
    failed = jobs.submit(JobType.GENERATE_REPORT, {"fiscalYear": 2026}, None)
    jobs.change(failed["id"], {"status": "failed", "error": "x"})
    with TestClient(create_app()) as client:
        client.headers["Authorization"] = f"Bearer {make_token(make_user(Role.ADMIN))}"
        for _ in range(3):
            assert client.get("/api/jobs/nothing").status_code == 404
        assert client.get("/no/such/page").status_code == 404
        with client.websocket_connect("/ws") as ws:
            ws.receive_json()
            # When
            r = client.get("/metrics")
        # Then
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        got = samples(r.text)
    assert got[("pa_http_requests_total", (("method", "GET"), ("route", "/api/jobs/{job_id}"),
                                           ("status", "404")))] == 3
    assert got[("pa_http_requests_total", (("method", "GET"), ("route", "(unmatched)"),
                                           ("status", "404")))] == 1
    assert got[("pa_http_request_duration_seconds_count",
                (("route", "/api/jobs/{job_id}"),))] == 3
    assert got[("pa_jobs", (("status", "pending"),))] == 2
    assert got[("pa_jobs", (("status", "failed"),))] == 1
    assert got[("pa_jobs", (("status", "completed"),))] == 0
    assert got[("pa_queue_waiting", (("priority", "10"),))] == 2
    assert got[("pa_queue_waiting", (("priority", "5"),))] == 0
    assert got[("pa_queue_oldest_waiting_seconds", (("priority", "10"),))] >= 0
    assert got[("pa_consumers", ())] == 0
    assert got[("pa_websocket_connections", ())] == 1


def test_a_metrics_token_guards_the_metrics() -> None:
    config = dataclasses.replace(settings.get(), metrics_token="scrape-me")  # type: ignore[attr-defined]
    with TestClient(create_app(config)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nopé".encode("latin-1")}
                          ).status_code == 401
        r = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert r.status_code == 200 and "pa_jobs" in r.text


def test_a_consumer_serves_its_job_metrics(tmp_path: Path) -> None:
    # Given: a consumer with --metrics-port, and a job it runs
    port = free_port()
    consumer = ConsumerProcess(tmp_path / "consumer.log", default_env(), "thread", 1,
                               "--metrics-port", str(port))
    try:
        manager = make_user(Role.MANAGER)
        make_user(Role.HR_ADMIN)
        review = make_review(make_user(manager_id=manager.id))
        job = jobs.submit(JobType.EMAIL_NOTIFICATION,
                          {"kind": "review_submitted", "reviewId": review.id}, manager.id)
        assert wait_final(job["id"])["status"] == "completed"

        def scrape() -> Any:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return None

        got = samples(wait_for(scrape, message="the consumer's metrics"))
    finally:
        consumer.stop()
    email = (("type", "email_notification"),)
    assert got[("pa_jobs_finished_total", (("status", "completed"), *email))] == 1
    assert got[("pa_job_run_seconds_count", email)] == 1
    assert got[("pa_job_wait_seconds_count", email)] == 1
    assert got[("pa_job_wait_seconds_sum", email)] >= 0
