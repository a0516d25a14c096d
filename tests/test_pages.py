"""The pages in a real browser (Chromium through Playwright), against a real uvicorn,
real consumer threads and a real Redis. Screenshots of what the user sees go to
test-artifacts/screenshots/."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pa import db, jobs
from pa.backup import NAME_RE
from pa.models import Role
from tests.factories import make_review, make_user
from tests.services import wait_for
from tests.test_report import company
from tests.web_fixtures import LiveServer, live_server, user_with_password

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
#: a job-by-id poll of the fallback (not the list GET /api/jobs?...)
POLL = re.compile(r"/api/jobs/[^/?]+$")
THIS_YEAR = db.utcnow().year


@pytest.fixture
def server() -> Any:
    with live_server() as s:
        yield s


@dataclass
class Tab:
    """One page and what it did: console errors, requests."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def polls(self) -> list[str]:
        return [u for u in self.requests if POLL.search(u)]

    async def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(SHOTS / f"{name}.png"))


@asynccontextmanager
async def chromium(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    from tests.test_hub import CHROMIUM_ARGS

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def signed_in(browser: Any, server: LiveServer, user: Any,
                    route_socket: Callable[[Any], Awaitable[None]] | None = None,
                    context: Any = None) -> Tab:
    """A tab of `user` (session cookie set directly; the login form has its own test)."""
    if context is None:
        context = await browser.new_context(viewport={"width": 1200, "height": 760},
                                            base_url=server.url)
        name, value = server.cookie(user).split("=", 1)
        await context.add_cookies([{"name": name, "value": value, "url": server.url}])
    page = await context.new_page()
    tab = Tab(page)
    page.on("pageerror", lambda e: tab.errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: tab.errors.append(f"console: {m.text}")
            if m.type == "error" else None)
    page.on("request", lambda r: tab.requests.append(r.url))
    if route_socket is not None:
        await page.route_web_socket("**/ws", route_socket)
    return tab


async def refuse(ws: Any) -> None:
    await ws.close(code=1011)


def hr_with_reviews(per_department: int = 60) -> Any:
    hr = user_with_password(Role.HR_ADMIN)
    company(per_department, year=THIS_YEAR)
    return hr


async def ask_for_report(tab: Tab) -> str:
    from playwright.async_api import expect

    page = tab.page
    await expect(page.locator("#department option[value=Engineering]")).to_have_count(1)
    await page.select_option("#department", value="Engineering")
    async with page.expect_response(lambda r: r.url.endswith("/api/reports")
                                    and r.request.method == "POST") as answer:
        await page.click("text=Generate report")
    body = await (await answer.value).json()
    job_id: str = body["jobId"]
    return job_id


async def expect_report_toast(tab: Tab, job_id: str) -> None:
    from playwright.async_api import expect

    toast = tab.page.locator(f"#toasts[aria-live=polite] .toast[data-job-id='{job_id}']")
    await expect(toast).to_contain_text("Report completed in", timeout=60_000)
    link = toast.get_by_role("link", name="Download")
    href = await link.get_attribute("href")
    pdf = await tab.page.request.get(href)
    assert pdf.ok and (await pdf.body()).startswith(b"%PDF")
    row = tab.page.locator(f"#reports-body tr[data-job-id='{job_id}']")
    await expect(row).to_have_attribute("data-status", "completed")
    await expect(row).to_contain_text(f"FY{THIS_YEAR} · Engineering")
    await expect(row.get_by_role("link", name="Download PDF")).to_be_visible()


def test_a_report_toast_comes_over_the_websocket(server: LiveServer, consumer: Any,
                                                 chromium_path: str) -> None:
    from playwright.async_api import expect

    hr = hr_with_reviews()

    async def scenario() -> Tab:
        async with chromium(chromium_path) as browser:
            tab = await signed_in(browser, server, hr)
            await tab.page.goto(f"{server.url}/reports")
            await expect(tab.page.locator("#live")).to_have_attribute("data-state", "live")
            await expect(tab.page.locator("#live")).to_be_hidden()
            job_id = await ask_for_report(tab)
            bar = tab.page.locator(f"#reports-body tr[data-job-id='{job_id}'] [role=progressbar]")
            await expect(bar).to_be_visible()
            await tab.shot("report-progress")
            await expect_report_toast(tab, job_id)
            await tab.shot("report-toast")
            # Dismissable
            await tab.page.click(".toast .toast-close")
            await expect(tab.page.locator(".toast")).to_have_count(0)
            return tab

    tab = asyncio.run(scenario())
    assert tab.polls() == []
    assert tab.errors == []


def test_without_websocket_polling_carries_the_toast(server: LiveServer, consumer: Any,
                                                     chromium_path: str) -> None:
    from playwright.async_api import expect

    hr = hr_with_reviews(20)

    async def scenario() -> Tab:
        async with chromium(chromium_path) as browser:
            tab = await signed_in(browser, server, hr, route_socket=refuse)
            await tab.page.goto(f"{server.url}/reports")
            live = tab.page.locator("#live")
            await expect(live).to_have_text("Live updates paused")
            await expect(live).to_have_attribute("data-state", "paused")
            job_id = await ask_for_report(tab)
            await expect_report_toast(tab, job_id)
            await tab.shot("report-toast-polling")
            return tab

    tab = asyncio.run(scenario())
    assert tab.polls(), "the page should have polled GET /api/jobs/{id}"
    # The WebSocket's refused closes are not console errors of the page's own.
    assert [e for e in tab.errors if "WebSocket" not in e] == []


def test_a_dropped_websocket_heals_with_exactly_one_toast(server: LiveServer, consumer: Any,
                                                          chromium_path: str) -> None:
    from playwright.async_api import expect

    hr = hr_with_reviews()
    state: dict[str, Any] = {"blocked": False, "routes": []}

    async def route(ws: Any) -> None:
        if state["blocked"]:
            await ws.close(code=1011)
            return
        ws.connect_to_server()
        state["routes"].append(ws)

    async def scenario() -> Tab:
        async with chromium(chromium_path) as browser:
            tab = await signed_in(browser, server, hr, route_socket=route)
            page = tab.page
            await page.goto(f"{server.url}/reports")
            live = page.locator("#live")
            await expect(live).to_have_attribute("data-state", "live")
            job_id = await ask_for_report(tab)
            row = page.locator(f"#reports-body tr[data-job-id='{job_id}']")
            await expect(row.locator("[role=progressbar]")).to_be_visible()
            # When: the socket drops mid-job and stays away until the job is done
            state["blocked"] = True
            await state["routes"][-1].close(code=1011)
            await expect(live).to_have_text("Live updates paused")
            await tab.shot("report-socket-dropped")
            await asyncio.to_thread(wait_for, lambda: _status(job_id) == "completed",
                                    timeout=60, message="the report to complete")
            state["blocked"] = False
            # Then: it comes back, and the job's end is shown once
            await expect(live).to_have_attribute("data-state", "live", timeout=30_000)
            await expect(row).to_have_attribute("data-status", "completed")
            await expect(page.locator(".toast")).to_have_count(1)
            await expect_report_toast(tab, job_id)
            return tab

    tab = asyncio.run(scenario())
    assert [e for e in tab.errors if "WebSocket" not in e] == []


def _status(job_id: str) -> str:
    with db.read() as conn:
        table = jobs.jobs_table
        status: str = conn.execute(select(table.c.status).where(table.c.id == job_id)).scalar_one()
    return status


#: enough users for several batches and progress reports
GOOD_ROWS = 40_000


@contextmanager
def slow_disk(hold: float = 0.2) -> Iterator[None]:
    """SQLite's write lock taken for `hold` seconds at a time, with short gaps: each
    of a job's writes (a batch, a progress report) then waits up to `hold`, so the
    page has time to show every step, however fast the machine is."""
    writer = db.current().writer
    assert writer is not None, "SQLite only"
    stop = threading.Event()

    def take_turns() -> None:
        while not stop.is_set():
            with writer.hold():
                stop.wait(hold)
            time.sleep(0.005)  # a waiting writer gets the lock

    thread = threading.Thread(target=take_turns, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def import_csv(good: int, bad: int) -> bytes:
    lines = ["email,name,role,department,manager_email"]
    lines += [f"user{i}@example.com,User {i},employee,Eng," for i in range(good)]
    lines += [f"broken{i}@,Broken {i},employee,Eng," for i in range(bad // 2)]
    lines += [f"wrongrole{i}@example.com,Wrong {i},wizard,Eng," for i in range(bad - bad // 2)]
    return ("\r\n".join(lines) + "\r\n").encode()


# Every aria-valuenow a progress bar on the page ever had, in order.
RECORD_PROGRESS = """
window.__progress = [];
new MutationObserver(() => {
  for (const bar of document.querySelectorAll('[role=progressbar][aria-valuenow]')) {
    const v = Number(bar.getAttribute('aria-valuenow'));
    if (window.__progress.at(-1) !== v) window.__progress.push(v);
  }
}).observe(document, {subtree: true, childList: true, attributes: true});
"""


def test_an_import_shows_its_progress_then_the_rejected_lines(server: LiveServer, consumer: Any,
                                                              chromium_path: str) -> None:
    from playwright.async_api import expect

    admin = user_with_password(Role.ADMIN)

    async def scenario() -> tuple[Tab, list[float]]:
        async with chromium(chromium_path) as browser:
            tab = await signed_in(browser, server, admin)
            page = tab.page
            await page.add_init_script(RECORD_PROGRESS)
            await page.goto(f"{server.url}/import")
            # The template link downloads a CSV.
            template_link = page.get_by_role("link", name="Download the CSV template")
            template = await page.request.get(await template_link.get_attribute("href"))
            assert (await template.text()).startswith("email,name,role,department,manager_email")
            # A missing file is said next to the field.
            await page.click("button:text('Import')")
            await expect(page.locator("label:has(#file) .field-error")).to_have_text(
                "Choose a CSV file first.")
            await page.set_input_files("#file", files=[{
                "name": "users.csv", "mimeType": "text/csv", "buffer": import_csv(GOOD_ROWS, 6)}])
            await page.click("button:text('Import')")
            bar = page.locator("#import-progress [role=progressbar][aria-valuenow]")
            await expect(bar).to_be_visible(timeout=30_000)
            await page.wait_for_function("window.__progress.some(v => v > 0)", timeout=30_000)
            await tab.shot("import-progress")
            await expect(page.locator("[data-count=created]")).to_have_text(
                f"{GOOD_ROWS:,}", timeout=60_000)
            await expect(page.locator("[data-count=rejected]")).to_have_text("6")
            await expect(page.locator("#rejected tbody tr")).to_have_count(6)
            rejected = page.locator("#rejected tbody tr")
            await expect(rejected.first).to_contain_text(str(GOOD_ROWS + 2))
            link = page.get_by_role("link", name="Download the errors CSV")
            errors = await page.request.get(await link.get_attribute("href"))
            assert (await errors.text()).lstrip("\ufeff").startswith("line,email,message")
            await expect(page.locator(".toast")).to_contain_text("User import completed")
            await tab.shot("import-result")
            values = await page.evaluate("window.__progress")
            return tab, values

    # A 40,000-user import can take under a second: the page would show its
    # progress for a moment or not at all.
    with slow_disk():
        tab, values = asyncio.run(scenario())
    assert len(values) >= 2 and values == sorted(values), values
    assert tab.errors == []


def test_a_manager_gets_the_toast_and_hr_does_not(server: LiveServer, consumer: Any,
                                                  chromium_path: str) -> None:
    from playwright.async_api import expect

    manager = user_with_password(Role.MANAGER)
    review = make_review(make_user(manager_id=manager.id), fiscal_year=THIS_YEAR)
    hr = user_with_password(Role.HR_ADMIN)

    async def scenario() -> list[Tab]:
        async with chromium(chromium_path) as browser:
            tab = await signed_in(browser, server, manager)
            other_tab = await signed_in(browser, server, manager, context=tab.page.context)
            hr_tab = await signed_in(browser, server, hr)
            for t in (tab, other_tab, hr_tab):
                await t.page.goto(f"{server.url}/reviews")
                await expect(t.page.locator("#live")).to_have_attribute("data-state", "live")
            row = tab.page.locator(f"tr[data-review-id='{review.id}']")
            await row.get_by_role("button", name="Submit to HR").click()
            await expect(row).to_have_attribute("data-status", "submitted_to_hr")
            for t in (tab, other_tab):
                await expect(t.page.locator("#toasts .toast")).to_contain_text(
                    "Email notification completed", timeout=30_000)
            await tab.shot("review-submitted-toast")
            # HR received the email, not the manager's toast.
            await expect(hr_tab.page.locator(f"tr[data-review-id='{review.id}']")).to_be_visible()
            assert await hr_tab.page.locator(".toast").count() == 0
            return [tab, other_tab, hr_tab]

    tabs = asyncio.run(scenario())
    assert [e for t in tabs for e in t.errors] == []


def test_every_page_works_for_its_role(server: LiveServer, consumer: Any,
                                       chromium_path: str) -> None:
    from playwright.async_api import expect

    admin = user_with_password(Role.ADMIN)
    hr = user_with_password(Role.HR_ADMIN)
    employee = user_with_password(Role.EMPLOYEE)
    company(10, year=THIS_YEAR - 1)
    company(10, year=THIS_YEAR)

    async def scenario() -> list[Tab]:
        async with chromium(chromium_path) as browser:
            tabs = []
            # The login form, a wrong password, then the header.
            context = await browser.new_context(base_url=server.url)
            login = await signed_in(browser, server, hr, context=context)
            tabs.append(login)
            page = login.page
            await page.goto(f"{server.url}/analytics")
            assert "/login?next=%2Fanalytics" in page.url
            await page.fill("#email", hr.email)
            await page.fill("#password", "not it")
            await page.click("button[type=submit]")
            await expect(page.locator("#login-error")).to_have_text("Wrong email or password.")
            from tests.web_fixtures import PASSWORD

            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{server.url}/analytics")
            await expect(page.locator(".who")).to_contain_text(hr.name)
            await expect(page.locator(".who .role")).to_have_text("hr admin")
            # Analytics: the PDF's SVG charts and the tables
            await page.fill("#fromYear", str(THIS_YEAR - 1))
            await page.click("button:text('Show')")
            await expect(page.locator("#analytics-view svg")).to_have_count(3)
            await expect(page.locator("#analytics-years tbody tr")).to_have_count(2)
            await login.shot("analytics")
            await page.fill("#toYear", str(THIS_YEAR - 3))
            await page.click("button:text('Show')")
            await expect(page.locator("label:has(#toYear) .field-error")).to_contain_text(
                "toYear")
            # Reports: a year without reviews is said next to the field
            await page.goto(f"{server.url}/reports")
            await page.fill("#fiscalYear", "2001")
            await page.click("text=Generate report")
            await expect(page.locator("label:has(#fiscalYear) .field-error")).to_contain_text(
                "no reviews")
            # Fiscal years: close one, confirmed, then it is closed
            await page.goto(f"{server.url}/fiscal-years")
            year_row = page.locator(f"tr[data-year='{THIS_YEAR - 1}']")
            await year_row.get_by_role("button", name=f"Close FY{THIS_YEAR - 1}").click()
            await page.get_by_role("button", name="Close the year").click()
            await expect(year_row).to_have_attribute("data-state", "closed", timeout=30_000)
            await expect(page.locator(".toast")).to_contain_text("Fiscal-year archive completed")
            await expect(year_row.get_by_role("link", name="Download archive")).to_be_visible()
            await login.shot("fiscal-years")
            # Signing out: this tab goes to /login; another tab of the same login
            # has its socket closed by the server and goes to /login?next=...
            other = await context.new_page()
            await other.goto(f"{server.url}/jobs")
            await expect(other.locator("#live")).to_have_attribute("data-state", "live")
            await page.click("#logout")
            await page.wait_for_url(f"{server.url}/login")
            await other.wait_for_url(f"{server.url}/login?next=%2Fjobs")
            await other.close()

            # Admin: backups, all jobs, import page
            admin_tab = await signed_in(browser, server, admin)
            tabs.append(admin_tab)
            page = admin_tab.page
            await page.goto(f"{server.url}/backups")
            await page.click("#backup-now")
            toast = page.locator(".toast")
            await expect(toast).to_contain_text("Database backup completed", timeout=30_000)
            name = NAME_RE.search(await toast.inner_text())
            assert name is not None
            row = page.locator(f"#backups-body tr[data-name='{name.group()}']")
            backup = await page.request.get(
                await row.get_by_role("link", name="Download").get_attribute("href"))
            content = await backup.body()
            assert backup.ok and content
            if name.group().endswith(".gz"):
                assert content.startswith(b"\x1f\x8b")
            await admin_tab.shot("backups")
            await page.goto(f"{server.url}/jobs")
            # Admins see every job: HR's archive and their own backup.
            await expect(page.locator("#jobs-body tr[data-status=completed]")).to_have_count(2)
            # Owners by name: HR's archive, the admin's own backup.
            body = page.locator("#jobs-body")
            await expect(body.get_by_role("cell", name=hr.name, exact=True)).to_have_count(1)
            await expect(body.get_by_role("cell", name="me", exact=True)).to_have_count(1)
            await admin_tab.shot("jobs")
            for path in ("/import", "/reviews", "/reports", "/analytics", "/fiscal-years"):
                await page.goto(f"{server.url}{path}")
                await expect(page.locator("h1")).to_be_visible()

            # An employee is not shown HR's pages.
            employee_tab = await signed_in(browser, server, employee)
            tabs.append(employee_tab)
            page = employee_tab.page
            await page.goto(f"{server.url}/reviews")
            await expect(page.locator("nav[aria-label=Main] a")).to_have_count(2)
            response = await page.goto(f"{server.url}/reports")
            assert response.status == 404
            return tabs

    tabs = asyncio.run(scenario())
    # The browser logs the answers this test provoked (wrong password, invalid
    # fields, the employee's 404) as failed resources: those are expected.
    expected = re.compile(r"Failed to load resource: .* status of (400|401|404|422) ")
    errors = [e for t in tabs for e in t.errors if not expected.search(e)]
    assert errors == []


def test_analytics_from_a_job_are_drawn_in_place(server: LiveServer, consumer: Any,
                                                 chromium_path: str) -> None:
    from playwright.async_api import expect

    from pa import analytics

    hr = user_with_password(Role.HR_ADMIN)
    company(analytics.SMALL_RANGE // 2 + 1, year=THIS_YEAR)  # just over SMALL_RANGE reviews

    async def scenario() -> Tab:
        async with chromium(chromium_path) as browser:
            tab = await signed_in(browser, server, hr)
            page = tab.page
            await page.goto(f"{server.url}/analytics")
            await expect(page.locator("#live")).to_have_attribute("data-state", "live")
            async with page.expect_response(lambda r: "/api/analytics?" in r.url) as answer:
                await page.click("button:text('Show')")
            assert (await answer.value).status == 202  # a job, not figures at once
            await expect(page.locator("#analytics-view svg")).to_have_count(3, timeout=30_000)
            await expect(page.locator("#analytics-view .summary")).to_have_attribute(
                "data-reviews", str(2 * (analytics.SMALL_RANGE // 2 + 1)))
            await expect(page.locator("#analytics-progress [role=progressbar]")).to_have_count(0)
            await expect(page.locator(".toast")).to_contain_text("Analytics completed")
            return tab

    tab = asyncio.run(scenario())
    assert tab.polls() == []
    assert tab.errors == []


def test_my_jobs_cancel_and_retry(server: LiveServer, chromium_path: str) -> None:
    """No consumer here: the job stays pending until the buttons move it."""
    from playwright.async_api import expect

    from pa.queue import JobType

    admin = user_with_password(Role.ADMIN)
    job = jobs.submit(JobType.DATABASE_BACKUP, {}, admin.id)

    async def scenario() -> Tab:
        async with chromium(chromium_path) as browser:
            tab = await signed_in(browser, server, admin)
            page = tab.page
            await page.goto(f"{server.url}/")
            row = page.locator(f"#jobs-body tr[data-job-id='{job['id']}']")
            await expect(row).to_have_attribute("data-status", "pending")
            await expect(row.get_by_role("progressbar")).to_be_visible()
            await row.get_by_role("button", name="Cancel").click()
            await expect(row).to_have_attribute("data-status", "cancelled")
            await expect(page.locator(".toast")).to_have_text("Database backup cancelled.×")
            await row.get_by_role("button", name="Retry").click()
            await expect(row).to_have_attribute("data-status", "pending")
            await expect(row.get_by_role("button", name="Cancel")).to_be_visible()
            await expect(page.locator(".toast")).to_have_count(1)
            return tab

    tab = asyncio.run(scenario())
    assert tab.errors == []
