"""
Installs the partner features into the web application: the console,
the person's flow (hooked into the OpenID provider) and the partner API.
Called once by C{build_site}; it must never start services (the webhook
delivery runs in the node, not in workers).
"""

from __future__ import annotations

from typing import Any

from clickpass.partners import api, console, flow
from clickpass.web.app import WebApp
from clickpass.web.routing import Router


def install(app: WebApp, router: Router) -> Any:
    """Register every partner route; needs the OpenID provider installed first."""
    openid_web = getattr(app, "openid", None)
    if openid_web is None:
        raise RuntimeError("install the OpenID provider before the partner features")
    partner_flow = flow.install(app, router, openid_web)
    app.partners = partner_flow  # type: ignore[attr-defined]
    console.install(app, router)
    api.install(app, router)
    return partner_flow
