"""Real pa processes for the tests: `run_consumer.py` and `run_web.py` subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import httpx

from tests.services import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def default_env(**changes: str) -> dict[str, str]:
    """This run's environment with pa's default recovery settings (the suite's are
    faster), plus `changes`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PA_WORKER_TTL", "PA_REAPER_INTERVAL")}
    env.update(changes)
    return env


class ConsumerProcess:
    """One `run_consumer.py` process; its output goes to a file for debugging."""

    def __init__(self, log_path: Path, env: dict[str, str], worker_type: str = "thread") -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "run_consumer.py", "-w", "2", "-k", worker_type],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"consumer {self.pid} still running\n{self.output()}") from None

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class WebProcess:
    """One `run_web.py` process on a free port; its output goes to a file."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "run_web.py", "--port", str(self.port), "--no-access-log"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_for(self._answers, timeout=30, interval=0.1, message="run_web.py to answer")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")
