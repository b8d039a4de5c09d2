"""
TLS helpers every part that makes outgoing TLS connections shares (the
upstream sign-in's HTTP client, the mail transport's SMTP): today, a trust
root read from an operator's CA bundle.

This module must never import any part of Clickpass: features import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import ssl


def load_trust_root(path: Path) -> Any:
    """
    A trust root made of every certificate in the PEM file at C{path}.
    Raises L{OSError} when the file cannot be read, L{ValueError} when it
    holds no certificate (or a malformed one).
    """
    text = path.read_text(encoding="ascii", errors="replace")
    marker = "-----BEGIN CERTIFICATE-----"
    certificates = [
        ssl.Certificate.loadPEM((marker + chunk).encode("ascii"))
        for chunk in text.split(marker)[1:]
    ]
    if not certificates:
        raise ValueError(f"{path} holds no PEM certificate")
    return ssl.trustRootFromCertificates(certificates)
