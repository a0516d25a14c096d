"""`GET /openapi.json` (DESIGN.md): the document covers every API route, is valid
OpenAPI 3.1, and drives a fuzz of the API that finds no 500 and no answer outside
the envelope."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import (  # type: ignore[attr-defined]  # (registered checks)
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi
from starlette.routing import Route

from pa.models import Role
from pa.web import openapi
from pa.web.app import create_app
from pa.web.app import routes as app_routes
from tests.factories import make_review, make_token, make_user
from tests.web_fixtures import app_client

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _api_routes(app: Any) -> list[tuple[str, str]]:
    """(path with its convertors removed, method) of every API route of the app."""
    found = []
    for r in app.routes:
        if isinstance(r, Route) and (r.path.startswith("/api/") or r.path == "/healthz"):
            path = re.sub(r":\w+}", "}", r.path)
            found += [(path, m.lower()) for m in (r.methods or set()) & METHODS]
    return sorted(found)


def test_the_document_is_openapi_3_1_and_has_every_api_route() -> None:
    with app_client() as client:
        r = client.get("/openapi.json")  # anyone: no sign-in
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        doc = r.json()
        validate(doc)  # raises when it is not valid OpenAPI 3.1
        assert doc["openapi"].startswith("3.1")
        documented = sorted((path, method) for path, operations in doc["paths"].items()
                            for method in operations)
        # An endpoint without its `---` part would be left out of the document.
        assert documented == _api_routes(client.app)
        for path, operations in doc["paths"].items():
            for operation in operations.values():
                declared = {p["name"] for p in _parameters(doc, operation) if p["in"] == "path"}
                assert declared == set(re.findall(r"{(\w+)}", path)), path
                assert operation["summary"] and "default" in operation["responses"]


def _parameters(doc: dict[str, Any], operation: dict[str, Any]) -> list[dict[str, Any]]:
    shared = doc["components"]["parameters"]
    return [shared[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
            for p in operation.get("parameters", [])]


# --- the fuzz ------------------------------------------------------------------------

def answers_in_the_envelope(ctx: Any, response: Any, case: Any) -> None:
    """Every error, and every JSON answer, is pa's envelope (DESIGN.md)."""
    content_type = (response.headers.get("content-type") or [""])[0]
    if response.status_code < 400 and not content_type.startswith("application/json"):
        return  # a file
    body = response.json()
    assert isinstance(body, dict) and body.get("success") is (response.status_code < 400), body
    if response.status_code >= 400:
        error = body.get("error")
        assert isinstance(error, dict) and error.get("code") and error.get("message"), body
        assert "Traceback" not in response.text


CHECKS = [not_a_server_error, answers_in_the_envelope, status_code_conformance,
          content_type_conformance, response_schema_conformance]

#: the document, read from the routes (the app it fuzzes is each test's own)
schema = schemathesis.openapi.from_dict(openapi.document(app_routes()))
schema.config.update(base_url=f"http://{asgi.HOST}")


@pytest.fixture
def fuzz_client() -> Iterator[asgi.ASGIClient]:
    """A client of a fresh app (its lifespan running), signed in as an admin by token
    (the role that reaches every route), and data for the fuzz to find: a manager, an
    employee and their reviews."""
    admin = make_user(Role.ADMIN)
    manager = make_user(Role.MANAGER)
    employee = make_user(Role.EMPLOYEE, manager_id=manager.id)
    for year in (2025, 2026):
        make_review(employee, fiscal_year=year)
    with asgi.get_client(create_app()) as client:
        client.headers["Authorization"] = f"Bearer {make_token(admin)}"
        yield client
    # The app's lifespan (its hub's subscription) ends with this test, not at exit.
    asgi.shutdown_lifespans()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_fuzz_finds_no_500_and_no_answer_outside_the_envelope(
        case: Any, fuzz_client: asgi.ASGIClient) -> None:
    case.call_and_validate(session=fuzz_client, checks=CHECKS)
