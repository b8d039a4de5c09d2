"""
Installs the partner features into the web application: the console,
the person's flow, the partner API and the partner guides. Called once by the application's
composition root (clickpass.application), which hooks the returned flow
into the OpenID provider; it must never start services (the webhook
delivery runs in the node, not in workers).
"""

from __future__ import annotations

from clickpass.openid.web import Assertions
from clickpass.partners import api, console, flow, guides
from clickpass.web.app import WebApp
from clickpass.web.routing import Router


def install(
    app: WebApp,
    router: Router,
    assertions: Assertions,
    second_factors: flow.SecondFactorGate | None = None,
    site_clients: console.SiteClients | None = None,
) -> flow.PartnerFlow:
    """
    Register every partner route; the flow answers through the provider's
    C{assertions}, and asks C{second_factors} of sites that require one;
    the console lists a site's OpenID Connect clients from C{site_clients}.
    """
    partner_flow = flow.install(app, router, assertions, second_factors)
    console.install(app, router, site_clients)
    api.install(app, router)
    guides.install(app, router)
    return partner_flow
