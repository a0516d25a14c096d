"""What a task handler sees: its job's context (progress, checks, files), and the
table that maps each job type to its handler. A leaf beside `pa.runner`, so that
task modules and the runner both import it and neither imports the other."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pa import db, jobs
from pa.errors import JobCancelled, JobLost, JobTimedOut
from pa.models import JobStatus
from pa.queue import JobType
from pa.settings import settings

#: progress is written (and published) at most this often
PROGRESS_INTERVAL = 0.25
#: cancellation is looked up at most this often
CHECK_INTERVAL = 0.5


class JobContext:
    """What a task handler gets: its job's data, progress, checks and files."""

    def __init__(self, row: Mapping[str, Any], worker_id: str) -> None:
        self.job_id: str = row["id"]
        self.type = JobType(row["type"])
        self.payload: dict[str, Any] = dict(row["payload"] or {})
        self.checkpoint: Any = row["checkpoint"]
        self.user_id: int | None = row["user_id"]
        self.attempt: int = row["attempts"]
        self.worker_id = worker_id
        self.time_limit: int = row["time_limit"]
        self.deadline = time.monotonic() + self.time_limit
        #: set by the handler: the file to download, relative to PA_DATA_DIR
        self.result_file: str | None = None
        self._last_progress = 0.0
        self._last_check = time.monotonic()
        self._progress: tuple[int | None, int | None, str | None] = (None, None, None)

    @property
    def _owner(self) -> dict[str, Any]:
        return {
            "status": JobStatus.PROCESSING.value,
            "worker_id": self.worker_id,
            "attempts": self.attempt,
        }

    def progress(
        self, current: int, total: int | None = None, message: str | None = None,
        *, force: bool = False, checkpoint: Any = None,
    ) -> None:
        """Report progress (throttled); raises if the job was cancelled or ran out of time.

        With `checkpoint`, the progress is written at once, together with it (one
        write instead of two).
        """
        self._progress = (current, total, message)
        now = time.monotonic()
        throttled = not force and now - self._last_progress < PROGRESS_INTERVAL
        if throttled and checkpoint is None:
            self._check_deadline()
            return
        if not throttled:
            self._last_progress = now
        values = {
            "progress_current": current,
            "progress_total": total,
            "progress_message": message[:300] if message else None,
            "heartbeat_at": db.utcnow(),
        }
        if checkpoint is not None:
            self.checkpoint = values["checkpoint"] = checkpoint
        # A checkpoint is always written; its event only when progress is due
        # (the next event, or the final one, carries the row as it is by then).
        job = jobs.change(self.job_id, values, expect=self._owner, publish=not throttled)
        if job is None:
            raise JobLost(self.job_id)
        self._last_check = now
        if job["cancelRequested"]:
            raise JobCancelled()
        self._check_deadline()

    def check(self) -> None:
        """Raise JobCancelled, JobTimedOut or JobLost when the job must stop now."""
        self._check_deadline()
        now = time.monotonic()
        if now - self._last_check < CHECK_INTERVAL:
            return
        self._last_check = now
        row = jobs.load_row(self.job_id)
        if row is None or any(row[k] != v for k, v in self._owner.items()):
            raise JobLost(self.job_id)
        if row["cancel_requested"]:
            raise JobCancelled()

    def _check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise JobTimedOut(f"Timed out after {self.time_limit} s.")

    def save_checkpoint(self, value: Any, *, publish: bool = True) -> None:
        """Remember how far the job got, so that a second run resumes there.

        publish=False when the next progress report carries the change (an event
        would add a Redis round trip where the caller cannot wait, see mail.Sender).
        """
        self.checkpoint = value
        if jobs.change(self.job_id, {"checkpoint": value}, expect=self._owner,
                       publish=publish) is None:
            raise JobLost(self.job_id)

    def data_path(self, *parts: str) -> Path:
        """A path under PA_DATA_DIR (its folder created)."""
        path = settings.data_dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def finish_values(self) -> dict[str, Any]:
        current, total, message = self._progress
        if total is not None:
            current = total
        return {"progress_current": current, "progress_total": total,
                "progress_message": message}


Handler = Callable[[JobContext], Any]

HANDLERS: dict[JobType, Handler] = {}


def handler(job_type: JobType) -> Callable[[Handler], Handler]:
    """Register the function that runs jobs of `job_type`."""

    def register(fn: Handler) -> Handler:
        HANDLERS[job_type] = fn
        return fn

    return register
