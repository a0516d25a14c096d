"""The API of the session, the signed-in user, jobs and health."""

from __future__ import annotations

import mimetypes
import secrets
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from pa import db, estimates, events, jobs
from pa.errors import Invalid, NotFound, Unauthorized
from pa.settings import settings
from pa.web.auth import (
    SESSION_AT_KEY,
    SESSION_ID_KEY,
    SESSION_KEY,
    Principal,
    check_login,
    end_session,
    require_user,
    session_id,
)
from pa.web.responses import Json, accepted, json_body, ok, query_int, query_str

#: longer passwords are refused before hashing (argon2's cost grows with length)
MAX_PASSWORD = 1024
#: password checks running at once in one web process (DESIGN.md)
PASSWORD_CHECKS = 2
MEDIA_TYPES = {
    ".pdf": "application/pdf",
    ".csv": "text/csv; charset=utf-8",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".gz": "application/gzip",
    ".zip": "application/zip",
    ".db": "application/vnd.sqlite3",
    ".sqlite": "application/vnd.sqlite3",
    ".sql": "application/sql",
}


def _required_str(body: dict[str, Any], name: str, max_length: int) -> str:
    value = body.get(name)
    if value is None or value == "":
        raise Invalid(f"{name} is required.", field=name)
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string.", field=name)
    if len(value) > max_length:
        raise Invalid(f"{name} is longer than {max_length} characters.", field=name)
    return value


async def login(request: Request) -> Response:
    """Sign in: the answer sets the pa_session cookie.
    ---
    security: [{}]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [email, password]
            properties:
              email: {type: string, minLength: 1, maxLength: 254}
              password: {type: string, minLength: 1, maxLength: 1024}
    responses: {"200": {$ref: "#/components/responses/OkUser"}}
    """
    body = await json_body(request)
    email = _required_str(body, "email", 254)
    password = _required_str(body, "password", MAX_PASSWORD)
    client = request.client.host if request.client else "unknown"
    # At most PASSWORD_CHECKS hashes at a time (each takes ~64 MiB and 0.1-0.2 s);
    # the failure counts are read inside the gate, so that a burst of tries in
    # parallel cannot all pass the count before the first failure is written.
    async with request.app.state.password_checks:
        user = await run_in_threadpool(check_login, email, password, client)
    if user is None:
        # One message for every case: it must not tell whether the email exists.
        raise Unauthorized("Wrong email or password.")
    request.session.clear()
    request.session[SESSION_KEY] = user.id
    request.session[SESSION_ID_KEY] = secrets.token_urlsafe(16)
    request.session[SESSION_AT_KEY] = time.time()
    request.scope["pa.user"] = user
    return ok(user.to_dict())


async def logout(request: Request) -> Response:
    """Sign out: the login ends on every web process, its sockets close.
    ---
    security: [{}]
    responses: {"200": {$ref: "#/components/responses/OkNoData"}}
    """
    sid = session_id(request)
    request.session.clear()
    if sid is not None:
        # The cookie, and any copy of it, stops working on every web process...
        await run_in_threadpool(end_session, sid)
        # ...and every web process closes the sockets this login opened: a tab
        # left open must not go on receiving the user's jobs.
        await run_in_threadpool(events.publish, events.session_end_event(sid))
    return ok(None)


async def me(request: Request) -> Response:
    """The signed-in user.
    ---
    responses: {"200": {$ref: "#/components/responses/OkUser"}}
    """
    user = await require_user(request)
    return ok(user.to_dict())


async def list_jobs(request: Request) -> Response:
    """The caller's jobs (admins: everyone's), newest first.
    ---
    parameters:
      - {name: status, in: query, schema: {enum: JOB_STATUSES}}
      - {name: type, in: query, schema: {enum: JOB_TYPES}}
      - {$ref: "#/components/parameters/limit"}
    responses: {"200": {$ref: "#/components/responses/OkJobs"}}
    """
    user = await require_user(request)
    status = query_str(request, "status")
    job_type = query_str(request, "type")
    limit = query_int(request, "limit", 50, minimum=1, maximum=500)
    def read() -> list[dict[str, Any]]:
        return estimates.annotate(jobs.list_jobs(user.id, user.role, status=status,
                                           job_type=job_type, limit=limit))

    return ok(await run_in_threadpool(read))


async def get_job(request: Request) -> Response:
    """One job (owner or admin), to poll it.
    ---
    parameters: [{$ref: "#/components/parameters/jobId"}]
    responses: {"200": {$ref: "#/components/responses/OkJob"}}
    """
    user = await require_user(request)
    def read() -> dict[str, Any]:
        return estimates.annotate([jobs.get(request.path_params["job_id"], user.id, user.role)])[0]

    return ok(await run_in_threadpool(read))


async def cancel_job(request: Request) -> Response:
    """Cancel a job: pending ones at once, running ones at their next check.
    ---
    parameters: [{$ref: "#/components/parameters/jobId"}]
    responses: {"200": {$ref: "#/components/responses/OkJob"}}
    """
    user = await require_user(request)
    job = await run_in_threadpool(jobs.cancel, request.path_params["job_id"], user.id,
                                  user.role)
    return ok(job)


async def retry_job(request: Request) -> Response:
    """Queue a failed or cancelled job again.
    ---
    parameters: [{$ref: "#/components/parameters/jobId"}]
    responses: {"202": {$ref: "#/components/responses/Accepted"}}
    """
    user = await require_user(request)
    job = await run_in_threadpool(jobs.retry, request.path_params["job_id"], user.id,
                                  user.role)
    return accepted(job, "The job is queued again.")


def media_type(name: str) -> str:
    """The Content-Type of a downloaded file, by its extension."""
    known = MEDIA_TYPES.get(Path(name).suffix.lower())
    return known or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _job_file(job_id: str, user: Principal) -> Path:
    _job, relative = jobs.result_file(job_id, user.id, user.role)
    root = settings.data_dir.resolve()
    path = (root / relative).resolve()
    # The path comes from our own tasks; still, never serve outside PA_DATA_DIR.
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"The file of job {job_id} is no longer there.")
    return path


async def download_job(request: Request) -> Response:
    """The file a completed job left.
    ---
    parameters: [{$ref: "#/components/parameters/jobId"}]
    responses: {"200": {$ref: "#/components/responses/File"}}
    """
    user = await require_user(request)
    path = await run_in_threadpool(_job_file, request.path_params["job_id"], user)
    return FileResponse(path, filename=path.name, media_type=media_type(path.name))


_health_redis: redis.Redis | None = None


def _redis_answers() -> bool:
    global _health_redis
    if _health_redis is None:
        assert settings.redis_url
        # A probe answers for now: no retries, short timeouts.
        _health_redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
    try:
        return bool(_health_redis.ping())
    except redis.RedisError:
        return False


def _database_answers() -> bool:
    try:
        with db.read() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def _health() -> dict[str, str]:
    checks = {"database": "ok" if _database_answers() else "unavailable"}
    if settings.embedded:
        checks["redis"] = "embedded"  # no Redis to ask: queue and events are in-process
    else:
        checks["redis"] = "ok" if _redis_answers() else "unavailable"
    return checks


async def healthz(request: Request) -> Response:
    """Whether the database and Redis answer: 200, or 503 naming those that do not.
    ---
    security: [{}]
    responses:
      "200": {$ref: "#/components/responses/OkHealth"}
      "503":
        description: Those that do not answer, in the error envelope with `data`.
        content:
          application/json:
            schema:
              allOf:
                - {$ref: "#/components/schemas/Error"}
                - type: object
                  required: [data]
                  properties: {data: {$ref: "#/components/schemas/Health"}}
    """
    checks = await run_in_threadpool(_health)
    down = [name for name, state in checks.items() if state == "unavailable"]
    if not down:
        return ok(checks)
    names = {"database": "the database", "redis": "Redis"}
    message = " and ".join(names[n] for n in down) + " did not answer."
    return Json(
        {"success": False, "error": {"code": "unavailable", "message": message},
         "data": checks},
        status_code=503,
    )


routes: list[BaseRoute] = [
    Route("/api/session", login, methods=["POST"]),
    Route("/api/session", logout, methods=["DELETE"]),
    Route("/api/me", me, methods=["GET"]),
    Route("/api/jobs", list_jobs, methods=["GET"]),
    Route("/api/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/api/jobs/{job_id}/retry", retry_job, methods=["POST"]),
    Route("/api/jobs/{job_id}/download", download_job, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]
