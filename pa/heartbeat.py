"""Who this consumer is, and proof that it is alive: a Redis key with a TTL, a
stamp on the rows of the jobs it runs, and its row in `consumers` (host, pid,
workers, last seen, jobs run) for the operators' console."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import cast

import redis
from sqlalchemy import Table, delete, insert, update

from pa import db
from pa.events import key
from pa.models import ConsumerProcess, Job, JobStatus
from pa.settings import settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, object] = {}
consumers_table = cast(Table, ConsumerProcess.__table__)
#: ids of the jobs this process is running now
running: set[str] = set()
#: this process's consumer threads, as its row in `consumers` says (announce())
_workers = [1]
#: attempts this process has run, since it started
_ran = [0]


def _worker_key(worker_id: str) -> str:
    return key("worker", worker_id)


def _redis() -> redis.Redis:
    assert settings.redis_url
    client = _state.get("redis")
    if client is None or _state.get("redis_url") != settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        _state["redis"], _state["redis_url"] = client, settings.redis_url
    return client  # type: ignore[return-value]


def worker_id() -> str:
    """This process's consumer id; starts its heartbeat on first use (and after a fork)."""
    with _lock:
        if _state.get("pid") != os.getpid():
            _state.clear()
            running.clear()
            _state["pid"] = os.getpid()
            _state["id"] = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            _state["started_at"] = db.utcnow()
            _ran[0] = 0
            stop = threading.Event()
            _state["stop"] = stop
            beat()
            thread = threading.Thread(target=_beat_forever, args=(stop,), daemon=True,
                                      name="pa-heartbeat")
            thread.start()
        return str(_state["id"])


def announce(workers: int) -> None:
    """Say how many consumer threads this process runs (before worker_id())."""
    _workers[0] = workers


def ran_one() -> None:
    """Count an attempt this process ran (the console's `processed`)."""
    with _lock:
        _ran[0] += 1


def _record_consumer(wid: str) -> None:
    """This consumer's row in `consumers`: made on the first beat, then refreshed."""
    table = consumers_table
    now = db.utcnow()
    seen = {"last_seen_at": now, "processed": _ran[0], "workers": _workers[0]}
    with db.begin() as conn:
        if conn.execute(update(table).where(table.c.id == wid).values(**seen)).rowcount:
            return
        conn.execute(insert(table).values(
            id=wid, host=socket.gethostname(), pid=os.getpid(),
            started_at=_state.get("started_at", now), **seen))


def beat_interval() -> float:
    """Seconds between two beats of a consumer."""
    return max(1.0, settings.worker_ttl / 3)


def beat() -> None:
    """Refresh this consumer's key and stamp the rows of its running jobs."""
    current = _state.get("id")
    if current is None:
        return  # stop() ran while this beat's thread woke up
    wid = str(current)
    if settings.redis_url:
        try:
            _redis().set(_worker_key(wid), "1", ex=settings.worker_ttl)
        except redis.RedisError as exc:
            log.warning("heartbeat not written to Redis: %s", exc)
    try:
        _record_consumer(wid)
    except Exception as exc:
        log.warning("heartbeat not recorded in the database: %s", exc)
    ids = list(running)
    if ids:
        try:
            with db.begin() as conn:
                conn.execute(
                    update(Job)
                    .where(Job.id.in_(ids), Job.worker_id == wid,
                           Job.status == JobStatus.PROCESSING.value)
                    .values(heartbeat_at=db.utcnow())
                )
        except Exception as exc:
            log.warning("heartbeat not stamped on jobs: %s", exc)


def _beat_forever(stop: threading.Event) -> None:
    while not stop.wait(beat_interval()):
        beat()


def is_alive(other_id: str | None) -> bool:
    """Whether the consumer `other_id` still beats (embedded: only this process does)."""
    if other_id is None:
        return False
    if _state.get("id") == other_id and _state.get("pid") == os.getpid():
        return True
    if not settings.redis_url:
        return False
    return bool(_redis().exists(_worker_key(other_id)))


def alive(worker_ids: set[str]) -> set[str]:
    """Those of the consumers `worker_ids` that still beat (one round trip for all)."""
    mine = {i for i in worker_ids if is_alive(i)} if not settings.redis_url else {
        i for i in worker_ids if _state.get("id") == i and _state.get("pid") == os.getpid()}
    others = sorted(worker_ids - mine)
    if not settings.redis_url or not others:
        return mine
    pipe = _redis().pipeline(transaction=False)
    for other_id in others:
        pipe.exists(_worker_key(other_id))
    return mine | {i for i, found in zip(others, pipe.execute(), strict=True) if found}


def stop() -> None:
    """Stop beating and remove the key, so that the reaper need not wait for the TTL."""
    with _lock:
        event = _state.get("stop")
        if isinstance(event, threading.Event):
            event.set()
        if settings.redis_url and "id" in _state:
            try:
                _redis().delete(_worker_key(str(_state["id"])))
            except redis.RedisError:
                pass
        if "id" in _state:
            # A consumer that stopped is gone, not silent: the console drops it.
            try:
                with db.begin() as conn:
                    table = consumers_table
                    conn.execute(delete(table).where(table.c.id == str(_state["id"])))
            except Exception as exc:
                log.warning("consumer row not removed: %s", exc)
        # The next worker_id() in this process starts a new identity and heartbeat.
        _state.clear()
        running.clear()
