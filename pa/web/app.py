"""The Starlette application: middleware, error envelope, routes, the event hub."""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import exc as sa_exc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

import pa.web
from pa import db, metrics, runtime
from pa.errors import PaError
from pa.settings import Settings, current
from pa.web import api, auth, hub, openapi, pages
from pa.web.auth import (
    HostCheckMiddleware,
    NulCheckMiddleware,
    OriginCheckMiddleware,
    SecurityHeadersMiddleware,
)
from pa.web.offload import Dispatcher
from pa.web.responses import error, from_error

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent
HTTP_ERRORS = {
    400: ("invalid", "The request is malformed."),
    401: ("unauthorized", "Sign in first."),
    403: ("forbidden", "You may not do this."),
    404: ("not_found", "No such resource."),
    405: ("invalid", "This resource does not allow that method."),
    409: ("conflict", "The resource's state does not allow this."),
    413: ("too_large", "The request is too large."),
    422: ("invalid", "The request's content is not valid."),
    503: ("unavailable", "A service pa needs does not answer."),
}


def _is_api(request: Request) -> bool:
    path = request.url.path
    return path == "/api" or path.startswith("/api/")


async def _pa_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PaError)
    return from_error(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and not _is_api(request):
        return pages.not_found(request)
    code, message = HTTP_ERRORS.get(exc.status_code, ("error", "The request failed."))
    # Starlette's own details ("Not Found") say less than ours; keep a custom one.
    if exc.detail and exc.detail != HTTPStatus(exc.status_code).phrase:
        message = exc.detail
    return error(code, message, exc.status_code, headers=exc.headers)


def unavailable_errors() -> tuple[type[Exception], ...]:
    """What the database or Redis raise when they do not answer (or stopped
    answering mid-request): a 503 the client may retry, not a 500."""
    dbapi: Any = db.engine().dialect.dbapi  # statements on raw connections raise its errors
    return (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
            dbapi.OperationalError, dbapi.InterfaceError,
            redis.ConnectionError, redis.TimeoutError)


async def _unavailable(request: Request, exc: Exception) -> Response:
    # Logged without a traceback: the cause is outside pa, and /healthz says which.
    log.warning("%s %s: a service does not answer (%s)", request.method,
                request.url.path, exc.__class__.__name__)
    return error("unavailable", "A service pa needs does not answer; try again shortly.",
                 503, headers={"Retry-After": "5"})


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Not logged here: Starlette raises the exception again after this answer,
    # and the server (uvicorn) logs it with its traceback.
    return error("internal", "Something went wrong on our side; it has been logged.", 500)


def api_modules() -> list[str]:
    """Every `pa.web.api*` module: each contributes its `routes` (so that route
    modules can be added without editing this file)."""
    return sorted(
        f"pa.web.{m.name}"
        for m in pkgutil.iter_modules(pa.web.__path__)
        if m.name == "api" or m.name.startswith("api_")
    )


def routes() -> list[BaseRoute]:
    api_routes: list[BaseRoute] = []
    for name in api_modules():
        api_routes.extend(importlib.import_module(name).routes)
    return [
        *api_routes,
        openapi.route(api_routes),
        *hub.routes,
        *pages.routes,
        Mount("/static", StaticFiles(directory=ROOT / "static"), name="static"),
    ]


def create_app(config: Settings | None = None, *,
               hub_queue_size: int = hub.QUEUE_SIZE) -> Starlette:
    """The app for `config` (else the environment's settings); its lifespan holds
    its hub's one event subscription."""
    config = config or current()
    runtime.configure(config)
    event_hub = hub.Hub(queue_size=hub_queue_size)
    dispatcher = Dispatcher()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await db.open_on_loop()
        await event_hub.start()
        await dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()
            await event_hub.stop()
            await db.close_on_loop()

    app_routes = routes()
    web_metrics = metrics.WebMetrics(app_routes, event_hub, config.metrics_token)
    app = Starlette(
        routes=app_routes,
        middleware=[
            Middleware(metrics.MetricsMiddleware, metrics=web_metrics),
            Middleware(SecurityHeadersMiddleware),
            Middleware(HostCheckMiddleware, host=config.public_host),
            Middleware(NulCheckMiddleware),
            Middleware(OriginCheckMiddleware, allowed_origins=config.allowed_origins,
                       public_url=config.public_url),
            Middleware(SessionMiddleware, secret_key=config.secret_key,
                       session_cookie="pa_session",
                       max_age=int(auth.SESSION_MAX_AGE.total_seconds()),
                       same_site="lax", https_only=config.https),
        ],
        exception_handlers={
            PaError: _pa_error,
            HTTPException: _http_error,
            **{cls: _unavailable for cls in unavailable_errors()},
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
    app.state.hub = event_hub
    app.state.dispatcher = dispatcher
    app.state.password_checks = asyncio.Semaphore(api.PASSWORD_CHECKS)
    app.state.settings = config
    app.state.metrics = web_metrics
    return app
