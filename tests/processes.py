"""pa's own programs as real processes: `run_consumer.py` and `run_web.py`, each with its
output in a file (shown when a test fails)."""

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

    def __init__(self, log_path: Path, env: dict[str, str], worker_type: str = "thread",
                 workers: int = 2, *extra_args: str) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "run_consumer.py", "-w", str(workers), "-k", worker_type,
             *extra_args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def runs(self, worker_id: str | None) -> bool:
        """Whether a job row's `worker_id` names this process ("host:pid:random",
        pa.heartbeat)."""
        return worker_id is not None and worker_id.split(":")[-2] == str(self.pid)

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
    """One `run_web.py` process on `port`; stopped with SIGTERM."""

    def __init__(self, log_path: Path, env: dict[str, str], port: int | None = None) -> None:
        self.log_path = log_path
        self.port = port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "run_web.py", "--no-access-log"], cwd=ROOT,
                env={**env, "PA_HOST": "127.0.0.1", "PA_PORT": str(port)},
                stdout=log, stderr=subprocess.STDOUT,
            )

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, f"run_web.py exited\n{self.output()}"
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_for(self._healthy, timeout=timeout, interval=0.1,
                 message=f"run_web.py on port {self.port} to answer")

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")
