"""GET /api/analytics: figures at once for a small or cached range, otherwise a job."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pa import analytics, db, jobs
from pa.errors import Invalid
from pa.models import Role
from pa.queue import JobType
from pa.web.auth import require_user
from pa.web.responses import accepted, ok


def _unfinished_job(conn: Connection, scope: analytics.Scope,
                    user_id: int) -> dict[str, Any] | None:
    """The user's pending or running analytics job for the same range, if there is one."""

    def same_scope(payload: dict[str, Any]) -> bool:
        try:
            return analytics.Scope.parse(payload) == scope
        except Invalid:
            return False

    return jobs.find_unfinished(conn, user_id, JobType.MULTI_YEAR_ANALYTICS, same_scope)


def answer(scope: analytics.Scope, user_id: int, *, start_job: bool = True
           ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(figures, None) when they can be given now, else (None, the job computing them);
    (None, None) when they cannot and `start_job` is false."""
    with db.read() as conn:
        entry = analytics.cached(conn, scope)
        if entry is not None:
            # Only a range with a cache entry pays for the fingerprint (one index scan);
            # the others need just the count.
            stamp = analytics.fingerprint(conn, scope)
            if entry.is_fresh(stamp):
                return entry.figures, None
            count = stamp.reviews
        else:
            count = analytics.count_reviews(conn, scope)
        if count <= analytics.SMALL_RANGE:
            return analytics.figures(conn, scope), None
        if not start_job:
            return None, None
        running = _unfinished_job(conn, scope, user_id)
    if running is not None:
        return None, running
    return None, jobs.submit(JobType.MULTI_YEAR_ANALYTICS, scope.payload(), user_id)


async def get_analytics(request: Request) -> Response:
    """Multi-year figures (HR): now, or a job that computes them.
    ---
    parameters:
      - name: fromYear
        in: query
        required: true
        schema: {type: integer, minimum: 1000, maximum: 9999}
      - name: toYear
        in: query
        required: true
        schema: {type: integer, minimum: 1000, maximum: 9999}
      - {name: department, in: query, schema: {type: string, maxLength: 100}}
    responses:
      "200": {$ref: "#/components/responses/OkAnalytics"}
      "202": {$ref: "#/components/responses/Accepted"}
    """
    user = await require_user(request, Role.HR_ADMIN, Role.ADMIN)
    scope = analytics.Scope.parse(request.query_params)
    figures, job = await run_in_threadpool(answer, scope, user.id)
    if job is not None:
        return accepted(job, f"Analytics of {scope.from_year}–{scope.to_year} are being "
                             "computed; the job's result holds them.")
    return ok(figures)


routes: list[BaseRoute] = [
    Route("/api/analytics", get_analytics, methods=["GET"]),
]
