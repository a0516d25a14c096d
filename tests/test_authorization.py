"""Who may do what: every API route (and /ws) × every role × the caller's own
resource, another user's, and a demoted user's, with the answer each must get
(DESIGN.md: the job rule after "A job belongs to ...", review visibility, roles).

The scenarios:
- own: the caller's. A job they started (of a type their role starts; an employee's
  is an email job from a review they submitted as someone's current manager, which
  their role does not see). A review whose manager they are.
- other: another user's: a job of the same type started by someone else, a review
  the caller has nothing to do with.
- demoted: the caller was an admin (their token made then) and holds the role now.
  The job is the backup they started as admin; the review is one they have nothing
  to do with. An admin cannot be demoted to admin: no such case.
- a route without a resource of anyone's (/api/me, the fiscal years, the backups)
  runs "own" (the role as it is) and "demoted" (the role as it became).

An expectation is a status, or for a list (and /ws's snapshot) whether the
resource is in it: "listed" / "unlisted" (both 200).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import insert, update
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

from pa import archive, backup, db, jobs
from pa.models import FiscalYear, Role, User
from pa.queue import JobType
from pa.settings import settings
from tests.factories import make_review, make_token, make_user
from tests.web_fixtures import PASSWORD, app_client, user_with_password

E, M, H, A = Role.EMPLOYEE, Role.MANAGER, Role.HR_ADMIN, Role.ADMIN
ROLES = (E, M, H, A)
YEAR = 2026
#: the job a role starts (an employee's: an email, from a review they manage)
OWN_TYPE = {E: JobType.EMAIL_NOTIFICATION, M: JobType.EMAIL_NOTIFICATION,
            H: JobType.GENERATE_REPORT, A: JobType.DATABASE_BACKUP}
#: the role of "another user" who starts that type
OTHER_ROLE = {E: M, M: M, H: H, A: A}
PAYLOAD = {JobType.EMAIL_NOTIFICATION: {"kind": "review_submitted", "reviewId": 1},
           JobType.GENERATE_REPORT: {"fiscalYear": YEAR}, JobType.DATABASE_BACKUP: {}}
L, U = "listed", "unlisted"


@dataclass(frozen=True)
class Row:
    """One route: what it needs (`kind`) and, per scenario, the answer for employee,
    manager, hr_admin, admin."""

    route: str
    kind: str  # "job:<status>", "review", "year", or "" (nothing of anyone's)
    expect: dict[str, tuple[int | str, ...]]


def _same(*answer: int | str) -> dict[str, tuple[int | str, ...]]:
    """No resource of anyone's: the answer depends on the role only (as it is now)."""
    return {"own": answer, "demoted": answer[:3]}


JOB = {"own": (404, 200, 200, 200), "other": (404, 404, 404, 200), "demoted": (404, 404, 404)}
ROWS = [
    Row("POST /api/session", "", _same(200, 200, 200, 200)),
    Row("DELETE /api/session", "", _same(200, 200, 200, 200)),
    Row("GET /api/me", "", _same(200, 200, 200, 200)),
    Row("GET /api/jobs", "job:pending",
        {"own": (U, L, L, L), "other": (U, U, U, L), "demoted": (U, U, U)}),
    Row("GET /api/jobs/{job_id}", "job:pending", JOB),
    Row("POST /api/jobs/{job_id}/cancel", "job:pending", JOB),
    Row("POST /api/jobs/{job_id}/retry", "job:failed",
        {"own": (404, 202, 202, 202), "other": (404, 404, 404, 202),
         "demoted": (404, 404, 404)}),
    Row("GET /api/jobs/{job_id}/download", "job:completed", JOB),
    Row("WS /ws", "job:pending",
        {"own": (U, L, L, L), "other": (U, U, U, L), "demoted": (U, U, U)}),
    Row("GET /api/reviews", "review",
        {"own": (L, L, L, L), "other": (U, U, L, L), "demoted": (U, U, L)}),
    Row("GET /api/reviews/{review_id}", "review",
        {"own": (200, 200, 200, 200), "other": (404, 404, 200, 200),
         "demoted": (404, 404, 200)}),
    # The review's manager submits it whatever their role; HR sees it but is not its manager.
    Row("POST /api/reviews/{review_id}/submit-to-hr", "review",
        {"own": (202, 202, 202, 202), "other": (404, 404, 403, 202),
         "demoted": (404, 404, 403)}),
    # (An admin made hr_admin still sees the reports they started: hr_admin starts them.)
    Row("GET /api/reports", "job:pending:report",
        {"own": (403, 403, L, L), "other": (403, 403, U, L), "demoted": (403, 403, L)}),
    Row("POST /api/reports", "year", _same(403, 403, 202, 202)),
    Row("GET /api/reports/departments", "year", _same(403, 403, 200, 200)),
    Row("GET /api/analytics", "year", _same(403, 403, 200, 200)),
    Row("POST /api/users/import", "", _same(403, 403, 403, 202)),
    Row("GET /api/users/import/template", "", _same(403, 403, 403, 200)),
    Row("GET /api/fiscal-years", "year", _same(403, 403, 200, 200)),
    Row("POST /api/fiscal-years/{year}/close", "year", _same(403, 403, 202, 202)),
    Row("GET /api/fiscal-years/{year}/archive", "archive", _same(403, 403, 200, 200)),
    Row("GET /api/admin/backups", "", _same(403, 403, 403, 200)),
    Row("POST /api/admin/backups", "", _same(403, 403, 403, 202)),
    Row("GET /api/admin/backups/{name}", "backup", _same(403, 403, 403, 200)),
    Row("GET /api/ops/overview", "", _same(403, 403, 403, 200)),
    Row("POST /api/ops/types/{type}/pause", "", _same(403, 403, 403, 200)),
    Row("POST /api/ops/types/{type}/resume", "", _same(403, 403, 403, 200)),
    Row("POST /api/ops/retry-failed", "", _same(403, 403, 403, 200)),
    Row("GET /healthz", "", _same(200, 200, 200, 200)),
    Row("GET /openapi.json", "", _same(200, 200, 200, 200)),
]
#: the routes anyone may call; every other one answers 401 without credentials
PUBLIC = {"POST /api/session", "DELETE /api/session", "GET /healthz", "GET /openapi.json"}
BACKUP_NAME = "pa-backup-20260101T020000Z.sqlite.gz"


def _cases() -> Iterator[Any]:
    for row in ROWS:
        for scenario, answers in row.expect.items():
            for role, answer in zip(ROLES, answers, strict=False):
                yield pytest.param(row, scenario, role, answer,
                                   id=f"{row.route} {scenario} {role.value}")


@dataclass
class World:
    caller: User
    token: str
    values: dict[str, str]  # what fills the route's {placeholders}
    job_id: str | None = None
    review_id: int | None = None


def _job(owner: User, job_type: JobType, status: str) -> str:
    job = jobs.submit(job_type, PAYLOAD[job_type], owner.id)
    if status == "failed":
        jobs.change(job["id"], {"status": "failed", "error": "It broke.",
                                "completed_at": db.utcnow()})
    elif status == "completed":
        path = settings.data_dir / "results" / f"{job['id']}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"the file")
        jobs.change(job["id"], {"status": "completed", "completed_at": db.utcnow(),
                                "result_file": f"results/{job['id']}.bin"})
    return str(job["id"])


def _world(row: Row, scenario: str, role: Role) -> World:
    demoted = scenario == "demoted"
    caller = user_with_password(A if demoted else role)
    token = make_token(caller)
    world = World(caller, token, {"type": JobType.GENERATE_REPORT.value})
    kind = row.kind.split(":")
    if kind[0] == "job":
        job_type = JobType.GENERATE_REPORT if kind[-1] == "report" else OWN_TYPE[role]
        if demoted:
            owner = caller
            job_type = (JobType.GENERATE_REPORT if kind[-1] == "report"
                        else JobType.DATABASE_BACKUP)
        elif scenario == "own":
            owner = caller
        else:
            owner = make_user(H if kind[-1] == "report" else OTHER_ROLE[role])
        world.job_id = _job(owner, job_type, kind[1])
        world.values["job_id"] = world.job_id
    if kind[0] in ("review", "year", "archive"):
        manager = caller if scenario == "own" else make_user(M)
        employee = make_user(E, manager_id=manager.id, department="Engineering")
        world.review_id = make_review(employee, fiscal_year=YEAR).id
        world.values["review_id"] = str(world.review_id)
        world.values["year"] = str(YEAR)
    if kind[0] == "archive":
        with db.begin() as conn:
            conn.execute(insert(FiscalYear).values(year=YEAR, closed_at=db.utcnow()))
        path = settings.data_dir / archive.archive_relpath(YEAR)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"the archive")
    if kind[0] == "backup":
        backup.backups_dir().mkdir(parents=True, exist_ok=True)
        (backup.backups_dir() / BACKUP_NAME).write_bytes(b"the database")
        world.values["name"] = BACKUP_NAME
    if demoted:
        with db.begin() as conn:
            conn.execute(update(User).where(User.id == caller.id).values(role=role.value))
    return world


def _request(client: TestClient, row: Row, world: World, headers: dict[str, str]) -> Any:
    method, template = row.route.split(" ")
    url = template.format(**world.values)
    body: dict[str, Any] = {}
    if row.route == "POST /api/session":
        body["json"] = {"email": world.caller.email, "password": PASSWORD}
    elif row.route == "POST /api/reports":
        body["json"] = {"fiscalYear": YEAR}
    elif row.route == "POST /api/users/import":
        csv = b"email,name,role,department,manager_email\nnew@example.com,New,employee,,\n"
        body["files"] = {"file": ("users.csv", io.BytesIO(csv), "text/csv")}
    query = {"GET /api/reports/departments": {"fiscalYear": YEAR},
             "GET /api/analytics": {"fromYear": YEAR, "toYear": YEAR}}.get(row.route)
    return client.request(method, url, headers=headers, params=query, **body)


def _listed(row: Row, world: World, answer: Any) -> bool:
    items = answer["data"]["jobs"] if row.route == "WS /ws" else answer["data"]
    wanted = world.job_id if row.kind.startswith("job") else world.review_id
    return any(item["id"] == wanted for item in items)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with app_client() as c:
        yield c


@pytest.mark.parametrize(("row", "scenario", "role", "expected"), list(_cases()))
def test_who_may_do_what(client: TestClient, row: Row, scenario: str, role: Role,
                         expected: int | str) -> None:
    world = _world(row, scenario, role)
    headers = {"Authorization": f"Bearer {world.token}"}
    if row.route == "WS /ws":
        with client.websocket_connect("/ws", headers=headers) as ws:
            snapshot = ws.receive_json()
        assert snapshot["type"] == "snapshot"
        assert (L if _listed(row, world, snapshot) else U) == expected
        return
    r = _request(client, row, world, headers)
    if expected in (L, U):
        assert r.status_code == 200, r.text
        assert (L if _listed(row, world, r.json()) else U) == expected, r.text
    else:
        assert r.status_code == expected, r.text
        if expected >= 400:
            assert r.json()["success"] is False
    client.cookies.clear()  # (a login sets one; the next case must not carry it)


@pytest.mark.parametrize("row", ROWS, ids=[row.route for row in ROWS])
def test_without_credentials_only_the_public_routes_answer(client: TestClient,
                                                           row: Row) -> None:
    world = _world(row, "other", M)
    if row.route == "WS /ws":
        with client.websocket_connect("/ws") as ws:
            assert ws.receive() == {"type": "websocket.close", "code": 4401,
                                    "reason": "Sign in first."}
        return
    r = _request(client, row, world, {})
    if row.route in PUBLIC:
        assert r.status_code < 400, r.text
    else:
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    client.cookies.clear()


def test_the_table_has_every_route(client: TestClient) -> None:
    routes = set()
    for r in client.app.routes:
        path = re.sub(r":\w+}", "}", getattr(r, "path", ""))
        if isinstance(r, WebSocketRoute):
            routes.add(f"WS {path}")
        elif isinstance(r, Route) and not _is_page(path):
            routes |= {f"{m} {path}" for m in (r.methods or set()) - {"HEAD"}}
    assert routes == {row.route for row in ROWS}


def _is_page(path: str) -> bool:
    """Pages answer HTML to every role; tests/test_page_routes.py has their table."""
    return not (path.startswith("/api/") or path in ("/healthz", "/openapi.json"))

