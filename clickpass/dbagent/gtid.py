"""
MariaDB GTID positions as values: parsing, printing and the containment
check that tells a server that may rejoin from one holding errant
transactions.

A position (C{gtid_binlog_pos}, C{gtid_slave_pos}, ...) is the last GTID of
each replication domain: C{domain-server-seq}, comma separated. MariaDB has
no C{gtid_subtract}; with C{gtid_strict_mode} sequence numbers only grow
within a domain, so "contained" is decided per domain on sequence numbers,
and the server's own refusal to replicate from a position the primary never
had (error 1236) catches the rest.

This module must never do I/O: pure functions over strings and tuples.
"""

from __future__ import annotations

from dataclasses import dataclass


class GtidError(ValueError):
    """A GTID position cannot be parsed; the message names the bad part."""


@dataclass(frozen=True, order=True)
class Gtid:
    """One global transaction id."""

    domain: int
    server: int
    seq: int

    def __str__(self) -> str:
        return f"{self.domain}-{self.server}-{self.seq}"


@dataclass(frozen=True)
class Position:
    """The last GTID of each domain, as a server reports it."""

    by_domain: tuple[tuple[int, Gtid], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> Position:
        """Parse C{0-1-100,1-2-5} (empty or None: no transactions)."""
        domains: dict[int, Gtid] = {}
        for part in (text or "").replace("\n", "").split(","):
            part = part.strip()
            if not part:
                continue
            pieces = part.split("-")
            if len(pieces) != 3 or not all(p.isdigit() for p in pieces):
                raise GtidError(f"{part!r} is not DOMAIN-SERVER-SEQ")
            gtid = Gtid(int(pieces[0]), int(pieces[1]), int(pieces[2]))
            if gtid.domain in domains:
                raise GtidError(f"domain {gtid.domain} appears twice in {text!r}")
            domains[gtid.domain] = gtid
        return cls(tuple(sorted(domains.items())))

    @property
    def domains(self) -> dict[int, Gtid]:
        return dict(self.by_domain)

    def __str__(self) -> str:
        return ",".join(str(g) for _, g in self.by_domain)

    def __bool__(self) -> bool:
        return bool(self.by_domain)

    def seq(self, domain: int) -> int:
        gtid = self.domains.get(domain)
        return gtid.seq if gtid is not None else 0

    def reached(self, target: Position) -> bool:
        """Whether this position is at or past C{target} in every domain of C{target}."""
        return all(self.seq(d) >= g.seq for d, g in target.by_domain)

    def union(self, other: Position) -> Position:
        """The further of the two in every domain either holds."""
        domains = dict(self.by_domain)
        for d, g in other.by_domain:
            if d not in domains or g.seq > domains[d].seq:
                domains[d] = g
        return Position(tuple(sorted(domains.items())))

    def transactions_behind(self, target: Position) -> int:
        """How many transactions this position lacks to reach C{target} (0 when there)."""
        return sum(max(0, g.seq - self.seq(d)) for d, g in target.by_domain)


def errant(local: Position, primary: Position) -> list[str]:
    """
    What the local history holds that the primary's cannot: one line per
    domain. Empty when everything local may be contained in the primary's
    history (the replication connection then checks the exact GTID).
    """
    problems = []
    theirs = primary.domains
    for domain, mine in local.by_domain:
        other = theirs.get(domain)
        if other is None:
            problems.append(f"domain {domain}: {mine} here, none on the primary")
        elif mine.seq > other.seq:
            problems.append(f"domain {domain}: {mine} here is past the primary's {other}")
        elif mine.seq == other.seq and mine.server != other.server:
            problems.append(f"domain {domain}: {mine} here, {other} on the primary")
    return problems


__all__ = ["Gtid", "GtidError", "Position", "errant"]
