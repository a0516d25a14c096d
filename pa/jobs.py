"""Submit, read, cancel and retry jobs: the only module that enqueues.

Every change of a job row goes through `change()`: it bumps `version`, commits,
then publishes the whole job on the event bus.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    RowMapping,
    Table,
    Update,
    and_,
    bindparam,
    exists,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from pa import db, events, queue
from pa.errors import Conflict, Invalid, NotFound
from pa.models import FINAL_STATUSES, Job, JobStatus, PausedType, Role, iso
from pa.queue import JOB_SPECS, EventCarryingStorage, JobType, add_commands

log = logging.getLogger(__name__)

#: the jobs table for Core statements (the ORM model types it loosely)
jobs_table = cast(Table, Job.__table__)
paused_table = cast(Table, PausedType.__table__)
_ALL = tuple(jobs_table.c)
_FINAL = tuple(s.value for s in FINAL_STATUSES)
# Built once and run with a parameter dict: building (and cache-keying) an INSERT
# with .values() on every call cost about as much as the insert itself.
_INSERT = db.Prepared(insert(jobs_table).returning(*_ALL))


def progress_dict(current: int | None, total: int | None,
                  message: str | None) -> dict[str, Any] | None:
    """A job's `progress`: null until its running attempt reports any."""
    if current is None and total is None and not message:
        return None
    percent = round(min(100.0, 100.0 * (current or 0) / total), 1) if total else None
    return {"current": current, "total": total, "percent": percent, "message": message}


def job_to_dict(row: RowMapping | Mapping[str, Any]) -> dict[str, Any]:
    """The Job object of the API and of events (camelCase)."""
    progress = progress_dict(row["progress_current"], row["progress_total"],
                             row["progress_message"])
    has_file = row["result_file"] is not None and row["status"] == JobStatus.COMPLETED.value
    return {
        "id": row["id"],
        "type": row["type"],
        "status": row["status"],
        "priority": row["priority"],
        "progress": progress,
        "attempts": row["attempts"],
        "maxRetries": row["max_retries"],
        "result": row["result"],
        "error": row["error"],
        "cancelRequested": row["cancel_requested"],
        #: when a pending job waits for its retry: not before this time
        "runAfter": iso(row["run_after"]),
        "createdAt": iso(row["created_at"]),
        "startedAt": iso(row["started_at"]),
        "completedAt": iso(row["completed_at"]),
        "updatedAt": iso(row["updated_at"]),
        "version": row["version"],
        "userId": row["user_id"],
        "downloadUrl": f"/api/jobs/{row['id']}/download" if has_file else None,
    }


def due(now: datetime | BindParameter[Any]) -> ColumnElement[bool]:
    """The pending jobs whose time has come (not waiting for a retry's run_after):
    those a consumer may claim at `now` (a datetime or a bound parameter)."""
    c = jobs_table.c
    return and_(c.status == JobStatus.PENDING.value,
                or_(c.run_after.is_(None), c.run_after <= now))


def create(
    conn: Connection,
    job_type: JobType,
    payload: dict[str, Any],
    user_id: int | None,
    *,
    max_retries: int | None = None,
    time_limit: int | None = None,
    dedupe_key: str | None = None,
) -> dict[str, Any]:
    """Insert a pending job in the caller's transaction; `dispatch()` it after the commit."""
    row = _INSERT.first(conn, _new_row(job_type, payload, user_id, max_retries=max_retries,
                                       time_limit=time_limit, dedupe_key=dedupe_key))
    assert row is not None
    return job_to_dict(row)


def create_after(change: Update, params: dict[str, Any], job_type: JobType,
                 payload: dict[str, Any], user_id: int | None) -> dict[str, Any] | None:
    """Run the UPDATE `change` (which changes one row at most) and insert a pending job
    if it changed a row, in one transaction; the job, or None if nothing changed.
    `dispatch()` the job then.

    On PostgreSQL the two are one statement (the UPDATE in a WITH clause), run in
    autocommit: one round trip instead of four (BEGIN, UPDATE, INSERT, COMMIT),
    a third of a submit's CPU in the web process. SQLite runs the two in a
    transaction (it has no UPDATE inside WITH).
    """
    new = _new_row(job_type, payload, user_id)
    combined, apart = _CREATE_AFTER.get(change) or _prepare_create_after(change)
    if db.is_sqlite():
        with db.begin() as conn:
            row = _INSERT.first(conn, new) if apart.rowcount(conn, params) == 1 else None
    else:
        row = db.write_one(combined, {**params, **{f"j_{k}": v for k, v in new.items()}})
    return job_to_dict(row) if row is not None else None


_NEW_COLUMNS = ("id", "type", "status", "priority", "user_id", "payload", "attempts",
                "max_retries", "retry_base", "time_limit", "cancel_requested", "dedupe_key",
                "version", "created_at", "updated_at")
#: change -> (the UPDATE and INSERT in one statement, the UPDATE alone)
_CREATE_AFTER: dict[Update, tuple[db.Prepared, db.Prepared]] = {}


def _prepare_create_after(change: Update) -> tuple[db.Prepared, db.Prepared]:
    c = jobs_table.c
    changed = change.returning(literal(1).label("changed")).cte("changed")
    new = select(*(bindparam(f"j_{k}", type_=c[k].type) for k in _NEW_COLUMNS))
    combined = (insert(jobs_table).from_select(_NEW_COLUMNS, new.select_from(changed))
                .returning(*_ALL))
    prepared = (db.Prepared(combined), db.Prepared(change))
    _CREATE_AFTER[change] = prepared
    return prepared


def _new_row(job_type: JobType, payload: dict[str, Any], user_id: int | None, *,
             max_retries: int | None = None, time_limit: int | None = None,
             dedupe_key: str | None = None) -> dict[str, Any]:
    spec = JOB_SPECS[JobType(job_type)]
    now = db.utcnow()
    return {
        "id": uuid.uuid4().hex,
        "type": JobType(job_type).value,
        "status": JobStatus.PENDING.value,
        "priority": int(spec.priority),
        "user_id": user_id,
        "payload": payload,
        "attempts": 0,
        "max_retries": spec.retries if max_retries is None else max_retries,
        "retry_base": 0,
        "time_limit": spec.time_limit if time_limit is None else time_limit,
        "cancel_requested": False,
        "dedupe_key": dedupe_key,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }


def enqueue(job_id: str, priority: int, delay: float | None = None) -> bool:
    """Hand the job to Huey (task id = job id); False if the queue did not answer."""
    try:
        queue.huey().run_job(job_id, id=job_id, priority=priority, delay=delay or None)
    except Exception as exc:
        # The row is committed and pending: the reaper enqueues it again later.
        log.warning("job %s not enqueued (%s); the reaper will retry", job_id, exc)
        return False
    return True


def dispatch(job: dict[str, Any]) -> None:
    """After the commit that created `job`: announce it, then enqueue it."""
    # Announce first: once enqueued, a worker may claim the job and publish
    # version 2 before this thread publishes version 1.
    if one_redis():
        try:
            pipe = queue.huey().storage.conn.pipeline(transaction=False)
            queue_commands(pipe, job)
            pipe.execute()
        except Exception as exc:
            # As in enqueue(): the row is committed and pending, the reaper enqueues it.
            log.warning("job %s not enqueued (%s); the reaper will retry", job["id"], exc)
        return
    events.publish(events.job_event(job))
    enqueue(job["id"], job["priority"])


def one_redis() -> bool:
    """Whether the event bus and Huey's queue are the same Redis: then a job's
    event and its task go in one round trip (the hot path of every submit)."""
    storage = queue.huey().storage
    return (isinstance(storage, EventCarryingStorage)
            and events.bus_on(storage.redis_url) is not None)


def queue_commands(pipe: Any, job: dict[str, Any], queue_key: str | None = None) -> None:
    """Add the job's event (after this thread's held ones) and its Huey task to a
    Redis pipeline, blocking or asyncio; only when one_redis()."""
    for message in (*events.take_held(), events.job_event(job)):
        pipe.publish(events.JOBS_CHANNEL, message)
    huey = queue.huey()
    data = huey.serialize_task(huey.run_job.s(job["id"], id=job["id"], priority=job["priority"]))
    key = queue_key or cast(Any, huey.storage).queue_key
    add_commands(pipe, key, job["id"], data, job["priority"])


def submit(
    job_type: JobType, payload: dict[str, Any], user_id: int | None, **options: Any
) -> dict[str, Any]:
    """Record a pending job, commit, enqueue it; returns the Job object."""
    with db.begin() as conn:
        job = create(conn, job_type, payload, user_id, **options)
    dispatch(job)
    return job


def _change_statement(values: tuple[str, ...], expect: tuple[str, ...],
                      with_status: bool) -> Any:
    """The UPDATE for one shape of change, built once with bind parameters:
    building and cache-keying a statement costs more than running it."""
    key = (values, expect, with_status)
    stmt = _CHANGE_STATEMENTS.get(key)
    if stmt is None:
        c = jobs_table.c
        conds = [c.id == bindparam("w_id")]
        conds += [c[k] == bindparam(f"w_{k}", type_=c[k].type) for k in expect]
        if with_status:
            conds.append(c.status.in_(bindparam("w_statuses", expanding=True)))
        stmt = (
            update(jobs_table)
            .where(and_(*conds))
            .values(version=c.version + 1, updated_at=bindparam("v_now", type_=c.updated_at.type),
                    **{k: bindparam(f"v_{k}", type_=c[k].type) for k in values})
            .returning(*_ALL)
        )
        # An IN list's length is only known when it runs: Prepared cannot take it.
        stmt = stmt if with_status else db.Prepared(stmt)
        _CHANGE_STATEMENTS[key] = stmt
    return stmt


_CHANGE_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def _change_row(conn: Connection, stmt: Any, params: dict[str, Any]) -> Mapping[str, Any] | None:
    if isinstance(stmt, db.Prepared):
        return stmt.first(conn, params)
    row = conn.execute(stmt, params).first()
    return cast(Mapping[str, Any], row._mapping) if row is not None else None


def change(
    job_id: str,
    values: dict[str, Any],
    *,
    expect: dict[str, Any] | None = None,
    expect_status: tuple[str, ...] | None = None,
    conn: Connection | None = None,
    publish: bool = True,
    last: bool = False,
) -> dict[str, Any] | None:
    """Change a job row if it matches `expect`; bump version, commit, publish.

    Returns the new Job object, or None when the row did not match (someone
    else changed it first). With `conn`, the caller commits and must publish.
    publish=False is for throttled progress only: a status change is always
    published. last=True marks a worker thread's last change of a job: where
    that thread's next read of the queue can carry the event (pa.queue), it
    waits for that read instead of a round trip of its own.
    """
    expect = expect or {}
    stmt = _change_statement(tuple(values), tuple(expect), bool(expect_status))
    params: dict[str, Any] = {"w_id": job_id, "v_now": db.utcnow()}
    params.update({f"w_{k}": v for k, v in expect.items()})
    params.update({f"v_{k}": v for k, v in values.items()})
    if expect_status:
        params["w_statuses"] = list(expect_status)
    if conn is not None:
        row = _change_row(conn, stmt, params)
        return job_to_dict(row) if row is not None else None
    if isinstance(stmt, db.Prepared):
        row = db.write_one(stmt, params)
    else:
        with db.begin() as own:
            row = _change_row(own, stmt, params)
    if row is None:
        return None
    job = job_to_dict(row)
    if publish:
        carried = last and one_redis()  # (the queue's reads carry them)
        (events.hold if carried else events.publish)(events.job_event(job))
    return job


_LOAD = db.Prepared(select(*_ALL).where(jobs_table.c.id == bindparam("id")))


def load_row(job_id: str) -> Mapping[str, Any] | None:
    """The raw row of a job (worker side: payload, checkpoint, worker id...)."""
    return db.read_one(_LOAD, {"id": job_id})


def claim(job_id: str, worker_id: str) -> Mapping[str, Any] | None:
    """pending → processing, compare-and-set, one statement: a second delivery gets None.

    A delivery before the job's `run_after` (an early duplicate of a retry) gets
    None too: the scheduled delivery will come.
    """
    now = db.utcnow()
    # Unflushed: a claim undone by a crash leaves the job pending, to be run again;
    # the flushed commits after it (its end, an email's sent mark) flush it too.
    row = db.write_one(_CLAIM, {"c_id": job_id, "c_now": now, "c_worker": worker_id},
                       flush=False)
    if row is None:
        return None
    # Held, not sent: a short job's next change carries it (events.hold).
    events.hold(events.job_event(job_to_dict(row)))
    return row


def _claim_statement() -> Any:
    c = jobs_table.c
    now = bindparam("c_now", type_=c.updated_at.type)
    return (
        update(jobs_table)
        .where(c.id == bindparam("c_id"), due(now),
               # A paused type's job stays pending; resuming the type queues it again.
               ~exists().where(paused_table.c.type == c.type))
        .values(status=JobStatus.PROCESSING.value, attempts=c.attempts + 1,
                worker_id=bindparam("c_worker"), heartbeat_at=now, started_at=now,
                updated_at=now, run_after=None, version=c.version + 1,
                progress_current=None, progress_total=None, progress_message=None)
        .returning(*_ALL)
    )


_CLAIM = db.Prepared(_claim_statement())


def find_unfinished(
    conn: Connection, user_id: int, job_type: JobType,
    matches: Callable[[dict[str, Any]], bool],
) -> dict[str, Any] | None:
    """The user's pending or running job of `job_type` (not being cancelled) whose
    payload `matches`, newest first: a repeated request gets it instead of a twin."""
    c = jobs_table.c
    # A user has few unfinished jobs (ix_jobs_user_created finds them); payloads are
    # JSON, compared in Python rather than with dialect-specific JSON operators.
    rows = conn.execute(
        select(*_ALL).where(
            c.user_id == user_id,
            c.type == job_type.value,
            c.status.in_((JobStatus.PENDING.value, JobStatus.PROCESSING.value)),
            c.cancel_requested.is_(False),
        ).order_by(c.created_at.desc())
    ).all()
    for row in rows:
        if matches(dict(row.payload or {})):
            return job_to_dict(row._mapping)
    return None


#: who may start each type of job, and so see their own jobs of it (DESIGN.md: a
#: user who lost the role no longer sees the jobs they started; admins see all)
STARTERS: dict[JobType, frozenset[Role]] = {
    JobType.EMAIL_NOTIFICATION: frozenset({Role.MANAGER, Role.ADMIN}),
    JobType.GENERATE_REPORT: frozenset({Role.HR_ADMIN, Role.ADMIN}),
    JobType.MULTI_YEAR_ANALYTICS: frozenset({Role.HR_ADMIN, Role.ADMIN}),
    JobType.ARCHIVE_REVIEWS: frozenset({Role.HR_ADMIN, Role.ADMIN}),
    JobType.BULK_IMPORT: frozenset({Role.ADMIN}),
    JobType.DATABASE_BACKUP: frozenset({Role.ADMIN}),
}


def visible_types(role: Role) -> frozenset[str]:
    """The job types whose jobs a user with `role` sees (their own; an admin's: all)."""
    return frozenset(t.value for t, roles in STARTERS.items() if role in roles)


def may_see(job: Mapping[str, Any], user_id: int, role: Role) -> bool:
    """Whether a user sees this job (a row or a Job object with userId/type)."""
    if role is Role.ADMIN:
        return True
    owner = job["user_id"] if "user_id" in job else job["userId"]
    return bool(owner == user_id and job["type"] in visible_types(role))


def _visible_row(job_id: str, user_id: int, role: Role) -> Mapping[str, Any]:
    row = load_row(job_id)
    if row is None or not may_see(row, user_id, role):
        # Not 403: whether someone else's job exists is not the caller's business.
        raise NotFound(f"No job {job_id}.")
    return row


def get(job_id: str, user_id: int, role: Role) -> dict[str, Any]:
    """The job, if the caller may see it (may_see); else NotFound."""
    return job_to_dict(_visible_row(job_id, user_id, role))


def result_file(job_id: str, user_id: int, role: Role) -> tuple[dict[str, Any], str]:
    """The job and its file's path (relative to PA_DATA_DIR); NotFound if there is none."""
    row = _visible_row(job_id, user_id, role)
    job = job_to_dict(row)
    if job["downloadUrl"] is None:
        raise NotFound(f"Job {job_id} has no file to download.")
    return job, str(row["result_file"])


def list_jobs(
    user_id: int,
    role: Role,
    *,
    status: str | None = None,
    job_type: str | None = None,
    limit: int = 50,
    since: datetime | None = None,
    unfinished_or_since: datetime | None = None,
) -> list[dict[str, Any]]:
    """The caller's jobs (an admin's: all), newest first."""
    if status is not None and status not in {s.value for s in JobStatus}:
        raise Invalid(f"Unknown status '{status}'.", field="status")
    if job_type is not None and job_type not in {t.value for t in JobType}:
        raise Invalid(f"Unknown job type '{job_type}'.", field="type")
    if not 1 <= limit <= 500:
        raise Invalid("limit must be between 1 and 500.", field="limit")
    stmt = select(*_ALL).order_by(jobs_table.c.created_at.desc(), jobs_table.c.id.desc())
    if role is not Role.ADMIN:
        stmt = stmt.where(jobs_table.c.user_id == user_id,
                          jobs_table.c.type.in_(sorted(visible_types(role))))
    if status:
        stmt = stmt.where(jobs_table.c.status == status)
    if job_type:
        stmt = stmt.where(jobs_table.c.type == job_type)
    if since is not None:
        stmt = stmt.where(jobs_table.c.updated_at >= since)
    if unfinished_or_since is not None:
        stmt = stmt.where(
            or_(
                jobs_table.c.status.not_in(_FINAL),
                jobs_table.c.completed_at >= unfinished_or_since,
            )
        )
    with db.read() as conn:
        rows = conn.execute(stmt.limit(limit)).all()
    return [job_to_dict(r._mapping) for r in rows]


def snapshot(user_id: int, role: Role) -> list[dict[str, Any]]:
    """What a WebSocket gets first: unfinished jobs and those finished in the last hour."""
    since = db.utcnow() - timedelta(hours=1)
    return list_jobs(user_id, role, limit=500, unfinished_or_since=since)


def cancel(job_id: str, user_id: int, role: Role) -> dict[str, Any]:
    """Cancel a pending job at once; ask a processing one to stop; 409 if final."""
    _visible_row(job_id, user_id, role)
    now = db.utcnow()
    job = change(
        job_id,
        {"status": JobStatus.CANCELLED.value, "completed_at": now, "run_after": None},
        expect={"status": JobStatus.PENDING.value},
    )
    if job is None:
        job = change(
            job_id, {"cancel_requested": True}, expect={"status": JobStatus.PROCESSING.value}
        )
    if job is None:
        current = load_row(job_id)
        status = current["status"] if current else "gone"
        raise Conflict(f"Job {job_id} is {status} and cannot be cancelled.")
    return job


def retry(job_id: str, user_id: int, role: Role) -> dict[str, Any]:
    """Send a failed or cancelled job back to pending and enqueue it; 409 otherwise."""
    row = _visible_row(job_id, user_id, role)
    job = _retry(row)
    if job is None:
        current = load_row(job_id)
        status = current["status"] if current else "gone"
        raise Conflict(f"Job {job_id} is {status}; only failed or cancelled jobs can be retried.")
    return job


def retry_as_operator(job_id: str) -> dict[str, Any] | None:
    """retry() for an admin's bulk retry: None when the job is gone or no longer
    failed or cancelled (someone else retried it first)."""
    row = load_row(job_id)
    return _retry(row) if row is not None else None


def _retry(row: Mapping[str, Any]) -> dict[str, Any] | None:
    job = change(
        row["id"],
        {
            "status": JobStatus.PENDING.value,
            "cancel_requested": False,
            "completed_at": None,
            "run_after": None,
            "worker_id": None,
            "retry_base": row["attempts"],
        },
        expect_status=(JobStatus.FAILED.value, JobStatus.CANCELLED.value),
    )
    if job is not None:
        enqueue(job["id"], job["priority"])
    return job
