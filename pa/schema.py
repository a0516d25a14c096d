"""The schema's revision: migrate() brings a database to the newest one (Alembic, in
pa/migrations/), schema_problem() says whether a server may start on a database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from pa.errors import SchemaMismatch

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    """Alembic's configuration for pa's migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this pa knows."""
    head = _scripts().get_current_head()
    assert head is not None, f"no migrations in {MIGRATIONS}"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None when no migration has run on it."""
    with engine.connect().execution_options(pa_write=False) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(target: Engine | str) -> None:
    """Upgrade the database (an engine, or a URL) to the newest revision.

    A database made by an init-db from before the migrations has no revision: the
    first revision creates only what it lacks, so it is brought up like any other.
    Raises SchemaMismatch for a database a newer pa has migrated. Other processes may
    migrate at the same time (they wait for each other); threads may not (Alembic's
    context is one per process).
    """
    from pa.db import make_engine

    engine = make_engine(target) if isinstance(target, str) else target
    config = alembic_config()
    try:
        unknown = _unknown_revision(engine, current_revision(engine))
        if unknown:
            raise SchemaMismatch(unknown)
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        if isinstance(target, str):
            engine.dispose()


def schema_problem(engine: Engine) -> str | None:
    """Why a server must not start on this database; None when it is at this pa's revision."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return None
    unknown = _unknown_revision(engine, current)
    if unknown:
        return unknown
    if current is not None:
        state = f"is at schema revision {current}, behind this pa's {head}"
    elif inspect(engine).get_table_names():
        state = "was made by an older pa (it has no schema revision)"
    else:
        state = "has no tables yet"
    return f"{_name(engine)} {state}: run `python -m pa init-db` first (it migrates the schema)."


def _unknown_revision(engine: Engine, current: str | None) -> str | None:
    if current is None or current in {script.revision for script in _scripts().walk_revisions()}:
        return None
    return (f"{_name(engine)} is at schema revision {current}, which this pa does not know "
            f"(its newest is {head_revision()}): a newer pa has migrated it; run that one.")


def _name(engine: Engine) -> str:
    return f"The database {engine.url.render_as_string(hide_password=True)}"
