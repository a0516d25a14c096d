"""The API of fiscal-year closing (HR, admins) and of database backups (admins)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from pa import archive, backup
from pa.errors import Invalid
from pa.models import Role
from pa.web.auth import require_user
from pa.web.responses import accepted, ok

HR = (Role.HR_ADMIN, Role.ADMIN)
#: fiscal years a close request may name
FIRST_YEAR, LAST_YEAR = 1900, 9999


async def list_fiscal_years(request: Request) -> Response:
    """Every fiscal year with reviews or a close (HR).
    ---
    responses: {"200": {$ref: "#/components/responses/OkFiscalYears"}}
    """
    await require_user(request, *HR)
    return ok(await run_in_threadpool(archive.list_years))


async def close_fiscal_year(request: Request) -> Response:
    """Close a fiscal year: freeze its reviews and archive them (HR).
    ---
    parameters: [{$ref: "#/components/parameters/year"}]
    responses: {"202": {$ref: "#/components/responses/Accepted"}}
    """
    user = await require_user(request, *HR)
    year: int = request.path_params["year"]
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise Invalid(f"year must be between {FIRST_YEAR} and {LAST_YEAR}.", field="year")
    job = await run_in_threadpool(archive.request_close, year, user.id)
    return accepted(job, f"Closing FY{year}: its reviews are being archived.")


async def download_archive(request: Request) -> Response:
    """The archive of a closed fiscal year (HR).
    ---
    parameters: [{$ref: "#/components/parameters/year"}]
    responses: {"200": {$ref: "#/components/responses/File"}}
    """
    await require_user(request, *HR)
    path = await run_in_threadpool(archive.archive_file, request.path_params["year"])
    return FileResponse(path, filename=path.name, media_type="application/gzip")


async def list_backups(request: Request) -> Response:
    """The backup files on disk, newest first (admin).
    ---
    responses: {"200": {$ref: "#/components/responses/OkBackups"}}
    """
    await require_user(request, Role.ADMIN)
    return ok(await run_in_threadpool(backup.listing))


async def create_backup(request: Request) -> Response:
    """Back up the database now (admin).
    ---
    responses: {"202": {$ref: "#/components/responses/Accepted"}}
    """
    user = await require_user(request, Role.ADMIN)
    job = await run_in_threadpool(backup.submit_backup, user.id)
    return accepted(job, "Backing up the database.")


async def download_backup(request: Request) -> Response:
    """One backup file (admin).
    ---
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    responses: {"200": {$ref: "#/components/responses/File"}}
    """
    await require_user(request, Role.ADMIN)
    # find_backup accepts only names of the backup pattern found in the backups folder.
    found = await run_in_threadpool(backup.find_backup, request.path_params["name"])
    media = "application/gzip" if found.name.endswith(".gz") else "application/octet-stream"
    return FileResponse(found.path, filename=found.name, media_type=media)


routes: list[BaseRoute] = [
    Route("/api/fiscal-years", list_fiscal_years, methods=["GET"]),
    Route("/api/fiscal-years/{year:id}/close", close_fiscal_year, methods=["POST"]),
    Route("/api/fiscal-years/{year:id}/archive", download_archive, methods=["GET"]),
    Route("/api/admin/backups", list_backups, methods=["GET"]),
    Route("/api/admin/backups", create_backup, methods=["POST"]),
    Route("/api/admin/backups/{name}", download_backup, methods=["GET"]),
]
