"""The HTML pages: server-rendered shells that static/app.js fills from the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from pa import __version__, analytics, charts, db, jobs
from pa.errors import Conflict, NotFound
from pa.models import Job, ReviewStatus, Role, User
from pa.queue import JobType
from pa.web.api_analytics import answer
from pa.web.auth import Principal, current_user, require_user

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates" / "pages"

templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined
    )
)


#: the header's links: (path, page, text, roles that see it; empty = everyone)
NAV: list[tuple[str, str, str, tuple[Role, ...]]] = [
    ("/", "jobs", "My jobs", ()),
    ("/reviews", "reviews", "Reviews", ()),
    ("/reports", "reports", "Reports", (Role.HR_ADMIN, Role.ADMIN)),
    ("/analytics", "analytics", "Analytics", (Role.HR_ADMIN, Role.ADMIN)),
    ("/import", "import", "Import", (Role.ADMIN,)),
    ("/fiscal-years", "fiscal_years", "Fiscal years", (Role.HR_ADMIN, Role.ADMIN)),
    ("/backups", "backups", "Backups", (Role.ADMIN,)),
    ("/ops", "ops", "Operations", (Role.ADMIN,)),
]


def _nav(user: Principal | None) -> list[dict[str, str]]:
    if user is None:
        return []
    return [{"href": href, "page": page, "text": text} for href, page, text, roles in NAV
            if not roles or user.role in roles]


def _render(request: Request, name: str, page: str, user: Principal | None,
            status: int = 200, **context: Any) -> Response:
    context.update(
        page=page,
        user=user,
        nav_links=_nav(user),
        this_year=db.utcnow().year,
        # The page's birth in server time: toasts only for jobs finished after it.
        server_time=db.utcnow().isoformat().replace("+00:00", "Z"),
        asset_version=__version__,
    )
    return templates.TemplateResponse(request, name, context, status_code=status)


def safe_next(value: str | None) -> str:
    """A local path to go to after signing in (never another site).

    Browsers drop tabs and newlines from a URL and read a backslash as a slash, so
    `/\t/host` or `/\\host` would be `//host`, another site: any control character
    or backslash sends the user home instead.
    """
    if (not value or not value.startswith("/") or value.startswith("//")
            or "\\" in value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)):
        return "/"
    return value


def _to_login(request: Request) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


async def login_page(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    user = await current_user(request)
    if user is not None:
        return RedirectResponse(next_path, status_code=303)
    return _render(request, "login.html", "login", None, next=next_path)


async def jobs_page(request: Request) -> Response:
    user = await current_user(request)
    if user is None:
        return _to_login(request)
    # An admin sees everyone's jobs: name their owners (a job carries only an id).
    owners = await run_in_threadpool(job_owner_names) if user.is_admin else {}
    return _render(request, "jobs.html", "jobs", user, owners=owners)


def job_owner_names() -> dict[int, str]:
    """The name of every user who owns a job."""
    job_owners = select(Job.user_id).where(Job.user_id.is_not(None)).distinct()
    with db.read() as conn:
        rows = conn.execute(select(User.id, User.name).where(User.id.in_(job_owners))).all()
    return {row.id: row.name for row in rows}


async def reviews_page(request: Request) -> Response:
    user = await current_user(request)
    if user is None:
        return _to_login(request)
    return _render(request, "reviews.html", "reviews", user,
                   statuses=[s.value for s in ReviewStatus])


def _page(name: str, page: str, *roles: Role) -> Any:
    """A page shell for signed-in users of `roles` (others: the 404 page, as the API does)."""

    async def endpoint(request: Request) -> Response:
        user = await current_user(request)
        if user is None:
            return _to_login(request)
        if roles and user.role not in roles:
            return _render(request, "not_found.html", "not_found", user, status=404)
        return _render(request, name, page, user)

    return endpoint


def _figures(user: Principal, params: dict[str, str]) -> dict[str, Any]:
    if "jobId" in params:
        job = jobs.get(params["jobId"], user.id, user.role)
        if job["type"] != JobType.MULTI_YEAR_ANALYTICS.value:
            raise NotFound("No such analytics job.")
        if job["status"] != "completed":
            raise Conflict("The analytics job has not completed.")
        figures: dict[str, Any] = job["result"]
        return figures
    # A GET that draws never starts a job: the page asks GET /api/analytics for that.
    found, _ = answer(analytics.Scope.parse(params), user.id, start_job=False)
    if found is None:
        raise Conflict("These figures need a job: ask GET /api/analytics first.")
    return found


def _charts(f: dict[str, Any]) -> dict[str, Markup]:
    distribution = {int(k): v for k, v in (f.get("distribution") or {}).items()}
    trend = {"Average final rating": [(y["year"], y["averageRating"]) for y in f["years"]]}
    departments = [(d["department"] or "(none)", d["averageRating"])
                   for d in f["departments"]]
    return {
        "distribution": Markup(charts.rating_distribution_chart(
            distribution, title="Final overall ratings", width=360, height=220)),
        "trend": Markup(charts.line_chart(trend, title="Average final rating by year",
                                          y_min=1, y_max=5, value_format="{:.2f}")),
        "departments": Markup(charts.horizontal_bar_chart(
            departments, title="Average final rating by department", max_value=5)),
    }


async def analytics_view(request: Request) -> Response:
    """The figures as an HTML fragment with the PDF's SVG charts, for /analytics.

    By scope (small or cached ranges) or by `jobId` (a completed analytics job)."""
    user = await require_user(request, Role.HR_ADMIN, Role.ADMIN)
    figures = await run_in_threadpool(_figures, user, dict(request.query_params))
    html = templates.get_template("_analytics_view.html").render(
        f=figures, charts=_charts(figures))
    return HTMLResponse(html)


def not_found(request: Request) -> Response:
    """The 404 page for paths outside /api."""
    return _render(request, "not_found.html", "not_found", None, status=404)


routes: list[BaseRoute] = [
    Route("/login", login_page, methods=["GET"]),
    Route("/", jobs_page, methods=["GET"]),
    Route("/jobs", jobs_page, methods=["GET"]),
    Route("/reviews", reviews_page, methods=["GET"]),
    Route("/reports", _page("reports.html", "reports", Role.HR_ADMIN, Role.ADMIN),
          methods=["GET"]),
    Route("/analytics", _page("analytics.html", "analytics", Role.HR_ADMIN, Role.ADMIN),
          methods=["GET"]),
    Route("/analytics/view", analytics_view, methods=["GET"]),
    Route("/import", _page("import.html", "import", Role.ADMIN), methods=["GET"]),
    Route("/fiscal-years", _page("fiscal_years.html", "fiscal_years", Role.HR_ADMIN,
                                 Role.ADMIN), methods=["GET"]),
    Route("/backups", _page("backups.html", "backups", Role.ADMIN), methods=["GET"]),
    Route("/ops", _page("ops.html", "ops", Role.ADMIN), methods=["GET"]),
]
