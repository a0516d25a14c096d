"""The JSON envelope of every API answer, and reading a request's input."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, overload

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pa.errors import Invalid, PaError


def _dumps(content: Any) -> bytes:
    return json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()


class Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(content)


def ok(data: Any, status: int = 200) -> Response:
    """`{"success": true, "data": ...}`."""
    return Json({"success": True, "data": data}, status_code=status)


def accepted(job: dict[str, Any], message: str) -> Response:
    """202 for a route that enqueued a job."""
    return Json(
        {"success": True, "message": message, "jobId": job["id"], "data": job}, status_code=202
    )


def error(
    code: str,
    message: str,
    status: int,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """`{"success": false, "error": {"code", "message"[, "field"]}}`."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return Json({"success": False, "error": body}, status_code=status, headers=headers)


def from_error(exc: PaError) -> Response:
    return error(exc.code, exc.message, exc.status, exc.field)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or Invalid."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise Invalid("The request body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise Invalid("The request body must be a JSON object.")
    return body


def query_str(request: Request, name: str) -> str | None:
    """A query parameter, None when absent or empty."""
    return request.query_params.get(name) or None


@overload
def query_int(
    request: Request, name: str, default: int, *, minimum: int | None = ...,
    maximum: int | None = ...,
) -> int: ...


@overload
def query_int(
    request: Request, name: str, default: None = ..., *, minimum: int | None = ...,
    maximum: int | None = ...,
) -> int | None: ...


def query_int(
    request: Request,
    name: str,
    default: int | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    """An integer query parameter within [minimum, maximum], else Invalid naming it."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name} must be a whole number, not '{raw[:40]}'.", field=name) from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "" if minimum is None else f" from {minimum}"
        high = "" if maximum is None else f" to {maximum}"
        raise Invalid(f"{name} must be{low}{high}.", field=name)
    return value
