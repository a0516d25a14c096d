"""Demo data for `python -m pa seed-demo`: departments, people and reviews, written in bulk."""

from __future__ import annotations

import random
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, insert, select

from pa import db
from pa.auth_passwords import hash_password, verify_password
from pa.models import FiscalYear, Review, ReviewStatus, Role, User

DEMO_PASSWORD = "demo1234"
#: the same data on every run, so that a re-run finds the people it made before
RANDOM_SEED = 20_240_601
TEAM_SIZE = 8
#: rows per INSERT executemany
BATCH = 5_000
#: employees whose reviews are written in one transaction
EMPLOYEE_CHUNK = 2_000

users = User.__table__
reviews = Review.__table__

# Weighted: Engineering, Sales and Support get more teams than Legal or Finance.
DEPARTMENT_CYCLE = (
    "Engineering", "Sales", "Support", "Engineering", "Marketing", "Operations",
    "Engineering", "Sales", "Finance", "Support", "People", "Engineering", "Product",
    "Sales", "Legal", "Data",
)
FIRST_NAMES = (
    "Olivia", "Liam", "Emma", "Noah", "Amelia", "Oliver", "Sophia", "Elijah", "Ava", "Lucas",
    "Mia", "Mateo", "Isabella", "Levi", "Charlotte", "Ethan", "Harper", "James", "Evelyn",
    "Aiden", "Priya", "Arjun", "Ananya", "Rohan", "Mei", "Wei", "Yuki", "Haruto", "Sofia",
    "Diego", "Camila", "Santiago", "Fatima", "Omar", "Aisha", "Yusuf", "Leila", "Karim",
    "Chloe", "Samuel", "Grace", "Daniel", "Zoe", "Gabriel", "Nora", "Henry", "Lena", "Jonas",
    "Ingrid", "Lars", "Freya", "Mateus", "Ines", "Tomas", "Elena", "Marco", "Giulia", "Luca",
    "Chiara", "Kofi", "Ama", "Chidi", "Ngozi", "Tariq", "Nadia", "Sven", "Astrid", "Pablo",
    "Lucia", "Hugo", "Clara", "Felix", "Maya", "Ravi", "Sana", "Jae", "Min", "Hana", "Aleksander",
)
LAST_NAMES = (
    "Smith", "Johnson", "Garcia", "Martinez", "Brown", "Lee", "Chen", "Wang", "Kim", "Nguyen",
    "Patel", "Shah", "Singh", "Kumar", "Tanaka", "Sato", "Suzuki", "Müller", "Schmidt",
    "Fischer", "Weber", "Rossi", "Russo", "Bianchi", "Dubois", "Martin", "Bernard", "Silva",
    "Santos", "Oliveira", "Pereira", "Rodriguez", "Lopez", "Gonzalez", "Hernandez", "Ahmed",
    "Hassan", "Ali", "Khan", "Okafor", "Mensah", "Adeyemi", "Nielsen", "Hansen", "Johansson",
    "Larsen", "Novak", "Kowalski", "Nowak", "Ivanova", "Petrov", "O'Brien", "Murphy", "Walsh",
    "Taylor", "Wilson", "Anderson", "Thomas", "Moore", "Jackson", "White", "Harris", "Clark",
    "Lewis", "Walker", "Young", "Allen", "Wright", "Scott", "Green", "Baker", "Adams", "Nelson",
    "Hill", "Campbell", "Mitchell", "Roberts", "Carter", "Phillips", "Evans",
)
COMPETENCIES = ("Delivery", "Quality", "Collaboration", "Communication")
LEADERSHIP = "Leadership"
GOALS = (
    "Ship the quarterly roadmap items on time.",
    "Reduce open customer escalations by a third.",
    "Mentor a new team member through their first six months.",
    "Automate the monthly reporting pipeline.",
    "Lead the migration to the new billing platform.",
    "Improve test coverage of the core services to 80%.",
    "Present the team's work at the all-hands meeting.",
    "Complete the advanced negotiation training.",
    "Cut the average response time to customers below four hours.",
    "Document the onboarding process for the department.",
    "Build a closer working relationship with the finance team.",
    "Grow the partner pipeline in the Nordic region.",
    "Run two user-research studies and share the findings.",
    "Take ownership of the incident review process.",
    "Prepare for the next step towards a senior role.",
    "Streamline vendor contracts and renewals.",
)
PRAISE = {
    "high": (
        "An outstanding year with consistently excellent results.",
        "Exceeded expectations across the board.",
        "A role model for the team; colleagues seek out their advice.",
        "Delivered the most demanding projects of the year with great care.",
    ),
    "mid": (
        "A solid year; reliable and well organised.",
        "Met the agreed objectives and helped the team when it mattered.",
        "Good progress on last year's development points.",
        "Steady contributions and a constructive attitude.",
    ),
    "low": (
        "A difficult year; several objectives were missed.",
        "Needs closer support to meet the expected standard.",
        "Results were uneven and deadlines slipped more than once.",
        "We agreed a development plan with monthly check-ins.",
    ),
}
NEXT_STEPS = (
    "Next year the focus is on sharing knowledge more widely.",
    "Should take on more ownership of cross-team work.",
    "Would benefit from a stretch assignment.",
    "Keep improving written communication with stakeholders.",
    "Ready to lead a small project independently.",
    "Planning and estimation remain the main area to grow.",
)
# A repeating pattern rather than random draws, so that even five employees show
# every status; 7 of 20 (35%) are in manager_review.
_MR, _D, _SR, _SH, _C = (
    ReviewStatus.MANAGER_REVIEW.value, ReviewStatus.DRAFT.value,
    ReviewStatus.SELF_REVIEW.value, ReviewStatus.SUBMITTED_TO_HR.value,
    ReviewStatus.COMPLETED.value,
)
CURRENT_YEAR_STATUSES = (
    _MR, _D, _SR, _SH, _C, _MR, _SR, _MR, _C, _D, _MR, _SH, _SR, _MR, _C, _D, _MR, _SH, _C, _MR,
)
_SUBMITTED = {_SH, _C}


@dataclass(frozen=True)
class Person:
    email: str
    name: str
    role: Role
    department: str
    #: index of the team; its manager is the team's first person
    team: int


@dataclass(frozen=True)
class Login:
    email: str
    role: Role
    #: whether DEMO_PASSWORD logs in (an account that existed before keeps its own)
    demo_password: bool


@dataclass
class SeedReport:
    users_added: int = 0
    reviews_added: int = 0
    first_year: int = 0
    last_year: int = 0
    #: closed (or closing) fiscal years, left alone
    closed_years: list[int] = field(default_factory=list)
    logins: list[Login] = field(default_factory=list)


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and c.isalpha()).lower()


# The first people of team 0 get the easy-to-type demo logins.
_DEMO_EMAILS = {(0, 0): "manager@example.com", (0, 1): "employee@example.com",
                (0, 2): "employee2@example.com"}
_DEMO_LOGINS = frozenset(_DEMO_EMAILS.values())
_ADMINS = (
    Person("hr@example.com", "Hannah Rivera", Role.HR_ADMIN, "People", -1),
    Person("admin@example.com", "Alex Morgan", Role.ADMIN, "Operations", -1),
)


def people(employees: int) -> Iterator[Person]:
    """The seeded people in a fixed order: each team's manager, then up to 8 employees.

    The order and names depend only on the position, so a larger `employees`
    extends the list of a smaller one.
    """
    rng = random.Random(RANDOM_SEED)
    taken: Counter[str] = Counter()
    made = 0
    team = 0
    while made < employees:
        department = DEPARTMENT_CYCLE[team % len(DEPARTMENT_CYCLE)]
        size = min(TEAM_SIZE, employees - made)
        for member in range(size + 1):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            local = f"{_ascii(first)}.{_ascii(last)}"
            taken[local] += 1
            n = taken[local]
            email = _DEMO_EMAILS.get((team, member)) or (
                f"{local}{n if n > 1 else ''}@example.com"
            )
            role = Role.MANAGER if member == 0 else Role.EMPLOYEE
            yield Person(email, f"{first} {last}", role, department, team)
        made += size
        team += 1


def _email_ids(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(func.lower(users.c.email), users.c.id))
    return {email: uid for email, uid in rows}


def _user_row(person: Person, password_hash: str | None, manager_id: int | None,
              now: datetime) -> dict[str, Any]:
    return {"email": person.email, "name": person.name, "role": person.role.value,
            "department": person.department, "manager_id": manager_id,
            "password_hash": password_hash, "created_at": now, "updated_at": now}


def _insert(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), BATCH):
        conn.execute(insert(table), rows[start:start + BATCH])


def seed_users(employees: int, report: SeedReport) -> None:
    """Add the admins and the missing seeded people; keep everyone who exists."""
    everyone = list(people(employees))
    demo = [*_ADMINS, *(p for p in everyone if p.email in _DEMO_LOGINS)]
    # argon2 is slow on purpose (~0.2 s): one hash, made before the write
    # transaction, serves every seeded person, since they all share the password.
    password_hash = hash_password(DEMO_PASSWORD)
    now = db.utcnow()
    added: set[str] = set()
    with db.begin() as conn:
        ids = _email_ids(conn)
        managers = [p for p in (*_ADMINS, *everyone) if p.role is not Role.EMPLOYEE]
        new = [p for p in managers if p.email not in ids]
        _insert(conn, users, [_user_row(p, password_hash, None, now) for p in new])
        added.update(p.email for p in new)
        if new:
            ids = _email_ids(conn)
        team_manager = {p.team: ids[p.email] for p in managers if p.role is Role.MANAGER}
        rows: list[dict[str, Any]] = []
        for p in everyone:
            if p.role is not Role.EMPLOYEE or p.email in ids:
                continue
            rows.append(_user_row(p, password_hash, team_manager[p.team], now))
            added.add(p.email)
            if len(rows) >= BATCH:
                _insert(conn, users, rows)
                rows.clear()
        _insert(conn, users, rows)
    report.users_added = len(added)
    report.logins = _check_logins(demo)


def _check_logins(demo: list[Person]) -> list[Login]:
    with db.read() as conn:
        stored = dict(conn.execute(
            select(func.lower(users.c.email), users.c.password_hash)
            .where(func.lower(users.c.email).in_([p.email for p in demo]))
        ).all())
    works: dict[str | None, bool] = {}
    for stored_hash in stored.values():
        if stored_hash not in works:
            works[stored_hash] = verify_password(stored_hash, DEMO_PASSWORD)
    return [Login(p.email, p.role, works.get(stored.get(p.email), False)) for p in demo]


class ReviewWriter:
    """Makes plausible reviews; one instance per run keeps the random stream going."""

    def __init__(self, now: datetime) -> None:
        self.rng = random.Random(RANDOM_SEED + 1)
        self.now = now
        self.current_year = now.year
        self.current_count = 0

    def _moment(self, start: datetime, end: datetime) -> datetime:
        return start + (end - start) * self.rng.random()

    def _text(self, level: float) -> tuple[str, str]:
        rng = self.rng
        goals = " ".join(rng.sample(GOALS, 2))
        band = "high" if level >= 4 else "low" if level < 2.75 else "mid"
        comments = f"{rng.choice(PRAISE[band])} {rng.choice(NEXT_STEPS)}"
        return goals, comments

    def reviews_for(self, employee_id: int, department: str | None, manager_id: int | None,
                    missing: list[int]) -> Iterator[dict[str, Any]]:
        """One review per year in `missing` for this employee."""
        rng = self.rng
        level = min(4.8, max(1.5, rng.gauss(3.5, 0.6)))
        names = (*COMPETENCIES, LEADERSHIP) if rng.random() < 0.4 else COMPETENCIES
        for year in missing:
            ratings = {
                name: min(5, max(1, round(level + rng.gauss(0, 0.7)))) for name in names
            }
            overall = round(sum(ratings.values()) / len(ratings), 1)
            submitted_at: datetime | None
            if year < self.current_year:
                status = _C
                start = datetime(year, 12, 1, tzinfo=UTC)
                submitted_at = self._moment(start, start + timedelta(days=28))
                updated_at = min(self.now, submitted_at + timedelta(days=14 * rng.random()))
            else:
                status = CURRENT_YEAR_STATUSES[self.current_count % len(CURRENT_YEAR_STATUSES)]
                self.current_count += 1
                start = datetime(year, 1, 1, tzinfo=UTC)
                moment = self._moment(start, self.now)
                submitted_at = moment if status in _SUBMITTED else None
                updated_at = self._moment(moment, self.now)
            goals, comments = self._text(level)
            yield {
                "employee_id": employee_id, "manager_id": manager_id,
                "department": department, "fiscal_year": year, "status": status,
                "ratings": ratings, "overall_rating": overall, "goals": goals,
                "manager_comments": comments, "submitted_at": submitted_at,
                "updated_at": updated_at,
            }
            level = min(4.8, max(1.5, level + rng.gauss(0.05, 0.25)))


def seed_reviews(years: int, report: SeedReport) -> None:
    """Give every employee one review per fiscal year of the last `years`, if missing."""
    now = db.utcnow()
    last_year = now.year
    first_year = last_year - years + 1
    report.first_year, report.last_year = first_year, last_year
    with db.read() as conn:
        # A closed year's reviews are archived and frozen: new ones would miss its archive.
        report.closed_years = sorted(conn.execute(
            select(FiscalYear.year).where(FiscalYear.year.between(first_year, last_year))
        ).scalars())
    open_years = [y for y in range(first_year, last_year + 1) if y not in report.closed_years]
    writer = ReviewWriter(now)
    after = 0
    while open_years:
        with db.begin() as conn:
            chunk = conn.execute(
                select(users.c.id, users.c.department, users.c.manager_id)
                .where(users.c.role == Role.EMPLOYEE.value, users.c.id > after)
                .order_by(users.c.id)
                .limit(EMPLOYEE_CHUNK)
            ).all()
            if not chunk:
                return
            lo, hi = chunk[0].id, chunk[-1].id
            done: dict[int, set[int]] = {}
            for employee_id, year in conn.execute(
                select(reviews.c.employee_id, reviews.c.fiscal_year).where(
                    reviews.c.employee_id.between(lo, hi),
                    reviews.c.fiscal_year.between(first_year, last_year),
                )
            ):
                done.setdefault(employee_id, set()).add(year)
            rows: list[dict[str, Any]] = []
            for employee in chunk:
                have = done.get(employee.id, ())
                missing = [y for y in open_years if y not in have]
                if missing:
                    rows.extend(writer.reviews_for(
                        employee.id, employee.department, employee.manager_id, missing
                    ))
            _insert(conn, reviews, rows)
            report.reviews_added += len(rows)
        after = hi


def seed_demo(employees: int, years: int) -> SeedReport:
    """Add demo people and reviews; safe to run again (nothing is added twice)."""
    report = SeedReport()
    seed_users(employees, report)
    seed_reviews(years, report)
    return report
