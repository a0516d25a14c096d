"""Findings of the security review (issue 11), each as what a client now gets."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from starlette.testclient import TestClient

from pa.models import Role
from pa.queue import JobType
from pa.web.responses import MAX_JSON_BYTES
from tests.factories import make_user
from tests.services import wait_final
from tests.web_fixtures import app_client, error_of, live_server, login, user_with_password

FOREIGN = "http://evil.example"


@pytest.fixture
def client() -> Any:
    with app_client() as c:
        yield c


_error = error_of


@pytest.mark.parametrize("evil", ["/\t/evil.example", "/\n/evil.example", "/\r/evil.example",
                                  "/\\evil.example", "/x\\..\\\\evil.example",
                                  "/\x7f/evil.example"])
def test_next_after_login_never_leaves_the_app(client: TestClient, evil: str) -> None:
    # A browser drops tabs and newlines and reads '\' as '/': each of these was //host.
    assert 'data-next="/"' in client.get("/login", params={"next": evil}).text
    login(client, user_with_password())
    r = client.get("/login", params={"next": evil}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    # A path of the app still works.
    r = client.get("/login", params={"next": "/reviews?year=2026"}, follow_redirects=False)
    assert r.headers["location"] == "/reviews?year=2026"


def test_a_json_body_over_64_kib_is_refused(client: TestClient) -> None:
    user = user_with_password()
    padding = "x" * MAX_JSON_BYTES
    r = client.post("/api/session", json={"email": user.email, "password": padding})
    assert _error(r, 413, "too_large")["message"] == "The request body is larger than 64 KiB."


def test_a_huge_body_is_answered_before_it_is_sent_whole() -> None:
    # Given: a real server, and a client that announces 200 MB and sends 128 KiB
    with live_server() as server, socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /api/session HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n")
        s.sendall(b"[" * (128 * 1024))
        # Then: the answer comes without the rest of the body
        s.settimeout(10)
        answer = s.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert '"code":"too_large"' in answer


def test_deeply_nested_json_is_a_400_not_a_500(client: TestClient) -> None:
    r = client.post("/api/session", content=b"[" * 60_000,
                    headers={"Content-Type": "application/json"})
    assert _error(r, 400, "invalid")["message"] == "The request body must be a JSON object."


@pytest.mark.parametrize("path", ["/api/reviews/{n}", "/api/reviews/{n}/submit-to-hr",
                                  "/api/fiscal-years/{n}/archive"])
@pytest.mark.parametrize("n", ["9" * 4301, str(2**31), str(2**31 - 1)])
def test_an_id_of_thousands_of_digits_or_past_the_database_integer_is_a_404(
        client: TestClient, path: str, n: str) -> None:
    # 2**31 passed Python but not PostgreSQL's integer (the fuzz found it); 2**31 - 1
    # is the largest id a row can have, and reaches the query.
    login(client, user_with_password(Role.ADMIN))
    url = path.format(n=n)
    r = client.post(url) if url.endswith("submit-to-hr") else client.get(url)
    _error(r, 404, "not_found")


def test_a_nul_character_in_a_body_path_or_query_is_a_400(client: TestClient) -> None:
    # PostgreSQL's text cannot hold NUL: each of these was a 500 there (the fuzz found
    # the login's).
    _error(client.post("/api/session", json={"email": "a\u0000@x", "password": "p"}),
           400, "invalid")
    login(client, user_with_password(Role.ADMIN))
    _error(client.post("/api/reports", json={"fiscalYear": 2026, "department": "E\u0000"}),
           400, "invalid")
    _error(client.get("/api/jobs/a%00b"), 400, "invalid")
    _error(client.get("/api/analytics?fromYear=2025&toYear=2026&department=%00"),
           400, "invalid")


def test_duplicate_authorization_or_origin_headers_are_refused(client: TestClient) -> None:
    login(client, user_with_password(Role.MANAGER))
    for name, values in (("Authorization", ["Bearer a", "Bearer b"]),
                         ("Origin", ["http://testserver", FOREIGN])):
        headers = [(name.encode(), v.encode()) for v in values]
        r = client.post("/api/jobs/nothing/cancel", headers=headers)  # type: ignore[arg-type]
        _error(r, 400, "invalid")


def test_an_authorization_header_decides_even_when_it_is_blank(client: TestClient) -> None:
    # Given: a signed-in cookie, and a request from a foreign page with a header
    # that looks like a bearer token but holds only a no-break space
    login(client, user_with_password(Role.MANAGER))
    headers = {"Origin": FOREIGN, "Authorization": "Bearer \u00a0".encode("latin-1")}
    # Then: the header, not the cookie, decides: nobody is signed in
    _error(client.post("/api/jobs/nothing/cancel", headers=headers), 401, "unauthorized")
    _error(client.get("/api/me", headers={"Authorization": "Bearer \u00a0".encode("latin-1")}), 401,
           "unauthorized")
    assert client.get("/api/me").status_code == 200  # the cookie alone still works


def test_pages_and_answers_carry_the_security_headers(client: TestClient) -> None:
    for r in (client.get("/login"), client.get("/api/me"), client.get("/static/app.css")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp


def test_an_unexpected_error_shows_its_owner_an_incident_id_only(
        consumer: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Given: an email job whose payload makes its handler fail in a way pa did not
    # foresee (a review id that int() refuses: a ValueError naming the value)
    from pa import jobs

    manager = make_user(Role.MANAGER)
    caplog.set_level(logging.ERROR, logger="pa.runner")
    job = jobs.submit(JobType.EMAIL_NOTIFICATION,
                      {"kind": "review_submitted", "reviewId": "secret-value"}, manager.id,
                      max_retries=0)
    # Then: the owner reads an incident id, the log has the exception with that id
    done = wait_final(job["id"])
    assert done["status"] == "failed"
    assert done["error"].startswith("Internal error (logged as "), done["error"]
    assert "secret-value" not in done["error"] and "ValueError" not in done["error"]
    incident = done["error"].removeprefix("Internal error (logged as ").rstrip(").")
    logged = [r for r in caplog.records if incident in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "secret-value" in str(logged[0].exc_info[1])


# --- ending logins: set-password, revoke-tokens, disable-user, enable-user ----------------


def _cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
         *argv: str, stdin: str = "") -> str:
    import io
    import sys

    from pa import cli

    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def _token(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
           email: str) -> str:
    return _cli(capsys, monkeypatch, "create-token", email).strip().splitlines()[-1]


def test_a_new_password_ends_every_login_and_token_and_closes_the_sockets(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import httpx
    from websockets.exceptions import ConnectionClosed

    from tests.web_fixtures import next_message, open_socket

    # Given: a user signed in twice (a cookie and a copy of it), with a token and an
    # open socket, on a real server
    user = user_with_password(Role.MANAGER)
    token = _token(capsys, monkeypatch, user.email)
    with live_server() as server:
        cookie = server.cookie(user)
        with httpx.Client(base_url=server.url) as http:
            for headers in ({"Cookie": cookie}, {"Cookie": cookie},
                            {"Authorization": f"Bearer {token}"}):
                assert http.get("/api/me", headers=headers).status_code == 200

            async def scenario() -> int:
                ws = await open_socket(server, cookie)
                assert (await next_message(ws))["type"] == "snapshot"
                # When: the password is set anew
                await asyncio.to_thread(_cli, capsys, monkeypatch, "set-password",
                                        user.email, stdin="another password 7\n")
                # Then: the socket is closed as signed out
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed as closed:
                    return closed.rcvd.code if closed.rcvd else -1
                return 0

            assert asyncio.run(scenario()) == 4401
            # ... and neither the cookie (nor its copy) nor the token signs anyone in
            for headers in ({"Cookie": cookie}, {"Authorization": f"Bearer {token}"}):
                _error(http.get("/api/me", headers=headers), 401, "unauthorized")
            # ... while the new password signs in again
            r = http.post("/api/session",
                          json={"email": user.email, "password": "another password 7"})
            assert r.status_code == 200


def test_revoke_tokens_ends_logins_and_tokens(
        client: TestClient, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    user = user_with_password(Role.HR_ADMIN)
    token = _token(capsys, monkeypatch, user.email)
    login(client, user)
    out = _cli(capsys, monkeypatch, "revoke-tokens", user.email)
    assert "1 API token deleted" in out
    _error(client.get("/api/me"), 401, "unauthorized")
    _error(client.get("/api/me", headers={"Authorization": f"Bearer {token}"}), 401,
           "unauthorized")
    login(client, user)  # the password still works
    assert client.get("/api/me").status_code == 200


def test_a_disabled_user_cannot_sign_in_until_enabled(
        client: TestClient, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.web_fixtures import PASSWORD

    user = user_with_password(Role.MANAGER)
    login(client, user)
    _cli(capsys, monkeypatch, "disable-user", user.email)
    _error(client.get("/api/me"), 401, "unauthorized")
    r = client.post("/api/session", json={"email": user.email, "password": PASSWORD})
    assert _error(r, 401, "unauthorized")["message"] == "Wrong email or password."
    _cli(capsys, monkeypatch, "enable-user", user.email)
    login(client, user)
    assert client.get("/api/me").status_code == 200


# --- a role that changes ----------------------------------------------------------------


def test_a_demoted_admin_no_longer_sees_or_downloads_what_they_started(
        client: TestClient) -> None:
    from sqlalchemy import update

    from pa import db, jobs
    from pa.models import User
    from pa.settings import settings

    # Given: an admin's finished backup, which they may download
    admin = user_with_password(Role.ADMIN)
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, admin.id)
    path = settings.data_dir / "backups" / "theirs.sqlite.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"the whole database")
    assert jobs.change(job["id"], {"status": "completed",
                                   "result_file": "backups/theirs.sqlite.gz",
                                   "completed_at": db.utcnow()}) is not None
    login(client, admin)
    assert client.get(f"/api/jobs/{job['id']}/download").content == b"the whole database"
    # When: an import makes them an employee
    with db.begin() as conn:
        conn.execute(update(User).where(User.id == admin.id).values(role="employee"))
    # Then: the job is not theirs to see any more, like anyone else's
    for url in (f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/download"):
        _error(client.get(url), 404, "not_found")
    _error(client.post(f"/api/jobs/{job['id']}/retry"), 404, "not_found")
    assert client.get("/api/jobs").json()["data"] == []
    # ... and a socket of theirs gets neither it in its snapshot nor its events
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"type": "snapshot", "data": {"jobs": []}}


def test_an_import_that_demotes_an_admin_closes_their_socket_with_4409(consumer: Any) -> None:
    # (A job of another user, published before the demoted user's own, would arrive
    # before it on the socket: reading up to their own proves it did not.)
    import asyncio

    import httpx
    from websockets.exceptions import ConnectionClosed

    from pa import jobs
    from tests.web_fixtures import next_message, open_socket, read_until

    # Given: two admins on a real server; the first one's socket gets everyone's jobs
    admin = user_with_password(Role.ADMIN, email="ada@example.com")
    other = user_with_password(Role.ADMIN, email="grace@example.com")
    manager = make_user(Role.MANAGER)
    with live_server() as server:
        cookie, other_cookie = server.cookie(admin), server.cookie(other)

        async def scenario() -> tuple[int, list[dict[str, Any]]]:
            ws = await open_socket(server, cookie)
            assert (await next_message(ws))["type"] == "snapshot"
            # When: the other admin imports a CSV that makes the first a manager
            csv = b"email,name,role,department,manager_email\nada@example.com,Ada,manager,Sales,\n"
            with httpx.Client(base_url=server.url, headers={"Cookie": other_cookie}) as http:
                r = await asyncio.to_thread(
                    http.post, "/api/users/import",
                    files={"file": ("users.csv", csv, "text/csv")})
            assert r.status_code == 202, r.text
            # Then: their socket is closed with 4409 (their role changed)...
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else -1
            # ... and a new one, for the manager, gets their own email jobs only
            ws = await open_socket(server, cookie)
            snapshot = await next_message(ws)
            job = await asyncio.to_thread(
                jobs.submit, JobType.EMAIL_NOTIFICATION,
                {"kind": "review_submitted", "reviewId": 1}, manager.id)
            mine = await asyncio.to_thread(
                jobs.submit, JobType.EMAIL_NOTIFICATION,
                {"kind": "review_submitted", "reviewId": 2}, admin.id)
            seen = await read_until(ws, lambda m: m["type"] == "job"
                                    and m["data"]["id"] == mine["id"], timeout=5,
                                    what="nothing but their own visible jobs")
            await ws.close()
            return code, [snapshot, *seen, {"job": job["id"]}]

        code, seen = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert code == 4409
    assert seen[0]["type"] == "snapshot" and seen[0]["data"]["jobs"] == []
    others = seen[-1]["job"]
    assert all(m.get("data", {}).get("id") != others for m in seen[1:-1])


@pytest.mark.parametrize("command", [["run_web.py"], ["run_consumer.py"], ["-m", "pa", "init-db"]])
def test_a_short_secret_key_is_refused_at_start(command: list[str]) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PA_SECRET_KEY="only-twenty-chars-xx")
    done = subprocess.run([sys.executable, *command], cwd=Path(__file__).resolve().parent.parent,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "PA_SECRET_KEY is 20 characters long; it must have at least 32" in done.stderr
    assert "Traceback" not in done.stderr


# --- failed logins are throttled -----------------------------------------------------------


def _try(client: TestClient, email: str, password: str, **headers: str) -> Any:
    return client.post("/api/session", json={"email": email, "password": password},
                       headers=headers)


def test_five_failed_logins_lock_the_email_for_the_window_the_right_password_too(
        client: TestClient) -> None:
    from tests.web_fixtures import PASSWORD

    user, other = user_with_password(Role.MANAGER), user_with_password(Role.MANAGER)
    for _ in range(5):
        _error(_try(client, user.email, "wrong password"), 401, "unauthorized")
    # The sixth try, with the right password and the email's case changed, is refused
    r = _try(client, user.email.upper(), PASSWORD)
    _error(r, 429, "rate_limited")
    assert 14 * 60 < int(r.headers["retry-after"]) <= 15 * 60
    # ... while another account from the same address signs in
    assert _try(client, other.email, PASSWORD).status_code == 200


def test_a_client_address_is_limited_to_30_failures_across_emails(client: TestClient) -> None:
    from tests.web_fixtures import PASSWORD

    user = user_with_password(Role.EMPLOYEE)
    for n in range(30):  # 30 emails, none of them locked by itself
        _error(_try(client, f"nobody{n}@example.com", "guess"), 401, "unauthorized")
    _error(_try(client, user.email, PASSWORD), 429, "rate_limited")


def test_the_lock_ends_when_the_window_passes(client: TestClient,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from limits import parse

    from pa import throttle
    from tests.web_fixtures import PASSWORD

    monkeypatch.setattr(throttle, "PER_EMAIL", parse("5/3 seconds"))
    user = user_with_password(Role.EMPLOYEE)
    for _ in range(5):
        _try(client, user.email, "wrong")
    r = _try(client, user.email, PASSWORD)
    _error(r, 429, "rate_limited")
    time.sleep(float(r.headers["retry-after"]) + 0.2)
    assert _try(client, user.email, PASSWORD).status_code == 200


def test_set_password_and_enable_user_forget_the_failures(
        client: TestClient, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    user = user_with_password(Role.EMPLOYEE)
    for _ in range(5):
        _try(client, user.email, "wrong")
    _error(_try(client, user.email, "new password 11"), 429, "rate_limited")
    _cli(capsys, monkeypatch, "set-password", user.email, stdin="new password 11\n")
    assert _try(client, user.email, "new password 11").status_code == 200


@pytest.mark.parametrize("storage", ["redis", "database"])
def test_both_storages_count_a_moving_window(storage: str, redis_server: Any) -> None:
    # Production counts in Redis, embedded mode in the database: the same window.
    import time

    from limits import parse
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter

    from pa.throttle import SqlStorage

    store = (RedisStorage(redis_server.url, key_prefix="pa:limits") if storage == "redis"
             else SqlStorage())
    limiter = MovingWindowRateLimiter(store)
    item = parse("3/2 seconds")
    started = time.time()
    assert [limiter.hit(item, "k", "a") for _ in range(4)] == [True, True, True, False]
    assert limiter.hit(item, "k", "b")  # another key is counted apart
    assert not limiter.test(item, "k", "a")
    reset, remaining = limiter.get_window_stats(item, "k", "a")
    # (Redis keeps the time to 0.1 ms)
    assert remaining == 0 and started + 2 - 0.001 <= reset <= time.time() + 2
    time.sleep(max(0.0, reset - time.time()) + 0.05)
    assert limiter.test(item, "k", "a")
    limiter.hit(item, "k", "a")
    store.clear(item.key_for("k", "a"))
    assert limiter.get_window_stats(item, "k", "a").remaining == 3


def test_at_most_two_passwords_are_hashed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import threading

    import httpx

    from pa.web import auth
    from pa.web.app import create_app

    running, peak, lock = [0], [0], threading.Lock()
    verify = auth.verify_password

    def counted(password_hash: str | None, password: str) -> bool:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            return verify(password_hash, password)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(auth, "verify_password", counted)
    users = [user_with_password(Role.EMPLOYEE) for _ in range(4)]

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            answers = await asyncio.gather(*(
                http.post("/api/session", json={"email": u.email, "password": "wrong"})
                for u in users for _ in range(2)))
        return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [401] * 8
    assert peak[0] == 2  # (not 1: the eight tries did run side by side, two at a time)


# --- PA_PUBLIC_URL: the Host check, the Origin check's origin, the Secure cookie ----------


@pytest.fixture
def public_config() -> Any:
    from dataclasses import replace

    from pa.settings import current

    before = current()
    yield replace(before, public_url="https://pa.example.com")
    from pa import runtime

    runtime.configure(before)


def test_a_public_url_admits_its_host_only(public_config: Any) -> None:
    from pa.web.app import create_app

    with TestClient(create_app(public_config), base_url="http://pa.example.com") as client:
        assert client.get("/api/me").status_code == 401  # its host: served
        for host in ("evil.example", "pa.example.com.evil.example", "127.0.0.1:8000"):
            r = client.get("/api/me", headers={"Host": host})
            assert _error(r, 400, "invalid")["message"] == (
                "This server does not serve that host name.")
            assert client.get("/login", headers={"Host": host}).status_code == 400
        # A probe by address still gets the health
        assert client.get("/healthz", headers={"Host": "10.0.0.5:8000"}).status_code == 200


def test_behind_a_tls_proxy_the_public_url_is_the_own_origin_and_the_cookie_is_secure(
        public_config: Any) -> None:
    from pa.web.app import create_app
    from tests.web_fixtures import PASSWORD

    user = user_with_password(Role.MANAGER)
    # The proxy speaks plain HTTP to pa: the request's own origin is http://pa.example.com
    with TestClient(create_app(public_config), base_url="http://pa.example.com") as client:
        body = {"email": user.email, "password": PASSWORD}
        r = client.post("/api/session", json=body, headers={"Origin": "http://pa.example.com"})
        _error(r, 403, "forbidden")
        r = client.post("/api/session", json=body, headers={"Origin": "https://pa.example.com"})
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"].lower()
        assert "pa_session=" in cookie and "; secure" in cookie and "samesite=lax" in cookie


def test_without_a_public_url_the_cookie_is_not_secure(client: TestClient) -> None:
    from tests.web_fixtures import PASSWORD

    user = user_with_password(Role.MANAGER)
    r = client.post("/api/session", json={"email": user.email, "password": PASSWORD})
    assert r.status_code == 200 and "secure" not in r.headers["set-cookie"].lower()


def test_a_websocket_for_another_host_is_refused(public_config: Any) -> None:
    import socket as sockets

    from tests.web_fixtures import live_server

    with live_server(config=public_config) as server:
        def handshake(host: str) -> bytes:
            with sockets.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
                return s.recv(4096)

        assert handshake("evil.example").startswith(b"HTTP/1.1 400")
        # the public host gets past the check (to the sign-in rule: no cookie, refused)
        assert not handshake("pa.example.com").startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("value,origin", [
    ("https://PA.example.com/", "https://pa.example.com"),
    ("https://pa.example.com:443", "https://pa.example.com"),
    ("http://pa.example.com:8080", "http://pa.example.com:8080"),
    ("http://[::1]:8000", "http://[::1]:8000"),
])
def test_a_public_url_is_read_as_an_origin(value: str, origin: str) -> None:
    from pa.settings import _public_url

    assert _public_url(value) == origin


@pytest.mark.parametrize("value", ["pa.example.com", "ftp://pa.example.com",
                                   "https://pa.example.com/app", "https://u:p@pa.example.com",
                                   "https://pa.example.com:99999", "https://"])
def test_a_public_url_that_is_not_an_origin_is_refused_at_start(value: str) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PA_PUBLIC_URL=value)
    done = subprocess.run([sys.executable, "-m", "pa", "init-db"],
                          cwd=Path(__file__).resolve().parent.parent,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "PA_PUBLIC_URL must be the app's origin" in done.stderr
    assert "Traceback" not in done.stderr


def test_mail_links_point_at_the_public_url(public_config: Any) -> None:
    from pa import runtime
    from pa.tasks.email_notification import _review_context
    from tests.factories import make_review

    manager = make_user(Role.MANAGER)
    review = make_review(make_user(Role.EMPLOYEE, manager_id=manager.id))
    runtime.configure(public_config)
    assert _review_context(review.id)["url"] == f"https://pa.example.com/reviews?id={review.id}"
