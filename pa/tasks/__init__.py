"""The handler of each job type; the consumer looks a job's type up here."""

from __future__ import annotations

from collections.abc import Callable

from pa.queue import JobType
from pa.runner import Handler

HANDLERS: dict[JobType, Handler] = {}


def handler(job_type: JobType) -> Callable[[Handler], Handler]:
    """Register the function that runs jobs of `job_type`."""

    def register(fn: Handler) -> Handler:
        HANDLERS[job_type] = fn
        return fn

    return register


# Every task module registers itself on import.
from pa.tasks import email_notification  # noqa: E402,F401
from pa.tasks import report  # noqa: E402,F401
from pa.tasks import archive  # noqa: E402,F401
from pa.tasks import bulk_import  # noqa: E402,F401
from pa.tasks import analytics  # noqa: E402,F401
from pa.tasks import backup  # noqa: E402,F401
