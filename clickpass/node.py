"""
The node: the root of one Clickpass process's service tree.

It opens the storage, brings the schema up to date, checks the master
secret against the database, then starts the public listeners and the
control port. A node that cannot start logs one line saying why and exits
non-zero; a database that is not there yet is waited for.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass import config as configmod
from clickpass._version import __version__
from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.control.service import ControlService
from clickpass.database import migrations
from clickpass.database.storage import AdbapiStorage, Transaction, open_storage

if TYPE_CHECKING:
    from clickpass.balancer.service import Front
    from clickpass.oidc.keys import SigningKeys

DB_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15)


class StartupError(Exception):
    """The node cannot start; the message is one line for the operator."""


def secret_fingerprint(secret: bytes) -> str:
    """A public fingerprint of the master secret, stored in the database."""
    return hmac.new(secret, b"clickpass secret fingerprint", hashlib.sha256).hexdigest()[:32]


def check_secret(tx: Transaction, fingerprint: str) -> None:
    """
    Record the master secret's fingerprint on first start; afterwards refuse
    a different secret, which would give every person new identifiers.
    """
    stored = tx.scalar("SELECT value FROM node_metadata WHERE name = ?", "secret_fingerprint")
    if stored is None:
        inserted = tx.execute(
            tx.dialect.insert_ignore() + " INTO node_metadata (name, value) VALUES (?, ?)",
            "secret_fingerprint",
            fingerprint,
        )
        # When another node recorded its fingerprint at the same moment, a
        # plain read on MariaDB still sees this transaction's snapshot (taken
        # before that row existed); a locking read sees the committed row.
        lock = " FOR UPDATE" if tx.dialect.name == "mysql" and not inserted else ""
        stored = tx.scalar(
            "SELECT value FROM node_metadata WHERE name = ?" + lock, "secret_fingerprint"
        )
    if stored != fingerprint:
        raise StartupError(
            "the master secret ([secrets] secret_file) is not the one this database was "
            "created with; every node must use the same secret"
        )


def tls_endpoint(description: str, settings: configmod.Settings) -> str:
    """Add the configured certificate and key to an ssl: endpoint string."""
    if not description.startswith("ssl:") or "privateKey=" in description:
        return description
    key = str(settings.data_path(settings.web.tls_private_key)).replace(":", "\\:")
    cert = str(settings.data_path(settings.web.tls_certificate)).replace(":", "\\:")
    return f"{description}:privateKey={key}:certKey={cert}"


class Node(MultiService):
    """One Clickpass node."""

    log = Logger()

    def __init__(self, reactor: Any, settings: configmod.Settings, secret: bytes) -> None:
        super().__init__()
        self.setName("node")
        self.reactor = reactor
        self.settings = settings
        self.secret = secret
        self.exit_code = 0
        self.started_at = 0.0
        self.storage: AdbapiStorage | None = None
        self.ready = False
        self.front: Front | None = None
        self.commands = CommandRegistry()
        self._ports: list[IListeningPort] = []
        self._starting: Deferred[None] | None = None
        self._register_commands()
        # systemd's notify protocol (Type=notify units): READY, watchdog, STOPPING.
        # It does nothing when systemd did not start the node.
        from clickpass.sdnotify import notifier_for_this_process

        self.systemd = notifier_for_this_process(reactor)
        self.systemd.setServiceParent(self)
        ControlService(reactor, settings, self.commands).setServiceParent(self)
        # Alerts, metrics and backups (issue 8); other parts raise alerts
        # through self.monitoring.alerts.
        from clickpass.monitor.service import install_monitoring

        self.monitoring = install_monitoring(self, reactor, settings, self.commands)
        self.cluster: Any = None
        if settings.cluster.enabled:
            from clickpass.cluster.service import ClusterService

            # The heartbeat holds VIPs only while the node is ready to serve.
            self.cluster = ClusterService(
                reactor, settings, ready=self.serving, alerts=self.monitoring.alerts
            )
            self.cluster.register_commands(self.commands)
            self.cluster.setServiceParent(self)
        self.dbagent: Any = None
        if settings.dbagent.enabled:
            from clickpass.dbagent.service import install_dbagent

            # MariaDB role switching on a database host (issue 5), driven by
            # the cluster's db group.
            self.dbagent = install_dbagent(self, reactor, settings, self.commands)

    def serving(self) -> bool:
        """
        Whether this node can serve requests now: started, with at least one
        worker taking requests. The heartbeat gives up the VIP when it is not.
        """
        return self.ready and self.front is not None and self.front.pool.routable() > 0

    def startService(self) -> None:
        self.started_at = self.reactor.seconds()
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._failed_to_start)

    async def _start(self) -> None:
        settings = self.settings
        self.storage = open_storage(self.reactor, settings)
        self.log.info(
            "clickpass {version} node {node} starting: {config}, database {database}",
            version=__version__,
            node=settings.node.name,
            config=settings.source,
            database=self.storage.describe(),
        )
        await self._migrate(self.storage)
        await self.storage.run(check_secret, secret_fingerprint(self.secret))
        # The front balances requests across worker processes; each worker
        # opens the storage and serves the web application (issue 3).
        from clickpass.balancer.service import Front, ListenError

        front = self.front = Front(self.reactor, settings, tls_endpoint=tls_endpoint)
        front.register_commands(self.commands)
        front.setServiceParent(self)
        try:
            await front.listen()
        except ListenError as e:
            raise StartupError(str(e)) from None
        # OpenID Connect signing keys: shared by every node through the
        # database, listed and rotated on the control port.
        from clickpass.oidc.keys import SigningKeys
        from clickpass.oidc.service import register_commands as register_oidc_commands

        signing_keys = SigningKeys(self.reactor, self.reactor, self.storage, self.secret)
        register_oidc_commands(self.commands, signing_keys)
        self._start_housekeeping(self.storage, signing_keys)
        # Partner webhooks: the node (not the workers) empties the durable outbox.
        from clickpass.partners.webhooks import delivery_service

        delivery_service(
            self.reactor, settings, self.storage, self.secret, self.monitoring.metrics
        ).setServiceParent(self)
        # Mail: the node (not the workers) empties the durable mail outbox.
        from clickpass.mail.service import install_mail

        try:
            install_mail(
                self,
                self.reactor,
                settings,
                self.storage,
                self.commands,
                self.monitoring.metrics,
                self.monitoring.alerts,
            )
        except configmod.ConfigError as e:
            raise StartupError(str(e)) from None
        await front.wait_ready()
        self.ready = True
        self.log.info(
            "clickpass node {node} ready: serving {url}",
            node=settings.node.name,
            url=settings.base_url,
        )
        if problem := configmod.public_url_problem(settings.node.public_url, settings.web.listen):
            self.log.warn("{problem}", problem=problem)
        self.systemd.ready(f"node {settings.node.name} serving {settings.base_url}")

    def _start_housekeeping(self, storage: AdbapiStorage, signing_keys: SigningKeys) -> None:
        from clickpass.accounts.service import Accounts
        from clickpass.housekeeping import Housekeeping
        from clickpass.openid import store as openid_store

        accounts = Accounts(self.reactor, storage, self.settings.accounts)

        async def openid_expired(now: int) -> int:
            return sum(await openid_store.cleanup(storage, now))

        Housekeeping(
            self.reactor,
            [
                ("expired sessions", accounts.expire_sessions),
                ("old sign-in failure counts", accounts.prune_failures),
                ("expired OpenID nonces and associations", openid_expired),
                ("expired OpenID Connect signing keys", signing_keys.housekeeping),
            ],
        ).setServiceParent(self)

    async def _migrate(self, storage: AdbapiStorage) -> None:
        attempt = 0
        while True:
            try:
                await migrations.migrate(storage, int(time.time()))
                return
            except migrations.SchemaTooNew as e:
                raise StartupError(str(e)) from None
            except Exception as e:
                if not _is_connection_problem(e):
                    raise
                delay = DB_RETRY_DELAYS[min(attempt, len(DB_RETRY_DELAYS) - 1)]
                attempt += 1
                self.log.warn(
                    "database {database} not reachable ({error}); retrying in {delay}s",
                    database=storage.describe(),
                    error=_one_line(e),
                    delay=delay,
                )
                await deferLater(self.reactor, delay, lambda: None)

    def _failed_to_start(self, failure: Failure) -> None:
        if failure.check(StartupError):
            self.log.error("clickpass cannot start: {reason}", reason=str(failure.value))
        else:
            self.log.failure("clickpass cannot start", failure)
        self.exit_code = 1
        reactor: IReactorCore = self.reactor
        if reactor.running:
            reactor.stop()

    def stopService(self) -> Deferred[Any]:
        self.ready = False
        ports, self._ports = self._ports, []
        stopping = [maybeDeferred(port.stopListening) for port in ports]

        def children(_: object) -> Deferred[Any]:
            return maybeDeferred(MultiService.stopService, self)

        def close_storage(result: object) -> object:
            if self.storage is not None:
                self.storage.close()
                self.storage = None
            return result

        d: Deferred[Any] = DeferredList(stopping).addCallback(children)
        d.addBoth(close_storage)
        return d

    # Control commands of the node itself.

    def _register_commands(self) -> None:
        self.commands.register("status", self._cmd_status, "version, uptime, listeners, database")
        self.commands.register("help", lambda args: self.commands.help(), "list the commands")
        self.commands.register("user.add", self._cmd_user_add, "create an account")
        self.commands.register("user.disable", self._cmd_user_disable, "disable an account")

    async def _cmd_status(self, args: Any) -> dict[str, Any]:
        database: dict[str, Any] = {"backend": self.settings.database.backend, "answers": False}
        if self.storage is not None:
            database["description"] = self.storage.describe()
            try:
                database["schema_version"] = await self.storage.run(migrations.current_version)
                database["answers"] = True
            except Exception as e:
                database["error"] = _one_line(e)
        else:
            database["error"] = "not opened yet"
        return {
            "version": __version__,
            "node": self.settings.node.name,
            "uptime_seconds": self.reactor.seconds() - self.started_at,
            "ready": self.ready,
            "public_url": self.settings.base_url,
            "listeners": list(self.settings.web.listen),
            "control_socket": str(self.settings.control_socket),
            "database": database,
        }

    def _accounts(self) -> Any:
        from clickpass.accounts.service import Accounts

        if self.storage is None:
            raise CommandError("the node is still starting; try again shortly")
        return Accounts(self.reactor, self.storage, self.settings.accounts)

    async def _cmd_user_add(self, args: Any) -> dict[str, Any]:
        from clickpass.accounts.service import AccountError

        email, password = args.get("email"), args.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise CommandError("user.add needs email and password strings")
        try:
            account = await self._accounts().sign_up(email, password)
        except AccountError as e:
            raise CommandError(str(e)) from None
        return {"created": account.email, "id": account.id}

    async def _cmd_user_disable(self, args: Any) -> dict[str, Any]:
        email = args.get("email")
        if not isinstance(email, str):
            raise CommandError("user.disable needs an email string")
        if not await self._accounts().disable(email):
            raise CommandError(f"no account with email {email}")
        return {"disabled": email}


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return " ".join(text.split())


def _is_connection_problem(e: Exception) -> bool:
    try:
        import pymysql
    except ImportError:  # pragma: no cover
        return False
    from twisted.enterprise.adbapi import ConnectionLost

    # Wrong credentials or a missing database will not fix themselves.
    if isinstance(e, pymysql.err.OperationalError) and e.args and e.args[0] in (1044, 1045, 1049):
        raise StartupError(f"database refused us: {e.args[-1]}") from None
    return isinstance(e, ConnectionLost | pymysql.err.OperationalError | pymysql.err.InterfaceError)


__all__ = ["Node", "StartupError"]
