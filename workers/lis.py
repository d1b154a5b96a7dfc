"""Delivery of signed-out reports to the LIS: HL7 v2 over MLLP (TCP), from the ``lis_outbox`` table.

Contract (docs/reports.md): **at least once, with a stable control id**. The sign-out transaction writes the
message into the outbox (one row per report version: a unique key), so nothing is lost when the LIS or the
broker is down. A sender locks the row (``SELECT ... FOR UPDATE SKIP LOCKED``) for the whole send and marks it
``sent`` in the same transaction once the LIS answers ``AA``/``CA`` for that control id; a second sender skips
a locked row, and a sent row is never sent again. If the sender dies after the LIS received the message and
before the commit, the row is still ``pending`` and the message is sent again with the *same* MSH-10 control
id, which the LIS uses to discard the repeat (HL7 original-mode acknowledgement de-duplication).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta

from hl7apy.parser import parse_message
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import LisOutbox, OutboxStatus
from hep2.settings import Settings

START, END = b"\x0b", b"\x1c\x0d"
"""MLLP framing: <VT> message <FS><CR>."""
ACCEPTED = {"AA", "CA"}


class LisError(Exception):
    """The LIS could not be reached or did not accept the message; retried with backoff."""


@dataclass(frozen=True)
class Ack:
    code: str
    control_id: str
    text: str


def frame(message: str) -> bytes:
    return START + message.encode("utf-8") + END


def read_frame(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """One MLLP frame's payload from ``sock`` (ConnectionError if it closes first)."""
    buffer = b""
    while END not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the LIS closed the connection before a complete MLLP frame")
        buffer += chunk
        if len(buffer) > limit:
            raise LisError("MLLP frame too large")
    start = buffer.find(START)
    return buffer[start + 1 if start >= 0 else 0: buffer.index(END)]


def parse_ack(payload: bytes) -> Ack:
    msg = parse_message(payload.decode("utf-8").replace("\n", "\r").strip("\r"))
    return Ack(code=msg.msa.msa_1.value, control_id=msg.msa.msa_2.value,
               text=msg.msa.msa_3.value if msg.msa.msa_3.value else "")


def mllp_send(host: str, port: int, message: str, timeout_s: float) -> Ack:
    """Send one message and wait for its ACK."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(frame(message))
        return parse_ack(read_frame(sock))


def backoff_s(retries: int, settings: Settings) -> float:
    """Exponential backoff: base, 2 x base, 4 x base, ... up to the maximum."""
    return float(min(settings.lis_retry_max_s, settings.lis_retry_base_s * 2 ** min(retries, 20)))


def deliver(session: Session, outbox_id: int, settings: Settings) -> str:
    """Send one outbox message under its row lock; returns what happened, raises :class:`LisError` to retry.

    Commits the session (the lock is held until then)."""
    row = session.scalar(select(LisOutbox).where(LisOutbox.id == outbox_id).with_for_update(skip_locked=True))
    if row is None:
        exists = session.scalar(select(LisOutbox.id).where(LisOutbox.id == outbox_id)) is not None
        session.rollback()
        return "busy: another sender holds it" if exists else "missing"
    if row.status is OutboxStatus.SENT:
        session.rollback()
        return "already sent"
    if not settings.lis_host:
        session.rollback()
        return "no LIS configured (HEP2_LIS_HOST); the message waits in the outbox"
    row.attempts += 1
    try:
        ack = mllp_send(settings.lis_host, settings.lis_port, row.message, settings.lis_timeout_s)
    except (OSError, ConnectionError, LisError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    else:
        if ack.code in ACCEPTED and ack.control_id == row.control_id:
            row.status, row.ack_code, row.sent_at, row.last_error = OutboxStatus.SENT, ack.code, utcnow(), None
            session.commit()
            return "sent"
        error = f"ACK {ack.code} for {ack.control_id!r}: {ack.text}"
        row.ack_code = ack.code
    row.last_error = error
    row.next_attempt_at = utcnow() + timedelta(seconds=backoff_s(row.attempts, settings))
    session.commit()
    raise LisError(error)


def overdue(session: Session, settings: Settings) -> list[int]:
    """Pending messages whose retry is overdue (their retry chain was lost: broker restart, retries spent)."""
    cutoff = utcnow() - timedelta(seconds=settings.lis_retry_max_s)
    return list(session.scalars(select(LisOutbox.id).where(LisOutbox.status == OutboxStatus.PENDING,
                                                            LisOutbox.next_attempt_at < cutoff)
                                .order_by(LisOutbox.id)))
