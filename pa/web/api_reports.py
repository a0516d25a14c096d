"""PDF reports: POST /api/reports starts a `generate_report` job; GET lists them.

Validation happens here, before a job exists: a year outside 2000..next year, a
blank department, or a year (and department) without any review is refused with
422 and the field at fault, because an empty PDF helps nobody. The department is
matched without regard to case and stored in the job as the reviews spell it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pa import db, estimates, jobs
from pa.errors import Invalid, Unprocessable
from pa.models import Review, Role
from pa.queue import JobType
from pa.web.auth import require_user
from pa.web.responses import accepted, json_body, ok, query_int

#: the first fiscal year a report may be asked for (the last is next year)
FIRST_YEAR = 2000
#: as long as Review.department may be
MAX_DEPARTMENT = 100


def _last_year() -> int:
    return db.utcnow().year + 1


def parse_fiscal_year(value: Any) -> int:
    """A whole number within FIRST_YEAR..next year: Invalid (400) or Unprocessable (422)."""
    if value is None:
        raise Invalid("fiscalYear is required.", field="fiscalYear")
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid("fiscalYear must be a whole number, like 2025.", field="fiscalYear")
    if not FIRST_YEAR <= value <= _last_year():
        raise Unprocessable(f"fiscalYear must be from {FIRST_YEAR} to {_last_year()}.",
                            field="fiscalYear")
    return value


def parse_department(value: Any) -> str | None:
    """None (every department) or a non-blank name of at most MAX_DEPARTMENT characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid("department must be a string.", field="department")
    name = value.strip()
    if not name:
        raise Unprocessable("department must not be empty; leave it out for every "
                            "department.", field="department")
    if len(name) > MAX_DEPARTMENT:
        raise Unprocessable(f"department is longer than {MAX_DEPARTMENT} characters.",
                            field="department")
    return name


def _departments(conn: Connection, year: int) -> list[tuple[str | None, int]]:
    rows = conn.execute(
        select(Review.department, func.count())
        .where(Review.fiscal_year == year)
        .group_by(Review.department)
        .order_by(Review.department)
    ).all()
    return [(name, count) for name, count in rows]


def resolve_scope(year: int, department: str | None) -> str | None:
    """The department as the reviews spell it; Unprocessable when nothing would be reported."""
    with db.read() as conn:
        counts = _departments(conn, year)
    if not counts:
        raise Unprocessable(f"There are no reviews for FY{year}.", field="fiscalYear")
    if department is None:
        return None
    matches = [(name, n) for name, n in counts
               if name is not None and name.lower() == department.lower()]
    if not matches:
        raise Unprocessable(f"There are no reviews for FY{year} in department "
                            f"'{department}'.", field="department")
    exact = [m for m in matches if m[0] == department]
    name, _ = exact[0] if exact else max(matches, key=lambda m: m[1])
    return name


def _unfinished_twin(user_id: int, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The caller's report job for the same scope that is still pending or running."""
    with db.read() as conn:
        return jobs.find_unfinished(conn, user_id, JobType.GENERATE_REPORT,
                                    lambda other: other == payload)


def start_report(user_id: int, year: int,
                 department: str | None) -> tuple[dict[str, Any], str | None, bool]:
    """(the job, its department, whether the job is new): asking again while the same
    report is still pending or running gets that job, not a second one."""
    canonical = resolve_scope(year, department)
    payload: dict[str, Any] = {"fiscalYear": year}
    if canonical is not None:
        payload["department"] = canonical
    running = _unfinished_twin(user_id, payload)
    if running is not None:
        return running, canonical, False
    return jobs.submit(JobType.GENERATE_REPORT, payload, user_id), canonical, True


async def create_report(request: Request) -> Response:
    """Start a PDF report of a fiscal year, of one department or all (HR).
    ---
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [fiscalYear]
            properties:
              fiscalYear: {type: integer}
              department: {type: [string, "null"], maxLength: 100}
    responses: {"202": {$ref: "#/components/responses/Accepted"}}
    """
    user = await require_user(request, Role.HR_ADMIN, Role.ADMIN)
    body = await json_body(request)
    year = parse_fiscal_year(body.get("fiscalYear"))
    department = parse_department(body.get("department"))
    job, canonical, new = await run_in_threadpool(start_report, user.id, year, department)
    what = f"The FY{year} report" + (f" of {canonical}" if canonical else "")
    return accepted(job, f"{what} is being generated." if new
                    else f"{what} is already being generated.")


def _with_scope(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each report job with `report: {fiscalYear, department}` (the Job object has no
    payload, and a list of reports that does not say which year is no use)."""
    table = jobs.jobs_table
    ids = [job["id"] for job in listed]
    with db.read() as conn:
        payloads = dict(conn.execute(
            select(table.c.id, table.c.payload).where(table.c.id.in_(ids))).all()) if ids else {}
    for job in listed:
        payload = payloads.get(job["id"]) or {}
        job["report"] = {"fiscalYear": payload.get("fiscalYear"),
                         "department": payload.get("department")}
    return listed


async def list_reports(request: Request) -> Response:
    """The caller's report jobs (admins: everyone's), newest first, with their scope (HR).

    The caller's report jobs (admins: everyone's), newest first, with their scope.
    ---
    parameters: [{$ref: "#/components/parameters/limit"}]
    responses: {"200": {$ref: "#/components/responses/OkReportJobs"}}
    """
    user = await require_user(request, Role.HR_ADMIN, Role.ADMIN)
    limit = query_int(request, "limit", 50, minimum=1, maximum=500)

    def read() -> list[dict[str, Any]]:
        return estimates.annotate(_with_scope(jobs.list_jobs(
            user.id, user.role, job_type=JobType.GENERATE_REPORT.value, limit=limit)))

    return ok(await run_in_threadpool(read))


async def list_departments(request: Request) -> Response:
    """The departments that have reviews in `fiscalYear`, for the report form (HR).

    The departments that have reviews in `fiscalYear`, for the report form.
    ---
    parameters:
      - {name: fiscalYear, in: query, required: true, schema: {type: integer}}
    responses: {"200": {$ref: "#/components/responses/OkDepartments"}}
    """
    await require_user(request, Role.HR_ADMIN, Role.ADMIN)
    year = query_int(request, "fiscalYear", minimum=FIRST_YEAR, maximum=_last_year())
    if year is None:
        raise Invalid("fiscalYear is required.", field="fiscalYear")

    def read() -> list[dict[str, Any]]:
        with db.read() as conn:
            return [{"name": name, "reviews": count}
                    for name, count in _departments(conn, year) if name is not None]

    return ok(await run_in_threadpool(read))


routes: list[BaseRoute] = [
    Route("/api/reports", create_report, methods=["POST"]),
    Route("/api/reports", list_reports, methods=["GET"]),
    Route("/api/reports/departments", list_departments, methods=["GET"]),
]
