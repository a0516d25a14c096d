"""The life of one job, end to end: real consumer threads in this process, the real
Redis queue and pub/sub, a real SMTP server, a real database."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from huey.signals import SIGNAL_COMPLETE

from pa import jobs, queue
from pa.errors import Conflict, NotFound
from pa.models import ReviewStatus, Role, User
from pa.queue import JobType
from tests.factories import make_review, make_user
from tests.services import HANG_UP, RedisServer, SmtpServer, subscribed, wait_for

FINAL = {"completed", "failed", "cancelled"}
#: the first automatic retry of an email job waits 5 s, plus up to 1 s of scheduler tick
RETRY_WAIT = 20.0


# -- helpers ------------------------------------------------------------------------


@dataclass
class Scene:
    """A manager whose employee's review goes to HR, and the HR admins it mails."""

    manager: User
    review_id: int
    hrs: list[User]
    stranger: User

    def submit(self, **options: Any) -> dict[str, Any]:
        return jobs.submit(
            JobType.EMAIL_NOTIFICATION,
            {"kind": "review_submitted", "reviewId": self.review_id},
            self.manager.id, **options,
        )


def make_scene(hr_count: int = 2) -> Scene:
    manager = make_user(Role.MANAGER)
    employee = make_user(Role.EMPLOYEE, manager_id=manager.id)
    hrs = [make_user(Role.HR_ADMIN) for _ in range(hr_count)]
    review = make_review(employee, status=ReviewStatus.MANAGER_REVIEW)
    return Scene(manager, review.id, hrs, stranger=make_user(Role.MANAGER))


def job_now(job_id: str) -> dict[str, Any]:
    row = jobs.load_row(job_id)
    assert row is not None, f"job {job_id} is gone"
    return jobs.job_to_dict(row)


def wait_job(job_id: str, check: Callable[[dict[str, Any]], bool], what: str,
             timeout: float = 15.0) -> dict[str, Any]:
    def matching() -> dict[str, Any] | None:
        job = job_now(job_id)
        return job if check(job) else None

    return wait_for(matching, timeout=timeout, message=f"job {job_id}: {what}")


def wait_final(job_id: str, timeout: float = 15.0) -> dict[str, Any]:
    return wait_job(job_id, lambda j: j["status"] in FINAL, "a final status", timeout)


def sent_so_far(job_id: str) -> list[str]:
    row = jobs.load_row(job_id)
    assert row is not None
    return list((row["checkpoint"] or {}).get("sent", []))


def mails_to(smtp: SmtpServer, users: list[User]) -> dict[str, int]:
    return {u.email: len(smtp.handler.to(u.email)) for u in users}


@dataclass
class EventLog:
    """Every message published on the jobs channel, in arrival order."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m["data"] for m in self.messages if m["data"]["id"] == job_id]

    def wait_version(self, job_id: str, version: int) -> list[dict[str, Any]]:
        return wait_for(
            lambda: (evs := self.of(job_id)) and evs[-1]["version"] >= version and evs,
            timeout=10, message=f"the event of version {version} of job {job_id}",
        )


@pytest.fixture
def events(redis_server: RedisServer) -> Iterator[EventLog]:
    """A real subscriber of pa's jobs channel, on its own thread."""
    log = EventLog()

    def keep(raw: str) -> None:
        with log.lock:
            log.messages.append(json.loads(raw))

    with subscribed(redis_server.url, keep):
        yield log


@pytest.fixture
def deliveries() -> Iterator[Callable[[str], int]]:
    """How many times Huey has finished executing the task of a job id (any outcome)."""
    done: list[str] = []
    lock = threading.Lock()

    def receiver(signal: str, task: Any, *args: Any) -> None:
        with lock:
            done.append(task.id)

    queue.huey().signal(SIGNAL_COMPLETE)(receiver)

    def count(job_id: str) -> int:
        with lock:
            return done.count(job_id)

    yield count
    queue.huey().disconnect_signal(receiver, SIGNAL_COMPLETE)


def runs_of(statuses: list[str]) -> list[str]:
    """The statuses a job went through, repeats collapsed."""
    return [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]


def assert_event_stream(evs: list[dict[str, Any]], final: dict[str, Any], owner: int) -> None:
    """Changes were published once each, in order, as the whole job of its owner.

    A checkpoint written within the progress throttle's window is not published
    (its version is skipped); the callers check that every status is.
    """
    versions = [e["version"] for e in evs]
    assert versions[0] == 1 and versions[-1] == final["version"], versions
    assert versions == sorted(set(versions)), versions
    assert all(e["userId"] == owner for e in evs)
    assert evs[-1] == final


# -- the happy path ---------------------------------------------------------------


def test_success_bumps_the_version_once_per_change(consumer, smtp_server, events):
    # Given
    scene = make_scene(hr_count=3)
    # When
    job = scene.submit()
    # Then
    assert job["status"] == "pending" and job["version"] == 1 and job["attempts"] == 0
    assert job["startedAt"] is None and job["completedAt"] is None
    done = wait_final(job["id"])
    assert done["status"] == "completed", done
    assert done["result"] == {"sent": 3}
    assert done["attempts"] == 1 and done["error"] is None
    assert done["startedAt"] and done["completedAt"]
    created, started, completed = (datetime.fromisoformat(done[k]) for k in
                                   ("createdAt", "startedAt", "completedAt"))
    assert created <= started <= completed
    assert done["progress"] == {"current": 3, "total": 3, "percent": 100.0,
                                "message": done["progress"]["message"]}
    assert mails_to(smtp_server, scene.hrs) == {hr.email: 1 for hr in scene.hrs}
    evs = events.wait_version(job["id"], done["version"])
    assert_event_stream(evs, done, scene.manager.id)
    assert runs_of([e["status"] for e in evs]) == ["pending", "processing", "completed"]


# -- retries ------------------------------------------------------------------------


def test_a_connection_lost_at_the_final_dot_sends_that_mail_again(consumer, smtp_server, events):
    # Given: a mail server that goes away at the first message's final dot, without
    # an answer and without keeping it (the message's "sent" mark is committed by then)
    scene = make_scene(hr_count=2)
    smtp_server.handler.data_answers.append(HANG_UP)
    # When
    job = scene.submit()
    # Then: the attempt fails, and the retry sends that message too: each HR admin
    # gets one mail
    done = wait_final(job["id"], timeout=RETRY_WAIT)
    assert done["status"] == "completed" and done["attempts"] == 2, done
    assert done["result"] == {"sent": 2}
    assert mails_to(smtp_server, scene.hrs) == {hr.email: 1 for hr in scene.hrs}


def test_temporary_smtp_error_retries_then_succeeds(consumer, smtp_server, events):
    # Given: the mail server answers 451 to the first message only
    scene = make_scene(hr_count=2)
    smtp_server.handler.data_answers.append("451 4.3.0 try later")
    # When
    job = scene.submit()
    # Then: the failed attempt sends the job back to pending, error kept, run later
    waiting = wait_job(job["id"], lambda j: j["status"] == "pending" and j["attempts"] == 1,
                       "back to pending after attempt 1")
    assert "451" in waiting["error"] and "try later" in waiting["error"]
    assert waiting["completedAt"] is None
    row = jobs.load_row(job["id"])
    assert row is not None and row["run_after"] is not None
    assert row["run_after"] > row["updated_at"]
    # and the retry completes it
    done = wait_final(job["id"], timeout=RETRY_WAIT)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2 and done["error"] is None
    assert done["result"] == {"sent": 2}
    assert mails_to(smtp_server, scene.hrs) == {hr.email: 1 for hr in scene.hrs}
    evs = events.wait_version(job["id"], done["version"])
    assert_event_stream(evs, done, scene.manager.id)
    assert runs_of([e["status"] for e in evs]) == [
        "pending", "processing", "pending", "processing", "completed"]
    retry_event = next(e for e in evs if e["status"] == "pending" and e["attempts"] == 1)
    assert "451" in retry_event["error"]


def test_spent_retries_fail_with_the_smtp_error(consumer, smtp_server):
    # Given: the mail server never accepts anything
    scene = make_scene(hr_count=1)
    smtp_server.handler.data_answers.extend(["451 4.3.0 try later"] * 10)
    # When
    job = scene.submit(max_retries=1)
    # Then
    assert job["maxRetries"] == 1
    done = wait_final(job["id"], timeout=RETRY_WAIT)
    assert done["status"] == "failed", done
    assert done["attempts"] == 2
    assert "451" in done["error"] and "try later" in done["error"]
    assert done["completedAt"] is not None and done["result"] is None
    assert mails_to(smtp_server, scene.hrs) == {scene.hrs[0].email: 0}


def test_refused_recipient_fails_at_once(consumer, smtp_server):
    # Given: the second HR admin's address does not exist
    scene = make_scene(hr_count=2)
    gone = scene.hrs[1].email
    smtp_server.handler.refuse[gone] = "550 5.1.1 no such user"
    # When
    job = scene.submit()
    # Then: no retry can help, so none is made
    done = wait_final(job["id"])
    assert done["status"] == "failed", done
    assert done["attempts"] == 1
    assert "Recipient refused" in done["error"] and "550" in done["error"]
    # (the manager who owns the job is not shown HR's addresses; the log names them)
    assert all(hr.email not in done["error"] for hr in scene.hrs)
    assert all(hr.email not in (done["progress"] or {}).get("message", "")
               for hr in scene.hrs)
    assert mails_to(smtp_server, scene.hrs) == {scene.hrs[0].email: 1, gone: 0}


def test_time_limit_fails_a_slow_attempt(consumer, smtp_server):
    # Given: each message takes longer than the job may run
    scene = make_scene(hr_count=3)
    smtp_server.handler.delay = 1.5
    # When
    job = scene.submit(time_limit=1, max_retries=0)
    # Then
    done = wait_final(job["id"])
    assert done["status"] == "failed", done
    assert "Timed out" in done["error"]
    assert done["attempts"] == 1
    assert sum(mails_to(smtp_server, scene.hrs).values()) < len(scene.hrs)


def test_manual_retry_of_a_failed_job_completes_it(consumer, smtp_server):
    # Given: a job that failed on a refused recipient after mailing the first one
    scene = make_scene(hr_count=2)
    smtp_server.handler.refuse[scene.hrs[1].email] = "550 5.1.1 no such user"
    job = scene.submit()
    failed = wait_final(job["id"])
    assert failed["status"] == "failed" and failed["attempts"] == 1
    # When: the address is fixed and the owner retries
    smtp_server.handler.refuse.clear()
    again = jobs.retry(job["id"], scene.manager.id, Role.MANAGER)
    # Then
    assert again["status"] == "pending"
    assert again["version"] == failed["version"] + 1
    assert again["attempts"] == 1 and again["completedAt"] is None
    done = wait_final(job["id"])
    assert done["status"] == "completed", done
    assert done["attempts"] == 2 and done["error"] is None
    assert done["result"] == {"sent": 2}
    # the first run's recipient is not mailed again
    assert mails_to(smtp_server, scene.hrs) == {hr.email: 1 for hr in scene.hrs}


# -- cancellation --------------------------------------------------------------------


def test_cancelled_pending_job_never_runs(request, smtp_server, deliveries):
    # Given: a queued job and no consumer
    scene = make_scene(hr_count=2)
    job = scene.submit()
    # When
    cancelled = jobs.cancel(job["id"], scene.manager.id, Role.MANAGER)
    # Then: cancelled at once
    assert cancelled["status"] == "cancelled"
    assert cancelled["version"] == 2 and cancelled["completedAt"] is not None
    assert job_now(job["id"]) == cancelled
    # and a consumer that gets its queue entry leaves it alone
    request.getfixturevalue("consumer")
    wait_for(lambda: deliveries(job["id"]) == 1, message="the consumer to take the delivery")
    assert job_now(job["id"]) == cancelled
    assert cancelled["attempts"] == 0 and cancelled["startedAt"] is None
    assert mails_to(smtp_server, scene.hrs) == {hr.email: 0 for hr in scene.hrs}


def test_cancelling_a_running_job_stops_it_between_recipients(consumer, smtp_server):
    # Given: a slow mail server and many recipients
    scene = make_scene(hr_count=5)
    smtp_server.handler.delay = 0.5
    job = scene.submit()
    wait_for(lambda: sent_so_far(job["id"]), message="a first recipient mailed")
    # When
    asked = jobs.cancel(job["id"], scene.manager.id, Role.MANAGER)
    # Then
    assert asked["status"] == "processing" and asked["cancelRequested"] is True
    done = wait_final(job["id"])
    assert done["status"] == "cancelled", done
    assert done["attempts"] == 1 and done["completedAt"] is not None
    mailed = sum(mails_to(smtp_server, scene.hrs).values())
    assert 1 <= mailed < len(scene.hrs)
    assert max(mails_to(smtp_server, scene.hrs).values()) == 1


# -- duplicates, states and visibility ---------------------------------------------------


def test_duplicate_delivery_runs_the_job_once(request, smtp_server, deliveries):
    # Given: the same job in the queue twice
    scene = make_scene(hr_count=2)
    job = scene.submit()
    assert jobs.enqueue(job["id"], job["priority"])
    assert queue.huey().pending_count() == 2
    # When
    request.getfixturevalue("consumer")
    # Then
    done = wait_final(job["id"])
    wait_for(lambda: deliveries(job["id"]) == 2, message="both deliveries taken")
    assert done["status"] == "completed", done
    assert job_now(job["id"]) == done
    assert done["attempts"] == 1
    assert mails_to(smtp_server, scene.hrs) == {hr.email: 1 for hr in scene.hrs}


def test_final_states_refuse_cancel_and_retry(request, smtp_server):
    scene = make_scene(hr_count=1)
    owner = scene.manager.id
    # a pending job (no consumer yet) cannot be retried; once cancelled, not cancelled again
    pending = scene.submit()
    with pytest.raises(Conflict):
        jobs.retry(pending["id"], owner, Role.MANAGER)
    cancelled = jobs.cancel(pending["id"], owner, Role.MANAGER)
    with pytest.raises(Conflict):
        jobs.cancel(pending["id"], owner, Role.MANAGER)
    # a completed job: neither
    request.getfixturevalue("consumer")
    completed = wait_final(scene.submit()["id"])
    assert completed["status"] == "completed"
    with pytest.raises(Conflict):
        jobs.cancel(completed["id"], owner, Role.MANAGER)
    with pytest.raises(Conflict):
        jobs.retry(completed["id"], owner, Role.MANAGER)
    # a failed job: no cancel
    smtp_server.handler.refuse[scene.hrs[0].email] = "550 5.1.1 no such user"
    failed = wait_final(scene.submit()["id"])
    assert failed["status"] == "failed"
    with pytest.raises(Conflict):
        jobs.cancel(failed["id"], owner, Role.MANAGER)
    # the refusals changed nothing
    for job in (cancelled, completed, failed):
        assert job_now(job["id"]) == job


def test_another_users_job_does_not_exist_for_them(consumer, smtp_server):
    scene = make_scene(hr_count=1)
    done = wait_final(scene.submit()["id"])
    other = scene.stranger.id
    for call in (jobs.get, jobs.cancel, jobs.retry, jobs.result_file):
        with pytest.raises(NotFound):
            call(done["id"], other, Role.MANAGER)
    assert job_now(done["id"]) == done
    # the owner and an admin see it
    assert jobs.get(done["id"], scene.manager.id, Role.MANAGER) == done
    assert jobs.get(done["id"], other, Role.ADMIN) == done
    # an unknown id is the same NotFound
    with pytest.raises(NotFound):
        jobs.get("0" * 32, scene.manager.id, Role.ADMIN)


def test_every_change_is_published_in_order(consumer, smtp_server, events):
    # Given
    scene = make_scene(hr_count=4)
    smtp_server.handler.delay = 0.3  # a few progress events
    # When
    job = scene.submit()
    done = wait_final(job["id"])
    # Then
    evs = events.wait_version(job["id"], done["version"])
    assert_event_stream(evs, done, scene.manager.id)
    with events.lock:
        raw = [m for m in events.messages if m["data"]["id"] == job["id"]]
    assert all(set(m) == {"type", "data"} and m["type"] == "job" for m in raw)
    assert evs[0]["status"] == "pending" and evs[0]["version"] == 1
    progress = [e["progress"]["current"] for e in evs if e["progress"]]
    assert progress == sorted(progress) and progress[-1] == 4


def test_prune_removes_old_finished_jobs_and_their_own_files_only(test_root):
    # Given: an old completed job with a file in its own folder, an old failed one,
    # a recent one, an old unfinished one, and an archive in a shared folder
    from datetime import timedelta

    from sqlalchemy import update

    from pa import db, retention
    from pa.models import Job
    from pa.settings import settings

    owner = make_user(Role.HR_ADMIN)

    def job(status: str, age_days: int, result_file: str | None = None) -> str:
        j = jobs.submit(JobType.GENERATE_REPORT, {"fiscalYear": 2025}, owner.id)
        when = db.utcnow() - timedelta(days=age_days)
        with db.begin() as conn:
            conn.execute(update(Job).where(Job.id == j["id"]).values(
                status=status, completed_at=when if status != "pending" else None,
                result_file=result_file))
        return j["id"]

    old_id = jobs.submit(JobType.GENERATE_REPORT, {}, owner.id)["id"]
    folder = settings.data_dir / "reports" / old_id
    folder.mkdir(parents=True)
    (folder / "pa-report-FY2025.pdf").write_bytes(b"%PDF-")
    with db.begin() as conn:
        conn.execute(update(Job).where(Job.id == old_id).values(
            status="completed", completed_at=db.utcnow() - timedelta(days=31),
            result_file=f"reports/{old_id}/pa-report-FY2025.pdf"))
    archive = settings.data_dir / "archives" / "FY2020" / "pa-archive-FY2020.jsonl.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(b"x")
    old_archive = job("completed", 40, "archives/FY2020/pa-archive-FY2020.jsonl.gz")
    old_failed = job("failed", 31)
    recent = job("completed", 29)
    unfinished = job("pending", 0)
    # When
    removed = retention.prune()
    # Then
    assert removed == 3
    assert jobs.load_row(old_id) is None and not folder.exists()
    assert jobs.load_row(old_archive) is None and archive.exists()
    assert jobs.load_row(old_failed) is None
    assert jobs.load_row(recent) is not None and jobs.load_row(unfinished) is not None
