"""
The worker's web application, assembled in one place in plain order: the
kernel (clickpass.web.app), then each feature, given what it needs, then
the account pages with each feature's part of them.

The seams are Protocols (or small dataclasses) owned by the part that
calls them: the OpenID provider's source of claims
(L{clickpass.openid.web.ClaimsSource}) and its partner hook
(L{clickpass.openid.web.PartnerHook}); the account pages' parts
(L{clickpass.web.pages.HomeDiscovery}, L{clickpass.web.pages.SigninBranding},
L{clickpass.web.pages.AccountSection}).

This module only builds: it must never open the storage, listen, or start
anything (the worker does).
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from clickpass.balancer.forwarding import CLIENT_HEADER
from clickpass.config import Settings
from clickpass.mail.outbox import Outbox
from clickpass.mfa import web as mfa_web
from clickpass.mfa.service import SecondFactors
from clickpass.mfa.strength import PapeStrength
from clickpass.monitor.metrics import RequestMetrics
from clickpass.oidc import console as oidc_console
from clickpass.oidc import web as oidc_web
from clickpass.openid import account as openid_account
from clickpass.openid import discovery
from clickpass.openid import web as openid_web
from clickpass.ownership import web as ownership_web
from clickpass.partners import web as partners_web
from clickpass.selfservice import web as selfservice_web
from clickpass.storage.sql import AdbapiStorage, Storage
from clickpass.upstream import web as upstream_web
from clickpass.web import pages
from clickpass.web.app import AppSite, WebApp
from clickpass.web.routing import Router


def build_site(reactor: Any, settings: Settings, storage: Storage, secret: bytes) -> AppSite:
    """
    The twisted.web Site serving the whole application.

    Long on purpose: this is the worker's composition root, read top to
    bottom in the order the parts are built, each given what it needs.
    """
    app = WebApp(reactor, settings, storage, secret, client_header=CLIENT_HEADER)
    router = Router()
    router.error_page = app.error_page
    router.on_request = app.choose_language
    if settings.served_over_tls and settings.web.hsts_max_age:
        # People reach this node at an https:// address: tell browsers to
        # use nothing else (they ignore the header on plain http answers).
        router.headers.append(
            (b"strict-transport-security", b"max-age=%d" % settings.web.hsts_max_age)
        )

    # The one mail outbox of this worker: a message is queued in the
    # transaction of the change that causes it; the node sends it.
    outbox = Outbox(settings.mail, settings.base_url)

    # The upstream providers (Google and others) this node signs in through.
    connectors = upstream_web.build_connectors(reactor, settings)

    # Second factors: the second sign-in step, step-up, their account pages.
    # They mail the person on security events through the outbox. Step-up
    # offers a person with no second factor the providers linked to them.
    factors = SecondFactors(storage, settings.mfa, secret, outbox, clock=reactor.seconds)
    second_factors = mfa_web.install(
        app, router, factors, reauth=upstream_web.ReauthChoices(storage, connectors)
    )

    # The flows through mailed links: verify, reset, change password or email.
    # A reset is a first factor: the second step follows it.
    ownership = ownership_web.install(app, router, outbox, second_factors)

    # Upstream sign-in: its pages, and the claims the provider may release.
    # A provider's sign-in is a first factor: the second step follows it.
    # An address it takes from an unverified account is told, by mail.
    upstream = upstream_web.install(
        app,
        router,
        connectors,
        second_step=second_factors,
        address_lost=ownership.flows.tell_address_lost,
    )

    # The OpenID provider's checks and answers, shared by its endpoint and
    # the partner flow; the partner flow is the endpoint's hook. Second
    # factors judge and tell partners how strongly a person signed in (PAPE).
    strength = PapeStrength(second_factors)
    assertions = openid_web.build_assertions(app, claims=upstream, strength=strength)
    # Partner sites may require a second factor of everyone signing in to them.
    # The console lists each site's OpenID Connect clients and their
    # back-channel logouts.
    partner_flow = partners_web.install(
        app, router, assertions, second_factors, oidc_console.SiteClients(app.storage)
    )
    openid_web.install(app, router, assertions, partners=partner_flow)
    # OpenID Connect on the same accounts, identifiers and consent: what it
    # may release is what the OpenID provider holds for a person, and a
    # forgotten approval revokes its grants.
    # Second factors say how strongly the person signed in (acr, amr) and
    # step them up when a client's acr_values ask for more.
    oidc = oidc_web.install(
        app, router, held=assertions, strength=strength,
        has_factor=second_factors.factors.has_factor,
    )  # fmt: skip
    approvals_section = openid_account.install(app, router, forgotten=oidc)
    # The person's own controls: sessions, security log, export, deletion.
    self_service_section = selfservice_web.install(app, router, second_factors)

    base_url = settings.base_url

    def op_discovery(request: Request) -> bytes | None:
        # The site root is the OpenID OP Identifier: Yadis and HTML discovery.
        return discovery.op_discovery(request, base_url)

    pages.install(
        app,
        router,
        home_discovery=pages.HomeDiscovery(op_discovery, discovery.op_head_html(base_url)),
        # An OpenID Connect client's name, else a partner site's.
        branding=oidc_web.ClientBranding(oidc, partner_flow),
        account_sections=[
            partner_flow.account_section(),
            approvals_section,
            upstream_web.ACCOUNT_SECTION,
            self_service_section,
            second_factors.account_section(),
            ownership.account_section(),
        ],
        second_step=second_factors,
        signup_flow=ownership,
    )
    # Per-route counts and latency, for the front's /metrics.
    router.observer = RequestMetrics(app.metrics, reactor.seconds)
    _storage_metrics(app.metrics, storage)
    return AppSite(router, app)


def _storage_metrics(metrics: Any, storage: Storage) -> None:
    """
    The storage's failover retries and lost lock conflicts (an adbapi pool
    counts them; a plain connection does not).
    """
    if not isinstance(storage, AdbapiStorage):
        return
    counts = storage.counts
    metrics.counter(
        "clickpass_db_failover_retries_total",
        "Transactions run again because no writable database primary took them "
        "(a switchover or failover under way).",
    ).set_function(lambda: {(): float(counts["failover_retries"])})
    metrics.counter(
        "clickpass_db_failover_gave_up_total",
        "Transactions that no writable database primary took within [database] failover_wait.",
    ).set_function(lambda: {(): float(counts["failover_gave_up"])})
    metrics.counter(
        "clickpass_db_lock_conflicts_total",
        "Transactions that lost a lock conflict and ran again or failed: MariaDB deadlocks and "
        "lock wait timeouts; on SQLite, mostly a transaction that read and then found another "
        "worker had written (run again at once with the write lock).",
    ).set_function(lambda: {(): float(counts["lock_conflicts"])})


__all__ = ["build_site"]
