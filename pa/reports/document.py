"""The report's HTML: a front document (cover, department summaries) and review chunks.

Templates live in templates/reports/ and are autoescaped: every piece of user
text (names, departments, goals, comments) is escaped before WeasyPrint sees it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from pa import charts
from pa.reports.data import ReportData, ReviewRow, is_final

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates" / "reports"

STATUS_LABELS = {
    "draft": "Draft",
    "self_review": "Self review",
    "manager_review": "Manager review",
    "submitted_to_hr": "Submitted to HR",
    "completed": "Completed",
    "archived": "Archived",
}

#: a chunk never holds more reviews than this (WeasyPrint's cost grows faster than
#: the document, and a chunk's memory is one worker's peak)
MAX_CHUNK = 100
#: nor fewer than this, unless the report is smaller (each chunk costs a fixed start-up)
MIN_CHUNK = 10


def _rating(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}".rstrip("0").rstrip(".")


def _status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status.replace("_", " ").capitalize())


def make_environment(*extra_dirs: Path) -> Environment:
    """The Jinja2 environment of the report templates (autoescaped, strict)."""
    env = Environment(
        loader=FileSystemLoader([*map(str, extra_dirs), str(TEMPLATES)]),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["rating"] = _rating
    env.filters["status_label"] = _status_label
    env.filters["is_final"] = is_final
    return env


environment = make_environment()


def title(data: ReportData) -> str:
    """The running header: "Performance reviews FY2025 · Engineering"."""
    return f"Performance reviews FY{data.fiscal_year} · {data.department or 'All departments'}"


def front_context(data: ReportData) -> dict[str, object]:
    """What front.html needs: the data and its charts (SVG, labels escaped by `charts`)."""
    averages = [(d.name, d.average) for d in data.departments]
    return {
        "title": title(data),
        "data": data,
        "filter_label": f"Department: {data.department}" if data.department
        else "All departments",
        "distribution_chart": Markup(charts.rating_distribution_chart(
            data.total.distribution, title="Final overall ratings", width=420, height=220)),
        "averages_chart": Markup(charts.horizontal_bar_chart(
            averages, title="Average final rating by department", max_value=5)),
        "department_charts": [
            (d, Markup(charts.rating_distribution_chart(
                d.distribution, title="Final overall ratings", width=250, height=150)))
            for d in data.departments
        ],
    }


def front_html(data: ReportData) -> str:
    """The cover and the department summaries, as one HTML document."""
    return environment.get_template("front.html").render(front_context(data))


@dataclass(frozen=True)
class Group:
    name: str
    continued: bool
    reviews: list[ReviewRow]


def chunk_size(reviews: int, workers: int) -> int:
    """Reviews per chunk: about four chunks per worker, within MIN_CHUNK..MAX_CHUNK."""
    return max(MIN_CHUNK, min(MAX_CHUNK, math.ceil(reviews / max(1, 4 * workers))))


def plan_chunks(reviews: Sequence[ReviewRow], size: int) -> list[list[ReviewRow]]:
    """Cut the reviews into chunks of at most `size`, preferably where a department ends.

    Each department starts on a new page anyway, so a cut there costs nothing; a
    department larger than `size` is split into near-equal parts.
    """
    pieces: list[list[ReviewRow]] = []
    for _, group in groupby(reviews, key=lambda r: r.department):
        rows = list(group)
        per = math.ceil(len(rows) / math.ceil(len(rows) / size))
        pieces.extend(rows[i:i + per] for i in range(0, len(rows), per))
    chunks: list[list[ReviewRow]] = []
    current: list[ReviewRow] = []
    for piece in pieces:
        if current and len(current) + len(piece) > size:
            chunks.append(current)
            current = []
        current.extend(piece)
    if current:
        chunks.append(current)
    return chunks


def reviews_html(data: ReportData, chunk: Sequence[ReviewRow]) -> str:
    """One chunk of review sections, grouped under their department's heading."""
    first_of_department: dict[str, int] = {}
    for r in data.reviews:
        first_of_department.setdefault(r.department, r.id)
    groups = []
    for name, rows in groupby(chunk, key=lambda r: r.department):
        items = list(rows)
        groups.append(Group(name, first_of_department.get(name) != items[0].id, items))
    return environment.get_template("reviews.html").render(title=title(data), groups=groups)
