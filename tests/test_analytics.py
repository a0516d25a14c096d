"""Multi-year analytics: the figures against a hand computation, the route, the job, the
cache and its invalidation. Runs on SQLite and (PA_TEST_DB=postgres) PostgreSQL alike:
the same exact figures are expected from both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import case, delete, insert, select, update
from starlette.testclient import TestClient

from pa import analytics, db
from pa.auth_passwords import new_token
from pa.models import AnalyticsCache, ApiToken, Review, ReviewStatus, Role, User
from tests.factories import make_review, make_user
from tests.services import wait_for
from tests.web_fixtures import app_client

S = ReviewStatus


@pytest.fixture
def client() -> Iterator[TestClient]:
    with app_client() as c:
        yield c


def auth(role: Role) -> dict[str, str]:
    """Headers of a fresh user with `role` signed in by bearer token."""
    user = make_user(role)
    token, token_hash = new_token()
    with db.session_scope() as session:
        session.add(ApiToken(user_id=user.id, token_hash=token_hash, created_at=db.utcnow()))
    return {"Authorization": f"Bearer {token}"}


def figures(from_year: int, to_year: int, department: str | None = None) -> dict[str, Any]:
    with db.read() as conn:
        return analytics.figures(conn, analytics.Scope(from_year, to_year, department))


def without_time(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "computedAt"}


def dist(*counts: int) -> dict[str, int]:
    return {str(i): c for i, c in enumerate(counts, start=1)}


# ---------------------------------------------------------------- the figures

@pytest.fixture
def team() -> dict[str, User]:
    """Four employees over 2022-2024 (the data of the hand computation below)."""
    e1, e2 = make_user(department="Eng", name="Ada"), make_user(department="Eng", name="Bo")
    e3, e4 = make_user(department="Sales", name="Cy"), make_user(department="Sales", name="Di")
    data: dict[int, list[tuple[User, S, float | None]]] = {
        2022: [(e1, S.COMPLETED, 3.0), (e2, S.ARCHIVED, 4.5), (e3, S.SUBMITTED_TO_HR, 2.5),
               (e4, S.DRAFT, 5.0)],
        2023: [(e1, S.COMPLETED, 4.0), (e2, S.COMPLETED, 1.4), (e3, S.MANAGER_REVIEW, 4.0),
               (e4, S.COMPLETED, 3.5)],
        2024: [(e1, S.SUBMITTED_TO_HR, 5.0), (e2, S.COMPLETED, 2.0), (e3, S.COMPLETED, 4.5),
               (e4, S.SELF_REVIEW, None)],
    }
    for year, rows in data.items():
        for employee, status, rating in rows:
            make_review(employee, fiscal_year=year, status=status, overall_rating=rating)
    return {"e1": e1, "e2": e2, "e3": e3, "e4": e4}


def test_figures_match_a_hand_computation(team):
    e1, e2, e3 = team["e1"], team["e2"], team["e3"]
    data = figures(2022, 2024)
    # Final ratings only (submitted_to_hr, completed, archived): 9 of the 12 reviews.
    # 2022: 3.0 4.5 2.5 → 10/3; 2023: 4.0 1.4 3.5 → 8.9/3; 2024: 5.0 2.0 4.5 → 11.5/3.
    assert (data["fromYear"], data["toYear"], data["department"]) == (2022, 2024, None)
    assert data["reviews"] == 12 and data["ratedReviews"] == 9
    assert data["averageRating"] == 3.38  # 30.4 / 9
    assert data["distribution"] == dist(1, 1, 2, 2, 3)
    assert data["completed"] == 7 and data["completionRate"] == 0.5833
    assert data["statuses"] == {"archived": 1, "completed": 6, "draft": 1,
                                "manager_review": 1, "self_review": 1, "submitted_to_hr": 2}
    y22, y23, y24 = data["years"]
    assert [y["year"] for y in data["years"]] == [2022, 2023, 2024]
    assert (y22["reviews"], y22["ratedReviews"], y22["averageRating"]) == (4, 3, 3.33)
    assert y22["distribution"] == dist(0, 0, 2, 0, 1)  # 2.5 → 3 and 4.5 → 5: halves go up
    assert (y22["completed"], y22["completionRate"], y22["yoyChange"]) == (2, 0.5, None)
    assert (y23["averageRating"], y23["distribution"]) == (2.97, dist(1, 0, 0, 2, 0))
    assert (y23["completionRate"], y23["yoyChange"]) == (0.75, -0.37)  # 2.9667 - 3.3333
    assert (y24["averageRating"], y24["distribution"]) == (3.83, dist(0, 1, 0, 0, 2))
    assert (y24["completionRate"], y24["yoyChange"]) == (0.5, 0.87)  # 3.8333 - 2.9667
    assert data["departments"] == [
        {"department": "Eng", "reviews": 6, "ratedReviews": 6, "averageRating": 3.32,
         "completed": 5, "completionRate": 0.8333},  # 19.9 / 6
        {"department": "Sales", "reviews": 6, "ratedReviews": 3, "averageRating": 3.5,
         "completed": 2, "completionRate": 0.3333},  # 10.5 / 3
    ]
    assert y23["departments"] == [
        {"department": "Eng", "reviews": 2, "ratedReviews": 2, "averageRating": 2.7,
         "completed": 2, "completionRate": 1.0},
        {"department": "Sales", "reviews": 2, "ratedReviews": 1, "averageRating": 3.5,
         "completed": 1, "completionRate": 0.5},
    ]
    # 2022 → 2024, final rating in both years: e1 +2.0, e3 +2.0 (tie: lower id first),
    # e2 -2.5; e4 has none in either.
    assert data["movers"] == {
        "up": [
            {"employeeId": e1.id, "name": "Ada", "department": "Eng", "fromRating": 3.0,
             "toRating": 5.0, "change": 2.0},
            {"employeeId": e3.id, "name": "Cy", "department": "Sales", "fromRating": 2.5,
             "toRating": 4.5, "change": 2.0},
        ],
        "down": [
            {"employeeId": e2.id, "name": "Bo", "department": "Eng", "fromRating": 4.5,
             "toRating": 2.0, "change": -2.5},
        ],
    }
    assert data["computedAt"].endswith("Z")


def test_department_filter(team):
    data = figures(2022, 2024, "Sales")
    assert data["department"] == "Sales"
    assert (data["reviews"], data["ratedReviews"], data["averageRating"]) == (6, 3, 3.5)
    assert [(y["averageRating"], y["completionRate"], y["yoyChange"]) for y in data["years"]] \
        == [(2.5, 0.0, None), (3.5, 0.5, 1.0), (4.5, 0.5, 1.0)]
    assert [d["department"] for d in data["departments"]] == ["Sales"]
    assert [m["employeeId"] for m in data["movers"]["up"]] == [team["e3"].id]
    assert data["movers"]["down"] == []
    assert figures(2022, 2024, "Nobody")["reviews"] == 0


def test_empty_years_one_year_and_reviews_without_department(team):
    loner = make_user(department=None)
    make_review(loner, fiscal_year=2024, status=S.COMPLETED, overall_rating=0.5)
    data = figures(2021, 2024)
    y21, y22 = data["years"][:2]
    assert (y21["reviews"], y21["averageRating"], y21["completionRate"]) == (0, None, None)
    assert y21["distribution"] == dist(0, 0, 0, 0, 0) and y21["departments"] == []
    assert y22["yoyChange"] is None  # no average the year before
    # Below 1 counts as 1; a review without department is listed last.
    assert data["years"][3]["distribution"] == dist(1, 1, 0, 0, 2)
    assert [d["department"] for d in data["departments"]] == ["Eng", "Sales", None]
    single = figures(2023, 2023)
    assert single["movers"] == {"up": [], "down": []}
    assert single["averageRating"] == 2.97


# ---------------------------------------------------------------- the route

def test_small_range_is_answered_at_once(client, team):
    r = client.get("/api/analytics?fromYear=2022&toYear=2024", headers=auth(Role.HR_ADMIN))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert without_time(body["data"]) == without_time(figures(2022, 2024))
    r = client.get("/api/analytics", params={"fromYear": 2022, "toYear": "2024",
                                             "department": " Eng "}, headers=auth(Role.ADMIN))
    assert r.status_code == 200, r.text
    assert r.json()["data"]["department"] == "Eng" and r.json()["data"]["reviews"] == 6


@pytest.mark.parametrize("role, status", [(Role.EMPLOYEE, 403), (Role.MANAGER, 403)])
def test_only_hr_and_admins(client, role, status):
    r = client.get("/api/analytics?fromYear=2022&toYear=2024", headers=auth(role))
    assert r.status_code == status
    assert r.json()["error"]["code"] == "forbidden"
    r = client.get("/api/analytics?fromYear=2022&toYear=2024")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("query, field", [
    ("toYear=2024", "fromYear"),
    ("fromYear=2022", "toYear"),
    ("fromYear=&toYear=2024", "fromYear"),
    ("fromYear=twenty&toYear=2024", "fromYear"),
    ("fromYear=2022.5&toYear=2024", "fromYear"),
    ("fromYear=-2022&toYear=2024", "fromYear"),
    ("fromYear=2022&toYear=99999", "toYear"),
    ("fromYear=2024&toYear=2022", "toYear"),
    ("fromYear=1950&toYear=2024", "toYear"),
    ("fromYear=2022&toYear=2024&department=" + "x" * 101, "department"),
])
def test_bad_parameters_get_the_error_envelope(client, query, field):
    r = client.get(f"/api/analytics?{query}", headers=auth(Role.HR_ADMIN))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["success"] is False
    assert body["error"]["code"] == "invalid" and body["error"]["field"] == field
    assert "Traceback" not in r.text


# ---------------------------------------------------------------- the job and the cache

def bulk_reviews(employees: int, years: tuple[int, ...]) -> list[int]:
    """`employees` × `years` reviews in two Core inserts; returns the employee ids."""
    now = db.utcnow()
    depts = ("Eng", "Sales", "Ops")
    with db.begin() as conn:
        first = conn.execute(select(User.id).order_by(User.id.desc()).limit(1)).scalar() or 0
        tag = f"bulk{first}"
        conn.execute(insert(User), [
            {"email": f"{tag}-{n}@example.com", "name": f"Bulk {n}", "role": "employee",
             "department": depts[n % 3], "created_at": now, "updated_at": now}
            for n in range(employees)])
        people = conn.execute(select(User.id, User.department)
                              .where(User.email.like(f"{tag}-%")).order_by(User.id)).all()
        conn.execute(insert(Review), [
            {"employee_id": i, "department": dept, "fiscal_year": y,
             "status": (S.COMPLETED if (i + y) % 4 else S.MANAGER_REVIEW).value,
             "ratings": {}, "overall_rating": 1 + (i * 7 + y) % 41 / 10, "goals": "",
             "manager_comments": "", "updated_at": now}
            for i, dept in people for y in years])
    return [i for i, _ in people]


def job_of(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    r = client.get(f"/api/jobs/{job_id}", headers=headers)
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()["data"]
    return job


def finished(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: (j := job_of(client, headers, job_id))["status"]
        in {"completed", "failed", "cancelled"} and j,
        timeout=30, message=f"job {job_id} to finish")


URL = "/api/analytics?fromYear=2023&toYear=2024"


def test_large_range_runs_as_a_job_then_comes_from_the_cache(client, consumer):
    # Given 1,200 reviews in the range (and some outside it, which do not count)
    bulk_reviews(600, (2022, 2023, 2024))
    hr = auth(Role.HR_ADMIN)
    # When
    r = client.get(URL, headers=hr)
    # Then: a job, which completes with the figures
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["success"] is True and body["jobId"] == body["data"]["id"]
    assert body["data"]["type"] == "multi_year_analytics" and body["data"]["priority"] == 5
    assert body["data"]["maxRetries"] == 1
    job = finished(client, hr, body["jobId"])
    assert job["status"] == "completed", job
    assert job["progress"]["current"] == job["progress"]["total"] == 4
    result = job["result"]
    assert result["reviews"] == 1200
    assert without_time(result) == without_time(figures(2023, 2024))
    # And the same request now gets them at once, from the cache (same computedAt)
    r = client.get(URL, headers=hr)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == result
    # Another hr_admin too: the cache is per range, not per user
    assert client.get(URL, headers=auth(Role.ADMIN)).json()["data"] == result
    # A department that holds 400 of those reviews is small: answered at once
    r = client.get(URL + "&department=Eng", headers=hr)
    assert r.status_code == 200 and r.json()["data"]["reviews"] == 400


@pytest.mark.parametrize("change", ["status", "rating", "department", "insert", "delete"])
def test_a_changed_review_makes_the_cache_stale(client, consumer, change):
    # Given cached figures for 2023-2024
    ids = bulk_reviews(600, (2023, 2024))
    hr = auth(Role.HR_ADMIN)
    first = finished(client, hr, client.get(URL, headers=hr).json()["jobId"])
    assert client.get(URL, headers=hr).status_code == 200
    # When one review changes (status and rating even by code that leaves updated_at
    # alone; a department is compared through updated_at)
    newcomer = make_user(department="Eng")
    with db.read() as conn:
        review_id = conn.execute(select(Review.id).where(
            Review.employee_id.in_(ids), Review.fiscal_year == 2024,
            Review.status == S.COMPLETED.value).order_by(Review.id).limit(1)).scalar_one()
    target = Review.id == review_id
    with db.begin() as conn:
        if change == "status":
            conn.execute(update(Review).where(target).values(status=S.DRAFT.value))
        elif change == "rating":
            flipped = case((Review.overall_rating >= 3, 1.0), else_=5.0)
            conn.execute(update(Review).where(target).values(overall_rating=flipped))
        elif change == "department":
            conn.execute(update(Review).where(target)
                         .values(department="Legal", updated_at=db.utcnow()))
        elif change == "insert":
            conn.execute(insert(Review).values(
                employee_id=newcomer.id, fiscal_year=2023, department="Eng",
                status=S.COMPLETED.value, ratings={}, overall_rating=5.0, goals="",
                manager_comments="", updated_at=db.utcnow()))
        else:
            conn.execute(delete(Review).where(target))
    # Then the next request is computed afresh: a new job, with new figures
    r = client.get(URL, headers=hr)
    assert r.status_code == 202, r.text
    assert r.json()["jobId"] != first["id"]
    second = finished(client, hr, r.json()["jobId"])
    assert second["status"] == "completed", second
    assert without_time(second["result"]) == without_time(figures(2023, 2024))
    assert without_time(second["result"]) != without_time(first["result"])
    assert client.get(URL, headers=hr).json()["data"] == second["result"]


def test_an_identical_request_gets_the_job_already_queued(client):
    # No consumer runs: the first job stays pending.
    bulk_reviews(600, (2023, 2024))
    hr = auth(Role.HR_ADMIN)
    first = client.get(URL, headers=hr)
    again = client.get(URL, headers=hr)
    assert first.status_code == again.status_code == 202
    assert again.json()["jobId"] == first.json()["jobId"]
    # A different range, or another user, gets a job of its own.
    other_range = client.get("/api/analytics?fromYear=2022&toYear=2024", headers=hr)
    other_user = client.get(URL, headers=auth(Role.HR_ADMIN))
    assert len({first.json()["jobId"], other_range.json()["jobId"],
                other_user.json()["jobId"]}) == 3
    # Once cancelled, it is not handed out again.
    client.post(f"/api/jobs/{first.json()['jobId']}/cancel", headers=hr)
    assert client.get(URL, headers=hr).json()["jobId"] != first.json()["jobId"]


def test_one_cache_entry_per_range_and_department(client, consumer):
    bulk_reviews(1200, (2024,))
    hr = auth(Role.HR_ADMIN)
    whole = "/api/analytics?fromYear=2024&toYear=2024"
    job = finished(client, hr, client.get(whole, headers=hr).json()["jobId"])
    assert job["status"] == "completed"
    # Eng holds 400 reviews: answered at once, and not cached.
    assert client.get(whole + "&department=Eng", headers=hr).status_code == 200
    assert client.get(whole, headers=hr).json()["data"] == job["result"]
    with db.read() as conn:
        keys = conn.execute(select(AnalyticsCache.from_year, AnalyticsCache.to_year,
                                   AnalyticsCache.department)).all()
    assert [tuple(k) for k in keys] == [(2024, 2024, "")]


def test_a_job_with_a_bad_payload_fails_at_once(consumer):
    from pa import jobs
    from pa.queue import JobType

    hr = make_user(Role.HR_ADMIN)
    job = jobs.submit(JobType.MULTI_YEAR_ANALYTICS, {"fromYear": 2024, "toYear": 2020}, hr.id)
    done = wait_for(
        lambda: (j := jobs.get(job["id"], hr.id, Role.HR_ADMIN))["status"] == "failed" and j,
        message="the job to fail")
    assert done["attempts"] == 1  # not retried: retrying cannot fix the request
    assert done["error"] == "Bad analytics request: toYear must not be before fromYear."
