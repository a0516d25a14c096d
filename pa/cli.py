"""`python -m pa <command>`: the database, users, API tokens and demo data.

Each command is one function registered with `@command`; a new command (such as
`restore-backup FILE`) is one more decorated function.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, cast

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from pa import accounts, db, runtime, throttle
from pa.errors import PaError, SchemaMismatch
from pa.models import ApiToken, Role, User
from pa.schema import current_revision, head_revision, migrate, schema_problem
from pa.settings import load_settings

Run = Callable[[argparse.Namespace], int | None]
Argument = tuple[tuple[str, ...], dict[str, Any]]

# Declarative types __table__ as a FromClause; these are Tables.
users = cast(Table, User.__table__)
api_tokens = cast(Table, ApiToken.__table__)


class CommandError(Exception):
    """Raised when a command cannot do what it was asked; `main` prints it and exits 2."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: tuple[Argument, ...]
    run: Run


COMMANDS: dict[str, Command] = {}


def arg(*flags: str, **options: Any) -> Argument:
    """One argparse argument of a command: `arg("--email", required=True)`."""
    return flags, options


def command(name: str, help: str, *arguments: Argument) -> Callable[[Run], Run]:
    """Register the decorated function as the subcommand `name`."""

    def register(run: Run) -> Run:
        COMMANDS[name] = Command(name, help, arguments, run)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command."""
    parser = argparse.ArgumentParser(
        prog="python -m pa", description="Manage the pa database, users and demo data."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for flags, options in cmd.arguments:
            p.add_argument(*flags, **options)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2 with a message on stderr on error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse has printed its usage line and message (or --help).
        return exc.code if isinstance(exc.code, int) else 2
    try:
        config = load_settings()
    except ValueError as exc:  # e.g. PA_PORT=abc
        return _fail(f"Bad setting: {exc}")
    try:
        runtime.configure(config)
        return args.run(args) or 0
    except (CommandError, PaError, SchemaMismatch) as exc:
        return _fail(str(exc))
    except SQLAlchemyError as exc:
        return _fail(f"Database error: {_reason(exc)}")
    except KeyboardInterrupt:
        return _fail("Interrupted.", status=130)


def _fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _reason(exc: SQLAlchemyError) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


# --- shared checks ----------------------------------------------------------------


def _valid_email(value: str, what: str = "email") -> str:
    try:
        # Emails are stored lowercased, so that lookups can use the unique index.
        return validate_email(value.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise CommandError(f"Invalid {what} '{value}': {exc}") from None


def _require_schema() -> None:
    problem = schema_problem(db.engine())
    if problem:
        raise CommandError(problem)


def _db_name() -> str:
    return db.engine().url.render_as_string(hide_password=True)


def _user_id(conn: Connection, email: str) -> int | None:
    return conn.execute(
        select(users.c.id).where(users.c.email == email.strip().lower())
    ).scalar()


def _existing_user_id(conn: Connection, email: str) -> int:
    user_id = _user_id(conn, email)
    if user_id is None:
        raise CommandError(f"No user with email {email}.")
    return user_id


def _non_empty(value: str, what: str) -> str:
    if not value.strip():
        raise CommandError(f"The {what} must not be empty.")
    return value


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


# --- commands ---------------------------------------------------------------------


@command("init-db", "create the tables or migrate them to this pa's schema (safe to run again)")
def init_db(args: argparse.Namespace) -> None:
    before = current_revision(db.engine())
    migrate(db.engine())
    head = head_revision()
    if before == head:
        print(f"Schema already at revision {head} in {_db_name()}.")
    else:
        print(f"Schema migrated from {before or 'no revision'} to revision {head} "
              f"in {_db_name()}.")


@command(
    "create-user", "add a user who can log in",
    arg("--email", required=True),
    arg("--name", required=True),
    arg("--role", required=True, choices=[r.value for r in Role]),
    arg("--password", required=True),
    arg("--manager", metavar="EMAIL", help="the user's manager (an existing user)"),
    arg("--department", help="default: the manager's department"),
)
def create_user(args: argparse.Namespace) -> None:
    from pa.auth_passwords import hash_password

    email = _valid_email(args.email)
    name = _non_empty(args.name, "name").strip()
    password = _non_empty(args.password, "password")
    _require_schema()
    # argon2 takes a while: hash before the transaction takes SQLite's write lock.
    password_hash = hash_password(password)
    now = db.utcnow()
    try:
        with db.begin() as conn:
            if _user_id(conn, email) is not None:
                raise CommandError(f"A user with email {email} already exists.")
            manager_id, department = None, args.department
            if args.manager:
                manager_email = _valid_email(args.manager, "--manager email")
                manager = conn.execute(
                    select(users.c.id, users.c.department)
                    .where(users.c.email == manager_email)
                ).first()
                if manager is None:
                    raise CommandError(f"No user with email {manager_email} (--manager).")
                manager_id = manager.id
                department = department if department is not None else manager.department
            user_id = conn.execute(
                insert(users).values(
                    email=email, name=name, role=args.role,
                    department=department.strip() if department else None,
                    manager_id=manager_id, password_hash=password_hash,
                    created_at=now, updated_at=now,
                ).returning(users.c.id)
            ).scalar_one()
    except IntegrityError:
        # Another process created the same email between our check and the insert.
        raise CommandError(f"A user with email {email} already exists.") from None
    print(f"Created {args.role} {email} (id {user_id}).")


def _read_new_password(stdin: TextIO | None) -> str:
    if stdin is not None and stdin.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat the new password: ") != password:
            raise CommandError("The passwords do not match.")
    elif stdin is None:
        raise CommandError("No password given: stdin is closed.")
    else:
        # Piped: one line, so that scripts can `echo secret | python -m pa set-password`.
        password = stdin.readline().rstrip("\r\n")
    return _non_empty(password, "password")


@command(
    "set-password",
    "set a user's password (asked twice on a terminal, else one line read from stdin)",
    arg("email", metavar="EMAIL"),
)
def set_password(args: argparse.Namespace) -> None:
    from pa.auth_passwords import hash_password

    _require_schema()
    # Check the user first: nobody should type a password twice to learn of a typo.
    with db.read() as conn:
        user_id = _existing_user_id(conn, args.email)
    password_hash = hash_password(_read_new_password(sys.stdin))
    with db.begin() as conn:
        done = conn.execute(
            update(users).where(users.c.id == user_id)
            .values(password_hash=password_hash, updated_at=db.utcnow())
        ).rowcount
        if done:
            # Whoever knew the old password may hold a cookie or a token: they end.
            tokens = accounts.end_logins(conn, user_id)
    if not done:
        raise CommandError(f"No user with email {args.email}.")
    accounts.announce_logins_ended(user_id)
    throttle.forget(args.email.strip().lower())  # a locked-out user may try the new one
    print(f"Password set for {args.email.strip()}; their logins ended and "
          f"{_tokens(tokens)} deleted.")


def _tokens(count: int) -> str:
    return f"{count} API token{'s' if count != 1 else ''}"


@command(
    "revoke-tokens",
    "end every login of a user (cookies, copies included) and delete their API tokens",
    arg("email", metavar="EMAIL"),
)
def revoke_tokens(args: argparse.Namespace) -> None:
    _require_schema()
    with db.begin() as conn:
        user_id = _existing_user_id(conn, args.email)
        tokens = accounts.end_logins(conn, user_id)
    accounts.announce_logins_ended(user_id)
    print(f"Logins of {args.email.strip()} ended; {_tokens(tokens)} deleted.")


@command(
    "disable-user",
    "stop a user from signing in (their logins end, their API tokens are deleted)",
    arg("email", metavar="EMAIL"),
)
def disable_user(args: argparse.Namespace) -> None:
    _require_schema()
    with db.begin() as conn:
        user_id = _existing_user_id(conn, args.email)
        accounts.set_disabled(conn, user_id, True)
    accounts.announce_logins_ended(user_id)
    print(f"{args.email.strip()} is disabled: they cannot sign in until enable-user.")


@command("enable-user", "let a disabled user sign in again", arg("email", metavar="EMAIL"))
def enable_user(args: argparse.Namespace) -> None:
    _require_schema()
    with db.begin() as conn:
        user_id = _existing_user_id(conn, args.email)
        accounts.set_disabled(conn, user_id, False)
    throttle.forget(args.email.strip().lower())
    print(f"{args.email.strip()} may sign in again.")


@command(
    "create-token", "create an API token for a user; prints it alone on the last line",
    arg("email", metavar="EMAIL"),
)
def create_token(args: argparse.Namespace) -> None:
    from pa.auth_passwords import new_token

    _require_schema()
    token, token_hash = new_token()
    with db.begin() as conn:
        user_id = _existing_user_id(conn, args.email)
        conn.execute(insert(api_tokens).values(
            user_id=user_id, token_hash=token_hash, created_at=db.utcnow()
        ))
    print(f"API token for {args.email.strip()} (shown only now; send it as "
          "'Authorization: Bearer <token>'):")
    print(token)


@command(
    "seed-demo",
    "add demo departments, people and reviews, creating the tables if needed "
    "(safe to run again)",
    arg("--employees", type=_count(0, 10_000_000), default=60, metavar="N",
        help="employees (default 60), in teams of 8 with a manager each"),
    arg("--years", type=_count(1, 100), default=3, metavar="K",
        help="fiscal years of reviews, ending with the current one (default 3)"),
)
def seed_demo(args: argparse.Namespace) -> None:
    from pa import seed

    migrate(db.engine())
    report = seed.seed_demo(args.employees, args.years)
    print(f"Added {report.users_added} users and {report.reviews_added} reviews "
          f"(fiscal years {report.first_year}-{report.last_year}).")
    if report.closed_years:
        closed = ", ".join(map(str, report.closed_years))
        print(f"Closed fiscal years left unchanged: {closed}.")
    print(f"Demo logins (password {seed.DEMO_PASSWORD}):")
    width = max((len(login.email) for login in report.logins), default=0)
    for login in report.logins:
        note = "" if login.demo_password else "  (existed before, with another password)"
        print(f"  {login.email:<{width}}  {login.role.value}{note}")
    print(f"Every other seeded person's password is {seed.DEMO_PASSWORD} too.")


@command(
    "restore-backup",
    "replace the database's contents with a backup (stop pa's web and consumers first)",
    arg("file", metavar="FILE", help="a pa-backup-*.sqlite.gz or pa-backup-*.pgdump file"),
)
def restore_backup(args: argparse.Namespace) -> None:
    from pathlib import Path

    from pa.backup import restore_backup as restore

    restore(Path(args.file))
    print(f"Restored {args.file} into {_db_name()}.")


@command(
    "status",
    "what the queues, consumers and job types are doing now (the operators' overview)",
    arg("--json", action="store_true", help="print GET /api/ops/overview's data as JSON"),
)
def status(args: argparse.Namespace) -> None:
    from pa import ops

    _require_schema()
    overview = ops.overview()
    if args.json:
        print(json.dumps(overview, indent=2))
        return
    print(ops.format_overview(overview))
