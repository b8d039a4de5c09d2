"""
Mail through an unplanned database failover, for real: two nodes' mail
delivery services (each with its own connection pool through the database
VIP) empty the outbox into a real SMTP server (aiosmtpd, STARTTLS and
AUTH) while messages are queued in transactions through the same VIP, and
the primary's server is killed (kill -9) so that its semi-sync replica is
promoted. Every message whose queuing transaction was acknowledged arrives
exactly once (counted by Message-ID), and the outbox on the new primary
says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from clickpass.mail import outbox
from clickpass.mail.outbox import Outbox
from clickpass.mail.service import MailDelivery, lease_seconds
from clickpass.mail.settings import MailSettings
from clickpass.mail.transport import SMTPTransport
from clickpass.storage import migrations
from clickpass.storage.sql import (
    AdbapiStorage,
    OutcomeUnknown,
    Transaction,
    open_mysql,
)
from clickpass.tls import load_trust_root
from tests.integration.dbagent.cluster import Cluster, wait_until, with_suppress_close
from tests.integration.dbagent.test_failover import bring_up, same_gtids, settle
from tests.integration.mail.smtpd import (
    PASSWORD,
    SLOW,
    USER,
    Accepted,
    SMTPServer,
    running_smtp,
)
from tests.support.tlsca import make_ca

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]

BASE_URL = "https://login.example.com/"
# Messages acknowledged before the kill, and after the new primary took over.
BEFORE_KILL = 30
AFTER_KILL = 20


def pool(c: Cluster) -> AdbapiStorage:
    """One node's connection pool, through the database VIP."""
    return open_mysql(
        c.reactor,
        port=c.vip.port,
        user=c.pair["db1"].user,
        password=c.pair["db1"].password,
        database="app",
        pool_min=1,
        pool_max=4,
        connect_timeout=1.0,
    )


def outbox_on(c: Cluster, name: str) -> dict[str, tuple[Any, ...]]:
    """The outbox rows on server C{name}, by Message-ID: (state, attempts, lease_until, body)."""
    conn = c.pair[name].admin_connection(database="app", read_timeout=10)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT message_id, state, attempts, lease_until, message FROM mail_outbox"
            )
            return {str(r[0]): tuple(r[1:]) for r in cursor.fetchall()}
    finally:
        with_suppress_close(conn)


class Queuer:
    """
    Queues one message at a time, each to its own address, through the
    nodes' pools in turn (as their sign-up pages would), and keeps the
    outcome of each queuing transaction: acknowledged (with the message's
    Message-ID), refused for sure, or unknown (the connection lost at the
    commit: the message may or may not be in the outbox).
    """

    def __init__(self, reactor: Any, pools: list[AdbapiStorage], outbox: Outbox) -> None:
        self.reactor = reactor
        self.pools = pools
        self.outbox = outbox
        self.acknowledged: dict[str, str] = {}  # Message-ID -> recipient
        self.acknowledged_at: dict[str, float] = {}
        self.refused: dict[str, str] = {}  # recipient -> error
        self.unknown: set[str] = set()
        self.stopped = False

    def queue(self, tx: Transaction, to: str, now: int) -> str:
        row_id = self.outbox.enqueue(
            tx, to, "Confirm your address", "test", {"node": "n"}, now=now, kind="verify"
        )
        return str(tx.scalar("SELECT message_id FROM mail_outbox WHERE id = ?", row_id))

    async def run(self) -> None:
        n = 0
        while not self.stopped:
            n += 1
            to = f"p{n}@example.org"
            storage = self.pools[n % len(self.pools)]
            try:
                message_id = await storage.run(self.queue, to, int(self.reactor.seconds()))
            except OutcomeUnknown:
                self.unknown.add(to)
            except Exception as e:  # refused for sure (NoWritablePrimary, a cut write)
                self.refused[to] = repr(e)
            else:
                self.acknowledged[message_id] = to
                self.acknowledged_at[message_id] = time.monotonic()
            await deferLater(self.reactor, 0.02, lambda: None)

    def acknowledged_after(self, when: float) -> int:
        return sum(1 for t in list(self.acknowledged_at.values()) if t > when)


def received(server: SMTPServer) -> list[tuple[str, str]]:
    """(Message-ID, recipient) of every message the SMTP server took, in order."""
    return [(str(m.message["Message-ID"]), str(m.message["To"])) for m in server.messages()]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_no_acknowledged_message_is_lost_or_sent_twice_across_a_failover(
    cluster: Cluster, tmp_path: Path
) -> None:
    """
    kill -9 of the primary's server while two nodes queue and deliver mail,
    at the moment the SMTP server has taken a message and before its node
    heard so: every message whose queuing was acknowledged (before, during
    and after the failover) reaches the SMTP server exactly once, that one
    included; a message whose queuing outcome was unknown at most once, a
    refused one never. On the new primary every message is marked sent,
    its lease released and its body cleared, and both nodes' counts add up
    to what the server received.
    """
    c = cluster
    await bring_up(c)
    pools = [pool(c), pool(c)]
    services: list[MailDelivery] = []
    queuing = None
    ca = make_ca(tmp_path / "ca")
    try:
        await migrations.migrate(pools[0], int(c.reactor.seconds()))
        assert await same_gtids(c), "db2 did not receive the schema"
        with running_smtp(ca, auth=True, plan=lambda attempt: SLOW) as server:
            settings = MailSettings(
                smtp_host="127.0.0.1",
                smtp_port=server.port,
                username=USER,
                password_file="unused",
                poll_interval=0.1,
                backoff_initial=0.5,
                backoff_max=1.0,
                # Long enough that no attempt is cut off while the server's
                # answer to the data is on its way (on a busy machine), which
                # would send that message again: not what is tested here.
                timeout=10.0,
                batch=5,
                parallel=3,
            )
            for i, storage in enumerate(pools):
                transport = SMTPTransport(
                    c.reactor,
                    settings,
                    password=PASSWORD,
                    trust=load_trust_root(ca.ca_pem),
                    helo=f"node{i + 1}.test",
                )
                services.append(
                    MailDelivery(
                        c.reactor,
                        storage,
                        settings,
                        transport,
                        "no-reply@example.com",
                        f"node{i + 1}",
                    )
                )
            for service in services:
                service.startService()
            queuer = Queuer(c.reactor, pools, Outbox(settings, BASE_URL))
            queuing = Deferred.fromCoroutine(queuer.run())

            # Kill db1 while messages are being queued and delivered: at
            # the moment the server has taken one, before its node hears so
            # (and so before the node can mark it sent on db1).
            flowing = await wait_until(
                c.reactor,
                lambda: (
                    len(queuer.acknowledged) >= BEFORE_KILL
                    and len(server.messages()) >= BEFORE_KILL // 2
                ),
                30,
            )
            assert flowing, (len(queuer.acknowledged), len(server.messages()))
            # db2 a semi-sync replica of db1 right now (a busy machine may
            # have taken one of them for down meanwhile).
            assert await settle(c, timeout=30), c.roles()
            kill: dict[str, Any] = {}

            def kill_db1(message: Accepted) -> None:
                if not kill:
                    kill["delivered"] = len(server.messages())
                    kill["sending"] = server.handler.attempts - kill["delivered"]
                    kill["at"] = time.monotonic()
                    kill["message_id"] = str(message.message["Message-ID"])
                    c.pair["db1"].kill()

            server.handler.on_accept = kill_db1
            killed = await wait_until(c.reactor, lambda: "at" in kill, 10)
            assert killed, "no message was delivered after the kill was armed"
            killed_at = kill["at"]
            promoted = await wait_until(
                c.reactor,
                lambda: (
                    c.agents["db2"].role.writable
                    and queuer.acknowledged_after(killed_at) >= AFTER_KILL
                ),
                30,
            )
            assert promoted, (c.roles(), queuer.acknowledged_after(killed_at))
            queuer.stopped = True
            await queuing
            queuing = None

            # Everything acknowledged arrives; then a little longer, for a
            # second copy of any of it to show.
            wanted = set(queuer.acknowledged)
            arrived = await wait_until(
                c.reactor,
                lambda: wanted <= {m for m, _ in received(server)},
                lease_seconds(settings) + 15,
            )
            last_arrival = time.monotonic() - killed_at
            await deferLater(c.reactor, 1.0, lambda: None)
            for service in services:
                await maybeDeferred(service.stopService)
            got = received(server)
    finally:
        if queuing is not None:
            queuer.stopped = True
            await queuing
        for service in services:
            if service.running:
                await maybeDeferred(service.stopService)
        for storage in pools:
            storage.close()

    rows = await deferToThread(outbox_on, c, "db2")
    ids = [m for m, _ in got]
    by_recipient: dict[str, int] = {}
    for _, to in got:
        by_recipient[to] = by_recipient.get(to, 0) + 1
    print(
        f"acknowledged {len(queuer.acknowledged)}, unknown {len(queuer.unknown)}, "
        f"refused {len(queuer.refused)}; delivered {len(got)} ({kill['delivered']} before the "
        f"kill, {kill['sending']} being sent at it; transactions run again by the nodes' "
        f"storage {[p.counts['failover_retries'] for p in pools]}), by node "
        f"{[s.counts.sent for s in services]}, retried {[s.counts.retried for s in services]}; "
        f"all acknowledged arrived {last_arrival:.1f}s after the kill"
    )
    assert arrived, sorted(set(queuer.acknowledged) - set(ids))[:5]
    assert len(ids) == len(set(ids)), [m for m in ids if ids.count(m) > 1][:5]
    assert all(count == 1 for count in by_recipient.values()), by_recipient
    assert set(queuer.acknowledged) <= set(ids)
    assert {to for _, to in got} <= set(queuer.acknowledged.values()) | queuer.unknown
    # The message taken at the very moment of the kill was marked sent on
    # the new primary, and not sent again.
    assert kill["message_id"] in queuer.acknowledged
    assert ids.count(kill["message_id"]) == 1
    assert rows[kill["message_id"]][0] == outbox.SENT
    # The outbox on the new primary: every message there was delivered and
    # is marked sent, its lease released and its body cleared.
    assert set(rows) == set(ids)
    assert all(r[0] == outbox.SENT for r in rows.values()), rows
    assert all(r[2] == 0 and r[3] == "" for r in rows.values())
    assert all(r[1] >= 1 for r in rows.values())
    assert sum(s.counts.sent for s in services) == len(got)
