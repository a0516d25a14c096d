"""Recovery: consumers as real processes (run_consumer.py) that are killed, stopped and
restarted, and a Redis that loses its queue; the Job rows must bring every job home."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from huey.signals import SIGNAL_INTERRUPTED

from pa import heartbeat, jobs, queue
from pa.jobs import claim
from pa.models import ReviewStatus, Role, User
from pa.queue import JobType
from pa.worker import reap, requeue_interrupted
from tests.factories import make_review, make_user
from tests.processes import ConsumerProcess
from tests.services import SmtpServer, subscribed, wait_for

ROOT = Path(__file__).resolve().parent.parent
FINAL = {"completed", "failed", "cancelled"}
#: a lost worker is noticed after its key's TTL (3 s) plus a reaper interval (2 s)
RECOVERY_WAIT = 30.0


@pytest.fixture
def start_consumer(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    """Start consumer processes; all are stopped (and their output shown on failure) after."""
    started: list[ConsumerProcess] = []

    def start(env: dict[str, str] | None = None, worker_type: str = "thread") -> ConsumerProcess:
        proc = ConsumerProcess(tmp_path / f"consumer-{len(started) + 1}.log",
                               dict(os.environ) if env is None else env, worker_type)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            proc.stop()
        finally:
            # pytest shows this only when the test failed
            print(f"--- consumer {proc.pid} (exit {proc.proc.returncode}) ---\n"
                  f"{proc.output()}")


# -- helpers ---------------------------------------------------------------------------


def make_hr_scene(hr_count: int) -> tuple[User, int, list[User]]:
    manager = make_user(Role.MANAGER)
    employee = make_user(Role.EMPLOYEE, manager_id=manager.id)
    hrs = [make_user(Role.HR_ADMIN) for _ in range(hr_count)]
    review = make_review(employee, status=ReviewStatus.MANAGER_REVIEW)
    return manager, review.id, hrs


def submit(manager: User, review_id: int, **options: Any) -> dict[str, Any]:
    return jobs.submit(JobType.EMAIL_NOTIFICATION,
                       {"kind": "review_submitted", "reviewId": review_id}, manager.id,
                       **options)


def row(job_id: str) -> Any:
    r = jobs.load_row(job_id)
    assert r is not None, f"job {job_id} is gone"
    return r


def wait_final(job_id: str, timeout: float = RECOVERY_WAIT) -> dict[str, Any]:
    return wait_for(lambda: (j := jobs.job_to_dict(row(job_id)))["status"] in FINAL and j,
                    timeout=timeout, message=f"job {job_id} to finish")


def sent_so_far(job_id: str) -> list[str]:
    """The recipients the job's checkpoint says are mailed, while it runs."""
    r = row(job_id)
    return list((r["checkpoint"] or {}).get("sent", [])) if r["status"] == "processing" else []


def wait_mid_job(job_id: str, mailed: int = 1) -> list[str]:
    """Wait until the running job has mailed `mailed` recipients; who they are."""
    return wait_for(lambda: len(sent := sent_so_far(job_id)) >= mailed and sent,
                    timeout=20, message=f"job {job_id} to mail {mailed} recipient(s)")


def mail_counts(smtp: SmtpServer, users: list[User]) -> dict[str, int]:
    return {u.email: len(smtp.handler.to(u.email)) for u in users}


def kill(proc: ConsumerProcess) -> None:
    proc.send(signal.SIGKILL)
    assert proc.wait_exit() == -signal.SIGKILL


# -- a consumer that dies mid-job -----------------------------------------------------------


def test_killed_consumer_job_is_resumed_by_the_next(start_consumer, smtp_server):
    # Given: a job half-way through a slow mail server
    manager, review_id, hrs = make_hr_scene(4)
    smtp_server.handler.delay = 0.5
    first = start_consumer()
    job = submit(manager, review_id)
    assert wait_mid_job(job["id"])
    # When: its consumer dies without a word, and another one starts
    kill(first)
    assert row(job["id"])["status"] == "processing"
    start_consumer()
    # Then: the reaper gives it to the new consumer, which mails only the rest
    done = wait_final(job["id"])
    assert done["status"] == "completed", done
    assert done["attempts"] == 2 and done["error"] is None
    assert done["result"] == {"sent": 4}
    assert mail_counts(smtp_server, hrs) == {hr.email: 1 for hr in hrs}


def test_the_end_of_a_job_a_killed_consumer_just_ran_is_published_again(
        start_consumer, smtp_server, redis_server):
    # Given: a consumer that ran a job to its end, and a subscriber to the events
    manager, review_id, _ = make_hr_scene(2)
    heard: list[dict[str, Any]] = []
    with subscribed(redis_server.url, lambda m: heard.append(json.loads(m)["data"])):
        consumer = start_consumer()
        job = submit(manager, review_id)
        ends = lambda: [j for j in heard if j["id"] == job["id"] and j["status"] in FINAL]  # noqa: E731
        # When: the consumer is killed as soon as the job's end is heard, as if that
        # event (held until its thread's next read of the queue) had gone with it
        wait_for(ends, timeout=RECOVERY_WAIT, interval=0.005, message="the job's end")
        kill(consumer)
        done = wait_final(job["id"])
        # Then: once the consumer is found silent, the reaper publishes that end again,
        # the same version; and only once
        counts = wait_for(lambda: (c := reap(lock=False))["republished"] and c,
                          timeout=RECOVERY_WAIT, message="the end published again")
        wait_for(lambda: len(ends()) >= 2, timeout=10, message="the repeat")
        assert reap(lock=False)["republished"] == 0
    assert counts["republished"] >= 1
    assert [(j["status"], j["version"]) for j in ends()] == \
        [(done["status"], done["version"])] * 2


def test_killed_consumer_job_without_retries_fails(start_consumer, smtp_server):
    # Given
    manager, review_id, hrs = make_hr_scene(4)
    smtp_server.handler.delay = 0.5
    first = start_consumer()
    job = submit(manager, review_id, max_retries=0)
    wait_mid_job(job["id"])
    # When
    kill(first)
    start_consumer()
    # Then
    done = wait_final(job["id"])
    assert done["status"] == "failed", done
    assert "Worker lost" in done["error"]
    assert done["attempts"] == 1 and done["completedAt"] is not None
    assert max(mail_counts(smtp_server, hrs).values()) == 1


# -- a Redis that forgets its queue ---------------------------------------------------------


def test_jobs_lost_by_redis_are_enqueued_again(start_consumer, smtp_server, redis_server):
    # Given: jobs waiting in the queue, and no consumer
    manager, review_id, hrs = make_hr_scene(2)
    lost = [submit(manager, review_id) for _ in range(2)]
    # When: Redis comes back empty, a job is queued afterwards, and a consumer starts
    redis_server.restart_empty()
    queued = submit(manager, review_id)
    start_consumer()
    # Then: every job runs exactly once
    for job in (*lost, queued):
        done = wait_final(job["id"])
        assert done["status"] == "completed", done
        assert done["attempts"] == 1
    assert mail_counts(smtp_server, hrs) == {hr.email: 3 for hr in hrs}


# -- stopping a consumer ----------------------------------------------------------------------


@pytest.mark.parametrize("duplicate", [False, True], ids=["plain", "after-a-duplicate"])
def test_sigterm_sends_the_running_job_back_to_pending(start_consumer, smtp_server, duplicate):
    # Given: a running job (and, in one case, a second delivery of it that the
    # other worker thread took and ignored meanwhile)
    manager, review_id, hrs = make_hr_scene(4)
    smtp_server.handler.delay = 0.5
    first = start_consumer()
    job = submit(manager, review_id)
    if duplicate:
        assert jobs.enqueue(job["id"], job["priority"])
    wait_mid_job(job["id"])
    if duplicate:
        wait_for(lambda: queue.huey().pending_count() == 0, message="the duplicate taken")
        # the ignored duplicate takes milliseconds; a second message takes 0.5 s
        wait_mid_job(job["id"], mailed=2)
    # When: stopped at once (SIGTERM: the worker thread's task is abandoned)
    first.send(signal.SIGTERM)
    first.wait_exit()
    # Then: the job is pending again right away, not left to the reaper
    back = jobs.job_to_dict(row(job["id"]))
    assert back["status"] == "pending", back
    assert back["attempts"] == 1 and back["error"] is None
    # and the next consumer finishes it without mailing anyone twice
    start_consumer()
    done = wait_final(job["id"])
    assert done["status"] == "completed", done
    assert done["attempts"] == 2
    counts = mail_counts(smtp_server, hrs)
    assert min(counts.values()) == 1, counts
    # The message in flight at SIGTERM may arrive twice: the abandoned thread
    # cannot record it, and the dying interpreter lingers in its final GC until
    # that SMTP reply comes (so the server accepts it). Only that one.
    assert sum(counts.values()) - len(hrs) <= 1, counts


def test_sigint_lets_the_running_job_finish(start_consumer, smtp_server):
    # Given
    manager, review_id, hrs = make_hr_scene(3)
    smtp_server.handler.delay = 0.5
    proc = start_consumer()
    job = submit(manager, review_id)
    wait_mid_job(job["id"])
    # When: a graceful stop
    proc.send(signal.SIGINT)
    # Then: the process waits for the job before it exits
    assert proc.wait_exit() == 0
    done = jobs.job_to_dict(row(job["id"]))
    assert done["status"] == "completed", done
    assert done["attempts"] == 1
    assert mail_counts(smtp_server, hrs) == {hr.email: 1 for hr in hrs}


def test_a_stale_interrupted_run_leaves_the_new_owner_alone(smtp_server):
    # Given: a job the reaper gave to another consumer, which now runs it
    manager, review_id, _ = make_hr_scene(1)
    job = submit(manager, review_id)
    other = "elsewhere:1:0123abcd"
    assert claim(job["id"], other) is not None
    before = jobs.job_to_dict(row(job["id"]))
    # When: this process is stopped while an old, abandoned run of the job is in flight
    try:
        requeue_interrupted(SIGNAL_INTERRUPTED, queue.huey().run_job.s(job["id"]))
    finally:
        heartbeat.stop()  # the handler gave this process a consumer identity
    # Then: the job stays with its new owner
    after = jobs.job_to_dict(row(job["id"]))
    assert after == before
    assert row(job["id"])["worker_id"] == other


# -- several consumers -----------------------------------------------------------------------


def test_two_consumers_recover_a_job_exactly_once(start_consumer, smtp_server):
    # Given: two consumers, one of which runs a slow job
    manager, review_id, hrs = make_hr_scene(4)
    smtp_server.handler.delay = 0.5
    consumers = [start_consumer(), start_consumer()]
    job = submit(manager, review_id)
    wait_mid_job(job["id"])
    worker = row(job["id"])["worker_id"]
    [runner] = [c for c in consumers if c.runs(worker)]
    [survivor] = [c for c in consumers if c is not runner]
    # When: the one running it dies
    kill(runner)
    # Then: the survivor's reaper recovers it, and it runs once more, not twice
    done = wait_final(job["id"])
    assert done["status"] == "completed", done
    assert done["attempts"] == 2
    assert not survivor.runs(worker)
    assert mail_counts(smtp_server, hrs) == {hr.email: 1 for hr in hrs}
    assert survivor.proc.poll() is None


# -- configuration ---------------------------------------------------------------------------


def test_process_workers_run_jobs(start_consumer, smtp_server):
    """`-k process`: the workers are forked children of the consumer, which has used the
    database (its reaper) before forking; each child needs connections of its own."""
    # Given
    scenes = [make_hr_scene(hr_count=2) for _ in range(6)]
    consumer = start_consumer(worker_type="process")
    # When
    submitted = [submit(manager, review_id) for manager, review_id, _ in scenes]
    # Then
    for job in submitted:
        assert wait_final(job["id"], timeout=60)["status"] == "completed", consumer.output()
    for _, _, hrs in scenes:  # each job mails every HR admin, once
        for hr in hrs:
            assert len(smtp_server.handler.to(hr.email)) == len(submitted)
    assert "Traceback" not in consumer.output()


def test_consumer_refuses_to_start_without_redis(start_consumer):
    env = {k: v for k, v in os.environ.items() if k != "PA_REDIS_URL"}
    proc = start_consumer(env)
    assert proc.wait_exit() != 0
    assert "PA_REDIS_URL" in proc.output()
