"""What a report shows, read with one SQL query: the year's reviews and their summaries."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from pa import db
from pa.analytics import RATED_STATUSES
from pa.models import Review, ReviewStatus, User

#: how reviews without a department are listed
NO_DEPARTMENT = "No department"
#: statuses in the order of a review's life
STATUS_ORDER = tuple(s.value for s in ReviewStatus)


@dataclass(frozen=True)
class ReviewRow:
    id: int
    employee_name: str
    employee_email: str
    manager_name: str | None
    department: str
    status: str
    ratings: list[tuple[str, Any]]
    overall_rating: float | None
    goals: str
    manager_comments: str
    submitted_at: datetime | None


@dataclass
class Summary:
    """Counts and ratings of a set of reviews (the whole report, or one department)."""

    name: str
    reviews: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    #: final overall rating rounded to 1..5 → reviews
    distribution: dict[int, int] = field(default_factory=dict)
    #: reviews without a final rating
    unrated: int = 0
    #: of the final ratings
    average: float | None = None


@dataclass
class ReportData:
    fiscal_year: int
    department: str | None
    generated_at: datetime
    reviews: list[ReviewRow]
    total: Summary
    departments: list[Summary]


def rating_bucket(rating: float) -> int:
    """The whole rating 1..5 that a rating rounds to (half up)."""
    return min(5, max(1, math.floor(rating + 0.5)))


def is_final(review: ReviewRow) -> bool:
    """Whether the review's overall rating counts (as in analytics: a draft's does not)."""
    return review.status in RATED_STATUSES and review.overall_rating is not None


def summarize(name: str, reviews: Iterable[ReviewRow]) -> Summary:
    """Counts by status; distribution and average of the final ratings, as analytics has them."""
    statuses: Counter[str] = Counter()
    buckets: Counter[int] = Counter()
    ratings: list[float] = []
    count = 0
    for r in reviews:
        count += 1
        statuses[r.status] += 1
        if not is_final(r) or r.overall_rating is None or not math.isfinite(r.overall_rating):
            continue
        ratings.append(r.overall_rating)
        buckets[rating_bucket(r.overall_rating)] += 1
    known = [s for s in STATUS_ORDER if s in statuses]
    others = sorted(s for s in statuses if s not in STATUS_ORDER)
    return Summary(
        name=name,
        reviews=count,
        by_status={s: statuses[s] for s in (*known, *others)},
        distribution={b: buckets.get(b, 0) for b in range(1, 6)},
        unrated=count - len(ratings),
        average=sum(ratings) / len(ratings) if ratings else None,
    )


def slug(text: str, limit: int = 60) -> str:
    """`text` made safe for a file name: ASCII letters, digits and dashes."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", ascii_text).strip("-")
    return cleaned[:limit].rstrip("-") or "department"


def file_name(fiscal_year: int, department: str | None) -> str:
    """`pa-report-FY2025.pdf`, or `pa-report-FY2025-<department slug>.pdf`."""
    suffix = f"-{slug(department)}" if department else ""
    return f"pa-report-FY{fiscal_year}{suffix}.pdf"


def gather(fiscal_year: int, department: str | None = None) -> ReportData:
    """The reviews of `fiscal_year` (every status), ordered by department and employee."""
    employee, manager = aliased(User), aliased(User)
    dept = func.coalesce(Review.department, "")
    stmt = (
        select(
            Review.id, Review.department, Review.status, Review.ratings,
            Review.overall_rating, Review.goals, Review.manager_comments,
            Review.submitted_at, employee.name.label("employee_name"),
            employee.email.label("employee_email"), manager.name.label("manager_name"),
        )
        .join(employee, Review.employee_id == employee.id)
        .outerjoin(manager, Review.manager_id == manager.id)
        .where(Review.fiscal_year == fiscal_year)
        .order_by(dept, employee.name, Review.id)
    )
    if department is not None:
        stmt = stmt.where(Review.department == department)
    with db.read() as conn:
        rows = conn.execute(stmt).all()
    reviews = [
        ReviewRow(
            id=r.id,
            employee_name=r.employee_name,
            employee_email=r.employee_email,
            manager_name=r.manager_name,
            department=r.department or NO_DEPARTMENT,
            status=r.status,
            ratings=list((r.ratings or {}).items()),
            overall_rating=r.overall_rating,
            goals=r.goals or "",
            manager_comments=r.manager_comments or "",
            submitted_at=r.submitted_at,
        )
        for r in rows
    ]
    by_department: dict[str, list[ReviewRow]] = {}
    for review in reviews:
        by_department.setdefault(review.department, []).append(review)
    return ReportData(
        fiscal_year=fiscal_year,
        department=department,
        generated_at=db.utcnow(),
        reviews=reviews,
        total=summarize(department or "All departments", reviews),
        departments=[summarize(name, rs) for name, rs in by_department.items()],
    )
