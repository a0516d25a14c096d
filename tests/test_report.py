"""generate_report: the route, the job through real consumer threads, the PDF's text
(pdftotext), progress, cancellation, a rerun after a crash; and the SVG charts."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import insert, select
from starlette.testclient import TestClient

from pa import charts, db, events, jobs
from pa.auth_passwords import new_token
from pa.models import ApiToken, Job, Review, ReviewStatus, Role, User
from pa.queue import JobType
from pa.reports import document
from pa.reports.data import NO_DEPARTMENT, ReviewRow, file_name, slug
from pa.settings import settings
from tests.factories import make_review, make_user
from tests.services import job_now, wait_final, wait_for
from tests.web_fixtures import app_client

YEAR = 2025
SVG = "{http://www.w3.org/2000/svg}"
NASTY = 'Watch <script>alert("x")</script> & keep <b>calm</b> & "carry on"'


# ------------------------------------------------------------------ helpers

@pytest.fixture
def client() -> Iterator[TestClient]:
    with app_client() as c:
        yield c


def bearer(user: User) -> dict[str, str]:
    token, token_hash = new_token()
    with db.session_scope() as session:
        session.add(ApiToken(user_id=user.id, token_hash=token_hash, created_at=db.utcnow()))
    return {"Authorization": f"Bearer {token}"}


def pdf_text(path: Path) -> str:
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], check=True,
                         capture_output=True, timeout=60)
    return out.stdout.decode()


def company(per_department: int, departments: tuple[str, ...] = ("Engineering", "Sales"),
            *, year: int = YEAR, words: int = 12) -> list[int]:
    """`per_department` employees with a review each in every department, in bulk."""
    now = db.utcnow()
    text = " ".join(f"word{i}" for i in range(words))
    with db.begin() as conn:
        ids: list[int] = []
        for d, department in enumerate(departments):
            manager = conn.execute(insert(User).returning(User.id).values(
                email=f"boss{d}-{year}@example.com", name=f"Boss {department}",
                role=Role.MANAGER.value, department=department, created_at=now,
                updated_at=now)).scalar_one()
            rows = conn.execute(insert(User).returning(User.id), [
                {"email": f"e{d}-{i}-{year}@example.com", "name": f"Person {d}-{i:03d}",
                 "role": Role.EMPLOYEE.value, "department": department,
                 "manager_id": manager, "created_at": now, "updated_at": now}
                for i in range(per_department)
            ]).scalars().all()
            conn.execute(insert(Review), [
                {"employee_id": e, "manager_id": manager, "department": department,
                 "fiscal_year": year, "status": ReviewStatus.COMPLETED.value,
                 "ratings": {"Delivery": 1 + i % 5, "Collaboration": 5 - i % 5},
                 "overall_rating": 1 + i % 5, "goals": f"Goals of {e}. {text}",
                 "manager_comments": f"Comments on {e}. {text}", "updated_at": now}
                for i, e in enumerate(rows)
            ])
            ids.extend(rows)
    return ids


class JobEvents:
    """Every event published on the Redis channel for one job, collected in a thread."""

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(settings.redis_url or "")
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(events.JOBS_CHANNEL)
        self.messages: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            msg = self.pubsub.get_message(timeout=0.1)
            if msg is not None:
                self.messages.append(json.loads(msg["data"])["data"])

    def of(self, job_id: str) -> list[dict[str, Any]]:
        return sorted((m for m in self.messages if m["id"] == job_id),
                      key=lambda m: m["version"])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def job_events() -> Iterator[JobEvents]:
    collector = JobEvents()
    yield collector
    collector.close()


def render_workers() -> list[int]:
    """Pids of this process's children that are multiprocessing (spawn) workers."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in children:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"spawn_main" in f.read():
                        pids.append(pid)
            except OSError:
                pass
    return pids


# ------------------------------------------------------------------ the job, end to end

def test_report_job_writes_the_pdf_with_cover_summaries_reviews_and_page_footers(
        consumer, client, job_events):
    # Given: two departments, one review with HTML in its text and a name to escape
    hr = make_user(Role.HR_ADMIN)
    company(14)
    boss = make_user(Role.MANAGER, name="Mo & <Co>", department="R&D <Labs>")
    nasty = make_user(Role.EMPLOYEE, name="Zoë <Tag> & Sons", manager_id=boss.id,
                      department="R&D <Labs>")
    make_review(nasty, fiscal_year=YEAR, status=ReviewStatus.COMPLETED, overall_rating=4.5,
                manager_comments=NASTY, goals="Line one\nLine two & <more>")
    elsewhen = make_user(department="Sales", name="Only Last Year")
    make_review(elsewhen, fiscal_year=YEAR - 1)
    # When
    r = client.post("/api/reports", json={"fiscalYear": YEAR}, headers=bearer(hr))
    # Then
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["success"] is True and body["jobId"] == body["data"]["id"]
    assert body["data"]["type"] == "generate_report" and body["data"]["status"] == "pending"
    done = wait_final(body["jobId"])
    assert done["status"] == "completed", done
    result = done["result"]
    assert result["reviews"] == 29 and result["pages"] >= 4

    _, relative = jobs.result_file(done["id"], hr.id, Role.HR_ADMIN)
    assert relative == f"reports/{done['id']}/pa-report-FY{YEAR}.pdf"
    path = settings.data_dir / relative
    assert path.read_bytes().startswith(b"%PDF-") and path.stat().st_size == result["bytes"]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]

    text = pdf_text(path)
    assert f"Review report FY{YEAR}" in text and "All departments" in text
    assert "Departments" in text and "Average final rating by department" in text
    for name in ("Engineering", "Sales", "R&D <Labs>", "Person 0-000", "Person 1-013",
                 "Zoë <Tag> & Sons", "Mo & <Co>", "Line two & <more>", "Boss Sales"):
        assert name in text, name
    # Escaped, not interpreted: the markup is there as text
    flat = " ".join(text.split())
    assert 'Watch <script>alert("x")</script> & keep <b>calm</b> & "carry on"' in flat
    pages = result["pages"]
    assert "Page 1 of" in text and f"Page {pages} of {pages}" in text
    assert f"Page {pages + 1} of" not in text
    assert "Only Last Year" not in text  # other years' reviews are left out

    # The owner downloads it under its name; no one else sees it
    dl = client.get(f"/api/jobs/{done['id']}/download", headers=bearer(hr))
    assert dl.status_code == 200
    assert dl.headers["content-type"].startswith("application/pdf")
    assert f"pa-report-FY{YEAR}.pdf" in dl.headers["content-disposition"]
    assert dl.content == path.read_bytes()
    other = client.get(f"/api/jobs/{done['id']}/download",
                       headers=bearer(make_user(Role.HR_ADMIN)))
    assert other.status_code == 404

    # Progress went through the phases, in order, and never backwards
    seen = wait_for(lambda: (es := job_events.of(done["id"])) and
                    es[-1]["status"] == "completed" and es, message="the completed event")
    messages = [e["progress"]["message"] for e in seen if e["progress"]]
    phases = [next(p for p in ("Gathering", "Rendering", "Writing") if m.startswith(p))
              for m in messages if m]
    assert phases[0] == "Gathering" and "Rendering" in phases and phases[-1] == "Writing"
    assert phases == sorted(phases, key=["Gathering", "Rendering", "Writing"].index)
    currents = [e["progress"]["current"] for e in seen if e["progress"]]
    assert currents == sorted(currents)
    assert seen[-1]["progress"]["current"] == seen[-1]["progress"]["total"] == 30
    assert not render_workers()  # the pool is gone with the job


def test_department_filter_names_the_file_and_keeps_only_that_department(consumer, client):
    hr = make_user(Role.ADMIN)
    company(3, ("Engineering", "R&D <Labs>"))
    r = client.post("/api/reports", json={"fiscalYear": YEAR, "department": " r&d <labs> "},
                    headers=bearer(hr))
    assert r.status_code == 202, r.text
    assert "R&D <Labs>" in r.json()["message"]
    done = wait_final(r.json()["jobId"])
    assert done["status"] == "completed", done
    assert done["result"]["reviews"] == 3
    _, relative = jobs.result_file(done["id"], hr.id, Role.ADMIN)
    assert relative.endswith("/pa-report-FY2025-R-D-Labs.pdf")
    text = pdf_text(settings.data_dir / relative)
    assert "Department: R&D <Labs>" in text and "Person 1-002" in text
    assert "Person 0-000" not in text and "Engineering" not in text


def test_a_year_without_reviews_at_run_time_gives_a_cover_only_report(consumer):
    # The route refuses such a year; a job may still meet one (reviews deleted since).
    hr = make_user(Role.HR_ADMIN)
    job = jobs.submit(JobType.GENERATE_REPORT, {"fiscalYear": 2011}, hr.id)
    done = wait_final(job["id"])
    assert done["status"] == "completed", done
    assert done["result"]["reviews"] == 0
    _, relative = jobs.result_file(done["id"], hr.id, Role.HR_ADMIN)
    assert "No reviews for FY2011" in pdf_text(settings.data_dir / relative)


def test_a_malformed_payload_fails_at_once_without_retries(consumer):
    hr = make_user(Role.HR_ADMIN)
    job = jobs.submit(JobType.GENERATE_REPORT, {"fiscalYear": "2025"}, hr.id)
    done = wait_final(job["id"])
    assert done["status"] == "failed" and done["attempts"] == 1
    assert "fiscalYear must be a whole number" in done["error"]


def test_cancelling_while_rendering_stops_the_workers_and_leaves_no_file(consumer):
    # Given: enough reviews for several chunks and a few seconds of rendering
    hr = make_user(Role.HR_ADMIN)
    company(75, words=120)
    job = jobs.submit(JobType.GENERATE_REPORT, {"fiscalYear": YEAR}, hr.id)
    wait_for(lambda: (job_now(job["id"])["progress"] or {}).get("message", "")
             .startswith("Rendering"), timeout=60, interval=0.02, message="rendering")
    # When
    jobs.cancel(job["id"], hr.id, Role.HR_ADMIN)
    # Then
    done = wait_final(job["id"])
    assert done["status"] == "cancelled", done
    assert done["result"] is None and done["downloadUrl"] is None
    folder = settings.data_dir / "reports" / job["id"]
    assert not folder.exists() or list(folder.iterdir()) == []
    wait_for(lambda: not render_workers(), timeout=10, message="render workers to exit")


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie nobody reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_render_workers_die_with_the_consumer_that_started_them() -> None:
    # Given: a process with the report renderer's workers started, as a consumer has
    # while a report renders
    import signal
    import sys

    script = ("import os, time\n"
              "from pa.reports import render\n"
              "pool = render._executor(2)\n"
              "print(pool.submit(os.getpid).result(), flush=True)\n"
              "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert _running(worker)
        # When: it is killed without a chance to clean up
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        # Then: its workers do not outlive it
        wait_for(lambda: not _running(worker), timeout=10,
                 message=f"render worker {worker} to die with its parent")
    finally:
        parent.kill()


def test_a_second_run_after_a_crash_replaces_what_the_first_left(consumer):
    # Given: a job whose earlier run died mid-write, leaving a temporary file and a
    # stale file under the final name
    hr = make_user(Role.HR_ADMIN)
    company(4)
    with db.begin() as conn:
        job = jobs.create(conn, JobType.GENERATE_REPORT, {"fiscalYear": YEAR}, hr.id)
    folder = settings.data_dir / "reports" / job["id"]
    folder.mkdir(parents=True)
    (folder / f"pa-report-FY{YEAR}.pdf").write_bytes(b"%PDF-1.7 half of a file")
    (folder / f".pa-report-FY{YEAR}.pdf.0123abcd.tmp").write_bytes(b"%PDF-1.7 half")
    # When
    jobs.dispatch(job)
    # Then
    done = wait_final(job["id"])
    assert done["status"] == "completed", done
    assert [p.name for p in folder.iterdir()] == [f"pa-report-FY{YEAR}.pdf"]
    path = folder / f"pa-report-FY{YEAR}.pdf"
    assert path.stat().st_size == done["result"]["bytes"]
    assert f"Page {done['result']['pages']} of {done['result']['pages']}" in pdf_text(path)


# ------------------------------------------------------------------ the route

def test_only_hr_admins_and_admins_may_ask_for_reports(client):
    company(1)
    for role in (Role.EMPLOYEE, Role.MANAGER):
        headers = bearer(make_user(role))
        r = client.post("/api/reports", json={"fiscalYear": YEAR}, headers=headers)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
        assert client.get("/api/reports", headers=headers).status_code == 403
    assert client.post("/api/reports", json={"fiscalYear": YEAR}).status_code == 401
    with db.read() as conn:
        assert conn.execute(select(Job.id)).all() == []
    for role in (Role.HR_ADMIN, Role.ADMIN):
        r = client.post("/api/reports", json={"fiscalYear": YEAR},
                        headers=bearer(make_user(role)))
        assert r.status_code == 202, r.text


@pytest.mark.parametrize(("body", "status", "field"), [
    ([2025], 400, None),
    ({}, 400, "fiscalYear"),
    ({"fiscalYear": "2025"}, 400, "fiscalYear"),
    ({"fiscalYear": 2025.0}, 400, "fiscalYear"),
    ({"fiscalYear": True}, 400, "fiscalYear"),
    ({"fiscalYear": 1999}, 422, "fiscalYear"),
    ({"fiscalYear": 3000}, 422, "fiscalYear"),
    ({"fiscalYear": 2024}, 422, "fiscalYear"),  # no reviews that year
    ({"fiscalYear": YEAR, "department": ""}, 422, "department"),
    ({"fiscalYear": YEAR, "department": "   "}, 422, "department"),
    ({"fiscalYear": YEAR, "department": 7}, 400, "department"),
    ({"fiscalYear": YEAR, "department": "x" * 101}, 422, "department"),
    ({"fiscalYear": YEAR, "department": "Marketing"}, 422, "department"),
])
def test_bad_input_gets_the_error_envelope_and_no_job(client, body, status, field):
    company(1)
    r = client.post("/api/reports", json=body, headers=bearer(make_user(Role.HR_ADMIN)))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert r.json()["success"] is False and error["code"] == "invalid"
    assert error.get("field") == field and error["message"]
    with db.read() as conn:
        assert conn.execute(select(Job.id)).all() == []


def test_asking_twice_while_the_first_is_pending_gives_the_same_job(client):
    company(1)
    headers = bearer(make_user(Role.HR_ADMIN))
    first = client.post("/api/reports", json={"fiscalYear": YEAR}, headers=headers).json()
    again = client.post("/api/reports", json={"fiscalYear": YEAR}, headers=headers).json()
    other = client.post("/api/reports", json={"fiscalYear": YEAR, "department": "Sales"},
                        headers=headers).json()
    assert again["jobId"] == first["jobId"] and "already" in again["message"]
    assert other["jobId"] != first["jobId"]
    listed = client.get("/api/reports", headers=headers).json()["data"]
    assert [j["id"] for j in listed] == [other["jobId"], first["jobId"]]
    assert client.get("/api/reports", headers=bearer(make_user(Role.HR_ADMIN))).json()[
        "data"] == []


def test_departments_of_a_year_for_the_form(client):
    company(2, ("Sales", "Engineering"))
    headers = bearer(make_user(Role.HR_ADMIN))
    r = client.get(f"/api/reports/departments?fiscalYear={YEAR}", headers=headers)
    assert r.json()["data"] == [{"name": "Engineering", "reviews": 2},
                                {"name": "Sales", "reviews": 2}]
    assert client.get("/api/reports/departments", headers=headers).status_code == 400


# ------------------------------------------------------------------ pieces

def test_department_names_become_safe_file_names():
    assert slug("R&D <Labs>") == "R-D-Labs"
    assert slug("Ünïcødé Team") == "Unicde-Team"
    assert slug("../../etc/passwd") == "etc-passwd"
    assert slug("!!!") == slug("") == "department"
    assert len(slug("x" * 500)) == 60
    assert file_name(2025, None) == "pa-report-FY2025.pdf"
    assert file_name(2025, "Sales & Ops") == "pa-report-FY2025-Sales-Ops.pdf"


def _row(i: int, department: str) -> ReviewRow:
    return ReviewRow(i, f"P{i}", f"p{i}@x", None, department, "completed", [], 3.0, "", "", None)


def test_chunks_are_cut_at_department_ends_when_they_can_be():
    rows = ([_row(i, "A") for i in range(25)] + [_row(100 + i, "B") for i in range(4)]
            + [_row(200 + i, NO_DEPARTMENT) for i in range(3)])
    chunks = document.plan_chunks(rows, 10)
    assert [r.id for c in chunks for r in c] == [r.id for r in rows]
    assert [len(c) for c in chunks] == [9, 9, 7, 7]  # A in three parts, then B + rest
    assert all(len(c) <= 10 for c in chunks)
    assert document.chunk_size(1000, 2) == document.MAX_CHUNK
    assert document.chunk_size(30, 2) == document.MIN_CHUNK


# ------------------------------------------------------------------ charts

def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def bars(root: ET.Element) -> list[ET.Element]:
    return [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]


def test_bar_chart_is_valid_svg_with_one_bar_per_value_and_escaped_labels():
    root = parse(charts.bar_chart([("R&D <x>", 3), ('"Q"', 0), ("Ops", 7.5)],
                                  title="Heads & <tails>"))
    assert len(bars(root)) == 3
    assert all(b.get("fill") for b in bars(root))
    assert "R&D <x>" in texts(root) and '"Q"' in texts(root) and "7.5" in texts(root)
    assert root.find(f"{SVG}title").text == "Heads & <tails>"  # type: ignore[union-attr]
    assert root.get("aria-label") == "Heads & <tails>"
    heights = [float(b.get("height", "0")) for b in bars(root)]
    assert heights[1] == 0 and heights[2] > heights[0] > 0


def test_rating_distribution_has_five_bars_with_their_counts():
    root = parse(charts.rating_distribution_chart({1: 2, 3: 5, 5: 1}))
    assert len(bars(root)) == 5
    labels = texts(root)
    assert all(str(r) in labels for r in range(1, 6))
    assert labels.count("0") >= 2 and "5" in labels and "2" in labels


def test_horizontal_bars_skip_missing_values():
    root = parse(charts.horizontal_bar_chart(
        [("Eng <1>", 4.25), ("Sales & Co", None), ("Ops", 2.0)], title="Averages",
        max_value=5))
    assert len(bars(root)) == 2
    assert {"Eng <1>", "Sales & Co", "n/a", "4.25", "2.00"} <= set(texts(root))
    widths = [float(b.get("width", "0")) for b in bars(root)]
    assert widths[0] == pytest.approx(widths[1] * 4.25 / 2.0)


def test_line_chart_draws_each_series_and_breaks_lines_at_gaps():
    root = parse(charts.line_chart(
        {"Eng & Ops": [(2021, 3.1), (2022, 3.4), (2023, None), (2024, 3.9), (2025, 4.0)],
         "<Sales>": [(2021, 2.5), (2022, 2.9)]},
        title="Average rating per year", y_min=1, y_max=5))
    lines = [p for p in root.iter(f"{SVG}polyline")]
    assert len(lines) == 3  # Eng: two runs around the gap; Sales: one
    assert all(p.get("stroke") and p.get("fill") == "none" for p in lines)
    labels = texts(root)
    assert "Eng & Ops" in labels and "<Sales>" in labels and "2021" in labels
    assert len(list(root.iter(f"{SVG}circle"))) == 6


def test_charts_without_data_say_so():
    for svg in (charts.bar_chart([], title="t"), charts.line_chart({}, title="t"),
                charts.horizontal_bar_chart([], title="t"),
                charts.line_chart({"a": [(2020, None)]}, title="t")):
        assert charts.EMPTY in texts(parse(svg))
