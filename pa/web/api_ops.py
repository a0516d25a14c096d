"""The operators' API (admins): the overview, pausing and resuming a job type,
retrying every failed job (DESIGN.md, "Operators")."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pa import events, ops
from pa.errors import Invalid
from pa.models import Role
from pa.web.auth import require_user
from pa.web.responses import json_body, ok


async def overview(request: Request) -> Response:
    """What the queues, job types, consumers and periodic tasks are doing (admin).
    ---
    responses: {"200": {$ref: "#/components/responses/OkOverview"}}
    """
    await require_user(request, Role.ADMIN)
    return ok(await run_in_threadpool(ops.overview))


async def _switch(request: Request, paused: bool) -> Response:
    await require_user(request, Role.ADMIN)
    change = ops.pause if paused else ops.resume
    data = await run_in_threadpool(change, request.path_params["type"])
    await run_in_threadpool(events.publish, events.ops_event())
    return ok(data)


async def pause_type(request: Request) -> Response:
    """Pause a job type: its jobs stay pending on every consumer until resumed (admin).
    ---
    parameters: [{$ref: "#/components/parameters/jobType"}]
    responses: {"200": {$ref: "#/components/responses/OkTypeSwitch"}}
    """
    return await _switch(request, True)


async def resume_type(request: Request) -> Response:
    """Resume a paused job type: its pending jobs are queued again (admin).
    ---
    parameters: [{$ref: "#/components/parameters/jobType"}]
    responses: {"200": {$ref: "#/components/responses/OkTypeSwitch"}}
    """
    return await _switch(request, False)


async def retry_failed(request: Request) -> Response:
    """Every failed job (of one type) back to pending and queued (admin).
    ---
    requestBody:
      content:
        application/json:
          schema:
            type: object
            properties: {type: {enum: JOB_TYPES}}
    responses: {"200": {$ref: "#/components/responses/OkRetried"}}
    """
    await require_user(request, Role.ADMIN)
    body = await json_body(request, optional=True)
    job_type = body.get("type")
    if job_type is not None and (not isinstance(job_type, str)
                                 or job_type not in ops.JOB_TYPE_NAMES):
        raise Invalid("type must be a job type.", field="type")
    retried = await run_in_threadpool(ops.retry_failed, job_type)
    return ok({"retried": retried})


async def metrics_page(request: Request) -> Response:
    """GET /metrics: Prometheus's text format (PA_METRICS_TOKEN, when set, guards it).
    Not in the OpenAPI document: it is Prometheus's, not pa's JSON API."""
    web_metrics = request.app.state.metrics
    status, body, media_type = await run_in_threadpool(
        web_metrics.page, request.headers.get("authorization"))
    return Response(body, status_code=status, media_type=media_type)


routes: list[BaseRoute] = [
    Route("/api/ops/overview", overview, methods=["GET"]),
    Route("/api/ops/types/{type}/pause", pause_type, methods=["POST"]),
    Route("/api/ops/types/{type}/resume", resume_type, methods=["POST"]),
    Route("/api/ops/retry-failed", retry_failed, methods=["POST"]),
    Route("/metrics", metrics_page, methods=["GET"]),
]
