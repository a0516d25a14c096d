"""Build this process's parts from one Settings: the factories call configure()."""

from __future__ import annotations

from pa import db, events, queue, throttle
from pa import settings as pa_settings
from pa.settings import Settings


def configure(config: Settings) -> None:
    """Make `config` this process's: its settings, database, event bus, queue and
    failed-login counts.

    create_app() and the consumer's factories call it at start. Parts already
    built for the same database, Redis or data folder are kept; others are
    replaced, so that a test can run a second configuration in its process.
    """
    pa_settings.configure(config)
    db.configure(config.database_url)
    events.configure(config.redis_url)
    queue.configure(config.redis_url, config.data_dir)
    throttle.configure(config.redis_url)
