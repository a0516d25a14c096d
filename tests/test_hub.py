"""The WebSocket /ws and its hub, through a real uvicorn and the `websockets` client."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pa import db, jobs
from pa.auth_passwords import new_token
from pa.models import ApiToken, Role
from pa.queue import JobType
from tests.factories import make_review, make_user
from tests.services import RedisServer, wait_for
from tests.web_fixtures import (
    PASSWORD,
    LiveServer,
    live_server,
    next_message,
    open_socket,
    plain,
    read_until,
    user_with_password,
)


@pytest.fixture
def server() -> Any:
    with live_server() as s:
        yield s


def _is_snapshot(message: dict[str, Any]) -> bool:
    return message["type"] == "snapshot"


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.ERROR]


def test_a_foreign_origin_is_refused_at_the_handshake(server: LiveServer) -> None:
    cookie = server.cookie(user_with_password())

    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as refused:
            await open_socket(server, cookie, origin="http://evil.example")
        assert refused.value.response.status_code == 403
        # The app's own origin is welcome.
        ws = await open_socket(server, cookie, origin=server.url)
        assert _is_snapshot(await next_message(ws))
        await ws.close()

    asyncio.run(scenario())


def test_without_a_session_the_socket_closes_with_4401(server: LiveServer) -> None:
    async def scenario() -> None:
        ws = await open_socket(server, "pa_session=forged")
        with pytest.raises(ConnectionClosed) as closed:
            await next_message(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

    asyncio.run(scenario())


def test_a_bearer_token_opens_a_socket_and_the_snapshot_comes_first(
        server: LiveServer) -> None:
    # Given
    user = make_user(Role.MANAGER)
    token, token_hash = new_token()
    with db.session_scope() as session:
        session.add(ApiToken(user_id=user.id, token_hash=token_hash, created_at=db.utcnow()))
    pending = jobs.submit(JobType.EMAIL_NOTIFICATION,
                          {"kind": "review_submitted", "reviewId": 1}, user.id)
    jobs.submit(JobType.EMAIL_NOTIFICATION, {"kind": "review_submitted", "reviewId": 2},
                make_user(Role.MANAGER).id)  # someone else's

    async def scenario() -> None:
        ws = await connect(server.ws_url, open_timeout=10,
                           additional_headers={"Authorization": f"Bearer {token}"})
        try:
            # Then
            first = await next_message(ws)
            assert first["type"] == "snapshot"
            assert [plain(j) for j in first["data"]["jobs"]] == [pending]
            assert first["data"]["jobs"][0]["queue"]["ahead"] == 0
            changed = await asyncio.to_thread(jobs.cancel, pending["id"], user.id,
                                            Role.MANAGER)
            assert await next_message(ws) == {"type": "job", "data": changed}
        finally:
            await ws.close()

    asyncio.run(scenario())


def test_logging_out_closes_the_sockets_of_that_login_only(server: LiveServer) -> None:
    # Given: one user signed in twice (two browsers), sockets open in both
    user = user_with_password(Role.ADMIN)  # (backups: an admin's jobs)
    first, second = server.cookie(user), server.cookie(user)

    async def scenario() -> None:
        ours = [await open_socket(server, first) for _ in range(2)]
        theirs = await open_socket(server, second)
        for ws in (*ours, theirs):
            assert _is_snapshot(await next_message(ws))
        # When: the first browser logs out
        with server.http() as client:
            r = await asyncio.to_thread(client.delete, "/api/session",
                                        headers={"Cookie": first})
        assert r.status_code == 200
        # Then: its sockets close as unauthorized (the page goes to /login) ...
        for ws in ours:
            with pytest.raises(ConnectionClosed) as closed:
                await next_message(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        # ... and the other login's socket still gets the user's jobs.
        job = await asyncio.to_thread(jobs.submit, JobType.DATABASE_BACKUP, {}, user.id)
        assert (await next_message(theirs))["data"]["id"] == job["id"]
        await theirs.close()

    asyncio.run(scenario())
    wait_for(lambda: server.hub.count() == 0, message="every socket to leave")


def test_closing_sockets_leaves_nothing_behind(server: LiveServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    user = user_with_password(Role.ADMIN)  # (backups: an admin's jobs)
    cookie = server.cookie(user)

    async def scenario() -> None:
        sockets = [await open_socket(server, cookie) for _ in range(5)]
        for ws in sockets:
            assert _is_snapshot(await next_message(ws))
        wait_for(lambda: server.hub.count() == 5, message="5 registered sockets")
        await sockets[0].close()
        sockets[1].transport.abort()  # a browser that vanishes without a close frame
        await asyncio.to_thread(wait_for, lambda: server.hub.count() == 3,
                                message="2 sockets to leave")
        # Events still reach the others.
        job = await asyncio.to_thread(jobs.submit, JobType.DATABASE_BACKUP, {}, user.id)
        for ws in sockets[2:]:
            assert (await next_message(ws))["data"]["id"] == job["id"]
            await ws.close()

    asyncio.run(scenario())
    wait_for(lambda: server.hub.count() == 0, message="every socket to leave")
    assert _errors(caplog) == []


def test_stopping_the_server_closes_the_sockets(caplog: pytest.LogCaptureFixture) -> None:
    user = user_with_password(Role.ADMIN)  # (backups: an admin's jobs)
    server = LiveServer()
    server.start()
    cookie = server.cookie(user)

    async def scenario() -> None:
        ws = await open_socket(server, cookie)
        assert _is_snapshot(await next_message(ws))
        await asyncio.to_thread(server.stop)
        with pytest.raises(ConnectionClosed) as closed:
            await next_message(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)

    asyncio.run(scenario())
    assert not server.hub.subscribed and server.hub.count() == 0
    assert _errors(caplog) == []


def test_a_socket_is_not_compressed_even_when_the_browser_offers_it(
        server: LiveServer) -> None:
    # Per-message deflate held 38 KB per open socket and most of the CPU of an event
    # sent to many sockets; pa's messages are small (UVICORN_WEBSOCKETS).
    cookie = server.cookie(user_with_password(Role.MANAGER))

    async def scenario() -> None:
        ws = await open_socket(server, cookie, compression="deflate")  # (as Chromium)
        try:
            assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert _is_snapshot(await next_message(ws))
        finally:
            await ws.close()

    asyncio.run(scenario())


async def _slow_socket(server: LiveServer, cookie: str) -> ClientConnection:
    """A client that reads nothing: small receive buffers, no compression (which
    would shrink the test's repetitive payloads to nothing)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    return await connect(server.ws_url, sock=sock, max_queue=1, open_timeout=10,
                         compression=None, additional_headers={"Cookie": cookie})


def test_a_slow_socket_does_not_hold_up_the_others() -> None:
    # Given: two sockets of one user; one will not read
    user = user_with_password(Role.ADMIN)  # (backups: an admin's jobs)
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, user.id)
    # Enough to fill the sleeper's queue (16 here, 256 by default) once the
    # kernel's buffers (up to 4 MB here) and the server's transport are full.
    changes, blob = 300, "x" * 32_000
    with live_server(hub_queue_size=16) as server:
        _slow_and_fast(server, server.cookie(user), job["id"], changes, blob)


def _slow_and_fast(server: LiveServer, cookie: str, job_id: str, changes: int,
                   blob: str) -> None:

    async def scenario() -> None:
        slow = await _slow_socket(server, cookie)
        fast = await open_socket(server, cookie, max_queue=None)
        try:
            assert _is_snapshot(await next_message(slow))
            assert _is_snapshot(await next_message(fast))

            # When: many changes, each a real version bump with a sizeable result
            def change_many() -> int:
                last = 0
                for i in range(changes):
                    done = jobs.change(job_id, {"progress_current": i,
                                                   "progress_total": changes,
                                                   "result": {"step": i, "blob": blob}})
                    assert done is not None
                    last = done["version"]
                return last

            final = await asyncio.to_thread(change_many)

            # Then: the reading socket gets every change while the other sleeps
            # (an admin's socket also gets the operators' overview now and then)
            seen = await read_until(
                fast, lambda m: m["type"] == "job" and m["data"]["version"] == final,
                timeout=60, what="the last change on the fast socket")
            assert len([m for m in seen if m["type"] == "job"]) == changes
            # and the sleeper, once it reads, has lost its backlog for a snapshot
            got = await read_until(
                slow, lambda m: _is_snapshot(m) and m["data"]["jobs"][0]["version"] == final,
                timeout=60, what="a fresh snapshot on the slow socket")
            assert len([m for m in got if m["type"] == "job"]) < changes
        finally:
            slow.transport.abort()  # its close would wait behind everything unread
            await fast.close()

    asyncio.run(scenario())


def test_the_hub_comes_back_after_redis_restarts(server: LiveServer,
                                                 redis_server: RedisServer) -> None:
    # Given
    user = user_with_password(Role.ADMIN)  # (backups: an admin's jobs)
    cookie = server.cookie(user)
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, user.id)

    async def scenario() -> None:
        ws = await open_socket(server, cookie)
        try:
            assert _is_snapshot(await next_message(ws))
            # When: Redis goes away, a change is made (its event is lost), Redis comes back
            await asyncio.to_thread(redis_server.stop)
            missed = await asyncio.to_thread(jobs.cancel, job["id"], user.id, Role.ADMIN)
            await asyncio.to_thread(redis_server.start)
            # Then: a fresh snapshot heals what was missed
            await read_until(
                ws, lambda m: _is_snapshot(m)
                and [plain(j) for j in m["data"]["jobs"]] == [missed],
                timeout=30, what="a snapshot after the outage")
            await asyncio.to_thread(wait_for, lambda: server.hub.subscribed,
                                    message="the hub to subscribe again")
            # and later events arrive as before
            later = await asyncio.to_thread(jobs.submit, JobType.DATABASE_BACKUP, {},
                                            user.id)
            await read_until(ws, lambda m: m["type"] == "job"
                             and m["data"]["id"] == later["id"], what="a later event")
        finally:
            await ws.close()

    asyncio.run(scenario())


def test_the_hub_retries_while_redis_is_down(server: LiveServer,
                                             redis_server: RedisServer) -> None:
    """Down for longer than the Redis client's own retries: the hub's loop takes over."""
    user = user_with_password(Role.ADMIN)  # (backups: an admin's jobs)
    cookie = server.cookie(user)

    async def scenario() -> None:
        ws = await open_socket(server, cookie)
        try:
            assert _is_snapshot(await next_message(ws))
            await asyncio.to_thread(redis_server.stop)
            await asyncio.to_thread(wait_for, lambda: not server.hub.subscribed,
                                    timeout=30, message="the hub to notice")
            await asyncio.to_thread(redis_server.start)
            await read_until(ws, _is_snapshot, timeout=30, what="a snapshot after the outage")
            later = await asyncio.to_thread(jobs.submit, JobType.DATABASE_BACKUP, {},
                                            user.id)
            await read_until(ws, lambda m: m["type"] == "job"
                             and m["data"]["id"] == later["id"], what="a later event")
        finally:
            await ws.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- the page in a browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


async def _browser_submits(server: LiveServer, manager_email: str, review_id: int,
                           block_socket: bool, chromium: str) -> dict[str, Any]:
    """Sign in through the form, submit the review from /reviews, wait for the toast."""
    from playwright.async_api import async_playwright, expect

    seen: dict[str, Any] = {"errors": []}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda e: seen["errors"].append(str(e)))
            if block_socket:
                # No WebSocket for this page: every attempt is closed at once.
                async def refuse(ws: Any) -> None:
                    await ws.close(code=1011)

                await page.route_web_socket("**/ws", refuse)
            await page.goto(f"{server.url}/reviews")
            assert "/login?next=%2Freviews" in page.url
            await page.fill("#email", manager_email)
            await page.fill("#password", "not it")
            await page.click("button[type=submit]")
            await expect(page.locator("#login-error")).to_have_text("Wrong email or password.")
            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{server.url}/reviews")
            live = page.locator("#live")
            await expect(live).to_have_attribute(
                "data-state", "paused" if block_socket else "live")

            await page.click(f"tr[data-review-id='{review_id}'] >> text=Submit to HR")

            toast = page.locator("#toasts[aria-live=polite] .toast")
            await expect(toast).to_contain_text("Email notification completed in", timeout=30_000)
            await expect(toast).to_contain_text("(1 sent)")
            await expect(page.locator(f"tr[data-review-id='{review_id}']")).to_have_attribute(
                "data-status", "submitted_to_hr")
            # The jobs page shows it finished, without a toast: it ended before that page.
            await page.goto(f"{server.url}/")
            await expect(page.locator("#jobs-body tr[data-status=completed]")).to_have_count(1)
            seen["toasts_after"] = await page.locator(".toast").count()
        finally:
            await browser.close()
    return seen


@pytest.mark.browser
@pytest.mark.parametrize("block_socket", [False, True], ids=["live", "polling"])
def test_the_page_shows_the_job_finish(consumer: Any, block_socket: bool,
                                       chromium_path: str) -> None:
    # Given
    manager = user_with_password(Role.MANAGER)
    review = make_review(make_user(manager_id=manager.id))
    make_user(Role.HR_ADMIN)
    # When / Then
    with live_server() as server:
        seen = asyncio.run(_browser_submits(server, manager.email, review.id, block_socket,
                                            chromium_path))
    assert seen["errors"] == []
    assert seen["toasts_after"] == 0
