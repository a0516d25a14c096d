"""Failed logins, counted where every web process sees them (DESIGN.md, "Sessions
and abuse"): 5 per email and 30 per client address in any 15 minutes.

The counting is the `limits` library's moving window: in Redis in production
(its own keys, `pa:limits:...`), in this process's database in embedded mode
(`SqlStorage`, the one storage pa adds to the library's).
"""

from __future__ import annotations

import math
import threading
import time
from typing import cast

from limits import RateLimitItem, parse
from limits.storage import RedisStorage, Storage
from limits.storage.base import MovingWindowSupport
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import Table, delete, func, insert, select

from pa import db
from pa import settings as pa_settings
from pa.models import LoginFailure

#: failures allowed per email, and per client address, in any 15 minutes
PER_EMAIL = parse("5/15 minutes")
PER_CLIENT = parse("30/15 minutes")

_failures = cast(Table, LoginFailure.__table__)


class SqlStorage(Storage, MovingWindowSupport):
    """The moving window in pa's database: one row per failure. (Embedded mode has
    no Redis; its one web process and its commands share the database.)"""

    STORAGE_SCHEME = ["pa-sql"]

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return Exception

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        now = time.time()
        with db.begin() as conn:
            conn.execute(delete(_failures).where(_failures.c.key == key,
                                                 _failures.c.at < now - expiry))
            count = conn.execute(select(func.count()).where(_failures.c.key == key)).scalar()
            if int(count or 0) + amount > limit:
                return False
            conn.execute(insert(_failures), [{"key": key, "at": now}] * amount)
        return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        with db.read() as conn:
            oldest, count = conn.execute(
                select(func.min(_failures.c.at), func.count())
                .where(_failures.c.key == key, _failures.c.at >= now - expiry)
            ).one()
        return (float(oldest), int(count)) if count else (now, 0)

    # The fixed-window half of the Storage interface: the moving window needs none
    # of it but clear() and reset().
    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("pa counts logins in a moving window")

    def get(self, key: str) -> int:
        raise NotImplementedError("pa counts logins in a moving window")

    def get_expiry(self, key: str) -> float:
        raise NotImplementedError("pa counts logins in a moving window")

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with db.begin() as conn:
            return conn.execute(delete(_failures)).rowcount

    def clear(self, key: str) -> None:
        with db.begin() as conn:
            conn.execute(delete(_failures).where(_failures.c.key == key))


_limiter: tuple[str | None, MovingWindowRateLimiter] | None = None
_lock = threading.Lock()


def configure(redis_url: str | None) -> MovingWindowRateLimiter:
    """Count in Redis at `redis_url` (None: in the database); the current limiter
    if it counts there already (pa.runtime.configure calls it)."""
    global _limiter
    with _lock:
        if _limiter is None or _limiter[0] != redis_url:
            storage = (RedisStorage(redis_url, key_prefix="pa:limits", socket_timeout=5,
                                    socket_connect_timeout=5)
                       if redis_url else SqlStorage())
            _limiter = (redis_url, MovingWindowRateLimiter(storage))
        return _limiter[1]


def limiter() -> MovingWindowRateLimiter:
    """This process's limiter: configure()'s, or the settings' at first use."""
    current = _limiter
    return current[1] if current is not None else configure(pa_settings.settings.redis_url)


def _limits(email: str, client: str) -> tuple[tuple[RateLimitItem, str, str], ...]:
    return ((PER_EMAIL, "login-email", email), (PER_CLIENT, "login-client", client))


def retry_after(email: str, client: str) -> int | None:
    """Seconds until a login for `email` from `client` may be tried again, or None
    if it may be tried now."""
    wait = 0.0
    for item, kind, who in _limits(email, client):
        reset, remaining = limiter().get_window_stats(item, kind, who)
        if remaining <= 0:
            wait = max(wait, reset - time.time())
    return max(1, math.ceil(wait)) if wait > 0 else None


def failed(email: str, client: str) -> None:
    """Count a failed login against `email` and against `client`."""
    for item, kind, who in _limits(email, client):
        limiter().hit(item, kind, who)


def forget(email: str) -> None:
    """Forget the failures counted against `email` (an operator unlocks it)."""
    limiter().clear(PER_EMAIL, "login-email", email)
