"""The tables: User, Review, Job, ApiToken, FiscalYear, LoginFailure, PausedType,
ConsumerProcess..., and their enums."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC, read back as aware UTC, on SQLite and PostgreSQL alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use pa.db.utcnow()")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def iso(value: datetime | None) -> str | None:
    """A time as the API and the events write it: ISO 8601 UTC with a Z."""
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


class Role(str, enum.Enum):
    EMPLOYEE = "employee"
    MANAGER = "manager"
    HR_ADMIN = "hr_admin"
    ADMIN = "admin"


class ReviewStatus(str, enum.Enum):
    DRAFT = "draft"
    SELF_REVIEW = "self_review"
    MANAGER_REVIEW = "manager_review"
    SUBMITTED_TO_HR = "submitted_to_hr"
    COMPLETED = "completed"
    #: its fiscal year was closed; the review can no longer change
    ARCHIVED = "archived"


class JobStatus(str, enum.Enum):
    #: waiting in the queue (or for its retry time)
    PENDING = "pending"
    #: claimed by a worker, running
    PROCESSING = "processing"
    #: finished with a result
    COMPLETED = "completed"
    #: gave up: error kept in `error`
    FAILED = "failed"
    #: stopped on request
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: stored lowercased (CLI, import), so that lookups use this unique index
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    #: indexed: every email job looks up the HR admins among all users
    role: Mapped[str] = mapped_column(String(20), default=Role.EMPLOYEE.value, index=True)
    department: Mapped[str | None] = mapped_column(String(100))
    manager_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    #: argon2 hash; NULL until a password is set (imported users cannot log in)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    #: logins (cookies) made before this no longer sign the user in (pa.accounts)
    logins_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: set while the user may not sign in at all
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (
        Index("ix_reviews_year_dept", "fiscal_year", "department"),
        Index("ix_reviews_year_status", "fiscal_year", "status"),
        Index("ix_reviews_employee_year", "employee_id", "fiscal_year", unique=True),
        # Covers every column pa.analytics reads: its scans never touch the table.
        Index("ix_reviews_analytics", "fiscal_year", "department", "status",
              "overall_rating", "employee_id", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    employee_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    manager_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    #: the employee's department when the review was written (employees move)
    department: Mapped[str | None] = mapped_column(String(100))
    fiscal_year: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=ReviewStatus.DRAFT.value)
    ratings: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    overall_rating: Mapped[float | None] = mapped_column(Float)
    goals: Mapped[str] = mapped_column(Text, default="")
    manager_comments: Mapped[str] = mapped_column(Text, default="")
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FiscalYear(Base):
    """A closed fiscal year: its reviews are archived and can no longer change."""

    __tablename__ = "fiscal_years"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    job_id: Mapped[str | None] = mapped_column(String(32))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_user_created", "user_id", "created_at"),
        Index("ix_jobs_status_updated", "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.PENDING.value)
    priority: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress_current: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    progress_message: Mapped[str | None] = mapped_column(String(300))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer)
    #: attempts made before the last manual retry: automatic retries count from here
    retry_base: Mapped[int] = mapped_column(Integer, default=0)
    #: seconds one attempt may run (checked cooperatively by the task)
    time_limit: Mapped[int] = mapped_column(Integer)
    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    #: where a resumed run picks up (per job type; e.g. recipients already mailed)
    checkpoint: Mapped[Any | None] = mapped_column(JSON)
    #: path of the result file, relative to PA_DATA_DIR
    result_file: Mapped[str | None] = mapped_column(String(500))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the consumer running it (its heartbeat says whether it is alive)
    worker_id: Mapped[str | None] = mapped_column(String(120))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: not before (a retry's backoff)
    run_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: unique when set: a periodic job created once per schedule slot
    dedupe_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    #: sha256 of the token; the token itself is shown once and never stored
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EndedSession(Base):
    """A login that was signed out: its cookie, even a copy, no longer signs anyone in.

    Kept until the cookie would have expired by itself (auth.SESSION_MAX_AGE after
    the logout); logouts delete the rows past that.
    """

    __tablename__ = "ended_sessions"

    #: the login's random id (the session cookie's "sid")
    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class LoginFailure(Base):
    """A failed login, counted by pa.throttle in embedded mode (production counts
    them in Redis); rows older than the window are deleted as the key is counted."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: the limit's key: its kind ("login-email", "login-client") and the email or address
    key: Mapped[str] = mapped_column(String(400), index=True)
    #: when (epoch seconds)
    at: Mapped[float] = mapped_column(Float)


class AnalyticsCache(Base):
    """Multi-year analytics figures, valid while their reviews' fingerprint is unchanged."""

    __tablename__ = "analytics_cache"

    from_year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    to_year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    #: "" for all departments (a primary key column cannot be NULL)
    department: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: pa.analytics.fingerprint() of the reviews the figures were computed from
    fingerprint: Mapped[str] = mapped_column(String(200))
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime)



class PausedType(Base):
    """A job type an operator paused: its jobs stay pending, claimed by no consumer,
    until the row is deleted (resume)."""

    __tablename__ = "paused_types"

    type: Mapped[str] = mapped_column(String(40), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsumerProcess(Base):
    """A consumer process, as its heartbeat last wrote it (the operators' console
    lists it; one whose `last_seen_at` is old went silent)."""

    __tablename__ = "consumers"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    workers: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: jobs this process has run to an end (completed, failed, cancelled)
    processed: Mapped[int] = mapped_column(Integer, default=0)
