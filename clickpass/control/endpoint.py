"""
The control port's TCP endpoint string (C{[control] tcp}), parsed strictly.

The control port runs every operator command, so it may listen on loopback
only. Checking the text of the endpoint string is not enough: Twisted's
parser lets a later C{interface=} override an earlier one, and takes the
interface as a positional value too. So the string is split here with the
same escaping rules (C{\\:} is a colon inside a value), anything ambiguous or
unknown is refused, and the node listens on exactly the port and interface
this parse found (L{clickpass.control.service.tcp_endpoint}), never on a
second parse by C{serverFromString}.

This module must never resolve names: an interface is an IP address literal.
It imports nothing of Twisted, so that the [control] section's checks
(clickpass.control.settings) can use it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

KINDS = ("tcp", "tcp6")
OPTIONS = ("port", "interface", "backlog")


class EndpointError(ValueError):
    """The endpoint string cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class ControlTCP:
    """Where the TCP control port listens: a loopback address and a port."""

    kind: str
    port: int
    interface: str
    backlog: int = 50


def split(text: str) -> list[list[str]]:
    """
    Split an endpoint string into its C{:}-separated parts, each split at
    C{=} into one (a positional value) or more pieces; a backslash makes the
    next character plain text, as in Twisted's own parser.
    """
    parts: list[list[str]] = []
    pieces: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == "=":
            pieces.append("".join(current))
            current = []
        elif char == ":":
            pieces.append("".join(current))
            parts.append(pieces)
            pieces, current = [], []
        else:
            current.append(char)
    pieces.append("".join(current))
    parts.append(pieces)
    return parts


def parse_control_tcp(text: str) -> ControlTCP:
    """
    Parse C{[control] tcp}: C{tcp:PORT:interface=ADDRESS} (or C{tcp6:...}
    with an escaped IPv6 address), with an optional C{backlog=N}. Raise
    L{EndpointError} for a duplicated or unknown option, a positional value
    after the port, a missing or non-loopback interface, or a bad port.
    """
    parts = split(text)
    kind = parts[0]
    if len(kind) != 1 or kind[0] not in KINDS:
        raise EndpointError(f"{text!r} is not a tcp: or tcp6: endpoint")
    positional: list[str] = []
    options: dict[str, str] = {}
    for part in parts[1:]:
        if part == [""]:
            raise EndpointError("an empty option (write each ':' inside an address as '\\:')")
        if len(part) == 1:
            if options:
                raise EndpointError(f"the value {part[0]!r} must be written as name=value")
            positional.append(part[0])
        elif len(part) == 2:
            name, value = part
            if name not in OPTIONS:
                raise EndpointError(f"unknown option {name!r} (known: {', '.join(OPTIONS)})")
            if name in options:
                raise EndpointError(f"the option {name!r} is given more than once")
            options[name] = value
        else:
            raise EndpointError(f"{'='.join(part)!r} has more than one '='")
    if len(positional) > 1 or (positional and "port" in options):
        raise EndpointError("give the port once and every other option as name=value")
    port_text = positional[0] if positional else options.get("port", "")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise EndpointError(f"{port_text!r} is not a TCP port")
    backlog_text = options.get("backlog", "50")
    if not backlog_text.isdigit() or int(backlog_text) < 1:
        raise EndpointError(f"backlog {backlog_text!r} is not a positive number")
    interface = options.get("interface", "")
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        raise EndpointError(
            "the control port listens on a loopback address only (add :interface=127.0.0.1)"
        ) from None
    if not address.is_loopback:
        raise EndpointError(
            f"the control port listens on a loopback address only, not {interface} "
            "(use :interface=127.0.0.1)"
        )
    if (address.version == 6) != (kind[0] == "tcp6"):
        raise EndpointError(f"{kind[0]}: cannot listen on {interface}")
    return ControlTCP(kind[0], int(port_text), interface, int(backlog_text))
