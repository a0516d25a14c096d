"""`generate_report`: the fiscal-year PDF, written under PA_DATA_DIR/reports/<job id>/."""

from __future__ import annotations

from typing import Any

from pa.errors import PermanentJobError
from pa.handlers import JobContext, handler
from pa.queue import JobType
from pa.reports.build import build_report, remove_leftovers
from pa.reports.data import file_name
from pa.settings import settings


def _payload(payload: dict[str, Any]) -> tuple[int, str | None]:
    year = payload.get("fiscalYear")
    department = payload.get("department")
    if not isinstance(year, int) or isinstance(year, bool):
        raise PermanentJobError(f"fiscalYear must be a whole number, not {year!r}.")
    if department is not None and (not isinstance(department, str) or not department.strip()):
        raise PermanentJobError(f"department must be a non-empty string, not {department!r}.")
    return year, department


@handler(JobType.GENERATE_REPORT)
def generate_report(ctx: JobContext) -> dict[str, int]:
    year, department = _payload(ctx.payload)
    dest = ctx.data_path("reports", ctx.job_id, file_name(year, department))
    # A run cut short (crash, kill) may have left a temporary file; a finished
    # file of an earlier attempt is simply replaced.
    remove_leftovers(dest.parent)

    def progress(current: int, total: int | None, message: str, force: bool) -> None:
        ctx.progress(current, total, message, force=force)

    result = build_report(year, department, dest, progress=progress, check=ctx.check)
    ctx.result_file = dest.relative_to(settings.data_dir).as_posix()
    return result.to_dict()
