"""The chaos run's short form (bench/chaos.py): faults one after another under load on
real processes, then nothing lost, repeated or half-written (docs/RELIABILITY.md).

The PostgreSQL restart is left to the full run: it would cut this test run's own
connections too. Needs root (a tmpfs for the full disk) and PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(os.environ.get("PA_TEST_DB") != "postgres",
                       reason="the chaos run is production mode: PostgreSQL"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the full disk is a tmpfs: root only"),
]


def test_a_short_chaos_run_loses_repeats_and_leaves_nothing_half_done() -> None:
    run = subprocess.run(
        [sys.executable, "bench/chaos.py", "--fast", "--employees", "800",
         "--only", "consumer-kill,redis,smtp,disk-full,web-kill",
         "--kills", "3", "--redis-down", "5", "--smtp-down", "10", "--disk-full", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    print(run.stdout, run.stderr[-5000:])
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    assert "lost (accepted, not final): 0;" in run.stdout
