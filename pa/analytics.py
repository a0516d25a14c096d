"""Multi-year analytics: figures over a range of fiscal years by SQL aggregation, and their cache.

What the figures count (identical on SQLite and PostgreSQL):
- `reviews`: every review in the range (and department), whatever its status;
  `statuses` splits them by status.
- Ratings (`averageRating`, `distribution`, department averages, movers) use *final*
  ratings only: reviews in `submitted_to_hr`, `completed` or `archived` that have an
  `overall_rating` (`ratedReviews` of them). A draft's rating is still being written.
- `distribution`: the overall rating rounded to the nearest whole number, halves up
  (4.5 → 5), ratings below 1 or above 5 counted as 1 or 5. SQL counts the ratings at
  or above 1.5, 2.5, 3.5 and 4.5 (plain comparisons: PostgreSQL's ROUND() on a double
  would round halves to even, SQLite's away from zero); the buckets are differences.
- `completionRate`: share of the reviews that are `completed` or `archived`.
  `submitted_to_hr` is not complete: HR has not signed it off yet.
- `yoyChange`: a year's average minus the previous year's, from the unrounded
  averages (null for the first year of the range, or when either year has no rating).
- `movers`: employees with a final rating in both the first and the last year of the
  range (in the chosen department both times, when one is given): the `MOVERS` largest
  rises (`up`) and falls (`down`), ties by employee id; `department` is the last year's.
SQL returns counts and sums per (year, department, status), a few hundred rows at
most; Python adds those up into years and departments, divides and rounds (so there is
no integer division and no dialect-specific cast in the figures).

The cache: one `analytics_cache` row per (fromYear, toYear, department) holds the
figures and the `fingerprint()` of the reviews they were computed from. The fingerprint
is a cheap aggregate over the same reviews (count, a status checksum, the ratings' sum,
the latest `updated_at`), recomputed by every request for a range that has an entry: a
change made by any code (the API, an import, a year's archiving, even plain SQL) makes
the entry stale without that code knowing about the cache. Status and rating changes
are seen even when `updated_at` is left alone (a review's status only moves forward, so
the status checksum only grows); a change of department alone is seen through
`updated_at`. The price: one scan of the covering index per such request (≈0.3-0.5 s
for 1,000,000 reviews; see bench/bench_analytics.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, case, cast, func, select, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from pa import db
from pa.errors import Invalid
from pa.models import AnalyticsCache, Review, ReviewStatus, User

#: up to this many reviews (in range and department) are answered at once, not by a job
SMALL_RANGE = 1000
#: the widest range of fiscal years one request may ask for
MAX_SPAN = 50
#: rises and falls listed among the movers
MOVERS = 10
MIN_YEAR, MAX_YEAR = 1000, 9999

RATED_STATUSES = frozenset({ReviewStatus.SUBMITTED_TO_HR.value, ReviewStatus.COMPLETED.value,
                            ReviewStatus.ARCHIVED.value})
DONE_STATUSES = frozenset({ReviewStatus.COMPLETED.value, ReviewStatus.ARCHIVED.value})
#: bucket n of the distribution holds ratings from THRESHOLDS[n - 2] up to THRESHOLDS[n - 1]
THRESHOLDS = (1.5, 2.5, 3.5, 4.5)

reviews = Review.__table__
cache_table = AnalyticsCache.__table__


@dataclass(frozen=True)
class Scope:
    """The reviews asked about: fiscal years `from_year`..`to_year`, optionally one department."""

    from_year: int
    to_year: int
    department: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> Scope:
        """From query parameters or a job payload (`fromYear`, `toYear`, `department`)."""
        start, end = _year(params, "fromYear"), _year(params, "toYear")
        if start > end:
            raise Invalid("toYear must not be before fromYear.", field="toYear")
        if end - start + 1 > MAX_SPAN:
            raise Invalid(f"The range may span at most {MAX_SPAN} years.", field="toYear")
        department = params.get("department")
        if department is not None and not isinstance(department, str):
            raise Invalid("department must be text.", field="department")
        department = (department or "").strip() or None
        if department is not None and len(department) > 100:
            raise Invalid("department is longer than 100 characters.", field="department")
        return cls(start, end, department)

    def payload(self) -> dict[str, Any]:
        return {"fromYear": self.from_year, "toYear": self.to_year,
                "department": self.department}

    @property
    def years(self) -> range:
        return range(self.from_year, self.to_year + 1)


def _year(params: Mapping[str, Any], name: str) -> int:
    value = params.get(name)
    if value is None or value == "":
        raise Invalid(f"{name} is missing.", field=name)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) \
            or not MIN_YEAR <= value <= MAX_YEAR:
        raise Invalid(f"{name} must be a year, like 2024.", field=name)
    return value


def _in_scope(scope: Scope) -> list[ColumnElement[bool]]:
    # A list of years rather than a range: with a department, SQLite then seeks
    # (year, department) in the covering index instead of reading every department.
    conds: list[ColumnElement[bool]] = [reviews.c.fiscal_year.in_(list(scope.years))]
    if scope.department is not None:
        conds.append(reviews.c.department == scope.department)
    return conds


def _count_if(cond: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.count(case((cond, 1)))


_rating = reviews.c.overall_rating
#: statuses in workflow order: a review only moves forward, so the checksum only grows
_STATUS_ORDER = [s.value for s in ReviewStatus]


def count_reviews(conn: Connection, scope: Scope) -> int:
    """How many reviews are in scope: the cheapest question (a narrow index suffices)."""
    return int(conn.execute(select(func.count()).where(*_in_scope(scope))).scalar_one())


@dataclass(frozen=True)
class Fingerprint:
    """What the cache compares; it changes whenever a review in scope changes."""

    reviews: int
    value: str


def fingerprint(conn: Connection, scope: Scope) -> Fingerprint:
    """Count the reviews in scope and sum up what the figures depend on (one index scan)."""
    status_rank = case({s: i for i, s in enumerate(_STATUS_ORDER, start=1)},
                       value=reviews.c.status, else_=len(_STATUS_ORDER) + 1)
    # Ratings summed as integers (thousandths): exact, whatever the order in which a
    # parallel plan adds them up, so an unchanged range always compares equal.
    row = conn.execute(
        select(func.count(), func.sum(status_rank), func.sum(cast(_rating * 1000, Integer)),
               func.max(reviews.c.updated_at))
        .where(*_in_scope(scope))
    ).one()
    count, statuses, ratings, latest = row
    stamp = latest.isoformat() if isinstance(latest, datetime) else latest
    return Fingerprint(int(count), f"{count}:{statuses or 0}:{ratings or 0}:{stamp}")


@dataclass
class _Tally:
    """Counts and sums of one group of reviews; every figure is derived from these."""

    reviews: int = 0
    done: int = 0
    rated: int = 0
    rating_sum: float = 0.0
    #: final ratings at or above each of THRESHOLDS
    at_least: list[int] = field(default_factory=lambda: [0] * len(THRESHOLDS))
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, other: _Tally) -> None:
        self.reviews += other.reviews
        self.done += other.done
        self.rated += other.rated
        self.rating_sum += other.rating_sum
        self.at_least = [a + b for a, b in zip(self.at_least, other.at_least, strict=True)]
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n

    @property
    def average(self) -> float | None:
        return self.rating_sum / self.rated if self.rated else None

    def summary(self) -> dict[str, Any]:
        average = self.average
        return {
            "reviews": self.reviews,
            "ratedReviews": self.rated,
            "averageRating": round(average, 2) if average is not None else None,
            "completed": self.done,
            "completionRate": round(self.done / self.reviews, 4) if self.reviews else None,
        }

    def detailed(self) -> dict[str, Any]:
        bounds = [self.rated, *self.at_least, 0]
        distribution = {str(n): bounds[n - 1] - bounds[n] for n in range(1, len(bounds))}
        return {**self.summary(), "distribution": distribution,
                "statuses": dict(sorted(self.statuses.items()))}


def _groups(conn: Connection, scope: Scope) -> dict[tuple[int, str | None], _Tally]:
    """One pass over the covering index: a tally per (fiscal year, department)."""
    rows = conn.execute(
        select(reviews.c.fiscal_year, reviews.c.department, reviews.c.status,
               func.count(), func.count(_rating), func.sum(_rating),
               *(_count_if(_rating >= t) for t in THRESHOLDS))
        .where(*_in_scope(scope))
        .group_by(reviews.c.fiscal_year, reviews.c.department, reviews.c.status)
    ).all()
    tallies: dict[tuple[int, str | None], _Tally] = {}
    for year, dept, status, n, rated, rating_sum, *at_least in rows:
        tally = _Tally(int(n), int(n) if status in DONE_STATUSES else 0,
                       statuses={status: int(n)})
        if status in RATED_STATUSES:
            tally.rated, tally.rating_sum = int(rated), float(rating_sum or 0.0)
            tally.at_least = [int(c) for c in at_least]
        tallies.setdefault((year, dept), _Tally()).add(tally)
    return tallies


def _movers(conn: Connection, scope: Scope) -> dict[str, list[dict[str, Any]]]:
    """The largest rises and falls of the final rating from the first to the last year."""
    if scope.from_year == scope.to_year:
        return {"up": [], "down": []}

    def final_ratings(year: int) -> Any:
        conds = [reviews.c.fiscal_year == year, reviews.c.status.in_(sorted(RATED_STATUSES)),
                 _rating.is_not(None)]
        if scope.department is not None:
            conds.append(reviews.c.department == scope.department)
        # On SQLite, MATERIALIZED reads each year once from the covering index and joins
        # through an automatic index (else: one table lookup per employee, 3x slower).
        # PostgreSQL must not have it: inlined, the years get a hash join planned from
        # real statistics; materialized, its estimate is ~1000x too high and sets off
        # JIT compilation, which costs more than the query.
        return (select(reviews.c.employee_id, _rating.label("rating"), reviews.c.department)
                .where(*conds).cte(f"ratings_{year}")
                .prefix_with("MATERIALIZED", dialect="sqlite"))

    first, last = final_ratings(scope.from_year), final_ratings(scope.to_year)
    change = (last.c.rating - first.c.rating).label("change")
    pairs = (select(first.c.employee_id, first.c.rating.label("from_rating"),
                    last.c.rating.label("to_rating"), last.c.department, change)
             .join_from(first, last, last.c.employee_id == first.c.employee_id)
             .cte("pairs").prefix_with("MATERIALIZED"))
    up = (select(pairs).where(pairs.c.change > 0)
          .order_by(pairs.c.change.desc(), pairs.c.employee_id).limit(MOVERS).subquery())
    down = (select(pairs).where(pairs.c.change < 0)
            .order_by(pairs.c.change.asc(), pairs.c.employee_id).limit(MOVERS).subquery())
    rows = conn.execute(union_all(select(up), select(down))).all()
    ids = sorted({r.employee_id for r in rows})
    names: dict[int, str] = {}
    if ids:
        names = {i: n for i, n in conn.execute(
            select(User.id, User.name).where(User.id.in_(ids))).all()}

    def mover(r: Any) -> dict[str, Any]:
        return {"employeeId": r.employee_id, "name": names.get(r.employee_id),
                "department": r.department, "fromRating": r.from_rating,
                "toRating": r.to_rating, "change": round(r.change, 2)}

    ups = sorted((r for r in rows if r.change > 0), key=lambda r: (-r.change, r.employee_id))
    downs = sorted((r for r in rows if r.change < 0), key=lambda r: (r.change, r.employee_id))
    return {"up": [mover(r) for r in ups], "down": [mover(r) for r in downs]}


def _department_list(tallies: Mapping[str | None, _Tally]) -> list[dict[str, Any]]:
    # Reviews without a department come last.
    order = sorted(tallies, key=lambda d: (d is None, d or ""))
    return [{"department": d, **tallies[d].summary()} for d in order]


def figures(
    conn: Connection, scope: Scope, step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The analytics of `scope` as a JSON-able dict (camelCase); `step(phase)` reports progress."""
    report = step or (lambda phase: None)
    report("Aggregating ratings by year and department")
    groups = _groups(conn, scope)
    report("Finding the employees who moved most")
    movers = _movers(conn, scope)
    total = _Tally()
    by_year = {year: _Tally() for year in scope.years}
    by_dept: dict[str | None, _Tally] = {}
    year_depts: dict[int, dict[str | None, _Tally]] = {year: {} for year in scope.years}
    for (year, dept), tally in groups.items():
        total.add(tally)
        by_year[year].add(tally)
        by_dept.setdefault(dept, _Tally()).add(tally)
        year_depts[year][dept] = tally
    years: list[dict[str, Any]] = []
    previous: float | None = None
    for year in scope.years:
        average = by_year[year].average
        change = None
        if previous is not None and average is not None:
            change = round(average - previous, 2) + 0.0  # + 0.0: no -0.0 in the JSON
        years.append({"year": year, **by_year[year].detailed(), "yoyChange": change,
                      "departments": _department_list(year_depts[year])})
        previous = average
    return {
        "fromYear": scope.from_year,
        "toYear": scope.to_year,
        "department": scope.department,
        **total.detailed(),
        "years": years,
        "departments": _department_list(by_dept),
        "movers": movers,
        "computedAt": db.utcnow().isoformat().replace("+00:00", "Z"),
    }


def _cache_key(scope: Scope) -> dict[str, Any]:
    return {"from_year": scope.from_year, "to_year": scope.to_year,
            "department": scope.department or ""}


@dataclass(frozen=True)
class CacheEntry:
    """Figures as computed, and the fingerprint of the reviews they were computed from."""

    fingerprint: str
    figures: dict[str, Any]

    def is_fresh(self, current: Fingerprint) -> bool:
        return self.fingerprint == current.value


def cached(conn: Connection, scope: Scope) -> CacheEntry | None:
    """The cache entry of `scope`, fresh or not (compare it with `fingerprint()`)."""
    row = conn.execute(
        select(cache_table.c.fingerprint, cache_table.c.figures).where(
            *(cache_table.c[k] == v for k, v in _cache_key(scope).items()))
    ).first()
    return CacheEntry(row.fingerprint, dict(row.figures)) if row is not None else None


def store(conn: Connection, scope: Scope, stamp: Fingerprint, data: dict[str, Any]) -> None:
    """Insert or replace the cache entry of `scope` (in the caller's transaction)."""
    key = _cache_key(scope)
    values = {**key, "fingerprint": stamp.value, "figures": data, "computed_at": db.utcnow()}
    changed = {k: values[k] for k in ("fingerprint", "figures", "computed_at")}
    # Two jobs may finish the same range at once: an upsert, not delete + insert.
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(cache_table).values(values)
    conn.execute(stmt.on_conflict_do_update(index_elements=list(key), set_=changed))


def compute(scope: Scope, step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fingerprint, figures, cache entry (what the job does), in this order."""
    report = step or (lambda phase: None)
    report("Counting the reviews")
    # The fingerprint is taken *before* the figures: a change made in between leaves
    # an entry that looks stale (computed again needlessly), never one that looks fresh.
    with db.read() as conn:
        stamp = fingerprint(conn, scope)
    with db.read() as conn:
        data = figures(conn, scope, report)
    report("Saving the result")
    with db.begin() as conn:
        store(conn, scope, stamp, data)
    return data
