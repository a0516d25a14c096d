"""Rendering and sending mail: SMTP at PA_SMTP_URL, or `.eml` files in PA_DATA_DIR/outbox."""

from __future__ import annotations

import re
import smtplib
import ssl
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from pa.settings import settings

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "emails"

_text_env = Environment(
    loader=FileSystemLoader(TEMPLATES), autoescape=False, undefined=StrictUndefined,
    keep_trailing_newline=True,
)
_html_env = Environment(
    loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined
)


def _header(text: str) -> str:
    # A newline in a header would let user text forge headers.
    return " ".join(text.split())


def render(template: str, to: str, subject: str, context: dict[str, Any]) -> EmailMessage:
    """A multipart message from `<template>.txt` and `<template>.html`."""
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = to
    msg["Subject"] = _header(subject)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain="pa.local")
    msg.set_content(_text_env.get_template(f"{template}.txt").render(**context))
    msg.add_alternative(
        _html_env.get_template(f"{template}.html").render(**context), subtype="html"
    )
    return msg


#: called once the message is ready to go and before it can be delivered (see Sender)
Record = Callable[[], None]


class Sender(Protocol):
    def send(self, msg: EmailMessage, record: Record | None = None) -> None:
        """Deliver `msg`; `record` (the caller's "sent" mark) runs just before it is
        released. A crash before `record` leaves nothing delivered, a crash after it a
        delivered message that is recorded, so a second run neither skips nor repeats it.
        """


class OutboxSender:
    """Writes each message to PA_DATA_DIR/outbox as an .eml file (no SMTP configured)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def send(self, msg: EmailMessage, record: Record | None = None) -> None:
        tmp = self.folder / f".{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(bytes(msg))
        if record is not None:
            try:
                record()
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        tmp.rename(self.folder / f"{uuid.uuid4().hex}.eml")


_LEADING_DOT = re.compile(rb"(?m)^\.")


class _Smtp(smtplib.SMTP):
    """SMTP whose DATA sends the whole message, runs `record`, then the final dot.

    The server delivers a message only once it has the dot; until then a lost
    connection drops it. So the ambiguous moment shrinks from a round trip to the
    mail server and a commit to the wait for the commit's answer (a database round
    trip): a process killed then has recorded a message that it never delivers. It
    is never delivered twice.
    """

    record: Record | None = None

    def data(self, msg: ReadableBuffer | str) -> tuple[int, bytes]:
        self.putcmd("data")
        code, reply = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        # send_message() hands over bytes with CRLF line ends.
        body = msg.encode("ascii") if isinstance(msg, str) else bytes(msg)
        body = _LEADING_DOT.sub(b"..", body)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self.send(body)
        if self.record is not None:
            try:
                self.record()
            except BaseException:
                self.close()  # the server drops the unfinished message
                raise
        self.send(b".\r\n")
        return self.getreply()


class _SmtpSsl(_Smtp, smtplib.SMTP_SSL):
    pass


class SmtpSender:
    def __init__(self, client: _Smtp) -> None:
        self.client = client

    def send(self, msg: EmailMessage, record: Record | None = None) -> None:
        self.client.record = record
        try:
            self.client.send_message(msg)
        finally:
            self.client.record = None


@contextmanager
def connect() -> Iterator[Sender]:
    """One SMTP session (or the outbox) for a batch of messages."""
    if not settings.smtp_url:
        yield OutboxSender(settings.data_dir / "outbox")
        return
    url = urlsplit(settings.smtp_url)
    if url.scheme not in ("smtp", "smtps"):
        raise ValueError(f"PA_SMTP_URL must start with smtp:// or smtps://, not {url.scheme}://")
    host = url.hostname or "localhost"
    if url.scheme == "smtps":
        client: _Smtp = _SmtpSsl(
            host, url.port or 465, timeout=30, context=ssl.create_default_context()
        )
    else:
        client = _Smtp(host, url.port or 25, timeout=30)
    try:
        if url.username:
            client.login(unquote(url.username), unquote(url.password or ""))
        yield SmtpSender(client)
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            client.close()
        except OSError:
            client.close()
