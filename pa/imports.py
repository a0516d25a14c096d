"""The users CSV of a bulk import: its format, and the checks of every line.

Functions over text and plain values; the database is reached only through the
lookup that the caller passes to `resolve_managers()`. The web uses the header
check before it enqueues; the `bulk_import` task uses the rest.

Rules (also in docs/IMPORT.md):
- columns `email, name, role, department, manager_email`, in any order, matched
  case-insensitively; other columns are ignored; header = line 1;
- emails are compared case-insensitively and stored lowercased;
- `email`, `name` and `role` must not be empty; an empty `department` or
  `manager_email` means none (an existing user's manager or department is cleared);
- `role` is one of pa.models.Role (case-insensitive);
- an email seen on an earlier line makes the later line a duplicate, whatever
  became of the earlier one;
- a manager must be imported by this file or already be a user; a manager whose
  own line is rejected and who is not already a user takes their reports with them;
- nobody manages themselves, and a manager chain may not loop (through the file's
  rows or through existing users): every imported row on a loop is rejected;
- blank lines (or lines of empty fields only) are skipped; a line with another
  number of fields than the header is rejected.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, NamedTuple

from email_validator import EmailNotValidError, validate_email

from pa.errors import Unprocessable
from pa.models import Role

#: the columns every file must have, in the template's order
COLUMNS = ("email", "name", "role", "department", "manager_email")
ROLES = tuple(r.value for r in Role)
#: the widths of the users table's columns
MAX_LENGTH = {"email": 254, "name": 200, "department": 100}
#: the folder under PA_DATA_DIR where uploads wait for their job
UPLOADS_DIR = "uploads"
#: a line (a record: a quoted field may hold line breaks) longer than this, or with
#: more fields, is refused before anything splits it (DESIGN.md, "Sessions and abuse")
LINE_MAX_BYTES = 64 * 1024
LINE_MAX_FIELDS = 100
ERRORS_CSV_COLUMNS = ("line", "email", "message")

TEMPLATE_CSV = (
    "email,name,role,department,manager_email\r\n"
    "ada@example.com,Ada Lovelace,manager,Engineering,\r\n"
    "grace@example.com,Grace Hopper,employee,Engineering,ada@example.com\r\n"
    "alan@example.com,Alan Turing,hr_admin,People,\r\n"
)

# RFC 5322 dot-atom: what email-validator accepts as an ASCII local part.
_ATEXT = r"[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+"
_ASCII_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")
_LINE_END = re.compile(r"\r\n|\r|\n")


class LineLimits:
    """Checks LINE_MAX_BYTES and LINE_MAX_FIELDS over a file's bytes as they arrive,
    in pieces of any size, without splitting a record into fields: a line of 40 MB
    of commas would be 40 million fields for the csv module.

    A comma or a line break inside double quotes belongs to a field (a doubled
    quote toggles twice, so escaped quotes need no special case); a line ends at
    LF, CRLF or a lone CR, as csv reads them.
    """

    def __init__(self) -> None:
        self.line = 1  # the physical line being read
        self._start = 1  # where the current record began (what errors name)
        self._bytes = 0  # of the current record
        self._commas = 0
        self._quoted = False
        self._cr = False  # the last piece ended with CR (its LF may come next)

    def feed(self, data: bytes) -> None:
        """Unprocessable naming the first line over a limit."""
        if self._cr and data.startswith(b"\n"):
            data = data[1:]
        self._cr = data.endswith(b"\r")
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        for segment in data.split(b'"'):
            if self._quoted:
                self.line += segment.count(b"\n")
                self._add(segment, commas=0)
            else:
                *ended, rest = segment.split(b"\n")
                for part in ended:
                    self._add(part, part.count(b","))
                    self.line += 1
                    self._start, self._bytes, self._commas = self.line, 0, 0
                self._add(rest, rest.count(b","))
            self._quoted = not self._quoted
        self._quoted = not self._quoted  # (n segments hold n - 1 quotes)

    def _add(self, part: bytes, commas: int) -> None:
        self._bytes += len(part)
        self._commas += commas
        if self._bytes > LINE_MAX_BYTES:
            raise Unprocessable(f"Line {self._start} is longer than "
                                f"{LINE_MAX_BYTES // 1024} KiB.", field="file")
        if self._commas + 1 > LINE_MAX_FIELDS:
            raise Unprocessable(f"Line {self._start} has more than {LINE_MAX_FIELDS} fields.",
                                field="file")


class Rejection(NamedTuple):
    line: int
    #: as written in the file (lowercased when rejected for its manager or a loop)
    email: str
    message: str


class UserRow(NamedTuple):
    line: int
    #: lowercased
    email: str
    name: str
    role: str
    department: str | None
    manager_email: str | None


def column_positions(header: list[str]) -> dict[str, int]:
    """Where each column is; Unprocessable naming the missing or repeated ones."""
    names = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        s = "s" if len(missing) > 1 else ""
        raise Unprocessable(
            f"The header lacks the column{s} {', '.join(missing)} "
            f"(it needs {', '.join(COLUMNS)}).", field="file")
    repeated = [c for c in COLUMNS if names.count(c) > 1]
    if repeated:
        raise Unprocessable(
            f"The header names {', '.join(repeated)} more than once.", field="file")
    return {c: names.index(c) for c in COLUMNS}


def header_from_bytes(first_line: bytes) -> tuple[list[str], dict[str, int]]:
    """The header fields and column positions of a file's first line (BOM allowed)."""
    try:
        text = first_line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Unprocessable("The file is not UTF-8 text.", field="file") from None
    try:
        header = next(csv.reader([_LINE_END.split(text, maxsplit=1)[0]]), [])
    except csv.Error as exc:
        raise Unprocessable(f"The header is not valid CSV: {exc}.", field="file") from None
    return header, column_positions(header)


@lru_cache(maxsize=4096)
def _domain(domain: str) -> tuple[str | None, str]:
    """(normalized domain, '') or (None, why it is not valid); one check per domain."""
    try:
        return validate_email(f"a@{domain}", check_deliverability=False).domain, ""
    except EmailNotValidError as exc:
        return None, str(exc)


def normalize_email(value: str) -> str:
    """The address lowercased, or ValueError saying why it is not valid."""
    local, at, domain = value.rpartition("@")
    # The common case checked cheaply: email-validator costs ~85 µs an address and
    # most of it is the domain, which repeats. Anything unusual takes the full path.
    if (at and value.isascii() and len(local) <= 64 and len(value) <= 254
            and _ASCII_LOCAL.match(local)):
        normalized, reason = _domain(domain)
        if normalized is None:
            raise ValueError(reason)
        return f"{local}@{normalized}".lower()
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


def check_row(line: int, fields: list[str], cols: dict[str, int],
              width: int) -> UserRow | Rejection:
    """One record on its own: a clean row, or why it is rejected."""
    raw_email = fields[cols["email"]].strip() if cols["email"] < len(fields) else ""
    if len(fields) != width:
        return Rejection(line, raw_email,
                         f"The line has {len(fields)} fields; the header has {width}.")
    if any("\x00" in field for field in fields):
        # (PostgreSQL's text cannot hold one.)
        return Rejection(line, raw_email.replace("\x00", ""), "The line holds a NUL character.")
    name = fields[cols["name"]].strip()
    role_text = fields[cols["role"]].strip()
    department = fields[cols["department"]].strip()
    manager_text = fields[cols["manager_email"]].strip()
    problems: list[str] = []
    email: str | None = None
    manager: str | None = None
    if not raw_email:
        problems.append("email is empty")
    else:
        try:
            email = normalize_email(raw_email)
        except ValueError as exc:
            problems.append(f"email is not valid: {exc}")
    if not name:
        problems.append("name is empty")
    elif len(name) > MAX_LENGTH["name"]:
        problems.append(f"name is longer than {MAX_LENGTH['name']} characters")
    role = role_text.lower()
    if not role:
        problems.append("role is empty")
    elif role not in ROLES:
        problems.append(f"role '{role_text}' is not one of {', '.join(ROLES)}")
    if len(department) > MAX_LENGTH["department"]:
        problems.append(f"department is longer than {MAX_LENGTH['department']} characters")
    if manager_text:
        try:
            manager = normalize_email(manager_text)
        except ValueError as exc:
            problems.append(f"manager_email is not valid: {exc}")
        if manager is not None and manager == email:
            problems.append("a user cannot be their own manager")
    if problems or email is None:
        message = "; ".join(p.rstrip(".") for p in problems)
        return Rejection(line, raw_email, message[:1].upper() + message[1:] + ".")
    return UserRow(line, email, name, role, department or None, manager)


def read_records(f: IO[str]) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, its fields) for every record, header included."""
    reader = csv.reader(f)
    start = 1
    for fields in reader:
        yield start, fields
        start = reader.line_num + 1


def _blank(fields: list[str]) -> bool:
    return not "".join(fields).strip()


def data_records(f: IO[str]) -> tuple[dict[str, int], int, Iterator[tuple[int, list[str]]]]:
    """Column positions, header width and the non-blank records after the header."""
    records = read_records(f)
    first = next(records, None)
    header = first[1] if first else []
    cols = column_positions(header)
    return cols, len(header), ((n, r) for n, r in records if not _blank(r))


@dataclass
class Plan:
    """What the first pass learnt: which lines go in, and who manages whom."""

    #: every email's first line (whether that line is valid or not)
    first_line: dict[str, int] = field(default_factory=dict)
    #: line → why it is rejected
    rejected: dict[int, Rejection] = field(default_factory=dict)
    #: the users this file imports → their manager's email (None: no manager)
    manager_of: dict[str, str | None] = field(default_factory=dict)
    #: non-blank data records seen
    records: int = 0

    def add(self, line: int, fields: list[str], cols: dict[str, int], width: int) -> None:
        """Check one record and remember its verdict."""
        self.records += 1
        row = check_row(line, fields, cols, width)
        if isinstance(row, Rejection):
            self.rejected[line] = row
            try:
                email = normalize_email(row.email)
            except ValueError:
                return
            self.first_line.setdefault(email, line)
            return
        earlier = self.first_line.setdefault(row.email, line)
        if earlier != line:
            self.rejected[line] = Rejection(
                line, fields[cols["email"]].strip(),
                f"Duplicate: {row.email} is already on line {earlier}.")
            return
        self.manager_of[row.email] = row.manager_email

    def reject(self, email: str, message: str) -> None:
        line = self.first_line[email]
        self.rejected[line] = Rejection(line, email, message)
        del self.manager_of[email]

    def lines_of(self, emails: Iterable[str]) -> set[int]:
        """The lines that import these users."""
        return {self.first_line[e] for e in emails if e in self.manager_of}

    def errors(self) -> list[Rejection]:
        """The rejected lines in file order."""
        return [self.rejected[n] for n in sorted(self.rejected)]


#: emails → {email: its manager's email or None} for those that are users already
Lookup = Callable[[Collection[str]], dict[str, str | None]]


def resolve_managers(plan: Plan, lookup: Lookup) -> None:
    """Reject rows whose manager is unknown or rejected, or whose manager chain loops."""
    imported = plan.manager_of
    managers = {m for m in imported.values() if m is not None}
    in_db = lookup(managers)
    reports: dict[str, list[str]] = defaultdict(list)
    for email, manager in imported.items():
        if manager is not None:
            reports[manager].append(email)

    def fallen(manager: str) -> str:
        return f"Manager {manager} is on line {plan.first_line[manager]}, which was rejected."

    def cascade(gone: list[str]) -> None:
        # A rejected user who is not already in the database cannot manage anyone.
        while gone:
            email = gone.pop()
            if email in in_db:
                continue
            for report in reports.get(email, ()):
                if report in imported:
                    plan.reject(report, fallen(email))
                    gone.append(report)

    gone: list[str] = []
    for email, manager in list(imported.items()):
        if email not in imported:
            continue  # already taken down by a cascade
        if manager is None or manager in imported or manager in in_db:
            continue
        if manager in plan.first_line:
            plan.reject(email, fallen(manager))
        else:
            plan.reject(email, f"Manager {manager} is neither in this file nor a user.")
        gone.append(email)
        cascade(gone)

    loops = find_loops(imported, in_db, lookup)
    for loop in loops:
        chain = " → ".join([*loop[:8], "…"] if len(loop) > 8 else loop) + f" → {loop[0]}"
        for email in loop:
            if email in imported:
                plan.reject(email, f"The manager chain loops: {chain}.")
                gone.append(email)
    cascade(gone)


def find_loops(imported: dict[str, str | None], known: dict[str, str | None],
               lookup: Lookup) -> list[list[str]]:
    """Loops of the manager graph after the import that pass through an imported user.

    An imported user's manager is the file's; anyone else's is the database's,
    looked up as the walk reaches them (`known` holds those already looked up).
    """
    known = dict(known)
    frontier = {m for e, m in known.items() if m and e not in imported} - imported.keys()
    frontier -= known.keys()
    while frontier:
        found = lookup(frontier)
        known.update(found)
        frontier = {m for m in found.values() if m and m not in imported and m not in known}

    def boss(email: str) -> str | None:
        return imported[email] if email in imported else known.get(email)

    state: dict[str, bool] = {}  # False while on the current walk, True when done
    loops: list[list[str]] = []
    for start in imported:
        path: list[str] = []
        node: str | None = start
        while node is not None and node not in state:
            state[node] = False
            path.append(node)
            node = boss(node)
        if node is not None and state[node] is False:
            loop = path[path.index(node):]
            if any(e in imported for e in loop):
                loops.append(loop)
        for node_ in path:
            state[node_] = True
    return loops


def rows_to_import(records: Iterable[tuple[int, list[str]]], cols: dict[str, int],
                   plan: Plan, wanted: Callable[[int], bool]) -> Iterator[UserRow]:
    """A later pass: the rows of the valid lines `wanted` (by number).

    Their fields are cleaned as `check_row()` cleaned them, not checked again; the
    manager is the one `resolve_managers()` kept.
    """
    for line, fields in records:
        if wanted(line) and line not in plan.rejected:
            email = normalize_email(fields[cols["email"]].strip())
            yield UserRow(line, email, fields[cols["name"]].strip(),
                          fields[cols["role"]].strip().lower(),
                          fields[cols["department"]].strip() or None,
                          plan.manager_of[email])


def _cell(value: str) -> str:
    # A spreadsheet would run a cell that starts like a formula (OWASP CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def write_errors_csv(path: Path, errors: Iterable[Rejection]) -> None:
    """The rejected lines as CSV (with a BOM, for spreadsheets); replaced atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ERRORS_CSV_COLUMNS)
        for r in errors:
            writer.writerow((r.line, _cell(r.email), r.message))
    os.replace(tmp, path)
