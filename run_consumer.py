"""Run pa's Huey consumer (pa.worker.create_consumer); takes huey_consumer's options
(-w, -k, -v...).

Production mode only: PA_REDIS_URL must be set (embedded mode runs its consumer
inside run_web.py).
"""

from __future__ import annotations

import logging
import os
import sys

from huey.consumer_options import ConsumerConfig, OptionParserHandler


def main(argv: list[str] | None = None) -> int:
    parser = OptionParserHandler().get_option_parser()
    parser.usage = ("python run_consumer.py [options]   (huey_consumer's options, and "
                    "--metrics-port)")
    parser.add_option("--metrics-port", type="int", dest="metrics_port", metavar="PORT",
                      help="serve Prometheus metrics on PA_METRICS_HOST (127.0.0.1):PORT")
    options, args = parser.parse_args(argv)
    metrics_port = options.__dict__.pop("metrics_port", None)
    if args:
        parser.error(f"unexpected arguments {args}: the Huey instance is always pa's")

    from pa import runtime
    from pa.settings import load_settings

    try:
        settings = load_settings()
    except ValueError as exc:  # a bad PA_* value: say which, no traceback
        sys.stderr.write(f"{exc}\n")
        return 2
    if not settings.redis_url:
        sys.stderr.write(
            "run_consumer.py needs PA_REDIS_URL: separate consumers share their queue "
            "through Redis.\nWithout it pa runs in embedded mode, where run_web.py runs "
            "the consumer itself.\n"
        )
        return 2
    from pa import db
    from pa.schema import schema_problem

    runtime.configure(settings)
    problem = schema_problem(db.engine())
    if problem:
        sys.stderr.write(problem + "\n")
        return 2
    config = ConsumerConfig(**{k: v for k, v in options.__dict__.items() if v is not None})
    config.validate()
    config.setup_logger(logging.getLogger("huey"))
    logging.getLogger("pa").setLevel(logging.INFO)
    logging.getLogger("pa").handlers = logging.getLogger("huey").handlers

    from pa.worker import Maintenance, create_consumer

    consumer = create_consumer(settings, **config.values)
    if metrics_port:
        from pa.metrics import serve_consumer_metrics

        serve_consumer_metrics(metrics_port)
    maintenance = Maintenance(workers=config.workers)
    maintenance.start()
    try:
        consumer.run()
    finally:
        maintenance.stop()
        from pa import events

        events.flush()  # held events (os._exit below skips atexit)
    # After an immediate stop (SIGTERM) a worker thread may still be inside a
    # task whose job was just sent back to the queue; exiting the interpreter
    # normally would wait for it (and let it finish work that will run again).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
