"""
The mail outbox: table C{mail_outbox}, one row per message.

A message is queued by L{Outbox.enqueue} inside the transaction of the
change that causes it, so it is committed with that change or not at all.
The node's delivery service (L{clickpass.mail.service}) claims due rows
with a lease, sends them and records the outcome, as every leased outbox
does (L{clickpass.storage.outbox}): claiming takes row locks with C{SELECT
... FOR UPDATE SKIP LOCKED} on MariaDB (10.6 or newer), so nodes sharing a
database pass over each other's rows instead of queueing behind them; on
SQLite, one writer at a time, the claim is a conditional update. Either way
a row is claimed only when its lease has run out, so a node that died while
sending leaves its rows to be claimed again once the lease expires.

Use, from the code that makes a change (the composition root builds one
L{Outbox} and hands it over)::

    def sign_up(tx: Transaction, email: str, token: str, now: int) -> None:
        ...  # the change itself, in the same transaction
        outbox.enqueue(tx, email, "Confirm your address", "verify",
                       {"link": outbox.url("verify", token=token)}, now=now)

The states: pending (waiting or being sent), sent, failed (given up). A
sent message's body is cleared (a verification or reset link in it must
not outlive its delivery in the database); its headers stay for C{mail
status} until the retention time.

This module must never send anything: it only reads and writes the table,
inside transactions it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import message_from_string
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from clickpass.mail import message as mailmsg
from clickpass.mail.settings import MailSettings
from clickpass.storage.outbox import claim_rows, release_rows
from clickpass.storage.sql import Transaction

PENDING = 0
SENT = 1
FAILED = 2
STATE_NAMES = {PENDING: "pending", SENT: "sent", FAILED: "failed"}


@dataclass(frozen=True)
class Queued:
    """One claimed message, as the delivery service sends it."""

    row_id: int
    message_id: str
    recipient: str
    kind: str
    message: str
    created: int
    attempts: int
    give_up_at: int


class Outbox:
    """
    Queues messages. Built once from the settings; C{enqueue} runs inside
    the caller's transaction (a function given to C{Storage.run}), so it is
    plain, blocking-free code with no effect outside the database.
    """

    def __init__(self, settings: MailSettings, base_url: str) -> None:
        self.settings = settings
        self.base_url = base_url
        self.sender = mailmsg.sender(settings, base_url)
        self.templates = mailmsg.Templates(base_url)

    def url(self, path: str, **params: str) -> str:
        """An absolute link under the public URL, for a template's context."""
        return mailmsg.absolute_url(self.base_url, path, params)

    def enqueue(
        self,
        tx: Transaction,
        to: str,
        subject: str,
        template: str,
        context: dict[str, Any] | None = None,
        *,
        now: int,
        kind: str = "",
        unsubscribe: str = "",
        one_click_unsubscribe: bool = False,
    ) -> int:
        """
        Queue one message to C{to} in transaction C{tx}: C{template} rendered
        with C{context}, under C{subject}. C{unsubscribe} is a path under the
        public URL for List-Unsubscribe (messages a person can opt out of;
        never for verification or reset). Return the outbox id. Raises
        L{mailmsg.MessageError} (and so rolls the caller's transaction
        back, unless it catches it) when the message cannot be built.
        """
        rendered = self.templates.render(template, subject, dict(context or {}))
        message_id = mailmsg.new_message_id(self.base_url)
        built = mailmsg.compose(
            rendered,
            to=to,
            from_=self.sender,
            message_id=message_id,
            now=now,
            unsubscribe_url=self.url(unsubscribe) if unsubscribe else "",
            one_click_unsubscribe=one_click_unsubscribe,
        )
        tx.execute(
            "INSERT INTO mail_outbox (message_id, recipient, kind, subject, message, created, "
            "next_attempt, give_up_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            message_id,
            mailmsg.check_address(to),
            (kind or template)[:64],
            subject[:255],
            mailmsg.as_text(built),
            now,
            now,
            now + self.settings.give_up_after,
        )
        return tx.lastrowid


# What the delivery service does with the table.


def claim(tx: Transaction, now: int, lease: int, limit: int, owner: str) -> list[Queued]:
    """
    Lease up to C{limit} due messages to C{owner} until C{now + lease},
    oldest first: those whose lease ran out, and those still leased to
    C{owner} itself (a claim of its own whose COMMIT was cut off by a
    database failover; the delivery service's rounds never overlap, so
    none of them is being sent).
    """
    rows = claim_rows(
        tx,
        "mail_outbox",
        "SELECT id, message_id, recipient, kind, message, created, attempts, give_up_at "
        "FROM mail_outbox WHERE state = ? AND next_attempt <= ? "
        "AND (lease_until <= ? OR lease_owner = ?) ORDER BY next_attempt, id LIMIT ?",
        (PENDING, now, now, owner, limit),
        now,
        lease,
        pending=PENDING,
        owner=owner,
        own_again=True,
    )
    return [
        Queued(
            int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6]),
            int(r[7]),
        )
        for r in rows
    ]  # fmt: skip


def mark_sent(tx: Transaction, row_id: int, now: int) -> None:
    """The server took the message: keep its headers, drop its body."""
    tx.execute(
        "UPDATE mail_outbox SET state = ?, sent = ?, attempts = attempts + 1, lease_until = 0, "
        "message = '', last_error = '' WHERE id = ?",
        SENT,
        now,
        row_id,
    )


def mark_failed(
    tx: Transaction, row_id: int, owner: str, error: str, retry_at: int, give_up: bool
) -> bool:
    """
    Record a failed attempt: retry at C{retry_at}, or give up. Only while
    C{owner} still holds the lease (a row another node took over is that
    node's now). Return whether the row was updated.
    """
    return bool(
        tx.execute(
            "UPDATE mail_outbox SET state = ?, attempts = attempts + 1, next_attempt = ?, "
            "lease_until = 0, last_error = ? WHERE id = ? AND state = ? AND lease_owner = ?",
            FAILED if give_up else PENDING,
            retry_at,
            error[:255],
            row_id,
            PENDING,
            owner,
        )
    )


def release(tx: Transaction, row_ids: list[int], owner: str) -> None:
    """Give claimed rows back unsent (the service is stopping)."""
    release_rows(tx, "mail_outbox", row_ids, pending=PENDING, owner=owner)


def cleanup(tx: Transaction, before: int) -> int:
    """Delete sent and given-up messages created before C{before}."""
    return tx.execute("DELETE FROM mail_outbox WHERE state <> ? AND created < ?", PENDING, before)


@dataclass(frozen=True)
class Depth:
    """The outbox at a glance, for metrics and the alert."""

    queued: int
    oldest_created: int | None


def depth(tx: Transaction) -> Depth:
    row = tx.fetchone("SELECT COUNT(*), MIN(created) FROM mail_outbox WHERE state = ?", PENDING)
    assert row is not None
    return Depth(int(row[0] or 0), int(row[1]) if row[1] is not None else None)


# What operators ask (clickpass-ctl mail ...).


def _summary(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": int(row[0]),
        "to": str(row[1]),
        "kind": str(row[2]),
        "subject": str(row[3]),
        "state": STATE_NAMES.get(int(row[4]), str(row[4])),
        "created": int(row[5]),
        "attempts": int(row[6]),
        "next_attempt": int(row[7]),
        "sent": int(row[8]),
        "last_error": str(row[9]),
        "message_id": str(row[10]),
        "give_up_at": int(row[11]),
        "leased_until": int(row[12]),
        "lease_owner": str(row[13]),
    }


_SUMMARY_COLUMNS = (
    "id, recipient, kind, subject, state, created, attempts, next_attempt, sent, last_error, "
    "message_id, give_up_at, lease_until, lease_owner"
)


def status(tx: Transaction, limit: int) -> dict[str, Any]:
    """Counts by state, the oldest waiting message, and the latest unsent or given-up ones."""
    counts = {name: 0 for name in STATE_NAMES.values()}
    for state, count in tx.fetchall("SELECT state, COUNT(*) FROM mail_outbox GROUP BY state"):
        counts[STATE_NAMES.get(int(state), str(state))] = int(count)
    found = depth(tx)
    rows = tx.fetchall(
        f"SELECT {_SUMMARY_COLUMNS} FROM mail_outbox WHERE state <> ? ORDER BY id DESC LIMIT ?",
        SENT,
        limit,
    )
    last_sent = tx.scalar("SELECT MAX(sent) FROM mail_outbox WHERE state = ?", SENT)
    return {
        "counts": counts,
        "oldest_unsent_created": found.oldest_created,
        "last_sent": int(last_sent) if last_sent else None,
        "unsent": [_summary(r) for r in rows],
    }


def show(tx: Transaction, row_id: int) -> dict[str, Any] | None:
    """One message: its outbox record, headers and text part (when not yet cleared)."""
    row = tx.fetchone(f"SELECT {_SUMMARY_COLUMNS}, message FROM mail_outbox WHERE id = ?", row_id)
    if row is None:
        return None
    found = _summary(row)
    source = str(row[-1])
    found["headers"] = {}
    found["text"] = None
    if source:
        parsed = message_from_string(source, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        found["headers"] = {k: str(v) for k, v in parsed.items()}
        part = parsed.get_body(("plain",))
        found["text"] = part.get_content() if part is not None else None
    return found


def requeue(tx: Transaction, row_id: int, now: int, give_up_after: int) -> str | None:
    """
    Queue a given-up or waiting message again, due now, with a fresh
    give-up time. Return the refusal (one line) when it cannot be.
    """
    row = tx.fetchone("SELECT state, lease_until FROM mail_outbox WHERE id = ?", row_id)
    if row is None:
        return f"no message {row_id} in the outbox"
    if int(row[0]) == SENT:
        return f"message {row_id} was already sent; it is never sent twice"
    if int(row[0]) == PENDING and int(row[1]) > now:
        return f"message {row_id} is being sent right now"
    tx.execute(
        "UPDATE mail_outbox SET state = ?, next_attempt = ?, give_up_at = ?, lease_until = 0 "
        "WHERE id = ?",
        PENDING,
        now,
        now + give_up_after,
        row_id,
    )
    return None


__all__ = [
    "FAILED",
    "PENDING",
    "SENT",
    "Depth",
    "Outbox",
    "Queued",
    "claim",
    "cleanup",
    "depth",
    "mark_failed",
    "mark_sent",
    "release",
    "requeue",
    "show",
    "status",
]
