"""The job lifecycle through real consumer threads, Redis and an SMTP server."""

from __future__ import annotations

from typing import Any

from pa import jobs
from pa.models import ReviewStatus, Role
from pa.queue import JobType
from tests.factories import make_review, make_user
from tests.services import wait_final


def _setup() -> tuple[Any, Any, list[Any]]:
    manager = make_user(Role.MANAGER)
    employee = make_user(Role.EMPLOYEE, manager_id=manager.id)
    hrs = [make_user(Role.HR_ADMIN), make_user(Role.HR_ADMIN)]
    review = make_review(employee, status=ReviewStatus.MANAGER_REVIEW)
    return manager, review, hrs


def test_email_job_completes_and_every_hr_admin_gets_the_mail(consumer, smtp_server):
    # Given
    manager, review, hrs = _setup()
    # When
    job = jobs.submit(JobType.EMAIL_NOTIFICATION,
                      {"kind": "review_submitted", "reviewId": review.id}, manager.id)
    # Then
    assert job["status"] == "pending" and job["version"] == 1
    done = wait_final(job["id"])
    assert done["status"] == "completed", done
    assert done["result"] == {"sent": 2}
    assert done["attempts"] == 1
    for hr in hrs:
        [msg] = smtp_server.handler.to(hr.email)
        assert "Review submitted to HR" in msg["Subject"]
    assert done["version"] > 2
