"""Reviews as the API shows them: who sees which, listing, and submitting to HR.

Visibility is one rule for every role: HR admins and admins see every review;
anyone else sees their own reviews and those of the people they manage (the
review's manager, or the employee's current manager). An employee manages
nobody, so they see their own only.
"""

from __future__ import annotations

from typing import Any, NoReturn, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    RowMapping,
    Select,
    Table,
    Update,
    bindparam,
    exists,
    or_,
    select,
    true,
    update,
)

from pa import db, jobs
from pa.errors import Conflict, Forbidden, Invalid, NotFound
from pa.models import FiscalYear, Review, ReviewStatus, Role, User, iso
from pa.queue import JobType

reviews_table = cast(Table, Review.__table__)
users_table = cast(Table, User.__table__)
years_table = cast(Table, FiscalYear.__table__)
_employee = users_table.alias("employee")
_manager = users_table.alias("manager")

#: the largest id a review has (a bigger one cannot exist); also the largest offset
MAX_ID = db.MAX_ID
MAX_LIMIT = 500
_STATUSES = frozenset(s.value for s in ReviewStatus)

_COLUMNS = (
    *reviews_table.c,
    _employee.c.name.label("employee_name"),
    _employee.c.email.label("employee_email"),
    _manager.c.name.label("manager_name"),
)
_FROM = reviews_table.join(_employee, _employee.c.id == reviews_table.c.employee_id).outerjoin(
    _manager, _manager.c.id == reviews_table.c.manager_id
)


def review_to_dict(row: RowMapping) -> dict[str, Any]:
    """The Review object of the API (camelCase)."""
    return {
        "id": row["id"],
        "employeeId": row["employee_id"],
        "employeeName": row["employee_name"],
        "employeeEmail": row["employee_email"],
        "managerId": row["manager_id"],
        "managerName": row["manager_name"],
        "department": row["department"],
        "fiscalYear": row["fiscal_year"],
        "status": row["status"],
        "ratings": dict(row["ratings"] or {}),
        "overallRating": row["overall_rating"],
        "goals": row["goals"],
        "managerComments": row["manager_comments"],
        "submittedAt": iso(row["submitted_at"]),
        "updatedAt": iso(row["updated_at"]),
    }


def _sees_all(role: Role) -> bool:
    return role in (Role.HR_ADMIN, Role.ADMIN)


def _visible(user_id: int, role: Role) -> ColumnElement[bool]:
    """The SQL condition for the reviews this user may see."""
    if _sees_all(role):
        return true()
    # Every term is on `reviews` (not on the joined employee row), so that SQLite
    # and PostgreSQL can answer each from an index instead of scanning every review.
    reports = select(users_table.c.id).where(users_table.c.manager_id == user_id)
    return or_(
        reviews_table.c.employee_id == user_id,
        reviews_table.c.manager_id == user_id,
        reviews_table.c.employee_id.in_(reports),
    )


def _select(user_id: int, role: Role) -> Select[Any]:
    return select(*_COLUMNS).select_from(_FROM).where(_visible(user_id, role))


def list_reviews(
    user_id: int,
    role: Role,
    *,
    fiscal_year: int | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """The reviews the user may see, newest fiscal year first; Invalid for bad filters."""
    if status is not None and status not in _STATUSES:
        raise Invalid(
            f"Unknown status '{status[:40]}'; one of {', '.join(sorted(_STATUSES))}.",
            field="status",
        )
    if fiscal_year is not None and not 1900 <= fiscal_year <= 9999:
        raise Invalid("fiscalYear must be a year from 1900 to 9999.", field="fiscalYear")
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be from 1 to {MAX_LIMIT}.", field="limit")
    if not 0 <= offset <= MAX_ID:
        raise Invalid("offset must be 0 or more.", field="offset")
    stmt = _select(user_id, role)
    if fiscal_year is not None:
        stmt = stmt.where(reviews_table.c.fiscal_year == fiscal_year)
    if status is not None:
        stmt = stmt.where(reviews_table.c.status == status)
    stmt = stmt.order_by(
        reviews_table.c.fiscal_year.desc(), _employee.c.name, reviews_table.c.id
    ).limit(limit).offset(offset)
    with db.read() as conn:
        rows = conn.execute(stmt).all()
    return [review_to_dict(r._mapping) for r in rows]


def get_review(user_id: int, role: Role, review_id: int) -> dict[str, Any]:
    """One review, or NotFound when it does not exist or the user may not see it."""
    if not 0 < review_id <= MAX_ID:
        raise NotFound(f"No review {review_id}.")
    with db.read() as conn:
        row = conn.execute(
            _select(user_id, role).where(reviews_table.c.id == review_id)
        ).first()
    if row is None:
        raise NotFound(f"No review {review_id}.")
    return review_to_dict(row._mapping)


def submit_to_hr(user_id: int, role: Role, review_id: int) -> dict[str, Any]:
    """manager_review → submitted_to_hr and a job that mails every HR admin.

    The review's change and the job's row commit together; the job is enqueued
    after the commit. Returns the job.
    """
    job = record_submit_to_hr(user_id, role, review_id)
    jobs.dispatch(job)
    return job


def record_submit_to_hr(user_id: int, role: Role, review_id: int) -> dict[str, Any]:
    """The database half of submit_to_hr(): the caller dispatches the job it returns."""
    if not 0 < review_id <= MAX_ID:
        raise NotFound(f"No review {review_id}.")
    stmt = _SUBMIT_AS_ADMIN if role is Role.ADMIN else _SUBMIT_AS_MANAGER
    params: dict[str, Any] = {"review_id": review_id, "now": db.utcnow()}
    if role is not Role.ADMIN:
        params["user_id"] = user_id
    job = jobs.create_after(stmt, params, JobType.EMAIL_NOTIFICATION,
                            {"kind": "review_submitted", "reviewId": review_id}, user_id)
    if job is not None:
        return job
    # Nothing changed: find out why (rare, so a read of its own).
    with db.read() as conn:
        _explain_refusal(conn, user_id, role, review_id)


def _submit_statement(as_admin: bool) -> Update:
    """The conditional UPDATE: every rule is in its WHERE, so the usual case is one
    statement, and of two concurrent submits only one can match. Built once (with
    bind parameters): building and keying a statement per request costs more than
    running it."""
    # Any fiscal_years row freezes the year: "closing" (its archive job may be
    # reading the reviews now) as well as "closed".
    year_closed = exists().where(years_table.c.year == reviews_table.c.fiscal_year)
    conds = [
        reviews_table.c.id == bindparam("review_id"),
        reviews_table.c.status == ReviewStatus.MANAGER_REVIEW.value,
        ~year_closed,
    ]
    if not as_admin:
        employee_manager = (
            select(users_table.c.manager_id)
            .where(users_table.c.id == reviews_table.c.employee_id)
            .scalar_subquery()
        )
        conds.append(or_(reviews_table.c.manager_id == bindparam("user_id"),
                         employee_manager == bindparam("user_id")))
    return (
        update(reviews_table)
        .where(*conds)
        .values(status=ReviewStatus.SUBMITTED_TO_HR.value, submitted_at=bindparam("now"),
                updated_at=bindparam("now"))
    )


_SUBMIT_AS_ADMIN = _submit_statement(as_admin=True)
_SUBMIT_AS_MANAGER = _submit_statement(as_admin=False)


def _explain_refusal(conn: Connection, user_id: int, role: Role, review_id: int) -> NoReturn:
    """Raise the error that says why the UPDATE matched nothing."""
    row = conn.execute(
        select(
            reviews_table.c.status,
            reviews_table.c.fiscal_year,
            reviews_table.c.employee_id,
            reviews_table.c.manager_id,
            _employee.c.manager_id.label("employee_manager_id"),
            years_table.c.year.label("frozen_year"),
            years_table.c.closed_at,
        )
        .select_from(
            reviews_table.join(
                _employee, _employee.c.id == reviews_table.c.employee_id
            ).outerjoin(years_table, years_table.c.year == reviews_table.c.fiscal_year)
        )
        .where(reviews_table.c.id == review_id)
    ).first()
    if row is None:
        raise NotFound(f"No review {review_id}.")
    manages = user_id in (row.manager_id, row.employee_manager_id)
    if not (_sees_all(role) or manages or row.employee_id == user_id):
        raise NotFound(f"No review {review_id}.")
    if not (role is Role.ADMIN or manages):
        raise Forbidden("Only the employee's manager or an admin can submit a review to HR.")
    if row.frozen_year is not None:
        state = "closed" if row.closed_at is not None else "being closed"
        raise Conflict(f"Fiscal year {row.fiscal_year} is {state}; its reviews cannot change.")
    if row.status != ReviewStatus.MANAGER_REVIEW.value:
        raise Conflict(
            f"Review {review_id} is {row.status}; only a review in manager_review "
            "can be submitted to HR."
        )
    # Every rule holds now: the row changed between the UPDATE and this SELECT.
    raise Conflict(f"Review {review_id} changed meanwhile; reload it and try again.")
