"""Serve pa.web.app with uvicorn at PA_HOST:PA_PORT.

In embedded mode (no PA_REDIS_URL) this process also runs the job consumer:
threads that take jobs from the SQLite queue, started before the server and
drained after it stops.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from types import FrameType

import uvicorn


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Serve pa (uvicorn). Without PA_REDIS_URL it also runs the job consumer."
    )
    parser.add_argument("--host", help="address to listen on (default: PA_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: PA_PORT, 8000)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--consumer-workers", type=int, default=2, metavar="N",
                        help="embedded mode: consumer threads (default 2)")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                        help="no line per request (when a proxy in front logs them; "
                             "saves ~7%% of the CPU of a request)")
    return parser


def _stop_on_sigterm() -> None:
    # uvicorn handles SIGTERM while it serves, then raises it again once it has
    # stopped; without a handler of ours that would end the process before the
    # consumer is drained.
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pa import db, runtime
    from pa.errors import SchemaMismatch
    from pa.schema import migrate, schema_problem
    from pa.settings import load_settings
    from pa.web.app import create_app
    from pa.web.hub import UVICORN_WEBSOCKETS

    try:
        settings = load_settings()
    except ValueError as exc:  # a bad PA_* value: say which, no traceback
        sys.stderr.write(f"{exc}\n")
        return 2
    runtime.configure(settings)
    host = args.host or settings.host
    port = args.port or settings.port
    _stop_on_sigterm()
    embedded = None
    if settings.embedded:
        from pa.worker import start_embedded, stop_embedded

        # Embedded mode needs nothing installed: the database is migrated at start.
        try:
            migrate(db.engine())
        except SchemaMismatch as exc:
            sys.stderr.write(f"{exc}\n")
            return 2
        embedded = start_embedded(workers=args.consumer_workers, config=settings)
        logging.getLogger("pa").info(
            "embedded mode: consumer threads in this process (set PA_REDIS_URL for production)"
        )
    else:
        # Many processes share the database: only init-db migrates it.
        problem = schema_problem(db.engine())
        if problem:
            sys.stderr.write(problem + "\n")
            return 2
    app = create_app(settings)

    # Modules, routes, SQLAlchemy's tables: what exists now lives as long as the
    # process. Frozen, the collector's full passes no longer scan it: they took
    # 50-80 ms about once a second under load, stopping every request in flight.
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(app, host=host, port=port, log_level=args.log_level,
                    access_log=args.access_log, timeout_graceful_shutdown=10,
                    **UVICORN_WEBSOCKETS)
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            stop_embedded(*embedded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
