"""Live sockets per web process (issue 13): memory per open /ws socket and how fast a
job's change reaches it, in two shapes.

- own: every user has a socket of their own and gets their own jobs' events (the
  common case): N managers, one socket each; R jobs/s end, each for a random one of
  them, so each event goes to one socket.
- broadcast: M sockets all opened by the admin, so every event goes to every socket.

One web process (run_web.py, production mode) on a redis-server of the bench's own.
The sockets are opened by a separate client process (`client` below: asyncio
protocols speaking just enough WebSocket, no task per socket, so that it costs
little beside the server); it offers permessage-deflate as Chromium does
(`--no-deflate`: it offers nothing). The events are published on the job channel by
this process, in the shape the consumers send (`pa.events.job_event` of a completed
job), so the figure is the web process's own path: subscription, hub, sockets. The
latency is the client's receive time minus the event's completedAt (set when it is
published; one machine, one clock). Memory: the web process's RSS with the sockets
open minus before, per socket. In the own shape, `--stalled` sockets stop reading
(their user's jobs go on): the others must not notice.

Usage: .venv/bin/python bench/bench_sockets.py [--db sqlite|postgres] [--sockets 10000]
       [--rate 200] [--admin-sockets 1000] [--admin-rate 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_spine import answers, setup_env  # noqa: E402
from tests.services import PostgresDatabase, free_port, wait_for  # noqa: E402

# ---------------------------------------------------------------- the client


class Socket(asyncio.Protocol):
    """One client WebSocket: handshake, then unmasked server frames; answers pings."""

    def __init__(self, client: Client, request: bytes) -> None:
        self.client, self.request = client, request
        self.buffer = b""
        self.open = False
        self.snapshot = asyncio.get_running_loop().create_future()
        self.inflate: zlib._Decompress | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.closed += 1
        if not self.snapshot.done():
            self.snapshot.set_exception(ConnectionError("closed before its snapshot"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.open:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.snapshot.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                self.transport.close()
                return
            if b"permessage-deflate" in head.lower():
                self.inflate = zlib.decompressobj(-15)
            self.open, self.buffer = True, rest
        while len(self.buffer) >= 2:
            b0, b1 = self.buffer[0], self.buffer[1]
            length, at = b1 & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, at = int.from_bytes(self.buffer[2:4], "big"), 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, at = int.from_bytes(self.buffer[2:10], "big"), 10
            if len(self.buffer) < at + length:
                return
            payload, self.buffer = self.buffer[at:at + length], self.buffer[at + length:]
            opcode = b0 & 0x0F
            if opcode == 9:  # ping: pong with the same payload
                self.send(0xA, payload)
            elif opcode == 1:
                if b0 & 0x40 and self.inflate is not None:
                    payload = self.inflate.decompress(payload + b"\x00\x00\xff\xff")
                self.message(payload)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def message(self, payload: bytes) -> None:
        now = time.time()
        if not self.snapshot.done():
            self.snapshot.set_result(None)
            return
        msg = json.loads(payload)
        if msg["type"] == "job":
            done = datetime.fromisoformat(msg["data"]["completedAt"])
            self.client.latencies.append(now - done.timestamp())
        elif msg["type"] == "snapshot":
            self.client.snapshots += 1


class Client:
    """Opens the sockets, says `ready` on stdout, then reports on each line of stdin."""

    def __init__(self, port: int, tokens: list[str], deflate: bool, stalled: int) -> None:
        self.port, self.tokens, self.deflate, self.stalled = port, tokens, deflate, stalled
        self.latencies: list[float] = []
        self.snapshots = self.closed = 0

    def request(self, token: str) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET /ws HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13", f"Authorization: Bearer {token}"]
        if self.deflate:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def open_one(self, token: str) -> Socket:
        loop = asyncio.get_running_loop()
        for attempt in range(5):
            try:
                _, sock = await loop.create_connection(
                    lambda: Socket(self, self.request(token)), "127.0.0.1", self.port)
                await asyncio.wait_for(sock.snapshot, 60)
                return sock
            except (OSError, ConnectionError, TimeoutError):
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    async def run(self) -> None:
        sockets: list[Socket] = []
        gate = asyncio.Semaphore(100)

        async def one(token: str) -> None:
            async with gate:
                sockets.append(await self.open_one(token))

        await asyncio.gather(*(one(t) for t in self.tokens))
        for sock in sockets[:self.stalled]:
            sock.transport.pause_reading()  # their user's events pile up in the server
        self.closed = 0
        print(f"ready {len(sockets)}", flush=True)
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).strip():
            if line == b"report":
                print(json.dumps({"latencies": self.latencies, "snapshots": self.snapshots,
                                  "closed": self.closed}), flush=True)
                self.latencies, self.snapshots = [], 0
        for sock in sockets:
            sock.transport.close()


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("tokens")
    parser.add_argument("--no-deflate", action="store_true")
    parser.add_argument("--stalled", type=int, default=0)
    args = parser.parse_args(argv)
    tokens = Path(args.tokens).read_text().split()
    import uvloop
    uvloop.run(Client(args.port, tokens, not args.no_deflate, args.stalled).run())


# ---------------------------------------------------------------- the run


def seed(managers: int) -> tuple[list[tuple[int, str]], str]:
    """`managers` managers and an admin, each with an API token: [(id, token)], admin's."""
    from sqlalchemy import insert, select

    from pa import db
    from pa.auth_passwords import new_token
    from pa.models import ApiToken, User
    from pa.schema import migrate

    migrate(db.engine())
    now = db.utcnow()
    users = [dict(email=f"m{i}@bench", name=f"M{i}", role="manager", department="Sales",
                  created_at=now, updated_at=now) for i in range(managers)]
    users.append(dict(email="admin@bench", name="Admin", role="admin", department="IT",
                      created_at=now, updated_at=now))
    with db.begin() as conn:
        for i in range(0, len(users), 5000):
            conn.execute(insert(User), users[i:i + 5000])
        ids = dict(conn.execute(select(User.email, User.id)).all())
        tokens = {email: new_token() for email in ids}
        conn.execute(insert(ApiToken), [dict(user_id=ids[e], token_hash=h, created_at=now)
                                        for e, (_, h) in tokens.items()])
    own = [(ids[f"m{i}@bench"], tokens[f"m{i}@bench"][0]) for i in range(managers)]
    return own, tokens["admin@bench"][0]


def event(user_id: int) -> str:
    """A completed email job of `user_id`, as the consumer that ran it publishes it."""
    from pa import events

    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return events.job_event({
        "id": uuid.uuid4().hex, "type": "email_notification", "status": "completed",
        "priority": 5, "progress": {"current": 1, "total": 1, "percent": 100.0,
                                    "message": "Sent"},
        "attempts": 1, "maxRetries": 3, "result": {"sent": 1}, "error": None,
        "cancelRequested": False, "runAfter": None, "createdAt": now, "startedAt": now,
        "completedAt": now, "updatedAt": now, "version": 3, "userId": user_id,
        "downloadUrl": None})


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1000 if values else 0.0


class Shape:
    """One client process with its sockets open on the web process."""

    def __init__(self, port: int, tokens: list[str], workdir: Path, name: str,
                 extra: list[str]) -> None:
        path = workdir / f"{name}.tokens"
        path.write_text("\n".join(tokens))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "client", str(port), str(path), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "ready", f"client failed: {line}"

    def report(self) -> dict:
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def publish(users: list[int], rate: int, seconds: float) -> int:
    """Jobs of random `users` ending at `rate` per second for `seconds`; how many."""
    from pa import events

    bus = events.bus()
    start, sent = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        if sent < due:
            bus.publish(*(event(random.choice(users)) for _ in range(due - sent)))
            sent = due
        time.sleep(0.002)
    return sent


def run(args: argparse.Namespace, workdir: Path) -> None:
    own, admin_token = seed(args.sockets)
    port = free_port()
    env = dict(os.environ, PA_PORT=str(port))
    with open(workdir / "web.log", "wb") as log:
        web = subprocess.Popen([sys.executable, "run_web.py", "--no-access-log"], cwd=ROOT,
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    extra = ["--no-deflate"] if args.no_deflate else []
    try:
        wait_for(lambda: answers(port), timeout=60, message="run_web.py to answer")
        # Warm: a few sockets opened and closed, so that the figure is the sockets'.
        warm = Shape(port, [admin_token] * 20, workdir, "warm", extra)
        warm.close()
        time.sleep(1)
        before = rss_kb(web.pid)
        started = time.monotonic()
        shape = Shape(port, [t for _, t in own], workdir, "own",
                      extra + ["--stalled", str(args.stalled)])
        opened = time.monotonic() - started
        time.sleep(2)
        after = rss_kb(web.pid)
        per = (after - before) * 1024 / args.sockets / 1000
        print(f"own: {args.sockets:,} sockets opened in {opened:.1f} s; web RSS "
              f"{before / 1024:.0f} -> {after / 1024:.0f} MB: {per:.1f} KB per socket",
              flush=True)
        users = [u for u, _ in own]
        for round_ in range(1, args.rounds + 1):
            sent = publish(users, args.rate, args.seconds)
            time.sleep(2)
            r = shape.report()
            lat = r["latencies"]
            print(f"own round {round_}: {sent:,} jobs at {args.rate}/s to {args.sockets:,} "
                  f"sockets ({args.stalled} not reading): {len(lat):,} delivered to the "
                  f"reading ones, p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
                  f"max {pct(lat, 100):.1f} ms; {r['snapshots']} resyncs, "
                  f"{r['closed']} closed; web RSS {rss_kb(web.pid) / 1024:.0f} MB", flush=True)
        shape.close()
        time.sleep(2)
        if args.admin_sockets:
            stalled = args.stalled // 10
            shape = Shape(port, [admin_token] * args.admin_sockets, workdir, "admin",
                          extra + ["--stalled", str(stalled)])
            time.sleep(2)
            for round_ in range(1, args.rounds + 1):
                sent = publish(users, args.admin_rate, args.seconds)
                time.sleep(3)
                r = shape.report()
                lat = r["latencies"]
                print(f"broadcast round {round_}: {sent:,} jobs at {args.admin_rate}/s to "
                      f"{args.admin_sockets:,} admin sockets ({stalled} not reading): "
                      f"{len(lat):,} of {sent * (args.admin_sockets - stalled):,} delivered "
                      f"to the reading ones, p50 {pct(lat, 50):.1f} ms, "
                      f"p99 {pct(lat, 99):.1f} ms, max {pct(lat, 100):.1f} ms; "
                      f"{r['snapshots']} resyncs", flush=True)
            shape.close()
    finally:
        web.terminate()
        web.wait(timeout=30)


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--stalled", type=int, default=100)
    parser.add_argument("--admin-sockets", type=int, default=1_000)
    parser.add_argument("--admin-rate", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-deflate", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pa-bench-sockets-"))
    database = None
    if args.db == "postgres":
        database = PostgresDatabase()
        database.create()
        url = database.url
    else:
        url = f"sqlite:///{workdir / 'pa.db'}"
    redis_server = setup_env(workdir, url)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"database {args.db}; deflate {'off' if args.no_deflate else 'offered'}",
          flush=True)
    try:
        run(args, workdir)
    finally:
        redis_server.stop()
        if database is not None:
            from pa import db
            db.engine().dispose()
            database.drop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
