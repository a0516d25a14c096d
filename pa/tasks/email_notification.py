"""`email_notification`: one message per recipient, resumable after a crash."""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import aliased

from pa import db, mail
from pa.errors import PermanentJobError
from pa.handlers import JobContext, handler
from pa.models import Review, Role, User
from pa.queue import JobType
from pa.settings import settings

log = logging.getLogger(__name__)

#: what each kind of notification needs: its template and how to find recipients
KINDS = {"review_submitted"}


_employee, _manager = aliased(User), aliased(User)
# Core columns, built once: an ORM query of three entities cost 4 ms per job.
_REVIEW = (
    select(Review.id, Review.fiscal_year, Review.department, Review.overall_rating,
           Review.ratings, Review.goals, Review.manager_comments,
           _employee.name.label("employee_name"), _employee.email.label("employee_email"),
           _manager.name.label("manager_name"))
    .join(_employee, Review.employee_id == _employee.id)
    .outerjoin(_manager, Review.manager_id == _manager.id)
    .where(Review.id == bindparam("review_id"))
)
_HR_ADMINS = (
    select(User.email, User.name).where(User.role == Role.HR_ADMIN.value).order_by(User.id)
)


def _review_context(review_id: int) -> dict[str, Any]:
    with db.read() as conn:
        row = conn.execute(_REVIEW, {"review_id": review_id}).first()
    if row is None:
        raise PermanentJobError(f"Review {review_id} no longer exists.")
    return {
        "review_id": row.id,
        "fiscal_year": row.fiscal_year,
        "department": row.department or "",
        "employee_name": row.employee_name,
        "employee_email": row.employee_email,
        "manager_name": row.manager_name or "",
        "overall_rating": row.overall_rating,
        "ratings": dict(row.ratings or {}),
        "goals": row.goals or "",
        "manager_comments": row.manager_comments or "",
        "url": settings.link(f"/reviews?id={row.id}"),
    }


def _hr_recipients() -> list[tuple[str, str]]:
    with db.read() as conn:
        rows = conn.execute(_HR_ADMINS).all()
    return [(r.email, r.name) for r in rows]


def _is_permanent(exc: smtplib.SMTPException) -> str | None:
    """The reason to give up, if retrying cannot help (a 5xx answer)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = exc.recipients
        if refused and all(code >= 500 for code, _ in refused.values()):
            return f"Recipient refused by the mail server: {_refused(exc)}"
        return None
    code = getattr(exc, "smtp_code", None)
    if isinstance(code, int) and code >= 500:
        text = getattr(exc, "smtp_error", b"")
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        return f"Mail server refused the message: {code} {text}"
    return None


def _refused(exc: smtplib.SMTPRecipientsRefused) -> str:
    """The server's answers, without the addresses: the job's owner (a manager)
    is not shown whom HR's mail goes to; the log names them."""
    log.warning("mail server refused %s", ", ".join(
        f"{addr} ({code} {msg.decode(errors='replace')})"
        for addr, (code, msg) in exc.recipients.items()))
    answers = sorted({f"{code} {msg.decode(errors='replace')}"
                      for code, msg in exc.recipients.values()})
    count = len(exc.recipients)
    return f"{count} recipient{'s' if count != 1 else ''} ({'; '.join(answers)})"


class TemporaryMailError(Exception):
    """Raised when the mail server asks us to try again later (a 4xx answer)."""


def _describe_smtp(exc: smtplib.SMTPException) -> str:
    code = getattr(exc, "smtp_code", None)
    text = getattr(exc, "smtp_error", b"")
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"Mail server refused recipients for now: {_refused(exc)}"
    if code:
        return f"Mail server answered {code} {text}".strip()
    return f"Mail server error: {exc}"


def _send_one(ctx: JobContext, sender: mail.Sender, msg: EmailMessage, email: str,
              sent: list[str], total: int) -> None:
    """Send one message; `email` joins `sent` (and the job's checkpoint) exactly when
    the server may have it."""

    def record() -> None:
        # Committed just before the server can have the message (mail.Sender.send):
        # a consumer killed after this has delivered it, one killed before has not.
        ctx.save_checkpoint({"sent": [*sent, email]}, publish=False)
        sent.append(email)

    try:
        sender.send(msg, record)
    except smtplib.SMTPException as exc:
        if email in sent:
            # Refused at the final dot, after the mark, or no answer to it (the
            # connection lost): the server did not take it (RFC 5321 counts a message
            # delivered by its 250 answer), so the next attempt sends it again.
            sent.remove(email)
            ctx.save_checkpoint({"sent": list(sent)})
        reason = _is_permanent(exc)
        if reason:
            raise PermanentJobError(reason) from exc
        raise TemporaryMailError(_describe_smtp(exc)) from exc
    ctx.progress(len(sent), total, f"Sent {len(sent)} of {total}")


@handler(JobType.EMAIL_NOTIFICATION)
def send_notification(ctx: JobContext) -> dict[str, int]:
    kind = ctx.payload.get("kind")
    if kind not in KINDS:
        raise PermanentJobError(f"Unknown notification kind {kind!r}.")
    context = _review_context(int(ctx.payload["reviewId"]))
    recipients = _hr_recipients()
    # Recipients mailed by an earlier, interrupted run are not mailed again.
    sent: list[str] = list((ctx.checkpoint or {}).get("sent", []))
    todo = [(email, name) for email, name in recipients if email not in sent]
    total = len(sent) + len(todo)
    if todo:
        with mail.connect() as sender:
            for email, name in todo:
                ctx.check()
                msg = mail.render(
                    "review_submitted", email,
                    f"Review submitted to HR: {context['employee_name']} "
                    f"(FY{context['fiscal_year']})",
                    {**context, "recipient_name": name},
                )
                _send_one(ctx, sender, msg, email, sent, total)
    return {"sent": len(sent)}
