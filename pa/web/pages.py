"""The HTML pages: server-rendered shells that static/app.js fills from the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from pa import __version__, db
from pa.models import ReviewStatus
from pa.web.auth import Principal, current_user

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates" / "pages"

templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined
    )
)


def _render(request: Request, name: str, page: str, user: Principal | None,
            status: int = 200, **context: Any) -> Response:
    context.update(
        page=page,
        user=user,
        # The page's birth in server time: toasts only for jobs finished after it.
        server_time=db.utcnow().isoformat().replace("+00:00", "Z"),
        asset_version=__version__,
    )
    return templates.TemplateResponse(request, name, context, status_code=status)


def safe_next(value: str | None) -> str:
    """A local path to go to after signing in (never another site)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
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
    return _render(request, "jobs.html", "jobs", user)


async def reviews_page(request: Request) -> Response:
    user = await current_user(request)
    if user is None:
        return _to_login(request)
    return _render(request, "reviews.html", "reviews", user,
                   statuses=[s.value for s in ReviewStatus])


def not_found(request: Request) -> Response:
    """The 404 page for paths outside /api."""
    return _render(request, "not_found.html", "not_found", None, status=404)


routes: list[BaseRoute] = [
    Route("/login", login_page, methods=["GET"]),
    Route("/", jobs_page, methods=["GET"]),
    Route("/reviews", reviews_page, methods=["GET"]),
]
