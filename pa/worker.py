"""The consumer side: every task, the reaper, the interrupted-task handler, and the
consumer's factories: create_consumer() (run_consumer.py) and start_embedded() (a
consumer inside another process: run_web.py in embedded mode, the tests)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import redis
from huey.consumer import Consumer
from huey.signals import SIGNAL_INTERRUPTED
from sqlalchemy import delete, func, select

from pa import db, events, heartbeat, jobs, queue, retention, runner, runtime
from pa.events import key
from pa.models import FINAL_STATUSES, Job, JobStatus
from pa.queue import PaHuey, missing_from_queue
from pa.settings import Settings, settings
from pa.tasks import backup as backup_task

log = logging.getLogger(__name__)

__all__ = ["reap", "Maintenance", "EmbeddedConsumer", "create_consumer", "start_embedded"]

REAPER_LOCK = key("lock", "reaper")
PRUNE_LOCK = key("lock", "prune")
#: present while the last full check of pending jobs is recent (gone with a Redis
#: that restarted empty: then the next reaper run checks them all)
FULL_CHECK_KEY = key("reaper", "full-check")
#: seconds between checks of every pending job against the queue; the runs
#: between look only at jobs that outgrew the grace since the run before
FULL_CHECK_INTERVAL = 30
#: seconds between prunes of old finished jobs
PRUNE_INTERVAL = 3600


#: a consumer silent for this long leaves the operators' console
FORGET_SILENT = timedelta(hours=1)
#: seconds before an interrupted job may run again (see requeue_interrupted)
INTERRUPTED_REQUEUE_DELAY = 1.0


def _requeue(job_id: str, expect: dict[str, Any], error: str | None,
             delay: float | None = None) -> bool:
    values: dict[str, Any] = {"status": JobStatus.PENDING.value, "worker_id": None,
                              "run_after": None}
    if delay:
        # claim() ignores deliveries before run_after (e.g. a stray duplicate)
        values["run_after"] = db.utcnow() + timedelta(seconds=delay)
    if error is not None:
        values["error"] = error
    job = jobs.change(job_id, values, expect=expect)
    if job is None:
        return False
    jobs.enqueue(job_id, job["priority"], delay=delay)
    return True


def _release(job_id: str) -> None:
    """Send a job this consumer abandons back to the queue (if it still owns it)."""
    row = jobs.load_row(job_id)
    if row is None or row["status"] != JobStatus.PROCESSING.value:
        return
    if row["worker_id"] != heartbeat.worker_id():
        # A stale run (the reaper gave the job to another consumer meanwhile):
        # the job is not ours to send back.
        return
    # With a delay, not at once: this consumer's idle threads are still blocked
    # in BZPOPMIN while it shuts down, and one of them would claim the job and
    # die with the process. A delayed task is only moved to the schedule by
    # such a thread; a live consumer's scheduler runs it.
    if _requeue(job_id, {"status": JobStatus.PROCESSING.value,
                         "worker_id": row["worker_id"], "attempts": row["attempts"]}, None,
                delay=INTERRUPTED_REQUEUE_DELAY):
        log.warning("job %s interrupted; back in the queue", job_id)


def requeue_interrupted(signal: str, task: Any, *args: Any) -> None:
    """A task cut short by SIGTERM goes back to the queue (Huey itself drops it)."""
    _release(task.args[0] if task.args else task.id)


def release_running() -> None:
    """Send back every job this process still runs (its threads die with it)."""
    # Huey's in-flight set is not enough: it holds tasks by (id, eta), and the
    # task id is the job id, so a duplicate delivery of a job that finishes
    # while the job runs takes the running task out of it, and then no
    # SIGNAL_INTERRUPTED fires for it.
    for job_id in list(heartbeat.running):
        _release(job_id)


def _acquire_lock(name: str, ttl: int) -> bool:
    """Whether this consumer does the periodic work `name` now (once across consumers)."""
    if not settings.redis_url:
        return True  # embedded mode: one process
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        return bool(client.set(name, heartbeat.worker_id(), nx=True, ex=ttl))
    finally:
        client.close()


def _lost_pending(now: datetime, grace: float, interval: float) -> list[Any]:
    """Conditions for the pending jobs that the queue may have lost.

    A job queued and not yet read stays queued: one check, once it has waited
    the grace, finds a failed enqueue. Every FULL_CHECK_INTERVAL, and after Redis
    lost its data, every pending job is checked, for the rarer losses (a
    consumer killed between reading a job and claiming it, a commit that landed
    late). The grace covers a job between its commit and its enqueue.
    """
    c = Job.__table__.c
    since = func.coalesce(c.run_after, c.updated_at)
    conditions = [c.status == JobStatus.PENDING.value, since < now - timedelta(seconds=grace),
                  # (consumers drop a paused type's jobs; resuming it queues them again)
                  c.type.not_in(select(jobs.paused_table.c.type))]
    if not _acquire_lock(FULL_CHECK_KEY, FULL_CHECK_INTERVAL):
        # Two intervals wide: a run that comes late misses none.
        conditions.append(since >= now - timedelta(seconds=grace + 2 * interval))
    return conditions


def reap(*, pending_grace: float | None = None, lock: bool = True) -> dict[str, int]:
    """Recover jobs of dead consumers and pending jobs the queue has lost.

    With several consumers, one of them does it per interval (a Redis lock).
    """
    interval = settings.reaper_interval
    grace = interval if pending_grace is None else pending_grace
    counts = {"requeued": 0, "failed": 0, "reenqueued": 0, "republished": 0}
    if lock and not _acquire_lock(REAPER_LOCK, max(1, interval - 1)):
        return counts
    now = db.utcnow()
    forget_silent_consumers(now)
    counts["republished"] = republish_lost_ends(now)
    # A consumer is lost when its key has expired and its rows' stamps are older
    # than the key's TTL (a Redis that restarted empty forgot the keys of live
    # consumers, whose stamps are fresh), or when its stamps stopped long ago.
    stale_beat = now - timedelta(seconds=3 * settings.worker_ttl)
    quiet_beat = now - timedelta(seconds=settings.worker_ttl)
    table = Job.__table__
    with db.read() as conn:
        processing = conn.execute(
            select(table.c.id, table.c.worker_id, table.c.heartbeat_at, table.c.attempts,
                   table.c.retry_base, table.c.max_retries)
            .where(table.c.status == JobStatus.PROCESSING.value)
        ).all()
        stale_pending = conn.execute(
            select(table.c.id, table.c.priority).where(*_lost_pending(now, grace, interval))
        ).all()
    alive = heartbeat.alive({r.worker_id for r in processing if r.worker_id})
    for r in processing:
        beat = r.heartbeat_at
        if beat is not None and beat >= stale_beat and (
                r.worker_id in alive or beat >= quiet_beat):
            continue
        owner = {"status": JobStatus.PROCESSING.value, "worker_id": r.worker_id,
                 "attempts": r.attempts}
        lost = f"Worker lost while running attempt {r.attempts} ({r.worker_id})."
        if r.attempts - r.retry_base <= r.max_retries:
            if _requeue(r.id, owner, lost + " Retrying."):
                counts["requeued"] += 1
                log.warning("job %s: worker %s lost; requeued", r.id, r.worker_id)
        else:
            job = jobs.change(
                r.id,
                {"status": JobStatus.FAILED.value, "worker_id": None,
                 "completed_at": db.utcnow(), "error": lost + " No retries left."},
                expect=owner,
            )
            if job is not None:
                counts["failed"] += 1
                log.warning("job %s: worker %s lost; failed", r.id, r.worker_id)
    if stale_pending:
        # With a backlog these are many: Redis answers for them without the queue
        # being read (pa.queue.missing_from_queue).
        priorities = {p.id: p.priority for p in stale_pending}
        for job_id in missing_from_queue(queue.huey(), list(priorities)):
            if jobs.enqueue(job_id, priorities[job_id]):
                counts["reenqueued"] += 1
                log.warning("job %s was pending but not queued; enqueued again", job_id)
    return counts


#: present once the ends around a silent consumer's last beat were published again
LOST_ENDS_KEY = "lost-ends"
#: seconds around the window in which a silent consumer died, for clocks and commits
LOST_ENDS_MARGIN = 1.0


def republish_lost_ends(now: datetime) -> int:
    """Publish again the end of every job that ended around a silent consumer's death.

    A worker thread holds the event of a job's end until its next read of the queue
    (pa.events.hold, some milliseconds): a consumer killed meanwhile took the event
    with it, and a page would show the job running until it is loaded again. The
    consumer died between its last beat and the next one was due; a job's row no
    longer says who ended it, so every job that ended then is published again, once
    per consumer. Clients keep a job's highest version: a repeat changes nothing.
    """
    if not settings.redis_url:  # (embedded: the consumer dies with the web process)
        return 0
    table, jobs_table = heartbeat.consumers_table, Job.__table__
    with db.read() as conn:
        silent = conn.execute(select(table.c.id, table.c.last_seen_at).where(
            table.c.last_seen_at < now - timedelta(seconds=settings.worker_ttl),
            table.c.last_seen_at >= now - FORGET_SILENT)).all()
    if not silent:
        return 0
    alive = heartbeat.alive({c.id for c in silent})
    margin = timedelta(seconds=LOST_ENDS_MARGIN)
    beat = timedelta(seconds=heartbeat.beat_interval())
    count = 0
    for consumer in silent:
        if consumer.id in alive or not _acquire_lock(
                key(LOST_ENDS_KEY, consumer.id), int(FORGET_SILENT.total_seconds())):
            continue
        with db.read() as conn:
            ended = conn.execute(select(*jobs_table.c).where(
                jobs_table.c.status.in_([s.value for s in FINAL_STATUSES]),
                jobs_table.c.updated_at.between(consumer.last_seen_at - margin,
                                                consumer.last_seen_at + beat + margin),
            )).mappings().all()
        if ended:
            events.publish(*(events.job_event(jobs.job_to_dict(r)) for r in ended))
            count += len(ended)
            log.warning("consumer %s went silent: the ends of %d jobs around its last beat "
                        "published again", consumer.id, len(ended))
    return count


def forget_silent_consumers(now: datetime) -> None:
    """Drop the rows of consumers silent for an hour (killed, never to return)."""
    table = heartbeat.consumers_table
    with db.begin() as conn:
        conn.execute(delete(table).where(table.c.last_seen_at < now - FORGET_SILENT))


class Maintenance:
    """Heartbeat and reaper of one consumer process: at start, then every interval."""

    def __init__(self, interval: float | None = None, *, workers: int = 1) -> None:
        self.interval = float(interval or settings.reaper_interval)
        self.workers = workers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pa-reaper")

    def start(self) -> None:
        heartbeat.announce(self.workers)
        heartbeat.worker_id()
        self._thread.start()

    def _loop(self) -> None:
        last_prune = 0.0
        while True:
            try:
                reap()
            except Exception:
                log.exception("reaper failed; trying again in %.0f s", self.interval)
            if time.monotonic() - last_prune > PRUNE_INTERVAL:
                last_prune = time.monotonic()
                try:
                    if _acquire_lock(PRUNE_LOCK, PRUNE_INTERVAL):
                        retention.prune()
                except Exception:
                    log.exception("pruning old jobs failed")
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        release_running()
        heartbeat.stop()


_prepare_lock = threading.Lock()


def prepare(huey: PaHuey) -> PaHuey:
    """Make `huey` a consumer's: its jobs run here, with the periodic tasks and the
    interrupted-task handler declared (once per instance)."""
    # Huey's run_job calls the runner (which loads every task).
    queue.bind_executor(runner.execute)
    with _prepare_lock:
        if not getattr(huey, "pa_prepared", False):
            huey.pa_prepared = True
            huey.signal(SIGNAL_INTERRUPTED)(requeue_interrupted)
            backup_task.register_periodic(huey)
    return huey


def consumer_huey(config: Settings | None = None) -> PaHuey:
    """The consumer's Huey for `config` (else this process's settings), prepared."""
    if config is not None:
        runtime.configure(config)
    return prepare(queue.huey())


def create_consumer(config: Settings, **options: Any) -> Consumer:
    """A Huey consumer of pa's queue for `config` (huey_consumer's options)."""
    return consumer_huey(config).create_consumer(**options)


#: seconds an embedded consumer's thread waits on a Redis queue before it looks whether
#: it should stop (Huey's default is 1 s): stopping the host process waits that long
EMBEDDED_READ_TIMEOUT = 0.1


class EmbeddedConsumer(Consumer):
    """A Huey consumer that leaves signals to its host process (uvicorn, pytest)."""

    def _set_signal_handlers(self) -> None:
        pass


def start_embedded(workers: int = 2, config: Settings | None = None,
                   **options: Any) -> tuple[EmbeddedConsumer, Maintenance]:
    """Start consumer threads and maintenance in this process (for `config`, else
    this process's settings)."""
    options.setdefault("initial_delay", 0.05)
    options.setdefault("max_delay", 1.0)
    huey = consumer_huey(config)
    if isinstance(huey.storage, queue.EventCarryingStorage):
        huey.storage.read_timeout = EMBEDDED_READ_TIMEOUT
    consumer = EmbeddedConsumer(huey, workers=workers, worker_type="thread", **options)
    maintenance = Maintenance(workers=workers)
    maintenance.start()
    consumer.start()
    return consumer, maintenance


def stop_embedded(consumer: EmbeddedConsumer, maintenance: Maintenance) -> None:
    """Drain running tasks, then stop the threads."""
    consumer.stop(graceful=True)
    consumer.huey.notify_interrupted_tasks()
    maintenance.stop()
    events.flush()
