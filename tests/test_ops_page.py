"""/ops in a real browser (Chromium): the console goes live, without a reload, as
jobs are submitted, run, fail and are retried, as a type is paused and resumed,
and as one of two real consumer processes is killed."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from pa import jobs
from pa.models import Role
from pa.queue import JobType
from tests.factories import make_review, make_user
from tests.processes import ConsumerProcess
from tests.test_pages import SHOTS, Tab, chromium, signed_in
from tests.web_fixtures import live_server, user_with_password

pytestmark = pytest.mark.browser
#: how long a change may take to show (the overview comes at most once a second,
#: a silent consumer shows after PA_WORKER_TTL and the next overview)
SHOWS_WITHIN = 20_000


async def cell(tab: Tab, selector: str, text: str) -> None:
    """Wait until `selector` shows `text` (the page must not be reloaded for it)."""
    await tab.page.locator(selector).filter(has_text=text).first.wait_for(timeout=SHOWS_WITHIN)


def test_the_console_goes_live_with_two_consumers(chromium_path: str, tmp_path: Path) -> None:
    admin = user_with_password(Role.ADMIN)
    manager = user_with_password(Role.MANAGER)
    make_user(Role.HR_ADMIN)  # (the email's recipient)
    review = make_review(make_user(manager_id=manager.id))
    env = dict(os.environ)  # the suite's short PA_WORKER_TTL: a silent consumer shows soon
    consumers = [ConsumerProcess(tmp_path / f"consumer{i}.log", env, "thread", 2)
                 for i in (1, 2)]
    try:
        with live_server() as server:
            async def scenario() -> None:
                async with chromium(chromium_path) as browser:
                    tab = await signed_in(browser, server, admin)
                    page = tab.page
                    await page.goto("/ops")
                    # Both consumers show, alive
                    await page.locator('#consumers-body tr[data-silent="false"]').nth(1).wait_for(
                        timeout=SHOWS_WITHIN)
                    # Paused: an email job stays pending
                    email_row = '#types-body tr[data-type="email_notification"]'
                    await page.locator(f"{email_row} button", has_text="Pause").click()
                    await page.locator(f'{email_row}[data-paused="true"]').wait_for(
                        timeout=SHOWS_WITHIN)
                    job = await asyncio.to_thread(
                        jobs.submit, JobType.EMAIL_NOTIFICATION,
                        {"kind": "review_submitted", "reviewId": review.id}, manager.id)
                    await cell(tab, f"{email_row} td:nth-child(2)", "1")
                    await cell(tab, "#queues-body tr[data-priority='10'] td:nth-child(2)", "0")
                    # ... and its owner's page says why it waits
                    owner = await signed_in(browser, server, manager)
                    await owner.page.goto("/")
                    mine = owner.page.locator(f'#jobs-body tr[data-job-id="{job["id"]}"]')
                    await mine.filter(has_text="paused by an operator").wait_for(
                        timeout=SHOWS_WITHIN)
                    # Resumed: it runs, and the hour's count shows it
                    await page.locator(f"{email_row} button", has_text="Resume").click()
                    await cell(tab, f"{email_row} td:nth-child(4)", "1")
                    assert (await asyncio.to_thread(jobs.load_row, job["id"]))["status"] == \
                        "completed"
                    await owner.page.locator(f'#jobs-body tr[data-job-id="{job["id"]}"]'
                                             '[data-status="completed"]').wait_for()
                    assert owner.errors == []
                    # A job that fails shows with its error, and its retry runs it again
                    broken = await asyncio.to_thread(
                        jobs.submit, JobType.EMAIL_NOTIFICATION,
                        {"kind": "review_submitted", "reviewId": 999_999}, manager.id)
                    row = f'#failures-body tr[data-job-id="{broken["id"]}"]'
                    await page.locator(row).wait_for(timeout=SHOWS_WITHIN)
                    await cell(tab, f"{row} td:nth-child(3)", "1")
                    await page.locator(f"{row} button", has_text="Retry").click()
                    await cell(tab, f"{row} td:nth-child(3)", "2")
                    await cell(tab, "#ops-totals", "failed in the last hour")
                    await page.evaluate("window.scrollTo(0, 0)")
                    await page.screenshot(path=str(SHOTS / "ops.png"), full_page=True)
                    # One consumer is killed: it goes silent on the page
                    consumers[0].send(signal.SIGKILL)
                    await page.locator('#consumers-body tr[data-silent="true"]').wait_for(
                        timeout=SHOWS_WITHIN)
                    await page.locator('#consumers-body tr[data-silent="false"]').wait_for()
                    chart = page.locator("#throughput-chart svg")
                    assert "completed" in (await chart.get_attribute("aria-label") or "")
                    assert tab.errors == []

            asyncio.run(scenario())
    finally:
        for c in consumers:
            c.stop()



