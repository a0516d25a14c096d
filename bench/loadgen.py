"""A small HTTP/1.1 load generator on asyncio: keep-alive connections, open or closed loop.

Python clients like httpx cost more CPU per request than the server under test on
2 cores; this one writes raw requests and parses only the status line and length.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    #: when each request was scheduled (open loop), beside `latencies`
    starts: list[float] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    def add(self, status: int, latency: float, started: float | None = None) -> None:
        self.latencies.append(latency)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if started is not None:
            self.starts.append(started)

    def slowest(self, share: float = 0.01) -> str:
        """When the slowest requests started (s into the run): bursts point to a stall."""
        if not self.starts:
            return ""
        pairs = sorted(zip(self.latencies, self.starts, strict=True), reverse=True)
        worst = pairs[: max(1, int(len(pairs) * share))]
        return ", ".join(f"{s - self.started:.2f}s:{lat * 1000:.0f}ms"
                         for lat, s in sorted(worst, key=lambda p: p[1]))

    @property
    def rate(self) -> float:
        return len(self.latencies) / (self.finished - self.started)

    def pct(self, p: float) -> float:
        data = sorted(self.latencies)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(p / 100 * len(data)))] * 1000

    def summary(self) -> str:
        return (f"{len(self.latencies)} requests, {self.rate:,.0f} req/s, "
                f"p50 {self.pct(50):.1f} ms, p99 {self.pct(99):.1f} ms, "
                f"max {max(self.latencies) * 1000:.1f} ms, mean "
                f"{statistics.mean(self.latencies) * 1000:.1f} ms, statuses {self.statuses}")


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, raw: bytes) -> int:
        assert self.reader and self.writer
        self.writer.write(raw)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def post(path: str, host: str, cookie: str, body: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


async def open_loop(host: str, port: int, rate: float, seconds: float,
                    make: Callable[[], bytes], connections: int = 64,
                    warmup: float = 0.0) -> Result:
    """Requests start on schedule (every 1/rate s) whether or not earlier ones answered.

    The first `warmup` seconds run on the same connections at the same rate and
    are not counted: the result is the steady state that follows.
    """
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        c = Connection(host, port)
        await c.open()
        pool.put_nowait(c)
    result = Result()
    tasks = []

    async def one(scheduled: float) -> None:
        conn = await pool.get()
        status = await conn.request(make())
        # Latency counts from the scheduled start: waiting for a free connection
        # is part of what a user would see (no coordinated omission).
        if scheduled >= result.started:
            result.add(status, time.perf_counter() - scheduled, scheduled)
        pool.put_nowait(conn)

    skipped = int(rate * warmup)
    n = skipped + int(rate * seconds)
    first = time.perf_counter()
    result.started = first + skipped / rate
    for i in range(n):
        scheduled = first + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    result.finished = time.perf_counter()
    while not pool.empty():
        pool.get_nowait().close()
    return result


async def closed_loop(host: str, port: int, clients: int, seconds: float,
                      make: Callable[[], bytes]) -> Result:
    """`clients` connections, each sending its next request as soon as the answer came."""
    result = Result()
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        conn = Connection(host, port)
        await conn.open()
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            status = await conn.request(make())
            result.add(status, time.perf_counter() - t0)
        conn.close()

    result.started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.finished = time.perf_counter()
    return result
