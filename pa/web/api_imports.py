"""`POST /api/users/import` and its template CSV.

The multipart body is parsed as it arrives (python-multipart's streaming parser)
and the file part goes straight to `PA_DATA_DIR/uploads/<uuid>.csv`: never whole
in memory, and no detour through a temporary file. Starlette's `request.form()`
limits only non-file parts (`max_part_size`); a file part would be spooled to a
temporary file whatever its size, so the size limit could only be checked after
the whole upload. Here it stops at the first byte over `PA_MAX_UPLOAD_MB`.

Checked before the job is enqueued: size (413), UTF-8 for every byte (BOM allowed),
every line's length and number of fields (imports.LineLimits), the header's
columns (422). A refused upload leaves no file and no job.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from pa import imports, jobs
from pa.errors import Invalid, TooLarge, Unavailable, Unprocessable
from pa.models import Role
from pa.queue import JobType
from pa.settings import settings
from pa.web.auth import require_user
from pa.web.responses import accepted, from_error

log = logging.getLogger(__name__)

FIELD = "file"
#: besides the file: the multipart envelope and any small fields
ENVELOPE_BYTES = 64 * 1024
#: file data is written (in the threadpool) once this much has arrived
FLUSH_BYTES = 1024 * 1024
NO_FILE = f"Send the CSV as a multipart/form-data file field named '{FIELD}'."


@dataclass
class _Receiver:
    """python-multipart callbacks: the part named `file` goes to `dest`, checked as it goes."""

    dest: Path
    max_bytes: int
    filename: str | None = None
    size: int = 0
    other_bytes: int = 0
    header: bytearray = field(default_factory=bytearray)
    header_done: bool = False
    lines: int = 0
    limits: imports.LineLimits = field(default_factory=imports.LineLimits)
    error: Exception | None = None
    _file: IO[bytes] | None = None
    _pending: list[bytes] = field(default_factory=list)
    _pending_size: int = 0
    _headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    _name: bytes = b""
    _value: bytes = b""
    _in_file: bool = False
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")())

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add_name(d[s:e]),
            "on_header_value": lambda d, s, e: self._add_value(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers.clear()
        self._in_file = False

    def _add_name(self, data: bytes) -> None:
        self._name += data

    def _add_value(self, data: bytes) -> None:
        self._value += data

    def _header_end(self) -> None:
        self._headers.append((self._name.lower(), self._value))
        self._name = self._value = b""

    def _headers_finished(self) -> None:
        disposition = dict(self._headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        if options.get(b"name", b"").decode("utf-8", "replace") != FIELD:
            return
        if self.error is not None:
            return
        if b"filename" not in options:
            self.error = Invalid(f"The '{FIELD}' field must be a file. {NO_FILE}", field=FIELD)
        elif self.filename is not None:
            self.error = Invalid(f"Send one file in '{FIELD}', not several.", field=FIELD)
        else:
            self.filename = options[b"filename"].decode("utf-8", "replace") or "upload.csv"
            self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            self.other_bytes += end - start
            return
        self.size += end - start
        self._pending.append(data[start:end])
        self._pending_size += end - start

    def _part_end(self) -> None:
        self._in_file = False

    @property
    def flush_due(self) -> bool:
        return self._pending_size >= FLUSH_BYTES

    def flush(self, final: bool = False) -> None:
        """Write what arrived and check it decodes as UTF-8 (threadpool: file I/O)."""
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if not data and not final:
            return
        if self._file is None:
            self._file = open(self.dest, "xb")
        self._file.write(data)
        if not self.header_done:
            ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
            end = min(ends) if ends else -1
            self.header += data if end < 0 else data[:end + 1]
            self.header_done = end >= 0 or len(self.header) > imports.LINE_MAX_BYTES
        buffered = len(self._decoder.getstate()[0])
        try:
            self._decoder.decode(data, final=final)
        except UnicodeDecodeError as exc:
            line = self.lines + data[:max(0, exc.start - buffered)].count(b"\n") + 1
            raise Unprocessable(
                f"The file is not UTF-8 text (line {line} is not); save it as "
                "\"CSV UTF-8\".", field=FIELD) from None
        self.lines += data.count(b"\n")
        self.limits.feed(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _too_large() -> TooLarge:
    return TooLarge(f"The file is larger than {settings.max_upload_mb} MB.", field=FIELD)


async def receive_csv(request: Request, max_bytes: int, dest: Path) -> str:
    """Stream the `file` part of a multipart request into `dest` and check it.

    Returns the file's original name. Raises Invalid (400), TooLarge (413),
    Unprocessable (422) or, when the disk is full, Unavailable (503), and then `dest`
    does not exist.
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise Invalid(NO_FILE, field=FIELD)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + ENVELOPE_BYTES:
        raise _too_large()
    receiver = _Receiver(dest, max_bytes)
    try:
        try:
            parser = MultipartParser(params[b"boundary"], receiver.callbacks())  # type: ignore[arg-type]
            async for chunk in request.stream():
                parser.write(chunk)
                if receiver.error is not None:
                    raise receiver.error
                if receiver.size > max_bytes:
                    raise _too_large()
                if receiver.other_bytes > ENVELOPE_BYTES:
                    raise Invalid(f"Only the '{FIELD}' file is expected.", field=FIELD)
                if receiver.flush_due:
                    await run_in_threadpool(receiver.flush)
            parser.finalize()
        except FormParserError:
            raise Invalid("The multipart body is malformed.", field=FIELD) from None
        except ClientDisconnect:
            raise Invalid("The upload was cut off.", field=FIELD) from None
        if receiver.filename is None:
            raise Invalid(NO_FILE, field=FIELD)
        await run_in_threadpool(receiver.flush, True)
        if receiver.size == 0:
            raise Unprocessable("The file is empty.", field=FIELD)
        imports.header_from_bytes(bytes(receiver.header))
        await run_in_threadpool(receiver.close)  # (a full disk may show only here)
    except OSError as exc:
        # The data folder is full (or failing): nothing is kept, the client may retry.
        _discard(receiver, dest)
        log.error("upload not stored: %s", exc)
        raise Unavailable("The server has no room for the file now; try again later.",
                          field=FIELD) from None
    except BaseException:
        _discard(receiver, dest)
        raise
    return receiver.filename


def _discard(receiver: _Receiver, dest: Path) -> None:
    """Remove a refused upload's file (its close may fail too: the disk is full)."""
    with contextlib.suppress(OSError):
        receiver.close()
    dest.unlink(missing_ok=True)


async def import_users(request: Request) -> Response:
    """Import users from a CSV file (admin); see docs/IMPORT.md.
    ---
    requestBody:
      required: true
      content:
        multipart/form-data:
          schema:
            type: object
            required: [file]
            properties: {file: {type: string, format: binary}}
    responses: {"202": {$ref: "#/components/responses/Accepted"}}
    """
    user = await require_user(request, Role.ADMIN)
    folder = settings.data_dir / imports.UPLOADS_DIR
    await run_in_threadpool(folder.mkdir, parents=True, exist_ok=True)
    dest = folder / f"{uuid.uuid4().hex}.csv"
    try:
        filename = await receive_csv(request, settings.max_upload_mb * 1024 * 1024, dest)
    except TooLarge as exc:
        # The rest of the body was not read: close the connection rather than drain it.
        response = from_error(exc)
        response.headers["connection"] = "close"
        return response
    payload = {"path": f"{imports.UPLOADS_DIR}/{dest.name}", "filename": filename}
    # submit() raises only when the job row was not committed (enqueueing and
    # publishing failures are logged and healed by the reaper): then nothing uses the file.
    try:
        job = await run_in_threadpool(jobs.submit, JobType.BULK_IMPORT, payload, user.id)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return accepted(job, f"Importing users from {filename}.")


async def import_template(request: Request) -> Response:
    """An empty import file with its header (admin).
    ---
    responses:
      "200":
        description: The CSV template, as an attachment.
        content: {text/csv: {schema: {type: string}}}
    """
    await require_user(request, Role.ADMIN)
    return Response(
        imports.TEMPLATE_CSV, media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="pa-users-template.csv"'},
    )


routes = [
    Route("/api/users/import", import_users, methods=["POST"]),
    Route("/api/users/import/template", import_template, methods=["GET"]),
]
