"""The handler of each job type; the consumer looks a job's type up here."""

from __future__ import annotations

import importlib
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


# Every task module registers its handler on import.
TASK_MODULES = ("email_notification", "report", "analytics", "bulk_import", "archive", "backup")
for _name in TASK_MODULES:
    importlib.import_module(f"pa.tasks.{_name}")
