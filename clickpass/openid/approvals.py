"""
Remembered approvals: a person who allowed a site (a realm) once is signed
in there without being asked again, as long as the site asks for nothing
more than what they allowed. This is what makes the sign-on single.

Transactions for the storage's pool; nothing here renders or decides.
"""

from __future__ import annotations

from clickpass.database.storage import Transaction

MAX_REALM = 512
MAX_FIELDS = 1024

# C{last_used} is kept to this resolution: a sign-in that an approval covers
# writes it only when the stored value is older, so repeated sign-ins are reads.
LAST_USED_RESOLUTION = 3600


def remember(
    tx: Transaction, account_id: int, realm: str, fields: frozenset[str], now: int
) -> bool:
    """Record (or widen) an approval; false when the realm is too long to keep."""
    text = ",".join(sorted(fields))
    if len(realm) > MAX_REALM or len(text) > MAX_FIELDS:
        return False
    changed = tx.execute(
        "UPDATE approvals SET fields = ?, last_used = ? WHERE account_id = ? AND realm = ?",
        text,
        now,
        account_id,
        realm,
    )
    if not changed:
        tx.execute(
            tx.dialect.insert_ignore() + " INTO approvals "
            "(account_id, realm, fields, created, last_used) VALUES (?, ?, ?, ?, ?)",
            account_id,
            realm,
            text,
            now,
            now,
        )
    return True


def use(
    tx: Transaction, account_id: int, realm: str, fields: frozenset[str], now: int
) -> frozenset[str] | None:
    """
    The fields approved for C{realm} (L{None}: never approved); when they
    cover C{fields}, the approval is used, and its C{last_used} is brought
    up to date (to L{LAST_USED_RESOLUTION}).
    """
    row = tx.fetchone(
        "SELECT fields, last_used FROM approvals WHERE account_id = ? AND realm = ?",
        account_id,
        realm,
    )
    if row is None:
        return None
    approved = frozenset(f for f in str(row[0]).split(",") if f)
    if fields <= approved and int(row[1]) <= now - LAST_USED_RESOLUTION:
        tx.execute(
            "UPDATE approvals SET last_used = ? WHERE account_id = ? AND realm = ?",
            now,
            account_id,
            realm,
        )
    return approved


def forget(tx: Transaction, account_id: int, realm: str) -> bool:
    return (
        tx.execute("DELETE FROM approvals WHERE account_id = ? AND realm = ?", account_id, realm)
        > 0
    )
