"""Rendering and sending mail: SMTP at PA_SMTP_URL, or `.eml` files in PA_DATA_DIR/outbox."""

from __future__ import annotations

import smtplib
import ssl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from pa.settings import settings

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


class Sender(Protocol):
    def send(self, msg: EmailMessage) -> None: ...


class OutboxSender:
    """Writes each message to PA_DATA_DIR/outbox as an .eml file (no SMTP configured)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def send(self, msg: EmailMessage) -> None:
        tmp = self.folder / f".{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(bytes(msg))
        tmp.rename(self.folder / f"{uuid.uuid4().hex}.eml")


class SmtpSender:
    def __init__(self, client: smtplib.SMTP) -> None:
        self.client = client

    def send(self, msg: EmailMessage) -> None:
        self.client.send_message(msg)


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
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            host, url.port or 465, timeout=30, context=ssl.create_default_context()
        )
    else:
        client = smtplib.SMTP(host, url.port or 25, timeout=30)
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
