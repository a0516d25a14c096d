"""The chaos run's short form (bench/chaos.py): faults one after another under load on
real processes, then nothing lost, repeated or half-written (docs/RELIABILITY.md).

The PostgreSQL restart is left to the full run: it would cut this test run's own
connections too. Needs root (a tmpfs for the full disk) and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import signal
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


@pytest.mark.timeout(900)
def test_a_short_chaos_run_loses_repeats_and_leaves_nothing_half_done() -> None:
    # Its own session: whatever happens here, its web processes and consumers go too.
    run = subprocess.Popen(
        [sys.executable, "bench/chaos.py", "--fast", "--employees", "800",
         "--only", "consumer-kill,redis,smtp,disk-full,web-kill",
         "--kills", "3", "--redis-down", "5", "--smtp-down", "10", "--disk-full", "8"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        out, _ = run.communicate(timeout=780)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGINT)  # chaos.py cleans up (mount, database)
        out, _ = run.communicate(timeout=60)
        raise AssertionError(f"the chaos run did not end in 13 minutes\n{out[-10000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    print(out[-20000:])
    assert run.returncode == 0, out[-10000:]
    assert "lost (accepted, not final): 0;" in out
