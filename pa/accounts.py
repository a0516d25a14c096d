"""Ending a user's logins, and disabling and enabling a user (the commands of
`python -m pa`); the web's checks of them are in pa.web.auth."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Connection, Table, delete, update

from pa import db, events
from pa.models import ApiToken, User

users = cast(Table, User.__table__)
api_tokens = cast(Table, ApiToken.__table__)


def end_logins(conn: Connection, user_id: int) -> int:
    """In the caller's transaction: every login of the user made until now stops
    signing them in (every cookie, copies included), and their API tokens are
    deleted. Returns how many tokens went. Call announce_logins_ended() after
    the commit."""
    conn.execute(update(users).where(users.c.id == user_id)
                 .values(logins_from=db.utcnow(), updated_at=db.utcnow()))
    return int(conn.execute(delete(api_tokens).where(api_tokens.c.user_id == user_id)).rowcount)


def announce_logins_ended(user_id: int) -> None:
    """Tell every web process to close the user's open sockets (after the commit)."""
    events.publish(events.logins_end_event(user_id))


def set_disabled(conn: Connection, user_id: int, disabled: bool) -> None:
    """Disable the user (no login until enabled; their logins end too), or enable."""
    if disabled:
        end_logins(conn, user_id)
    conn.execute(update(users).where(users.c.id == user_id)
                 .values(disabled_at=db.utcnow() if disabled else None,
                         updated_at=db.utcnow()))
