"""Prometheus metrics, with prometheus-client (DESIGN.md, "Operators").

The web: `GET /metrics` serves the request counters and durations of that process
(by route template, counted by MetricsMiddleware) and, read at scrape time, the jobs
by status, the queues, the consumers, this process's sockets and what building the
operators' overview for them has cost. Each app has its own registry (a process may
build several apps: the tests do).

A consumer started with `--metrics-port P` serves, on PA_METRICS_HOST:P, the jobs
its threads ran: how they ended, how long they ran, how long they had waited.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, start_http_server
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pa import db, ops
from pa.models import JobStatus
from pa.settings import settings

#: run and wait times of jobs, seconds (reports and imports take minutes)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)


class Sockets(Protocol):
    """This web process's sockets (pa.web.hub.Hub)."""

    overviews_built: int
    overview_seconds: float

    def count(self) -> int: ...


class StateCollector(Collector):
    """What the database says at scrape time, and this process's sockets."""

    def __init__(self, sockets: Sockets) -> None:
        self.sockets = sockets

    def collect(self) -> Iterable[Metric]:
        c = ops.jobs_table.c
        with db.read() as conn:
            by_status: dict[str, int] = dict(conn.execute(
                select(c.status, func.count()).group_by(c.status)).all())
        jobs = GaugeMetricFamily("pa_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status.value, 0))
        yield jobs
        overview = ops.overview()
        waiting = GaugeMetricFamily("pa_queue_waiting",
                                    "Due jobs waiting to be claimed, by priority.",
                                    labels=["priority"])
        oldest = GaugeMetricFamily("pa_queue_oldest_waiting_seconds",
                                   "How long the oldest due job has waited, by priority.",
                                   labels=["priority"])
        for queue in overview["queues"]:
            waiting.add_metric([str(queue["priority"])], queue["waiting"])
            oldest.add_metric([str(queue["priority"])], queue["oldestWaitingSeconds"] or 0)
        yield waiting
        yield oldest
        yield GaugeMetricFamily("pa_consumers", "Consumer processes that beat lately.",
                                value=sum(1 for x in overview["consumers"] if not x["silent"]))
        yield GaugeMetricFamily("pa_websocket_connections",
                                "WebSockets open on this web process.",
                                value=self.sockets.count())
        yield CounterMetricFamily("pa_ops_overviews", "Overviews built for admins' sockets.",
                                  value=self.sockets.overviews_built)
        yield CounterMetricFamily("pa_ops_overview_seconds",
                                  "Seconds spent building overviews for admins' sockets.",
                                  value=self.sockets.overview_seconds)


class WebMetrics:
    """One app's registry: its request metrics and the state collector."""

    def __init__(self, routes: list[BaseRoute], sockets: Sockets,
                 token: str | None = None) -> None:
        #: PA_METRICS_TOKEN
        self.token = token
        self.registry = CollectorRegistry()
        self.requests = Counter("pa_http_requests", "HTTP requests answered.",
                                ["method", "route", "status"], registry=self.registry)
        self.duration = Histogram("pa_http_request_duration_seconds",
                                  "Time to answer an HTTP request, by route template.",
                                  ["route"], registry=self.registry)
        self.registry.register(StateCollector(sockets))
        #: the route template of each endpoint (a label of bounded cardinality)
        self.templates: dict[Any, str] = {}
        for route in routes:
            if isinstance(route, Route | WebSocketRoute | Mount):
                endpoint = route.app if isinstance(route, Mount) else route.endpoint
                self.templates.setdefault(endpoint, route.path)

    def page(self, authorization: str | None) -> tuple[int, bytes, str]:
        """(status, body, content type) of GET /metrics for this Authorization header."""
        token = self.token
        # (bytes: compare_digest refuses str with non-ASCII characters)
        if token and not hmac.compare_digest((authorization or "").encode(),
                                             f"Bearer {token}".encode()):
            return 401, b"Send Authorization: Bearer <PA_METRICS_TOKEN>.\n", "text/plain"
        return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Count and time every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: WebMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router wrote the endpoint into this scope; an unknown path has none.
            route = self.metrics.templates.get(scope.get("endpoint"), "(unmatched)")
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.duration.labels(route).observe(time.perf_counter() - started)


# --- a consumer's metrics ----------------------------------------------------------

consumer_registry = CollectorRegistry()
jobs_finished = Counter("pa_jobs_finished", "Attempts run by this consumer, by how they ended.",
                        ["type", "status"], registry=consumer_registry)
job_run_seconds = Histogram("pa_job_run_seconds", "How long an attempt ran.", ["type"],
                            buckets=JOB_BUCKETS, registry=consumer_registry)
job_wait_seconds = Histogram("pa_job_wait_seconds",
                             "From created to claimed, for first attempts.", ["type"],
                             buckets=JOB_BUCKETS, registry=consumer_registry)


def attempt_ended(job_type: str, status: str, ran: float, waited: float | None) -> None:
    """Record one attempt of this consumer: `status` is how it left the row
    (`pending` when it waits for a retry); `waited` is None for a later attempt
    (its claim no longer knows when it fell due)."""
    jobs_finished.labels(job_type, status).inc()
    job_run_seconds.labels(job_type).observe(ran)
    if waited is not None:
        job_wait_seconds.labels(job_type).observe(waited)


def serve_consumer_metrics(port: int) -> None:
    """Serve the consumer's metrics on PA_METRICS_HOST:port (a thread)."""
    start_http_server(port, addr=settings.metrics_host, registry=consumer_registry)
