"""Rows for tests, written through the real models."""

from __future__ import annotations

import itertools
from typing import Any

from pa import db
from pa.models import Review, ReviewStatus, Role, User

_seq = itertools.count(1)


def make_user(role: Role | str = Role.EMPLOYEE, *, email: str | None = None,
              name: str | None = None, manager_id: int | None = None,
              department: str | None = "Engineering", password: str | None = None) -> User:
    from pa.auth_passwords import hash_password

    n = next(_seq)
    role = Role(role)
    now = db.utcnow()
    user = User(
        email=email or f"{role.value}{n}@example.com",
        name=name or f"{role.value.title()} {n}",
        role=role.value,
        department=department,
        manager_id=manager_id,
        password_hash=hash_password(password) if password else None,
        created_at=now,
        updated_at=now,
    )
    with db.session_scope() as session:
        session.add(user)
    return user


def make_review(employee: User, *, status: ReviewStatus | str = ReviewStatus.MANAGER_REVIEW,
                fiscal_year: int = 2026, **fields: Any) -> Review:
    now = db.utcnow()
    review = Review(
        employee_id=employee.id,
        manager_id=employee.manager_id,
        department=employee.department,
        fiscal_year=fiscal_year,
        status=ReviewStatus(status).value,
        ratings=fields.pop("ratings", {"Delivery": 4, "Collaboration": 5}),
        overall_rating=fields.pop("overall_rating", 4.5),
        goals=fields.pop("goals", "Ship the new billing system."),
        manager_comments=fields.pop("manager_comments", "Strong year."),
        updated_at=now,
        **fields,
    )
    with db.session_scope() as session:
        session.add(review)
    return review



def make_database_the_old_way(url: str, *, lacking: tuple[str, ...] = ()) -> None:
    """The schema as init-db made it before migrations: create_all(), no alembic_version.

    `lacking` names tables or indexes to leave out, as an init-db of an older release
    did (ended_sessions and ix_users_role came after the first one).
    """
    from sqlalchemy import text

    from pa.models import Base

    engine = db.make_engine(url)
    try:
        tables = [t for t in Base.metadata.sorted_tables
                  if t.name not in lacking and t.name not in TABLES_ADDED_BY_MIGRATIONS]
        Base.metadata.create_all(engine, tables=tables)
        indexes = [ix for t in tables for ix in t.indexes if ix.name in lacking]
        for index in indexes:
            index.drop(engine)
        with engine.begin() as conn:
            for table, column in ADDED_BY_MIGRATIONS:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    finally:
        engine.dispose()


#: columns the models have that migrations after the baseline (0001) added
ADDED_BY_MIGRATIONS = (("users", "logins_from"), ("users", "disabled_at"))
#: tables that migrations after the baseline created
TABLES_ADDED_BY_MIGRATIONS = ("login_failures", "paused_types", "consumers")


def make_token(user: User) -> str:
    """A new API token of `user` (what `python -m pa create-token` makes)."""
    from pa.auth_passwords import new_token
    from pa.models import ApiToken

    token, token_hash = new_token()
    with db.session_scope() as session:
        session.add(ApiToken(user_id=user.id, token_hash=token_hash, created_at=db.utcnow()))
    return token
