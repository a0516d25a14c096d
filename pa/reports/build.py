"""One report from start to file: gather, render the chunks in parallel, join, write."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pa.reports import document, join, render
from pa.reports.data import gather

#: a report gets a further worker process for every this many reviews (up to the CPUs)
REVIEWS_PER_WORKER = 100
#: progress(current, total, message, force): total is None while it is not known yet
Progress = Callable[[int, int | None, str, bool], None]


@dataclass(frozen=True)
class ReportResult:
    reviews: int
    pages: int
    bytes: int

    def to_dict(self) -> dict[str, int]:
        return {"reviews": self.reviews, "pages": self.pages, "bytes": self.bytes}


def _no_progress(current: int, total: int | None, message: str, force: bool) -> None:
    pass


def _no_check() -> None:
    pass


def build_report(
    fiscal_year: int,
    department: str | None,
    dest: Path,
    *,
    progress: Progress = _no_progress,
    check: Callable[[], None] = _no_check,
    workers: int | None = None,
) -> ReportResult:
    """Write the report for `fiscal_year` (and `department`) to `dest`, atomically.

    Progress goes through three phases: "Gathering", "Rendering" (counted in
    reviews), "Writing"; its total is reviews + 1, the last step being the write.
    `check()` is called often and may raise to stop: then no file is left behind.
    """
    progress(0, None, "Gathering reviews", True)
    data = gather(fiscal_year, department)
    count = len(data.reviews)
    total = count + 1
    # A worker process costs about a second to start (Python, WeasyPrint): a small
    # report is not worth a second one.
    workers = max(1, min(workers or render.default_workers(),
                         math.ceil(count / REVIEWS_PER_WORKER)))
    chunks = document.plan_chunks(data.reviews, document.chunk_size(count, workers))
    htmls = [document.front_html(data)]
    htmls.extend(document.reviews_html(data, chunk) for chunk in chunks)
    # Chunk 0 is the front (cover and summaries); chunk i > 0 holds chunks[i - 1].
    sizes = [0, *map(len, chunks)]
    rendered = 0
    progress(0, total, f"Rendering: 0 of {count} reviews", True)

    def on_done(index: int) -> None:
        nonlocal rendered
        rendered += sizes[index]
        progress(rendered, total, f"Rendering: {rendered} of {count} reviews", False)

    pdfs = render.render_chunks(htmls, workers=workers, on_done=on_done, check=check)
    pages = sum(p.pages for p in pdfs)
    progress(count, total, f"Writing the PDF ({pages} pages)", True)
    check()
    pdf = join.join([p.pdf for p in pdfs], title=document.title(data),
                    created=data.generated_at)
    write_atomically(dest, pdf, check)
    return ReportResult(reviews=count, pages=pages, bytes=len(pdf))


def write_atomically(dest: Path, content: bytes, check: Callable[[], None] = _no_check) -> None:
    """Write `dest` through a temporary file: a crash never leaves a half-written `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        # The last chance to stop: once replaced, the file is the report.
        check()
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_leftovers(folder: Path) -> None:
    """Delete the temporary files that an interrupted earlier run left in `folder`."""
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)
