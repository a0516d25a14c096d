"""Both databases in one run: bench_spine.py on SQLite, then on PostgreSQL, each with
raw Huey and a naive tracking layer beside pa's, and open-loop latency at several
offered loads; prints the figures and draws them into docs/bench/ (PNG).

Usage: .venv/bin/python bench/bench_all.py [--jobs 3000] [--rates 100,200,400,800]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "bench"
DATABASES = ("sqlite", "postgres")
SYSTEMS = (("raw", "raw Huey (no-op task)"), ("naive", "naive tracking"),
           ("tracked", "pa (tracked job)"))


def run_one(db: str, jobs: int, rates: str, folder: Path) -> dict[str, Any]:
    out = folder / f"{db}.json"
    print(f"== bench_spine.py --db {db}", flush=True)
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_spine.py"), "--db", db,
                    "--jobs", str(jobs), "--rates", rates, "--json", str(out)],
                   cwd=ROOT, check=True)
    return dict(json.loads(out.read_text()))


def median_drain(result: dict[str, Any], system: str) -> float:
    """The median over the rounds with thread workers (the spine's goal is about them)."""
    return statistics.median(r[system] for r in result["drain"] if r["workers"] == "thread")


def summary(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| database | raw Huey jobs/s | naive tracking jobs/s | pa jobs/s | pa / raw |"
             " naive / raw |", "|---|---|---|---|---|---|"]
    for db, result in results.items():
        raw, naive, tracked = (median_drain(result, s) for s, _ in SYSTEMS)
        lines.append(f"| {db} | {raw:,.0f} | {naive:,.0f} | {tracked:,.0f} | "
                     f"{tracked / raw:.2f} | {naive / raw:.2f} |")
    lines += ["", "| database | offered req/s | achieved | p50 ms | p90 ms | p99 ms | max ms |",
              "|---|---|---|---|---|---|---|"]
    for db, result in results.items():
        for s in result["sweep"]:
            lines.append(f"| {db} | {s['offered']} | {s['achieved']:,.0f} | {s['p50']:.1f} | "
                         f"{s['p90']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    lines += ["", "| database | client | consumer | req/s | p50 ms | p99 ms |",
              "|---|---|---|---|---|---|"]
    for db, result in results.items():
        for h in result["http"]:
            lines.append(f"| {db} | {h['client']} | {h['consumer']} | {h['rps']:,.0f} | "
                         f"{h['p50']:.1f} | {h['p99']:.1f} |")
    lines += ["", "| database | jobs pushed | push p50 ms | p99 ms | max ms |",
              "|---|---|---|---|---|"]
    for db, result in results.items():
        for p in result.get("push", []):
            lines.append(f"| {db} | {p['jobs']} | {p['p50']:.1f} | {p['p99']:.1f} | "
                         f"{p['max']:.1f} |")
    return lines


def plot(results: dict[str, dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    dbs = list(results)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.25
    for i, (system, label) in enumerate(SYSTEMS):
        values = [median_drain(results[db], system) for db in dbs]
        bars = ax.bar([x + (i - 1) * width for x in range(len(dbs))], values, width,
                      label=label)
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=8)
    ax.set_xticks(range(len(dbs)), dbs)
    ax.set_ylabel("jobs drained per second (2 thread workers)")
    ax.set_title("Drain: no-op jobs, median of 3 rounds")
    ax.legend()
    fig.tight_layout()
    drain_png = OUT / "drain.png"
    fig.savefig(drain_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for db in dbs:
        sweep = results[db]["sweep"]
        offered = [s["offered"] for s in sweep]
        for pct, style in (("p50", "--"), ("p99", "-")):
            ax.plot(offered, [s[pct] for s in sweep], style, marker="o",
                    label=f"{db} {pct}")
    ax.set_xscale("log", base=2)
    ax.set_xticks([s["offered"] for s in results[dbs[0]]["sweep"]],
                  [str(s["offered"]) for s in results[dbs[0]]["sweep"]])
    ax.set_yscale("log")
    ax.set_xlabel("offered load, submit-to-hr req/s (open loop, consumer draining)")
    ax.set_ylabel("latency, ms")
    ax.set_title("Latency against offered load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    latency_png = OUT / "latency.png"
    fig.savefig(latency_png, dpi=110)
    plt.close(fig)
    return [drain_png, latency_png]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rates", default="100,200,400,800")
    parser.add_argument("--db", action="append", choices=DATABASES,
                        help="only this database (repeatable; default both)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pa-bench-all-"))
    results = {db: run_one(db, args.jobs, args.rates, folder) for db in args.db or DATABASES}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "figures.json").write_text(json.dumps(results, indent=1))
    print("\n".join(summary(results)))
    for path in plot(results):
        print(f"plot: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
