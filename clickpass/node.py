"""
The node: the root of one Clickpass process's service tree, built whole
in L{Node.__init__} in plain order, each service given its collaborators:
the control port, the monitoring (alerts, metrics, backups), the heartbeat
and the database agent when configured, and the services that need the
schema (the front, housekeeping, webhook and mail delivery) in one group.

At start it brings the schema up to date and checks the master secret
against the database, then starts that group and opens the public
listeners. A node that cannot start logs one line saying why and exits
non-zero; a database that is not there yet is waited for.

No service joins the tree after construction, and no service finds
another by probing the tree: this module passes them in.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from clickpass import config as configmod
from clickpass._version import __version__
from clickpass.accounts.flows import AccountFlows
from clickpass.accounts.service import AccountError, Accounts
from clickpass.balancer.service import Front, ListenError
from clickpass.control.protocol import CommandError, CommandRegistry
from clickpass.control.service import ControlService
from clickpass.housekeeping import Housekeeping
from clickpass.mail.outbox import Outbox
from clickpass.mail.service import install_mail
from clickpass.mfa.control import register_commands as register_mfa_commands
from clickpass.mfa.service import SecondFactors
from clickpass.monitor.service import build_monitoring, dbagent_metrics, heartbeat_metrics
from clickpass.oidc import assertions as oidc_assertions
from clickpass.oidc import backchannel as oidc_backchannel
from clickpass.oidc import tokens as oidc_tokens
from clickpass.oidc.keys import SigningKeys
from clickpass.oidc.sector import SectorFetcher
from clickpass.oidc.service import register_client_commands as register_oidc_client_commands
from clickpass.oidc.service import register_commands as register_oidc_commands
from clickpass.openid import store as openid_store
from clickpass.partners.webhooks import delivery_service
from clickpass.selfservice.service import register_commands as register_user_commands
from clickpass.storage import migrations
from clickpass.storage.sql import AdbapiStorage, Transaction

if TYPE_CHECKING:
    from clickpass.dbagent.service import DbHost
    from clickpass.heartbeat.service import ClusterService

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


class AfterMigration(MultiService):
    """
    The services that need the schema up to date: part of the node's tree
    from the start, started by the node once it has migrated (never by its
    parent starting), and stopped only if they were started.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setName("serving")

    def stopService(self) -> Deferred[Any]:
        if not self.running:
            return succeed(None)
        d: Deferred[Any] = maybeDeferred(super().stopService)
        return d


class Node(MultiService):
    """One Clickpass node."""

    log = Logger()

    def __init__(
        self, reactor: Any, settings: configmod.Settings, secret: bytes, storage: AdbapiStorage
    ) -> None:
        super().__init__()
        self.setName("node")
        self.reactor = reactor
        self.settings = settings
        self.secret = secret
        self.storage = storage
        # The node's one mail outbox: its operator commands and second
        # factors queue mail through it; the mail service sends it.
        self.outbox = Outbox(settings.mail, settings.base_url)
        self.exit_code = 0
        self.started_at = 0.0
        self.ready = False
        self.commands = CommandRegistry()
        self._starting: Deferred[None] | None = None
        self._register_commands()
        # systemd's notify protocol (Type=notify units): READY, watchdog, STOPPING.
        # It does nothing when systemd did not start the node.
        from clickpass.sdnotify import notifier_for_this_process

        self.systemd = notifier_for_this_process(reactor)
        self.systemd.setServiceParent(self)
        ControlService(reactor, settings, self.commands).setServiceParent(self)

        # Alerts and metrics; every part below that raises alerts
        # or adds metrics is given them.
        self.monitoring = monitoring = build_monitoring(reactor, settings, self.commands)
        monitoring.alerts.setServiceParent(self)
        self.cluster: ClusterService | None = None
        if settings.cluster.enabled:
            from clickpass.heartbeat.service import ClusterService

            # The heartbeat holds VIPs only while the node is ready to serve.
            self.cluster = ClusterService(
                reactor, settings, ready=self.serving, alerts=monitoring.alerts
            )
            self.cluster.register_commands(self.commands)
            status = heartbeat_metrics(monitoring, reactor, settings, self.cluster)
            if settings.cluster.process == "child":
                # Asks the heartbeat process for its status, for /metrics.
                status.setServiceParent(self)
        if settings.backup.enabled:
            from clickpass.backup.service import BackupService

            backup = BackupService(reactor, settings, monitoring.alerts, monitoring.metrics)
            backup.register_commands(self.commands)
            backup.setServiceParent(self)
        if self.cluster is not None:
            self.cluster.setServiceParent(self)
        self.dbagent: DbHost | None = None
        if settings.dbagent.enabled:
            from clickpass.dbagent.service import DbHost

            # MariaDB role switching on a database host, driven by the
            # cluster's db group (the configuration checked that the
            # heartbeat runs inline here).
            assert self.cluster is not None
            self.dbagent = DbHost(reactor, settings, self.cluster, monitoring.alerts)
            self.cluster.follow(self.dbagent.wrap_vip, self.dbagent.wrap_notifier)
            self.dbagent.register_commands(self.commands)
            dbagent_metrics(monitoring, self.dbagent.agent)
            self.dbagent.setServiceParent(self)

        self.after_migration = AfterMigration()
        self.after_migration.setServiceParent(self)
        self.front = self._serving(self.after_migration)

    def _serving(self, group: MultiService) -> Front:
        """The services that need the schema, into C{group}; the front is returned."""
        reactor, settings, storage = self.reactor, self.settings, self.storage
        monitoring = self.monitoring
        # The front balances requests across worker processes; each worker
        # opens the storage and serves the web application.
        front = Front(
            reactor,
            settings,
            tls_endpoint=tls_endpoint,
            alerts=monitoring.alerts,
            node_metrics=monitoring.metrics,
        )
        front.register_commands(self.commands)
        front.setServiceParent(group)
        # OpenID Connect signing keys: shared by every node through the
        # database, listed and rotated on the control port.
        signing_keys = SigningKeys(reactor, reactor, storage, self.secret)
        register_oidc_commands(self.commands, signing_keys)
        register_oidc_client_commands(
            self.commands, storage, reactor, SectorFetcher(reactor, settings.openid)
        )
        # The operators' user commands beyond add and disable.
        register_user_commands(self.commands, reactor, storage, self._accounts(), settings.base_url)
        # Second factors: listed and reset by operators on the control port.
        factors = SecondFactors(storage, settings.mfa, self.secret, self.outbox)
        register_mfa_commands(self.commands, factors)
        self._housekeeping(storage, signing_keys, factors).setServiceParent(group)
        # Partner webhooks: the node (not the workers) empties the durable outbox.
        delivery_service(
            reactor, settings, storage, self.secret, monitoring.metrics
        ).setServiceParent(group)
        # OpenID Connect back-channel logout: the node notices ended sessions
        # and empties the durable logout outbox, like the webhooks'.
        oidc_backchannel.delivery_service(
            reactor, settings, storage, signing_keys, monitoring.metrics
        ).setServiceParent(group)
        # Mail: the node (not the workers) empties the durable mail outbox.
        # Its transport reads its files here: a ConfigError stops the node
        # before it starts, with one line.
        install_mail(
            group,
            reactor,
            settings,
            storage,
            self.commands,
            monitoring.metrics,
            monitoring.alerts,
        )
        return front

    def serving(self) -> bool:
        """
        Whether this node can serve requests now: started, with at least one
        worker taking requests. The heartbeat gives up the VIP when it is not.
        """
        return self.ready and self.front.pool.routable() > 0

    def startService(self) -> None:
        self.started_at = self.reactor.seconds()
        # Everything but the services that wait for the schema (see _start).
        Service.startService(self)
        for service in self:
            if service is not self.after_migration:
                service.startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._failed_to_start)

    async def _start(self) -> None:
        settings = self.settings
        self.log.info(
            "clickpass {version} node {node} starting: {config}, database {database}",
            version=__version__,
            node=settings.node.name,
            config=settings.source,
            database=self.storage.describe(),
        )
        await self._migrate(self.storage)
        await self.storage.run(check_secret, secret_fingerprint(self.secret))
        self.after_migration.startService()
        try:
            await self.front.listen()
        except ListenError as e:
            raise StartupError(str(e)) from None
        await self.front.wait_ready()
        self.ready = True
        self.log.info(
            "clickpass node {node} ready: serving {url}",
            node=settings.node.name,
            url=settings.base_url,
        )
        if problem := configmod.public_url_problem(settings.node.public_url, settings.web.listen):
            self.log.warn("{problem}", problem=problem)
        self.systemd.ready(f"node {settings.node.name} serving {settings.base_url}")

    def _housekeeping(
        self, storage: AdbapiStorage, signing_keys: SigningKeys, factors: SecondFactors
    ) -> Housekeeping:
        accounts = Accounts(self.reactor, storage, self.settings.accounts)

        async def openid_expired(now: int) -> int:
            return sum(await openid_store.cleanup(storage, now))

        async def oidc_expired(now: int) -> int:
            removed = await storage.run(oidc_tokens.remove_expired, now)
            return removed + await storage.run(oidc_assertions.remove_expired, now)

        return Housekeeping(
            self.reactor,
            [
                ("expired sessions", accounts.expire_sessions),
                ("old sign-in failure counts", accounts.prune_failures),
                ("old security events", accounts.expire_events),
                ("expired account links", accounts.expire_tokens),
                ("expired OpenID nonces and associations", openid_expired),
                ("expired OpenID Connect signing keys", signing_keys.housekeeping),
                ("expired second steps, trusted browsers and WebAuthn challenges", factors.expire),
                ("expired OpenID Connect codes, tokens, grants, assertions", oidc_expired),
            ],
        )

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

        def close_storage(result: object) -> object:
            self.storage.close()
            return result

        d: Deferred[Any] = maybeDeferred(MultiService.stopService, self)
        d.addBoth(close_storage)
        return d

    # Control commands of the node itself.

    def _register_commands(self) -> None:
        self.commands.register("status", self._cmd_status, "version, uptime, listeners, database")
        self.commands.register("help", lambda args: self.commands.help(), "list the commands")
        self.commands.register("user.add", self._cmd_user_add, "create an account")
        self.commands.register("user.disable", self._cmd_user_disable, "disable an account")
        self.commands.register(
            "user.verify", self._cmd_user_verify, "mark an account's email address verified"
        )
        self.commands.register(
            "user.reset_link", self._cmd_user_reset_link, "make a password reset link"
        )

    async def _cmd_status(self, args: Any) -> dict[str, Any]:
        database: dict[str, Any] = {"backend": self.settings.database.backend, "answers": False}
        database["description"] = self.storage.describe()
        try:
            database["schema_version"] = await self.storage.run(migrations.current_version)
            database["answers"] = True
        except Exception as e:
            database["error"] = _one_line(e)
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

    def _accounts(self) -> Accounts:
        return Accounts(self.reactor, self.storage, self.settings.accounts)

    async def _cmd_user_add(self, args: Any) -> dict[str, Any]:
        email, password = args.get("email"), args.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise CommandError("user.add needs email and password strings")
        verified = args.get("verified", False)
        if not isinstance(verified, bool):
            raise CommandError("user.add: verified must be true or false")
        try:
            account = await self._accounts().sign_up(email, password, verified=verified)
        except AccountError as e:
            raise CommandError(str(e)) from None
        return {"created": account.email, "id": account.id, "verified": account.email_verified}

    def _account_flows(self) -> AccountFlows:
        return AccountFlows(
            self.reactor,
            self.storage,
            self._accounts(),
            self.settings.accounts,
            self.outbox,
        )

    async def _cmd_user_verify(self, args: Any) -> dict[str, Any]:
        email = args.get("email")
        if not isinstance(email, str):
            raise CommandError("user.verify needs an email string")
        try:
            found = await self._account_flows().operator_verify(email)
        except AccountError as e:
            raise CommandError(str(e)) from None
        if not found:
            raise CommandError(f"no account with email {email}")
        return {"verified": email}

    async def _cmd_user_reset_link(self, args: Any) -> dict[str, Any]:
        email = args.get("email")
        if not isinstance(email, str):
            raise CommandError("user.reset_link needs an email string")
        try:
            link = await self._account_flows().operator_reset_link(email)
        except AccountError as e:
            raise CommandError(str(e)) from None
        return {"email": email, "link": link, "expires_in": self.settings.accounts.reset_lifetime}

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
