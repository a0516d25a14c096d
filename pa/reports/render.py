"""HTML → PDF with WeasyPrint, chunk by chunk, in worker processes.

WeasyPrint's time and memory grow faster than the document, and its layout holds
the GIL, so each chunk is its own small document rendered in a separate process.
Only strings and bytes cross the process boundary (WeasyPrint's Document objects
cannot be pickled); `pa.reports.join` puts the chunk PDFs together.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: worker processes for one report at most (each holds one chunk: ~100–150 MB)
MAX_WORKERS = 4
#: seconds between two cancellation checks while chunks render
POLL = 0.25


@dataclass(frozen=True)
class RenderedChunk:
    pdf: bytes
    pages: int


def _refuse_fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    # The templates need no file or URL; refusing all makes sure that nothing in
    # a review can make WeasyPrint read a local file or call out.
    raise ValueError(f"report documents load no resources ({url[:60]})")


def render_chunk(html: str) -> RenderedChunk:
    """One HTML document → PDF bytes and its page count (runs in a worker process)."""
    # Imported here: the consumer process that hands out chunks never loads WeasyPrint.
    from weasyprint import HTML

    document = HTML(string=html, url_fetcher=_refuse_fetch).render()
    return RenderedChunk(document.write_pdf(), len(document.pages))


def default_workers() -> int:
    """Worker processes for one report: the CPUs this process may use, at most MAX_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


def can_fork_workers() -> bool:
    """False inside a daemonic process (Huey's process workers), which may have no children."""
    return not multiprocessing.current_process().daemon


def render_chunks(
    htmls: Sequence[str],
    *,
    workers: int,
    on_done: Callable[[int], None],
    check: Callable[[], None],
) -> list[RenderedChunk]:
    """Render every document, `workers` at a time; results in the order of `htmls`.

    `on_done(i)` runs as chunk i finishes; `check()` runs at least every POLL
    seconds and may raise to stop: the workers are then killed at once.
    """
    if not can_fork_workers():
        return _render_here(htmls, on_done, check)
    # Even a one-chunk report renders in a worker process: WeasyPrint stays out of the
    # consumer, whose other threads would otherwise wait on the GIL while it lays out.
    executor = _executor(max(1, min(workers, len(htmls))))
    finished = False
    try:
        futures: dict[Future[RenderedChunk], int] = {
            executor.submit(render_chunk, html): i for i, html in enumerate(htmls)
        }
        results: list[RenderedChunk | None] = [None] * len(htmls)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL, return_when=FIRST_COMPLETED)
            for future in done:
                index = futures[future]
                results[index] = future.result()
                on_done(index)
            check()
        finished = True
        return [r for r in results if r is not None]
    finally:
        if finished:
            executor.shutdown(wait=True)
        else:
            _kill(executor)


def _executor(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the consumer has threads (Huey workers, Redis, the database
    # pool) whose locks a forked child would inherit in whatever state they were in.
    return ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_die_with, initargs=(os.getpid(),))


def _die_with(parent: int) -> None:
    """In each worker: be killed when the consumer dies, however it dies. A consumer
    SIGKILLed mid-report used to leave its workers behind, ~90 MB each, for good
    (bench/chaos.py)."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died before that was set
        os._exit(1)


def _render_here(
    htmls: Sequence[str], on_done: Callable[[int], None], check: Callable[[], None]
) -> list[RenderedChunk]:
    results = []
    for index, html in enumerate(htmls):
        check()
        results.append(render_chunk(html))
        on_done(index)
    return results


def _kill(executor: ProcessPoolExecutor) -> None:
    """Stop at once: drop queued chunks and kill the processes rendering the others."""
    # ProcessPoolExecutor has no public way to stop a running call before Python
    # 3.14 (terminate_workers); without this a cancelled job would keep both CPUs
    # busy until its current chunks were done.
    processes = list(getattr(executor, "_processes", {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
