"""
What the partner console shows of a site's OpenID Connect clients: each
client's id and name, and how its back-channel logouts fared (how many
were delivered, wait for delivery, or were given up; the last error).
Read-only: the console gets this through its C{SiteClients} seam, since
the partner package does not import this one.

It must never return a secret, a token or a person's identifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clickpass.oidc.backchannel import DELIVERED, GIVEN_UP, PENDING
from clickpass.storage.sql import Storage, Transaction


@dataclass(frozen=True)
class ClientLogouts:
    """One client of a site, as the console lists it."""

    client_id: str
    client_name: str
    backchannel_logout_uri: str
    delivered: int = 0
    pending: int = 0
    given_up: int = 0
    last_error: str = ""


def site_clients(tx: Transaction, site_id: int) -> list[ClientLogouts]:
    """The clients of the site C{site_id}, oldest first, with their logouts' states."""
    rows = tx.fetchall(
        "SELECT client_id, client_name, backchannel_logout_uri FROM oidc_clients "
        "WHERE site_id = ? ORDER BY created, client_id",
        site_id,
    )
    found = []
    for client_id, name, uri in rows:
        counts = {
            int(state): int(count)
            for state, count in tx.fetchall(
                "SELECT state, COUNT(*) FROM oidc_logouts WHERE client_id = ? GROUP BY state",
                client_id,
            )
        }
        error = tx.fetchone(
            "SELECT last_error FROM oidc_logouts "
            "WHERE client_id = ? AND last_error <> '' ORDER BY id DESC LIMIT 1",
            client_id,
        )
        found.append(
            ClientLogouts(
                str(client_id), str(name or ""), str(uri or ""),
                delivered=counts.get(DELIVERED, 0), pending=counts.get(PENDING, 0),
                given_up=counts.get(GIVEN_UP, 0),
                last_error=str(error[0]) if error else "",
            )
        )  # fmt: skip
    return found


class SiteClients:
    """The partner console's C{SiteClients} seam, over the node's storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def for_site(self, site_id: int) -> list[dict[str, Any]]:
        found = await self.storage.run(site_clients, site_id)
        return [
            {
                "client_id": c.client_id,
                "client_name": c.client_name,
                "backchannel": bool(c.backchannel_logout_uri),
                "delivered": c.delivered,
                "pending": c.pending,
                "given_up": c.given_up,
                "last_error": c.last_error,
            }
            for c in found
        ]
