"""Who is asking: session cookie or bearer token; role checks; the Origin check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, exists, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pa import db, throttle
from pa.auth_passwords import hash_token, verify_password
from pa.errors import Forbidden, RateLimited, Unauthorized
from pa.models import ApiToken, EndedSession, Role, User
from pa.web.offload import run_db
from pa.web.responses import error

SESSION_KEY = "uid"
#: a random id per login: logging out ends it (its cookie and the WebSockets it opened)
SESSION_ID_KEY = "sid"
#: when the login was made (epoch seconds): a user's logins_from ends older ones
SESSION_AT_KEY = "at"
#: a session cookie's life from its login (Starlette does not renew it on use)
SESSION_MAX_AGE = timedelta(days=14)
#: a token's last use is written at most this often (not on every request)
TOKEN_TOUCH = timedelta(minutes=5)


@dataclass(frozen=True)
class Principal:
    id: int
    email: str
    name: str
    role: Role
    department: str | None
    manager_id: int | None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def is_hr(self) -> bool:
        """hr_admin or admin."""
        return self.role in (Role.HR_ADMIN, Role.ADMIN)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "email": self.email, "name": self.name,
                "role": self.role.value, "department": self.department,
                "managerId": self.manager_id}


def _principal(user: Any) -> Principal:
    return Principal(user.id, user.email, user.name, Role(user.role), user.department,
                     user.manager_id)


_USER_COLS = (User.id, User.email, User.name, User.role, User.department, User.manager_id)
_users = cast(Table, User.__table__)
_tokens = cast(Table, ApiToken.__table__)
_ended = cast(Table, EndedSession.__table__)
_USER_TABLE_COLS = (_users.c.id, _users.c.email, _users.c.name, _users.c.role,
                    _users.c.department, _users.c.manager_id)
# Every request runs one of these: built once with bind parameters, Core columns
# (an ORM-flavoured select costs about four times as much to run here).
# The session's user, unless that login was signed out: one statement, the second
# condition a primary-key probe of a small table.
_BY_SESSION = db.Prepared(
    select(*_USER_TABLE_COLS).where(
        _users.c.id == bindparam("user_id"),
        _users.c.disabled_at.is_(None),
        or_(_users.c.logins_from.is_(None),
            _users.c.logins_from <= bindparam("at", type_=_users.c.logins_from.type)),
        ~exists().where(_ended.c.sid == bindparam("sid")),
    )
)
_BY_TOKEN = (
    select(*_USER_TABLE_COLS, _tokens.c.id.label("token_id"), _tokens.c.last_used_at)
    .join(_tokens, _tokens.c.user_id == _users.c.id)
    .where(_tokens.c.token_hash == bindparam("token_hash"), _users.c.disabled_at.is_(None))
)


def load_by_session(user_id: int, sid: str, at: datetime) -> Principal | None:
    """The user of a cookie session made at `at`; None if the user is gone or
    disabled, or that login ended (signed out, or all the user's logins ended)."""
    row = db.read_one(_BY_SESSION, {"user_id": user_id, "sid": sid, "at": at})
    if row is None:
        return None
    return Principal(row["id"], row["email"], row["name"], Role(row["role"]),
                     row["department"], row["manager_id"])


def load_by_token(token: str) -> Principal | None:
    now = db.utcnow()
    with db.read() as conn:
        row = conn.execute(_BY_TOKEN, {"token_hash": hash_token(token)}).first()
    if row is None:
        return None
    if row.last_used_at is None or now - row.last_used_at > TOKEN_TOUCH:
        with db.begin() as conn:
            conn.execute(update(ApiToken).where(ApiToken.id == row.token_id)
                         .values(last_used_at=now))
    return _principal(row)


def check_login(email: str, password: str, client: str) -> Principal | None:
    """The user if the email and password match (imported users without one, and
    disabled users, cannot log in); RateLimited while the email or the client
    address `client` has too many recent failures, before any hashing."""
    email = email.strip().lower()
    wait = throttle.retry_after(email, client)
    if wait is not None:
        raise RateLimited(f"Too many failed logins; try again in {wait} s.", retry_after=wait)
    with db.read() as conn:
        row = conn.execute(
            select(*_USER_COLS, User.password_hash, User.disabled_at)
            .where(User.email == email)
        ).first()
    if not verify_password(row.password_hash if row else None, password):
        throttle.failed(email, client)
        return None
    if row is not None and row.disabled_at is not None:
        return None  # (after the hash: the answer's time does not tell either)
    assert row is not None
    return _principal(row)


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def current_user(conn: HTTPConnection) -> Principal | None:
    """The signed-in user, or None: with an Authorization header, its bearer token
    alone (the cookie is ignored, a malformed header signs nobody in); else the
    session cookie."""
    cached = conn.scope.get("pa.user", False)
    if cached is not False:
        return cast(Principal | None, cached)
    user: Principal | None = None
    if "authorization" in conn.headers:
        token = bearer_token(conn)
        if token is not None:
            user = await run_db(load_by_token, token)
    elif "session" in conn.scope:
        uid = conn.session.get(SESSION_KEY)
        sid = conn.session.get(SESSION_ID_KEY)
        at = conn.session.get(SESSION_AT_KEY)
        # A cookie without a login id or time predates them and cannot be signed
        # out: it signs nobody in (its user logs in once more).
        if isinstance(uid, int) and isinstance(sid, str) and isinstance(at, int | float):
            made = datetime.fromtimestamp(at, UTC)
            user = await run_db(load_by_session, uid, sid, made)
        if user is None and conn.session:
            conn.session.clear()  # the answer expires the cookie
    conn.scope["pa.user"] = user
    return user


def end_session(sid: str) -> None:
    """Sign out the login `sid` for good, on every web process: current_user()
    refuses its cookie from now on, copies of it included."""
    now = db.utcnow()
    with db.begin() as conn:
        # Its rows are needed only while a copy of the cookie could still be valid.
        conn.execute(delete(_ended).where(_ended.c.expires_at < now))
        # A copy of the cookie may sign out the same login again.
        ended = (sqlite_insert(_ended) if db.is_sqlite() else postgresql_insert(_ended))
        conn.execute(ended.on_conflict_do_nothing(),
                     {"sid": sid, "expires_at": now + SESSION_MAX_AGE})


def session_id(conn: HTTPConnection) -> str | None:
    """The id of the login behind a cookie session (None for bearer tokens)."""
    if "authorization" in conn.headers or "session" not in conn.scope:
        return None
    sid = conn.session.get(SESSION_ID_KEY)
    return sid if isinstance(sid, str) else None


async def require_user(conn: HTTPConnection, *roles: Role) -> Principal:
    """The signed-in user, else Unauthorized; with `roles`, Forbidden for anyone else."""
    user = await current_user(conn)
    if user is None:
        raise Unauthorized("Sign in first.")
    if roles and user.role not in roles:
        raise Forbidden("Your role may not do this.")
    return user


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def normalize_origin(origin: str) -> str:
    """`scheme://host[:port]`, lower case, without a default port or trailing slash."""
    value = origin.strip().rstrip("/").lower()
    scheme, sep, host = value.partition("://")
    default = _DEFAULT_PORTS.get(scheme)
    if sep and default and host.endswith(default):
        value = f"{scheme}://{host[: -len(default)]}"
    return value


def _own_origin(scope: Scope) -> str:
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1")
    scheme = str(scope.get("scheme", "http"))
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
    return normalize_origin(f"{scheme}://{host}")


def origin_allowed(scope: Scope, allowed: frozenset[str], own: str | None = None) -> bool:
    """A request without Origin, or from the app's own origin (`own`, PA_PUBLIC_URL;
    else the request's scheme and Host) or one of `allowed`."""
    headers = dict(scope.get("headers") or [])
    origin = headers.get(b"origin")
    if origin is None:
        return True
    value = normalize_origin(origin.decode("latin-1"))
    return value == (own or _own_origin(scope)) or value in allowed


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: on every answer (DESIGN.md, "Sessions and abuse"): the pages load nothing from
#: elsewhere and run no inline script, and no site may frame them. Two exceptions to
#: default-src 'self': images may be data: URIs (the charts, the icons) and style
#: attributes are allowed (live.js sets progress bars' widths with them).
SECURITY_HEADERS = (
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
     b"frame-ancestors 'none'; base-uri 'self'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeadersMiddleware:
    """SECURITY_HEADERS on every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class NulCheckMiddleware:
    """400 for a path or query with a NUL character (%00): PostgreSQL's text cannot
    hold one, and a query with it fails (the API's JSON bodies: responses.json_body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
                "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")):
            await error("invalid", "The request's path or query holds a NUL character.",
                        400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class OriginCheckMiddleware:
    """403 for a cookie-authenticated state change or a WebSocket from a foreign Origin."""

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...] = (),
                 public_url: str | None = None) -> None:
        self.app = app
        #: PA_ALLOWED_ORIGINS
        self.allowed = frozenset(normalize_origin(o) for o in allowed_origins)
        #: PA_PUBLIC_URL: behind a proxy the request's own scheme and Host may not be it
        self.own = normalize_origin(public_url) if public_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            names = [name for name, _ in scope.get("headers") or []]
            if names.count(b"authorization") > 1 or names.count(b"origin") > 1:
                # Two copies could each be read by a different check.
                if scope["type"] == "websocket":
                    await receive()
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = error("invalid", "Duplicate Authorization or Origin header.", 400)
                await response(scope, receive, send)
                return
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            headers = dict(scope.get("headers") or [])
            # With an Authorization header the cookie is ignored (current_user), so
            # no cookie can be riding on a cross-site request.
            uses_header = b"authorization" in headers
            if not uses_header and not origin_allowed(scope, self.allowed, self.own):
                response = error("forbidden", "Cross-origin request refused.", 403)
                await response(scope, receive, send)
                return
        elif scope["type"] == "websocket" and not origin_allowed(scope, self.allowed, self.own):
            # Closing before accept makes the server answer the handshake with 403.
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


#: answered whatever their Host: a load balancer's or Prometheus's probes name the
#: process by its address
ANY_HOST_PATHS = frozenset({"/healthz", "/metrics"})


class HostCheckMiddleware:
    """400 (the error envelope) for a request whose Host is not PA_PUBLIC_URL's: a
    DNS-rebinding page, or a proxy that forwards any name. Starlette's
    TrustedHostMiddleware decides; only its plain-text answer is replaced."""

    def __init__(self, app: ASGIApp, host: str | None) -> None:
        self.app = app
        self.check = (TrustedHostMiddleware(self._host_is_trusted, allowed_hosts=[host],
                                            www_redirect=False) if host else None)

    @staticmethod
    async def _host_is_trusted(scope: Scope, receive: Receive, send: Send) -> None:
        scope["pa.trusted_host"] = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.check is None or scope["type"] not in ("http", "websocket")
                or scope["path"] in ANY_HOST_PATHS):
            await self.app(scope, receive, send)
            return

        async def drop(message: Message) -> None:
            pass  # TrustedHostMiddleware's own answer; ours follows

        await self.check(scope, receive, drop)
        if scope.pop("pa.trusted_host", False):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            if "websocket.http.response" not in scope.get("extensions", {}):
                await send({"type": "websocket.close", "code": 1008})  # (answered 403)
                return
        await error("invalid", "This server does not serve that host name.", 400)(
            scope, receive, send)
