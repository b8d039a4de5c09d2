"""The client behind trusted proxies (clickpass.balancer.forwarding), as pure functions."""

from __future__ import annotations

import pytest

from clickpass.balancer.forwarding import MAX_HOPS, TrustedProxies, parse_ranges

PROXIES = TrustedProxies(parse_ranges(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]))


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [
        (b"", b"10.0.0.1"),
        (b"203.0.113.5", b"203.0.113.5"),
        # What a client writes itself sits left of the first untrusted hop.
        (b"1.1.1.1, 203.0.113.5", b"203.0.113.5"),
        (b"1.1.1.1, 203.0.113.5, 10.9.9.9", b"203.0.113.5"),
        # Every hop trusted: the leftmost.
        (b"10.1.1.1, 192.0.2.7", b"10.1.1.1"),
        # Not an address: the walk ends at the proxy that wrote it.
        (b"203.0.113.5, unknown", b"10.0.0.1"),
        (b"203.0.113.5, 10.2.2.2, 1.2.3.4:80", b"10.0.0.1"),
        (b"203.0.113.5,garbage\xff, 10.3.3.3", b"10.3.3.3"),
        (b"2001:db8::1, 2001:db9::5", b"2001:db9::5"),
        (b"::ffff:10.0.0.9, 203.0.113.6, ::ffff:10.0.0.8", b"203.0.113.6"),
        (b" 203.0.113.5 ,", b"10.0.0.1"),
    ],
)
def test_the_client_is_the_rightmost_untrusted_hop(forwarded_for: bytes, client: bytes) -> None:
    """The rightmost X-Forwarded-For hop outside the trusted ranges is the client."""
    assert PROXIES.client(forwarded_for, b"10.0.0.1") == client


def test_a_long_chain_of_trusted_hops_is_not_walked_to_its_end() -> None:
    """Only the last MAX_HOPS hops are looked at."""
    chain = b", ".join([b"203.0.113.9"] + [b"10.0.0.2"] * MAX_HOPS)
    assert PROXIES.client(chain, b"10.0.0.1") == b"10.0.0.2"


def test_which_peers_are_trusted() -> None:
    """Peers inside the ranges (IPv4-mapped too) are trusted; anything else is not."""
    assert PROXIES.trusts("10.200.0.1")
    assert PROXIES.trusts("192.0.2.7")
    assert PROXIES.trusts("::ffff:10.0.0.1")
    assert not PROXIES.trusts("192.0.2.8")
    assert not PROXIES.trusts("not an address")
    assert not TrustedProxies().trusts("10.0.0.1")


def test_a_bad_range_is_named() -> None:
    """A range that does not parse is a ValueError naming it."""
    with pytest.raises(ValueError, match=r"'10\.0\.0\.1/8' is not an address range"):
        parse_ranges(["10.0.0.1/8"])
