"""`bulk_import`: users from an uploaded CSV (rules in pa.imports).

Passes over the file on disk, never holding it whole: check every line; upsert the
valid rows of managers (anyone the file names as a manager), then everyone else with
their manager's id already known, in batches; finally link the managers' own
managers. So most rows are written once. Each batch commits together with a
checkpoint (step, last line, counts so far): a second run after a crash or a cancel
resumes after the last committed batch and reports the same counts; the upsert and
the linking are idempotent anyway, so even a batch done twice creates nothing twice.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Connection,
    DateTime,
    String,
    Table,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from pa import db, events, imports, jobs
from pa.errors import JobLost, PermanentJobError, Unprocessable
from pa.handlers import JobContext, handler
from pa.models import JobStatus, User
from pa.queue import JobType
from pa.settings import settings

#: rows per transaction (and per progress report)
BATCH = 5000
#: rejected lines listed in the job's result: the job object travels in every event
#: and list, so it stays small; the errors CSV has every one
RESULT_ERRORS = 100
ERRORS_NAME = "pa-import-errors.csv"

users = cast(Table, User.__table__)


class Found(NamedTuple):
    id: int
    manager_id: int | None
    #: lowercased
    manager_email: str | None


def upload_path(payload: dict[str, Any]) -> Path:
    """The job's uploaded file; PermanentJobError if it is gone or not an upload."""
    root = (settings.data_dir / imports.UPLOADS_DIR).resolve()
    path = (settings.data_dir / str(payload.get("path", ""))).resolve()
    if path.parent != root:
        raise PermanentJobError("The job's file is not in the uploads folder.")
    if not path.is_file():
        raise PermanentJobError("The uploaded file is gone (deleted or pruned); upload it again.")
    return path


@contextmanager
def _csv(path: Path) -> Iterator[tuple[dict[str, int], int, Iterator[tuple[int, list[str]]]]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield imports.data_records(f)
    except UnicodeDecodeError as exc:
        raise PermanentJobError(f"The file is not UTF-8 text ({exc.reason}).") from None
    except csv.Error as exc:
        raise PermanentJobError(f"The file is not valid CSV: {exc}.") from None
    except Unprocessable as exc:
        raise PermanentJobError(exc.message) from None


def _count_lines(path: Path) -> int:
    """Data lines, roughly (quoted line breaks count too): the first progress total."""
    count = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            count += chunk.count(b"\n")
    return max(count, 1)


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _mixed_case() -> dict[str, int]:
    """Users whose stored email is not all lowercase (older rows): lowercased → id."""
    with db.read() as conn:
        rows = conn.execute(
            select(users.c.id, users.c.email)
            .where(users.c.email != func.lower(users.c.email)).order_by(users.c.id)
        ).all()
    found: dict[str, int] = {}
    for uid, email in rows:
        found.setdefault(email.lower(), uid)
    return found


def _find(conn: Connection, emails: Collection[str], mixed: dict[str, int]) -> dict[str, Found]:
    """The users with these (lowercase) emails, matched case-insensitively."""
    manager = users.alias("manager")
    found: dict[str, Found] = {}
    for chunk in _chunks(list(emails), BATCH):
        cond: ColumnElement[bool] = users.c.email.in_(chunk)
        ids = [mixed[e] for e in chunk if e in mixed]
        if ids:
            cond = or_(cond, users.c.id.in_(ids))
        rows = conn.execute(
            select(users.c.id, users.c.email, users.c.manager_id, manager.c.email)
            .outerjoin(manager, manager.c.id == users.c.manager_id).where(cond)
        ).all()
        for uid, email, manager_id, manager_email in rows:
            key = email.lower()
            if key in found and email != key:
                continue  # the row stored exactly lowercase wins
            found[key] = Found(uid, manager_id, manager_email.lower() if manager_email else None)
    return found


def _lookup(mixed: dict[str, int]) -> imports.Lookup:
    def lookup(emails: Collection[str]) -> dict[str, str | None]:
        with db.read() as conn:
            return {e: f.manager_email for e, f in _find(conn, emails, mixed).items()}

    return lookup


def _lowercase_stored(imported: Collection[str], mixed: dict[str, int]) -> None:
    """Store the emails of existing users the file imports in lowercase, so that the
    upsert (ON CONFLICT on the exact email) finds them."""
    targets = [(mixed[e], e) for e in imported if e in mixed]
    for i in range(0, len(targets), BATCH):
        part = targets[i:i + BATCH]
        with db.begin() as conn:
            exact = set(conn.scalars(
                select(users.c.email).where(users.c.email.in_([e for _, e in part]))))
            rows = [{"uid": uid, "lower": e} for uid, e in part if e not in exact]
            if rows:
                conn.execute(
                    update(users).where(users.c.id == bindparam("uid"))
                    .values(email=bindparam("lower")), rows)


def _upsert(step: int) -> Any:
    """INSERT ... ON CONFLICT (email) DO UPDATE, touching only rows that change.

    Step 1 (managers) returns ids and leaves manager_id alone; step 2 sets manager_id
    and returns nothing (a plain executemany is much faster than RETURNING's
    multi-row VALUES on SQLite)."""
    name = db.engine().dialect.name
    if name == "sqlite":
        ins: Any = sqlite.insert(users)
    elif name == "postgresql":
        ins = postgresql.insert(users)
    else:
        raise PermanentJobError(f"Bulk import supports SQLite and PostgreSQL, not {name}.")
    # Both times come from one parameter, already converted (see _stamp()): SQLAlchemy
    # would otherwise convert a datetime twice per row, 60 % of the statement's cost
    # on SQLite. The parameter's type only says how to send it: SQLite stores the
    # text; psycopg needs a timestamp (and DateTime has no conversion there).
    stamp = bindparam("stamp", type_=String() if name == "sqlite" else DateTime())
    ins = ins.values(created_at=stamp, updated_at=stamp)
    new = ins.excluded
    columns = ["name", "role", "department", *(["manager_id"] if step == 2 else [])]
    stmt = ins.on_conflict_do_update(
        index_elements=[users.c.email],
        set_={**{c: new[c] for c in columns}, "updated_at": new.updated_at},
        where=or_(*(users.c[c].is_distinct_from(new[c]) for c in columns)),
    )
    return stmt.returning(users.c.id, users.c.email) if step == 1 else stmt


def _stamp(conn: Connection) -> Any:
    """Now, as the users table's time columns bind it on this database."""
    now = db.utcnow()
    convert = users.c.updated_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return convert(now) if convert else now


def _owner(ctx: JobContext) -> dict[str, Any]:
    # The row still belongs to this run (the runner's own compare-and-set values).
    return {"status": JobStatus.PROCESSING.value, "worker_id": ctx.worker_id,
            "attempts": ctx.attempt}


@dataclass
class Written:
    """Counts so far, and what the link step needs to know about managers' rows."""

    created: int = 0
    updated: int = 0
    #: email → id of the managers written (and of those looked up)
    ids: dict[str, int] = field(default_factory=dict)
    #: email → manager_id before this run, of managers' rows that existed
    managers: dict[str, int | None] = field(default_factory=dict)


def _write_batch(ctx: JobContext, stmt: Any, step: int, batch: list[imports.UserRow],
                 written: Written, manager_ids: dict[str, int] | None) -> None:
    now = db.utcnow()
    emails = [r.email for r in batch]
    values: list[dict[str, Any]] = [
        {"email": r.email, "name": r.name, "role": r.role, "department": r.department}
        for r in batch]
    if manager_ids is not None:
        for value, row in zip(values, batch, strict=True):
            value["manager_id"] = manager_ids.get(row.manager_email or "")
    # One order for everyone: two imports upserting the same users on PostgreSQL
    # take the rows' locks in the same order instead of deadlocking.
    values.sort(key=lambda v: v["email"])
    with db.begin() as conn:
        stamp = _stamp(conn)
        for value in values:
            value["stamp"] = stamp
        before = conn.execute(select(users.c.email, users.c.id, users.c.manager_id,
                                     users.c.role)
                              .where(users.c.email.in_(emails))).all()
        result = conn.execute(stmt, values)
        # Step 1's RETURNING: ids of new rows (and of changed ones; the others are in
        # `before`)
        returned = result.all() if manager_ids is None else []
        checkpoint: dict[str, Any] = {
            "phase": "write", "step": step, "line": batch[-1].line,
            "created": written.created + len(batch) - len(before),
            "updated": written.updated + len(before),
        }
        # Same transaction as the rows: after a crash the checkpoint and the rows agree.
        # Not published on its own: the progress() that follows publishes the row.
        if jobs.change(ctx.job_id, {"checkpoint": checkpoint, "heartbeat_at": now},
                       expect=_owner(ctx), conn=conn) is None:
            raise JobLost(ctx.job_id)
    ctx.checkpoint = checkpoint
    written.created, written.updated = checkpoint["created"], checkpoint["updated"]
    # Users whose role this batch changed: every web process closes their sockets,
    # which reconnect with what the new role may see (DESIGN.md).
    roles = {v["email"]: v["role"] for v in values}
    changed = [events.role_change_event(uid) for email, uid, _m, role in before
               if roles[email] != role]
    if changed:
        events.publish(*changed)
    if manager_ids is None:  # managers' rows: the link step needs their ids
        for email, uid, manager_id, _role in before:
            written.ids[email] = uid
            written.managers[email] = manager_id
        for uid, email in returned:
            written.ids[email] = uid


def _check(ctx: JobContext, path: Path) -> imports.Plan:
    estimate = _count_lines(path)
    plan = imports.Plan()
    with _csv(path) as (cols, width, records):
        for line, fields in records:
            plan.add(line, fields, cols, width)
            if plan.records % 1000 == 0:
                ctx.progress(plan.records, 3 * max(estimate, plan.records),
                             f"Checking line {line:,}")
    return plan


def _look_up(written: Written, emails: Collection[str]) -> None:
    """Ids (and managers) of users this run did not write itself."""
    wanted = [e for e in emails if e not in written.ids]
    if wanted:
        with db.read() as conn:
            for email, user in _find(conn, wanted, _mixed_case()).items():
                written.ids[email] = user.id
                written.managers[email] = user.manager_id


def _write(ctx: JobContext, path: Path, plan: imports.Plan) -> Written:
    """Upsert the valid rows in batches, managers first; resume after the checkpoint."""
    cp = ctx.checkpoint if isinstance(ctx.checkpoint, dict) else {}
    resume = cp.get("phase") == "write"
    written = Written(created=cp["created"], updated=cp["updated"]) if resume else Written()
    start_step, after_line = (cp.get("step", 1), cp["line"]) if resume else (1, 0)
    bosses = {m for m in plan.manager_of.values() if m is not None}
    boss_lines = plan.lines_of(bosses)
    total = plan.records + 2 * len(plan.manager_of)

    def write_step(step: int, after: int, manager_ids: dict[str, int] | None) -> None:
        stmt = _upsert(step)
        batch: list[imports.UserRow] = []

        def flush() -> None:
            ctx.check()
            _write_batch(ctx, stmt, step, batch, written, manager_ids)
            batch.clear()
            done = written.created + written.updated
            ctx.progress(plan.records + done, total,
                         f"Imported {done:,} of {len(plan.manager_of):,} users")

        with _csv(path) as (cols, _width, records):
            if step == 1:
                def wanted(n: int) -> bool:
                    return n > after and n in boss_lines
            else:
                def wanted(n: int) -> bool:
                    return n > after and n not in boss_lines
            for row in imports.rows_to_import(records, cols, plan, wanted):
                batch.append(row)
                if len(batch) >= BATCH:
                    flush()
        if batch:
            flush()

    if start_step == 1:
        write_step(1, after_line, None)
        after_line = 0
    _look_up(written, bosses)
    write_step(2, after_line, written.ids)
    return written


def _link(ctx: JobContext, plan: imports.Plan, written: Written) -> None:
    """Set the manager (or none) of every imported manager, changing only what differs."""
    imported = plan.manager_of
    bosses = [e for e in {m for m in imported.values() if m is not None} if e in imported]
    _look_up(written, {*bosses, *(m for b in bosses if (m := imported[b]) is not None)})
    now = db.utcnow()
    changes = []
    for email in bosses:
        manager = imported[email]
        uid = written.ids.get(email)
        target = written.ids.get(manager) if manager is not None else None
        if uid is None or (manager is not None and target is None):
            continue  # deleted while we ran
        if written.managers.get(email) != target:
            changes.append({"uid": uid, "mid": target, "now": now})
    stmt = (update(users).where(users.c.id == bindparam("uid"))
            .values(manager_id=bindparam("mid"), updated_at=bindparam("now")))
    total = plan.records + 2 * len(imported)
    for i in range(0, len(changes), BATCH):
        ctx.check()
        with db.begin() as conn:
            conn.execute(stmt, changes[i:i + BATCH])
        done = len(imported) * min(len(changes), i + BATCH) // len(changes)
        ctx.progress(plan.records + len(imported) + done, total, "Linking managers")


def _errors_file(ctx: JobContext, errors: list[imports.Rejection]) -> str | None:
    path = ctx.data_path("imports", ctx.job_id, ERRORS_NAME)
    if not errors:
        path.unlink(missing_ok=True)
        return None
    imports.write_errors_csv(path, errors)
    return path.relative_to(settings.data_dir).as_posix()


@handler(JobType.BULK_IMPORT)
def bulk_import(ctx: JobContext) -> dict[str, Any]:
    cp = ctx.checkpoint if isinstance(ctx.checkpoint, dict) else {}
    if cp.get("phase") == "done":
        # Finished before, but the completion was not recorded: the upload is gone.
        ctx.result_file = cp.get("resultFile")
        return dict(cp["result"])
    path = upload_path(ctx.payload)
    ctx.progress(0, None, "Checking lines", force=True)
    plan = _check(ctx, path)
    mixed = _mixed_case()
    imports.resolve_managers(plan, _lookup(mixed))
    _lowercase_stored(plan.manager_of.keys(), mixed)
    written = _write(ctx, path, plan)
    _link(ctx, plan, written)
    errors = plan.errors()
    counts = {"created": written.created, "updated": written.updated}
    result = {**counts, "rejected": len(errors),
              "errors": [r._asdict() for r in errors[:RESULT_ERRORS]]}
    ctx.result_file = _errors_file(ctx, errors)
    total = plan.records + 2 * len(plan.manager_of)
    ctx.progress(total, total, f"{counts['created']:,} created, {counts['updated']:,} "
                 f"updated, {len(errors):,} rejected", force=True)
    ctx.save_checkpoint({"phase": "done", "result": result, "resultFile": ctx.result_file})
    # The upload stays while a retry may need it (failed, cancelled); done, it goes.
    path.unlink(missing_ok=True)
    return result
