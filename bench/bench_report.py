"""generate_report: the plain single-document rendering vs pa's chunked, parallel one.

    .venv/bin/python bench/bench_report.py [--reviews 1000] [--workers N] [--keep]

Builds the reviews in a temporary SQLite database, then runs each variant in a
fresh child process (so that one's memory does not count for the other) and
samples the resident memory of the child and of all its descendants together
(and counts their CPU time: on a machine that other work keeps busy, wall-clock time
says little about a parallel variant, CPU time still compares the work done):
  plain      one WeasyPrint document, one table per review, CSS page counters
             (the baseline)
  light      pa's block layout of a review, but still one document in one process
             (what the layout alone gains)
  optimized  pa.reports.build.build_report: block layout, chunks rendered by a
             pool of worker processes, joined and page-stamped with pypdf
Both read the same data through pa.reports.data.gather and write a PDF file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("plain", "light", "optimized")
YEAR = 2025
DEPARTMENTS = ("Engineering", "Sales", "Marketing", "Finance", "Operations", "Support",
               "R&D <Labs>", "People & Culture")
CATEGORIES = ("Delivery", "Collaboration", "Quality", "Ownership", "Growth")
WORDS = ("delivery quality teamwork customer planning ownership growth feedback roadmap "
         "mentoring reliability budget stakeholder release incident design review testing "
         "documentation hiring onboarding metrics automation platform migration security "
         "on-call latency pricing renewals forecast pipeline accuracy audit").split()


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."


def _paragraphs(rng: random.Random, low: int, high: int) -> str:
    text = " ".join(_sentence(rng) for _ in range(rng.randint(low, high)))
    if rng.random() < 0.3:
        text += "\n" + _sentence(rng) + " (R&D <follow-up> \"next year\")"
    return text


def seed(reviews: int) -> None:
    """`reviews` employees with one review each in YEAR, 40 managers, 8 departments."""
    from sqlalchemy import insert

    from pa import db
    from pa.models import Base, Review, ReviewStatus, Role, User

    Base.metadata.create_all(db.engine())
    rng = random.Random(20261129)
    now = db.utcnow()
    statuses = [s.value for s in ReviewStatus if s is not ReviewStatus.ARCHIVED]
    with db.begin() as conn:
        managers = conn.execute(insert(User).returning(User.id), [
            {"email": f"manager{i}@example.com", "name": f"Manager {i:02d}",
             "role": Role.MANAGER.value, "department": DEPARTMENTS[i % len(DEPARTMENTS)],
             "created_at": now, "updated_at": now}
            for i in range(40)
        ]).scalars().all()
        employees = conn.execute(insert(User).returning(User.id, User.manager_id,
                                                        User.department), [
            {"email": f"employee{i}@example.com",
             "name": f"{rng.choice(['Ada', 'Ben', 'Chloé', 'Dev', 'Eve'])} Person{i:04d}",
             "role": Role.EMPLOYEE.value, "department": DEPARTMENTS[i % len(DEPARTMENTS)],
             "manager_id": managers[i % len(managers)], "created_at": now, "updated_at": now}
            for i in range(reviews)
        ]).all()
        conn.execute(insert(Review), [
            {"employee_id": e.id, "manager_id": e.manager_id, "department": e.department,
             "fiscal_year": YEAR, "status": rng.choice(statuses),
             "ratings": {c: rng.randint(1, 5) for c in CATEGORIES},
             "overall_rating": round(rng.uniform(1, 5), 1) if rng.random() > 0.05 else None,
             "goals": _paragraphs(rng, 2, 4), "manager_comments": _paragraphs(rng, 3, 6),
             "submitted_at": now, "updated_at": now}
            for e in employees
        ])


def run_single(dest: Path, template: str) -> dict[str, float]:
    """One document in this process: `baseline_report.html` (a table per review, the
    way to beat) or `light_report.html`."""
    from weasyprint import HTML  # imported before the clock starts, as in a warm consumer

    from pa.reports import document
    from pa.reports.build import write_atomically
    from pa.reports.data import gather

    start = time.perf_counter()
    data = gather(YEAR)
    env = document.make_environment(Path(__file__).resolve().parent)
    html = env.get_template(template).render(document.front_context(data))
    rendered = HTML(string=html).render()
    pdf = rendered.write_pdf()
    write_atomically(dest, pdf)
    return {"seconds": time.perf_counter() - start, "pages": len(rendered.pages),
            "bytes": len(pdf), "reviews": len(data.reviews)}


def run_optimized(dest: Path, workers: int | None) -> dict[str, float]:
    from pa.reports.build import build_report

    start = time.perf_counter()
    result = build_report(YEAR, None, dest, workers=workers)
    return {"seconds": time.perf_counter() - start, **result.to_dict()}


# --- memory of a process tree, from /proc -------------------------------------------

def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def _is_python(pid: int) -> bool:
    # Skips the short-lived helpers that library loading runs (ldconfig and the like).
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().startswith("python")
    except OSError:
        return False


class TreeMemory(threading.Thread):
    """Samples a process tree every 20 ms: the peak of the summed RSS, and each Python
    process's own high-water mark (their sum bounds the true peak from above)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self.hwm_kb: dict[int, int] = {}
        self.samples: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            pids = _tree(self.pid)
            self.peak_kb = max(self.peak_kb, sum(_status_kb(p, "VmRSS") for p in pids))
            for p in pids:
                if p in self.hwm_kb or _is_python(p):
                    self.hwm_kb[p] = max(self.hwm_kb.get(p, 0), _status_kb(p, "VmHWM"))
                    self.samples[p] = self.samples.get(p, 0) + 1

    def high_water_marks(self) -> dict[int, int]:
        """Per process, of those seen in 3 samples or more: a fork that is about to
        exec a helper shows its parent's high-water mark for a moment."""
        return {p: kb for p, kb in self.hwm_kb.items() if self.samples[p] >= 3}


def measure(variant: str, env: dict[str, str], workers: int | None) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", variant]
    if workers:
        cmd += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    sampler = TreeMemory(proc.pid)
    sampler.start()
    out, _ = proc.communicate()
    sampler.stop.set()
    sampler.join()
    # The child waits for its workers, so their CPU time is in the child's, and the
    # child's is in ours once it has been waited for; start-up and imports included.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu_seconds"] = cpu
    result["peak_mb"] = sampler.peak_kb / 1024
    marks = sampler.high_water_marks()
    result["hwm_sum_mb"] = sum(marks.values()) / 1024
    result["processes"] = len(marks)
    result["main_mb"] = marks.get(proc.pid, 0) / 1024
    result["worker_mb"] = max([v for p, v in marks.items() if p != proc.pid], default=0) / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None,
                        help="render processes (default: CPUs, at most 4)")
    parser.add_argument("--keep", action="store_true", help="keep the PDFs and database")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"which to measure, in order (default {','.join(VARIANTS)})")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        sys.path.insert(0, str(ROOT))
        dest = Path(os.environ["PA_DATA_DIR"]) / f"{args.child}.pdf"
        if args.child == "optimized":
            result = run_optimized(dest, args.workers)
        else:
            result = run_single(dest, f"{'baseline' if args.child == 'plain' else 'light'}"
                                      "_report.html")
        print(json.dumps(result))
        return

    tmp = Path(tempfile.mkdtemp(prefix="pa-bench-report-"))
    env = {**os.environ, "PA_DATABASE_URL": f"sqlite:///{tmp / 'pa.db'}",
           "PA_DATA_DIR": str(tmp / "data"), "PA_SECRET_KEY": "bench-key-0123456789abcdef01234567"}
    env.pop("PA_REDIS_URL", None)
    os.environ.update({k: env[k] for k in ("PA_DATABASE_URL", "PA_DATA_DIR", "PA_SECRET_KEY")})
    os.environ.pop("PA_REDIS_URL", None)
    sys.path.insert(0, str(ROOT))
    try:
        t = time.perf_counter()
        seed(args.reviews)
        print(f"seeded {args.reviews} reviews in {time.perf_counter() - t:.1f} s; "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
        results = {}
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                raise SystemExit(f"unknown variant {variant!r}; choose from {VARIANTS}")
            results[variant] = r = measure(variant, env, args.workers)
            print(f"{variant:>9}: {r['seconds']:6.1f} s ({r['cpu_seconds']:5.1f} s CPU)  "
                  f"{r['pages']:4d} pages  "
                  f"{r['bytes'] / 1e6:5.2f} MB file  peak RSS {r['peak_mb']:6.0f} MB "
                  f"(high-water marks: {r['processes']} processes, sum {r['hwm_sum_mb']:.0f} MB, "
                  f"main {r['main_mb']:.0f} MB, largest worker {r['worker_mb']:.0f} MB)")
        base_name = next(iter(results))
        base = results[base_name]
        for variant, r in list(results.items())[1:]:
            print(f"{variant:>9}: {base['seconds'] / r['seconds']:.1f}x as fast as "
                  f"{base_name}, peak memory {r['peak_mb'] / base['peak_mb']:.2f}x of "
                  f"{base_name}'s")
        print("     goal: optimized under 30 s and 500 MB for 1,000 reviews")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
