"""pa's errors; the web turns each into the JSON error envelope with its status."""

from __future__ import annotations


class PaError(Exception):
    """Raised for an error a client may see; `code` and `status` go into the envelope."""

    code = "error"
    status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Invalid(PaError):
    """Raised when a request's input is malformed (400)."""

    code, status = "invalid", 400


class Unprocessable(Invalid):
    """Raised when well-formed input fails validation (422)."""

    status = 422


class Unauthorized(PaError):
    """Raised when a request carries no valid session or token."""

    code, status = "unauthorized", 401


class Forbidden(PaError):
    """Raised when the user may not do this."""

    code, status = "forbidden", 403


class NotFound(PaError):
    """Raised when a thing does not exist or the caller may not see it."""

    code, status = "not_found", 404


class Conflict(PaError):
    """Raised when the thing's state does not allow the change."""

    code, status = "conflict", 409


class TooLarge(PaError):
    """Raised when an upload is over PA_MAX_UPLOAD_MB."""

    code, status = "too_large", 413


class RateLimited(PaError):
    """Raised when too many failed logins came for one email or from one address."""

    code, status = "rate_limited", 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        #: seconds until a try may succeed (the answer's Retry-After)
        self.retry_after = retry_after


class Unavailable(PaError):
    """Raised when a service pa needs (database, Redis) does not answer."""

    code, status = "unavailable", 503


class SchemaMismatch(Exception):
    """Raised when the database's schema revision is unknown to this pa (a newer pa's)."""


class JobCancelled(Exception):
    """Raised inside a task when its job was asked to stop."""


class JobTimedOut(Exception):
    """Raised inside a task when its attempt ran past the job's time limit."""


class JobLost(Exception):
    """Raised inside a task when its row was taken over (the reaper thought it dead)."""


class PermanentJobError(Exception):
    """Raised by a task for an error that retrying cannot fix (the job fails at once)."""
