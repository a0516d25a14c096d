"""The page routes without a browser: who sees which page, and the analytics fragment."""

from __future__ import annotations

import pytest

from pa import jobs
from pa.models import Role
from pa.queue import JobType
from tests.test_report import company
from tests.web_fixtures import app_client, login, user_with_password

YEAR = 2025
HR_PAGES = ["/reports", "/analytics", "/fiscal-years"]
ADMIN_PAGES = ["/import", "/backups", "/ops"]


def test_a_visitor_is_sent_to_login() -> None:
    with app_client() as client:
        for path in ["/", "/jobs", "/reviews", *HR_PAGES, *ADMIN_PAGES]:
            r = client.get(path, follow_redirects=False)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize(("role", "allowed"), [
    (Role.EMPLOYEE, []),
    (Role.MANAGER, []),
    (Role.HR_ADMIN, HR_PAGES),
    (Role.ADMIN, HR_PAGES + ADMIN_PAGES),
])
def test_each_role_sees_its_pages_and_its_links(role: Role, allowed: list[str]) -> None:
    with app_client() as client:
        login(client, user_with_password(role))
        for path in HR_PAGES + ADMIN_PAGES:
            r = client.get(path)
            assert r.status_code == (200 if path in allowed else 404), path
            assert (f'href="{path}"' in r.text) == (path in allowed), path
        home = client.get("/jobs")
        assert home.status_code == 200 and 'id="toasts"' in home.text
        assert 'aria-live="polite"' in home.text


def test_the_analytics_fragment_draws_the_pdf_charts() -> None:
    company(5, year=YEAR)
    hr = user_with_password(Role.HR_ADMIN)
    with app_client() as client:
        login(client, hr)
        r = client.get("/analytics/view", params={"fromYear": YEAR, "toYear": YEAR})
        assert r.status_code == 200
        assert r.text.count("<svg") == 3
        assert 'data-reviews="10"' in r.text
        assert "Engineering" in r.text and "Sales" in r.text
        # A bad range answers with the envelope and its field.
        bad = client.get("/analytics/view", params={"fromYear": YEAR, "toYear": YEAR - 1})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "toYear"


def test_the_analytics_fragment_of_a_job_is_for_its_owner_once_completed() -> None:
    hr = user_with_password(Role.HR_ADMIN)
    other = user_with_password(Role.HR_ADMIN)
    job = jobs.submit(JobType.MULTI_YEAR_ANALYTICS,
                      {"fromYear": YEAR, "toYear": YEAR, "department": None}, hr.id)
    with app_client() as client:
        login(client, hr)
        assert client.get("/analytics/view", params={"jobId": job["id"]}).status_code == 409
        login(client, other)
        assert client.get("/analytics/view", params={"jobId": job["id"]}).status_code == 404


def test_the_all_jobs_page_names_the_owners_of_jobs_for_admins() -> None:
    owner = user_with_password(Role.HR_ADMIN, name="Ann O'Neil <HR>")
    bystander = user_with_password(Role.MANAGER, name="Ben Bystander")
    jobs.submit(JobType.DATABASE_BACKUP, {}, owner.id)
    with app_client() as client:
        login(client, user_with_password(Role.ADMIN))
        page = client.get("/jobs").text
        # JSON in a single-quoted attribute: quotes and markup arrive escaped.
        assert f"""data-owners='{{"{owner.id}": "Ann O\\u0027Neil \\u003cHR\\u003e"}}'""" in page
        assert "Bystander" not in page  # owns no job
    with app_client() as client:
        login(client, bystander)  # not an admin: sees only their own jobs, names no one
        assert "data-owners='{}'" in client.get("/jobs").text
