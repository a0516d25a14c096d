"""`multi_year_analytics`: the figures of a range of fiscal years, kept in the cache."""

from __future__ import annotations

from typing import Any

from pa import analytics
from pa.errors import Invalid, PermanentJobError
from pa.handlers import JobContext, handler
from pa.queue import JobType

#: the phases analytics.compute() reports: fingerprint, aggregate, movers, save
PHASES = 4


@handler(JobType.MULTI_YEAR_ANALYTICS)
def multi_year_analytics(ctx: JobContext) -> dict[str, Any]:
    try:
        scope = analytics.Scope.parse(ctx.payload)
    except Invalid as exc:
        raise PermanentJobError(f"Bad analytics request: {exc.message}") from exc
    done = 0

    def step(phase: str) -> None:
        # Each phase is one SQL statement of up to a second or two: report every one
        # (forced), which also checks for cancellation between them.
        nonlocal done
        ctx.progress(done, PHASES, phase, force=True)
        done += 1

    # Idempotent: a second run computes the same figures and replaces the cache entry.
    return analytics.compute(scope, step)
