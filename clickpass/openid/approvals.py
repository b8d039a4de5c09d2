"""
Remembered approvals: a person who allowed a site (a realm) once is signed
in there without being asked again, as long as the site asks for nothing
more than what they allowed. This is what makes the sign-on single.

Transactions for the storage's pool; nothing here renders or decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from clickpass.openid.identifiers import last_use_due
from clickpass.storage.sql import Transaction

# The table's key on MariaDB is (account_id, realm(255)): a longer realm would
# share its key with every realm of the same first 255 characters, and the
# second approval would be dropped while reported kept. Such a realm is not
# remembered: the person is asked each time.
MAX_REALM = 255
MAX_FIELDS = 1024

# An approval's C{last_used} is kept to the same resolution as a site
# identifier's: a sign-in that it covers writes it only when the stored
# value is older, so repeated sign-ins are reads.


def remember(
    tx: Transaction,
    account_id: int,
    realm: str,
    fields: frozenset[str],
    now: int,
    declined: frozenset[str] = frozenset(),
    always_ask: bool = False,
) -> bool:
    """
    Record (or replace) an approval; false when the realm is too long to
    keep. C{declined}: what the site asked for and the person chose not to
    share; C{always_ask}: the person wants to be asked every time (the
    approval is kept for their account page, and never answers at once).
    """
    text = ",".join(sorted(fields))
    declined_text = ",".join(sorted(declined - fields))
    if len(realm) > MAX_REALM or len(text) > MAX_FIELDS or len(declined_text) > MAX_FIELDS:
        return False
    changed = tx.execute(
        "UPDATE approvals SET fields = ?, declined = ?, always_ask = ?, last_used = ?"
        " WHERE account_id = ? AND realm = ?",
        text,
        declined_text,
        int(always_ask),
        now,
        account_id,
        realm,
    )
    if not changed:
        tx.execute(
            tx.dialect.insert_ignore() + " INTO approvals "
            "(account_id, realm, fields, declined, always_ask, created, last_used)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            account_id,
            realm,
            text,
            declined_text,
            int(always_ask),
            now,
            now,
        )
    return True


@dataclass(frozen=True)
class Approval:
    """
    What a person allowed a realm to receive (and chose not to share), whether
    they want to be asked every time, and when the approval was last used.
    """

    fields: frozenset[str]
    last_used: int
    declined: frozenset[str] = frozenset()
    always_ask: bool = False

    def covers(self, fields: frozenset[str]) -> bool:
        """Whether a sign-in releasing C{fields} may go ahead without asking."""
        return not self.always_ask and fields <= self.fields

    def answers(self, fields: frozenset[str]) -> bool:
        """
        Whether a request for C{fields} may go ahead without asking, releasing
        only what was allowed (L{shared}): each was allowed or declined before.
        """
        return not self.always_ask and fields <= self.fields | self.declined

    def shared(self, values: dict[str, str]) -> dict[str, str]:
        """The part of C{values} the person allowed (declined fields left out)."""
        return {f: v for f, v in values.items() if f in self.fields}

    def stale(self, now: int) -> bool:
        """Whether using it now must record the use (L{last_use_due})."""
        return last_use_due(self.last_used, now)


def read(tx: Transaction, account_id: int, realm: str) -> Approval | None:
    """The approval of C{realm}, or L{None} when it was never approved."""
    row = tx.fetchone(
        "SELECT fields, last_used, declined, always_ask FROM approvals"
        " WHERE account_id = ? AND realm = ?",
        account_id,
        realm,
    )
    if row is None:
        return None
    return Approval(
        frozenset(_fields(row[0])), int(row[1]), frozenset(_fields(row[2])), bool(row[3])
    )


def touch(tx: Transaction, account_id: int, realm: str, now: int) -> None:
    """Record a use of the approval (when L{Approval.stale} says so)."""
    tx.execute(
        "UPDATE approvals SET last_used = ? WHERE account_id = ? AND realm = ?",
        now,
        account_id,
        realm,
    )


@dataclass(frozen=True)
class Remembered:
    """One approval as its person sees it on their account page."""

    realm: str
    fields: tuple[str, ...]
    created: int
    last_used: int
    always_ask: bool = False


def remembered(tx: Transaction, account_id: int) -> list[Remembered]:
    """Every approval C{account_id} gave, the most recently used first."""
    rows = tx.fetchall(
        "SELECT realm, fields, created, last_used, always_ask FROM approvals"
        " WHERE account_id = ? ORDER BY last_used DESC, realm",
        account_id,
    )
    return [
        Remembered(
            str(realm),
            _fields(fields),
            int(created),
            int(last_used),
            bool(always_ask),
        )
        for realm, fields, created, last_used, always_ask in rows
    ]


def _fields(stored: object) -> tuple[str, ...]:
    """The field names of an approval's C{fields} column, as L{remember} wrote them."""
    return tuple(f for f in str(stored).split(",") if f)


def forget(tx: Transaction, account_id: int, realm: str) -> bool:
    """Forget C{account_id}'s approval of C{realm}: the next sign-in there asks again."""
    return (
        tx.execute("DELETE FROM approvals WHERE account_id = ? AND realm = ?", account_id, realm)
        > 0
    )
