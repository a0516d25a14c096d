"""`GET /openapi.json`: the OpenAPI 3.1 document of the API (DESIGN.md).

Starlette's SchemaGenerator walks the app's routes, so the document's paths and
methods are the routes themselves. Each endpoint's docstring says the rest: its
first line is the summary, and after a `---` line come its parameters, body and
answers in OpenAPI's YAML. The parts they share (the envelope, the Job, the
errors) are the components below. Every operation may also answer an error in the
envelope (`default`). tests/test_openapi.py checks that no route is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator

from pa.models import JobStatus, ReviewStatus, Role
from pa.queue import JobType
from pa.web.responses import Json

COMPONENTS = yaml.safe_load("""
securitySchemes:
  bearer: {type: http, scheme: bearer, description: "A token from `python -m pa create-token`."}
  cookie: {type: apiKey, in: cookie, name: pa_session, description: "Set by POST /api/session."}
parameters:
  jobId: {name: job_id, in: path, required: true, schema: {type: string}}
  reviewId: {name: review_id, in: path, required: true,
             schema: {type: integer, minimum: 0, maximum: 999999999999999999}}
  year: {name: year, in: path, required: true,
         schema: {type: integer, minimum: 0, maximum: 999999999999999999}}
  limit: {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 500, default: 50}}
  jobType: {name: type, in: path, required: true, schema: {type: string}}
schemas:
  Error:
    type: object
    required: [success, error]
    properties:
      success: {const: false}
      error:
        type: object
        required: [code, message]
        properties:
          code: {enum: [invalid, unauthorized, forbidden, not_found, conflict, too_large,
                        rate_limited, unavailable, internal, error]}
          message: {type: string}
          field: {type: string}
  NoData: {type: "null"}
  User:
    type: object
    required: [id, email, name, role, department, managerId]
    properties:
      id: {type: integer}
      email: {type: string}
      name: {type: string}
      role: {enum: ROLES}
      department: {type: [string, "null"]}
      managerId: {type: [integer, "null"]}
  Progress:
    type: object
    required: [current, total, percent, message]
    properties:
      current: {type: integer}
      total: {type: [integer, "null"]}
      percent: {type: [number, "null"]}
      message: {type: [string, "null"]}
  Job:
    type: object
    required: [id, type, status, priority, progress, attempts, maxRetries, result, error,
               cancelRequested, runAfter, createdAt, startedAt, completedAt, updatedAt,
               version, userId, downloadUrl]
    properties:
      id: {type: string, pattern: "^[0-9a-f]{32}$"}
      type: {enum: JOB_TYPES}
      status: {enum: JOB_STATUSES}
      priority: {type: integer}
      progress: {oneOf: [{$ref: "#/components/schemas/Progress"}, {type: "null"}]}
      attempts: {type: integer, minimum: 0}
      maxRetries: {type: integer, minimum: 0}
      result: {}
      error: {type: [string, "null"]}
      cancelRequested: {type: boolean}
      runAfter: {type: [string, "null"]}
      createdAt: {type: string}
      startedAt: {type: [string, "null"]}
      completedAt: {type: [string, "null"]}
      updatedAt: {type: string}
      version: {type: integer, minimum: 1}
      userId: {type: [integer, "null"]}
      downloadUrl: {type: [string, "null"]}
      paused: {type: boolean}
      queue:
        oneOf:
          - type: "null"
          - type: object
            required: [ahead, startsIn, finishesIn]
            properties:
              ahead: {type: integer, minimum: 0}
              startsIn: {type: [number, "null"]}
              finishesIn: {type: [number, "null"]}
  Jobs: {type: array, items: {$ref: "#/components/schemas/Job"}}
  ReportJobs:
    type: array
    items:
      allOf:
        - {$ref: "#/components/schemas/Job"}
        - type: object
          required: [report]
          properties:
            report:
              type: object
              required: [fiscalYear, department]
              properties:
                fiscalYear: {type: [integer, "null"]}
                department: {type: [string, "null"]}
  Review:
    type: object
    required: [id, employeeId, employeeName, managerId, fiscalYear, status, ratings,
               overallRating, updatedAt]
    properties:
      id: {type: integer}
      employeeId: {type: integer}
      employeeName: {type: string}
      employeeEmail: {type: string}
      managerId: {type: [integer, "null"]}
      managerName: {type: [string, "null"]}
      department: {type: [string, "null"]}
      fiscalYear: {type: integer}
      status: {enum: REVIEW_STATUSES}
      ratings: {type: object}
      overallRating: {type: [number, "null"]}
      goals: {type: [string, "null"]}
      managerComments: {type: [string, "null"]}
      submittedAt: {type: [string, "null"]}
      updatedAt: {type: string}
  Reviews: {type: array, items: {$ref: "#/components/schemas/Review"}}
  FiscalYears:
    type: array
    items:
      type: object
      required: [year, reviews, archived, state, closedAt, jobId, jobStatus, downloadUrl]
      properties:
        year: {type: integer}
        reviews: {type: integer}
        archived: {type: integer}
        state: {enum: [open, closing, closed]}
        closedAt: {type: [string, "null"]}
        jobId: {type: [string, "null"]}
        jobStatus: {oneOf: [{enum: JOB_STATUSES}, {type: "null"}]}
        downloadUrl: {type: [string, "null"]}
  Backups:
    type: array
    items:
      type: object
      required: [name, bytes, createdAt, jobId, downloadUrl]
      properties:
        name: {type: string}
        bytes: {type: integer}
        createdAt: {type: string}
        jobId: {type: [string, "null"]}
        downloadUrl: {type: string}
  Departments:
    type: array
    items:
      type: object
      required: [name, reviews]
      properties: {name: {type: string}, reviews: {type: integer}}
  Analytics:
    type: object
    required: [fromYear, toYear, department, reviews, years, departments, movers, computedAt]
    properties:
      fromYear: {type: integer}
      toYear: {type: integer}
      department: {type: [string, "null"]}
      reviews: {type: integer}
      years: {type: array}
      departments: {type: array}
      movers: {type: object}
      computedAt: {type: string}
  Overview:
    type: object
    required: [queues, jobs, types, consumers, periodic, throughput]
    properties:
      queues: {type: array}
      jobs: {type: object}
      types: {type: array}
      consumers: {type: array}
      periodic: {type: array}
      throughput: {type: array}
  TypeSwitch:
    type: object
    required: [type, paused]
    properties: {type: {enum: JOB_TYPES}, paused: {type: boolean}}
  Retried:
    type: object
    required: [retried]
    properties: {retried: {type: integer, minimum: 0}}
  Health:
    type: object
    required: [database, redis]
    properties:
      database: {enum: [ok, unavailable]}
      redis: {enum: [ok, unavailable, embedded]}
responses:
  Error:
    description: An error, in the envelope.
    content: {application/json: {schema: {$ref: "#/components/schemas/Error"}}}
  Accepted:
    description: A job was enqueued (or an unfinished twin returned).
    content:
      application/json:
        schema:
          type: object
          required: [success, message, jobId, data]
          properties:
            success: {const: true}
            message: {type: string}
            jobId: {type: string}
            data: {$ref: "#/components/schemas/Job"}
  File:
    description: The file, as an attachment.
    content: {application/octet-stream: {schema: {type: string, format: binary}}}
""")

#: `data` schemas for which components/responses gets an `Ok<Name>` envelope
OK_DATA = ("NoData", "User", "Job", "Jobs", "ReportJobs", "Review", "Reviews", "FiscalYears",
           "Backups", "Departments", "Analytics", "Health", "Overview", "TypeSwitch",
           "Retried")
ENUMS: dict[str, list[str]] = {
    "ROLES": [r.value for r in Role],
    "JOB_TYPES": [t.value for t in JobType],
    "JOB_STATUSES": [s.value for s in JobStatus],
    "REVIEW_STATUSES": [s.value for s in ReviewStatus],
}


def _with_enums(node: Any) -> Any:
    """`node` with each `enum: NAME` replaced by the values of pa's enum of that name."""
    if isinstance(node, dict):
        return {k: ENUMS[v] if k == "enum" and isinstance(v, str) else _with_enums(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_with_enums(v) for v in node]
    return node


def _ok(name: str) -> dict[str, Any]:
    return {
        "description": "Success.",
        "content": {"application/json": {"schema": {
            "type": "object", "required": ["success", "data"],
            "properties": {"success": {"const": True},
                           "data": {"$ref": f"#/components/schemas/{name}"}},
        }}},
    }


class Generator(SchemaGenerator):
    """Starlette's generator, plus: only a docstring with a `---` part is an
    operation (another is prose, which YAML could misread), the summary from its
    first line, and the error envelope as every operation's `default` answer."""

    def parse_docstring(self, func_or_method: Callable[..., Any]) -> dict[str, Any]:
        if "---" not in (func_or_method.__doc__ or ""):
            return {}
        operation = super().parse_docstring(func_or_method)
        if operation:
            doc = (func_or_method.__doc__ or "").split("---")[0].strip()
            operation.setdefault("summary", doc.splitlines()[0] if doc else "")
            operation.setdefault("responses", {})["default"] = {
                "$ref": "#/components/responses/Error"}
        return operation


def document(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of `routes` (those whose endpoint has an operation)."""
    components = {**COMPONENTS, "responses": {
        **COMPONENTS["responses"], **{f"Ok{name}": _ok(name) for name in OK_DATA}}}
    return _with_enums(Generator({
        "openapi": "3.1.0",
        "info": {"title": "pa", "version": version("pa"),
                 "description": "The API of pa's background jobs; see docs/API.md."},
        "security": [{"bearer": []}, {"cookie": []}],
        "components": components,
    }).get_schema(routes))


def route(api_routes: list[BaseRoute]) -> Route:
    """`GET /openapi.json` (anyone), the document made once."""
    body = document(api_routes)

    async def openapi(request: Request) -> Response:
        return Json(body)

    return Route("/openapi.json", openapi, methods=["GET"])
