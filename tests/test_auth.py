"""Signing in and out, bearer tokens, the Origin check, and pages that need a user."""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from pa import db
from pa.auth_passwords import new_token
from pa.models import ApiToken, Role, User
from tests.factories import make_user
from tests.web_fixtures import PASSWORD, app_client, login, user_with_password

FOREIGN = "http://evil.example"
OWN = "http://testserver"  # TestClient's origin


@pytest.fixture
def client() -> Any:
    with app_client() as c:
        yield c


def _token_for(user: User) -> str:
    token, token_hash = new_token()
    with db.session_scope() as session:
        session.add(ApiToken(user_id=user.id, token_hash=token_hash, created_at=db.utcnow()))
    return token


def _error(r: Any) -> dict[str, Any]:
    body = r.json()
    assert body["success"] is False, body
    assert "Traceback" not in r.text
    error: dict[str, Any] = body["error"]
    return error


def test_login_me_logout(client: TestClient) -> None:
    # Given
    manager = user_with_password(Role.MANAGER, name="Mona Manager")
    # When
    r = client.post("/api/session", json={"email": manager.email, "password": PASSWORD})
    # Then
    assert r.status_code == 200
    assert r.json() == {"success": True, "data": {
        "id": manager.id, "email": manager.email, "name": "Mona Manager", "role": "manager",
        "department": "Engineering", "managerId": None}}
    assert "pa_session" in client.cookies
    me = client.get("/api/me")
    assert me.status_code == 200 and me.json()["data"]["id"] == manager.id

    assert client.delete("/api/session").json() == {"success": True, "data": None}
    r = client.get("/api/me")
    assert r.status_code == 401 and _error(r)["code"] == "unauthorized"


def _session_cookie(data: dict[str, Any]) -> str:
    """A session cookie signed with the app's key, as Starlette's SessionMiddleware signs it."""
    import base64
    import json

    import itsdangerous

    from pa.settings import settings

    payload = base64.b64encode(json.dumps(data).encode())
    return itsdangerous.TimestampSigner(str(settings.secret_key)).sign(payload).decode()


def test_a_copy_of_a_signed_out_cookie_signs_nobody_in(client: TestClient) -> None:
    # Given: two logins of one user, and a copy of the first one's cookie
    user = user_with_password()
    login(client, user)
    copy = client.cookies["pa_session"]
    with app_client() as other:
        login(other, user)
        # When: the first login signs out
        assert client.delete("/api/session").status_code == 200
        # Then: its copied cookie no longer works, for the API, pages or /ws...
        client.cookies.set("pa_session", copy)
        r = client.get("/api/me")
        assert r.status_code == 401 and _error(r)["code"] == "unauthorized"
        assert "pa_session=null" in r.headers["set-cookie"]  # and is expired
        client.cookies.set("pa_session", copy)
        page = client.get("/reviews", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        client.cookies.set("pa_session", copy)
        with client.websocket_connect("/ws") as ws, \
                pytest.raises(WebSocketDisconnect) as info:
            ws.receive_text()
        assert info.value.code == 4401
        # Signing out with the copy too is no error.
        client.cookies.set("pa_session", copy)
        assert client.delete("/api/session").status_code == 200
        # The user's other login goes on, and a new one works.
        assert other.get("/api/me").status_code == 200
        login(client, user)
        assert client.get("/api/me").status_code == 200


def test_signed_out_logins_are_forgotten_once_their_cookie_would_have_expired(
        client: TestClient) -> None:
    from sqlalchemy import select

    from pa.models import EndedSession
    from pa.web.auth import SESSION_MAX_AGE

    with db.session_scope() as session:
        session.add(EndedSession(sid="long-expired", expires_at=db.utcnow()))
    login(client, user_with_password())
    before = db.utcnow()
    client.delete("/api/session")
    with db.session_scope() as session:
        rows = session.execute(select(EndedSession)).scalars().all()
    assert len(rows) == 1 and rows[0].sid != "long-expired"
    assert before + SESSION_MAX_AGE <= rows[0].expires_at <= db.utcnow() + SESSION_MAX_AGE


def test_a_session_cookie_without_a_login_id_signs_nobody_in(client: TestClient) -> None:
    # Cookies from before logins had ids could never be signed out.
    user = user_with_password()
    client.cookies.set("pa_session", _session_cookie({"uid": user.id}))
    assert client.get("/api/me").status_code == 401
    client.cookies.set("pa_session", _session_cookie({"uid": user.id, "sid": "x" * 22}))
    assert client.get("/api/me").status_code == 401  # nor one without the login's time
    client.cookies.set("pa_session", _session_cookie({"uid": user.id, "sid": "x" * 22,
                                                      "at": time.time()}))
    assert client.get("/api/me").status_code == 200  # the same cookie with both


def test_login_ignores_email_case_and_spaces(client: TestClient) -> None:
    user_with_password(email="case.person@example.com")  # stored lower case, as pa does
    r = client.post("/api/session", json={"email": "  case.person@EXAMPLE.com ",
                                          "password": PASSWORD})
    assert r.status_code == 200


def test_wrong_password_and_unknown_email_get_the_same_answer(client: TestClient) -> None:
    user = user_with_password()
    wrong_password = client.post("/api/session",
                                 json={"email": user.email, "password": "nope"})
    unknown = client.post("/api/session",
                          json={"email": "nobody@example.com", "password": PASSWORD})
    assert wrong_password.status_code == unknown.status_code == 401
    assert _error(wrong_password) == _error(unknown) == {
        "code": "unauthorized", "message": "Wrong email or password."}
    assert client.get("/api/me").status_code == 401


def test_imported_user_without_password_cannot_log_in(client: TestClient) -> None:
    imported = make_user(Role.EMPLOYEE, password=None)
    for attempt in ("", "anything", PASSWORD):
        r = client.post("/api/session", json={"email": imported.email, "password": attempt})
        assert r.status_code in (400, 401)
    r = client.post("/api/session", json={"email": imported.email, "password": "x"})
    assert _error(r)["message"] == "Wrong email or password."


@pytest.mark.parametrize(
    ("body", "field"),
    [({"password": PASSWORD}, "email"), ({"email": "a@example.com"}, "password"),
     ({"email": "a@example.com", "password": ""}, "password"),
     ({"email": 5, "password": PASSWORD}, "email")],
)
def test_login_names_the_missing_field(client: TestClient, body: dict[str, Any],
                                       field: str) -> None:
    r = client.post("/api/session", json=body)
    assert r.status_code == 400
    assert _error(r)["field"] == field


def test_login_with_a_body_that_is_not_json(client: TestClient) -> None:
    for content in (b"email=a&password=b", b"[1, 2]", b"\xff\xfe"):
        r = client.post("/api/session", content=content,
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        assert _error(r)["code"] == "invalid"


def test_bearer_token(client: TestClient) -> None:
    user = make_user(Role.HR_ADMIN)  # no password: tokens work without one
    token = _token_for(user)
    r = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["data"]["id"] == user.id

    r = client.get("/api/me", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401
    # A token is not a cookie: a foreign Origin does not matter for it.
    r = client.post("/api/jobs/nothing/cancel",
                    headers={"Authorization": f"Bearer {token}", "Origin": FOREIGN})
    assert r.status_code == 404


def test_a_foreign_origin_cannot_change_anything_with_the_cookie(client: TestClient) -> None:
    # Given
    user = user_with_password()
    login(client, user)
    # When: a page elsewhere makes the browser send the cookie
    r = client.delete("/api/session", headers={"Origin": FOREIGN})
    # Then
    assert r.status_code == 403
    assert _error(r) == {"code": "forbidden", "message": "Cross-origin request refused."}
    assert client.get("/api/me", headers={"Origin": FOREIGN}).status_code == 200  # GET is safe

    # The app's own origin, and a request without Origin, are allowed.
    assert client.post("/api/jobs/nothing/cancel", headers={"Origin": OWN}).status_code == 404
    assert client.post("/api/jobs/nothing/cancel").status_code == 404
    assert client.delete("/api/session", headers={"Origin": OWN}).status_code == 200


def test_login_from_a_foreign_origin_is_refused(client: TestClient) -> None:
    user = user_with_password()
    r = client.post("/api/session", json={"email": user.email, "password": PASSWORD},
                    headers={"Origin": FOREIGN})
    assert r.status_code == 403
    assert "pa_session" not in client.cookies
    # The same origin with another port or scheme is another origin.
    for other in ("http://testserver:8080", "https://testserver"):
        r = client.post("/api/session", json={"email": user.email, "password": PASSWORD},
                        headers={"Origin": other})
        assert r.status_code == 403
    r = client.post("/api/session", json={"email": user.email, "password": PASSWORD},
                    headers={"Origin": "HTTP://TESTSERVER:80"})
    assert r.status_code == 200


def test_websocket_without_a_session_is_closed_with_4401(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws, pytest.raises(WebSocketDisconnect) as info:
        ws.receive_text()
    assert info.value.code == 4401


def test_websocket_with_a_session_gets_a_snapshot(client: TestClient) -> None:
    login(client, user_with_password())
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"type": "snapshot", "data": {"jobs": []}}


def test_pages_send_strangers_to_login(client: TestClient) -> None:
    for path in ("/", "/reviews"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == f"/login?next=%2F{path[1:]}"
    page = client.get("/login?next=/reviews")
    assert page.status_code == 200
    assert 'name="email"' in page.text and 'name="password"' in page.text
    assert 'data-next="/reviews"' in page.text


def test_login_page_never_sends_elsewhere(client: TestClient) -> None:
    for evil in ("//evil.example", "https://evil.example", "/\\evil.example"):
        page = client.get("/login", params={"next": evil})
        assert 'data-next="/"' in page.text


def test_signed_in_pages_show_who(client: TestClient) -> None:
    user = user_with_password(Role.HR_ADMIN, name="Harriet <HR>")
    login(client, user)
    page = client.get("/")
    assert page.status_code == 200
    assert "Harriet &lt;HR&gt;" in page.text  # escaped
    assert "hr admin" in page.text
    assert 'id="logout"' in page.text
    assert 'aria-live="polite"' in page.text
    r = client.get("/login?next=/reviews", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/reviews"


def test_static_files_and_unknown_pages(client: TestClient) -> None:
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    r = client.get("/no-such-page")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
