"""Alembic's entry point, for `alembic ...` on the command line and for pa.schema.migrate().

The database is the connection pa.schema hands over, else `sqlalchemy.url` of the
Alembic config, else PA_DATABASE_URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

from pa.models import Base, UTCDateTime

config = context.config
#: pg_advisory_xact_lock's key while migrating (any constant of pa's own)
_LOCK_KEY = 7_201_001

if config.config_file_name is not None:  # the `alembic` command: log what it runs
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # A revision must not import pa.models (it changes after the revision is
    # written): UTCDateTime is stored as a plain DateTime.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def _configure(**options: Any) -> None:
    context.configure(target_metadata=Base.metadata, render_item=_render_item,
                      compare_type=True, **options)


def _run_on(connection: Connection) -> None:
    """Every pending revision in one transaction: a failed upgrade leaves nothing half done."""
    sqlite = connection.dialect.name == "sqlite"
    with _foreign_keys_off(connection) if sqlite else nullcontext(), connection.begin():
        if connection.dialect.name == "postgresql":
            # Two init-db at once (a deploy on several machines): the second waits,
            # then finds the database at head.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
        # SQLite alters a table by copying it: autogenerate writes batch operations.
        # (The transaction above makes SQLite's DDL transactional too.)
        _configure(connection=connection, render_as_batch=sqlite, transactional_ddl=True)
        context.run_migrations()


@contextmanager
def _foreign_keys_off(connection: Connection) -> Iterator[None]:
    # Copying a table in a batch operation drops the old one, and with foreign keys
    # on that would cascade (deleting a user's reviews). SQLite ignores the pragma
    # inside a transaction, so it is set on the driver's connection before BEGIN.
    dbapi = connection.connection.dbapi_connection
    assert dbapi is not None
    dbapi.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        dbapi.execute("PRAGMA foreign_keys=ON")


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from pa.settings import settings

    return settings.database_url


if context.is_offline_mode():
    _configure(url=_url(), literal_binds=True,
               render_as_batch=_url().startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()
elif "connection" in config.attributes:
    _run_on(config.attributes["connection"])
else:
    from pa.db import make_engine

    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()
