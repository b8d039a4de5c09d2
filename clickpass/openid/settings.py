"""
The OpenID provider's section, [openid]: its keys, their defaults and their documentation.

It imports only clickpass.settings_base; it must never read files or
touch the network.
"""

from __future__ import annotations

import dataclasses

from clickpass.settings_base import doc as _doc


@dataclasses.dataclass(frozen=True)
class OpenIDSettings:
    """[openid]: the OpenID 2.0 provider."""

    association_lifetime: int = dataclasses.field(
        default=14 * 24 * 3600, metadata=_doc("Seconds an association stays valid.")
    )
    allow_private_rp_discovery: bool = dataclasses.field(
        default=False,
        metadata=_doc(
            "Let relying-party discovery fetch loopback and private addresses "
            "(only for labs and tests)."
        ),
    )
    rp_discovery_timeout: float = dataclasses.field(
        default=5.0, metadata=_doc("Seconds allowed for relying-party discovery.")
    )
    rp_discovery_max_bytes: int = dataclasses.field(
        default=256 * 1024, metadata=_doc("Largest relying-party discovery document read.")
    )


__all__ = ["OpenIDSettings"]
