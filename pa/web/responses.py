"""The JSON envelope of every API answer, and reading a request's input."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, overload

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pa import db
from pa.errors import Invalid, PaError, RateLimited, TooLarge

#: the largest JSON body read (DESIGN.md, "Sessions and abuse")
MAX_JSON_BYTES = 64 * 1024


def _any(n: int) -> str:
    return f"[0-9]{{{n}}}" if n else ""


def at_most(limit: int) -> str:
    """A regex of the whole numbers from 0 to `limit` (each written with at most
    as many digits as `limit`)."""
    digits = str(limit)
    shorter = [f"[0-9]{{1,{len(digits) - 1}}}"] if len(digits) > 1 else []
    # Same length: the first i digits of limit, then a smaller digit, then any.
    same = [f"{digits[:i]}[0-{int(d) - 1}]" + _any(len(digits) - i - 1)
            for i, d in enumerate(digits) if d != "0"]
    return "(?:" + "|".join([*shorter, *same, digits]) + ")"


class IdConvertor(Convertor[int]):
    """`{name:id}` in a route: a whole number a row's id can be (up to db.MAX_ID).
    Another matches no route: a 404, where Starlette's `int` raised a 500 past
    Python's 4,300-digit limit of int(), and PostgreSQL one past its integer's range."""

    regex = at_most(db.MAX_ID)

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())


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
    headers = ({"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited)
               else None)
    return error(exc.code, exc.message, exc.status, exc.field, headers=headers)


async def json_body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object, or Invalid; TooLarge past MAX_JSON_BYTES, before
    more than that is read. With `optional`, no body at all reads as {}."""
    too_large = TooLarge(f"The request body is larger than {MAX_JSON_BYTES // 1024} KiB.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_JSON_BYTES:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BYTES:
            raise too_large
    if optional and not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # (200,000 '[' recurse)
        raise Invalid("The request body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise Invalid("The request body must be a JSON object.")
    if _holds_nul(body):
        raise Invalid("The request body holds a NUL character (\\u0000).")
    return body


def _holds_nul(value: Any) -> bool:
    """Whether a JSON value has a string (or key) with a NUL: PostgreSQL's text
    cannot hold one. (A loop, not recursion: the value may nest deep.)"""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


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
