"""GTID positions: parsing, reaching a target, and the errant-transaction check."""

from __future__ import annotations

import pytest

from clickpass.dbagent.gtid import Gtid, GtidError, Position, errant


def test_parse_and_print_round_trip() -> None:
    """A position parses per domain and prints back sorted by domain."""
    position = Position.parse("1-2-5, 0-1-100")
    assert position.domains == {0: Gtid(0, 1, 100), 1: Gtid(1, 2, 5)}
    assert str(position) == "0-1-100,1-2-5"
    assert not Position.parse("") and not Position.parse(None)


@pytest.mark.parametrize("text", ["0-1", "a-b-c", "0-1-2,0-2-3", "0--1-2"])
def test_bad_positions_are_refused(text: str) -> None:
    """Malformed text or a repeated domain is a GtidError, not a wrong answer."""
    with pytest.raises(GtidError):
        Position.parse(text)


def test_reached_and_behind() -> None:
    """A position reaches a target only in every domain of the target."""
    applied = Position.parse("0-1-10,1-1-3")
    assert applied.reached(Position.parse("0-2-10"))
    assert not applied.reached(Position.parse("0-1-11"))
    assert not applied.reached(Position.parse("2-1-1"))
    assert applied.transactions_behind(Position.parse("0-1-15,1-1-3")) == 5


def test_union_is_the_further_position_in_every_domain() -> None:
    """A replica's received position: its relay log's, or its applied one where further."""
    received = Position.parse("0-1-12")
    applied = Position.parse("0-1-10,1-2-4")
    assert received.union(applied) == Position.parse("0-1-12,1-2-4")
    assert applied.union(received) == Position.parse("0-1-12,1-2-4")
    assert Position().union(applied) == applied


def test_contained_history_has_no_errant_transactions() -> None:
    """A former primary behind or equal to the new primary in every domain may rejoin."""
    assert errant(Position.parse("0-1-10"), Position.parse("0-2-12")) == []
    assert errant(Position.parse("0-1-10"), Position.parse("0-1-10")) == []
    assert errant(Position.parse(""), Position.parse("0-1-10")) == []


def test_errant_transactions_are_named() -> None:
    """Past the primary, a domain it lacks, or the same seq from another server: errant."""
    assert errant(Position.parse("0-1-11"), Position.parse("0-2-10"))
    assert errant(Position.parse("0-1-1,5-1-1"), Position.parse("0-1-1"))
    [problem] = errant(Position.parse("0-1-10"), Position.parse("0-2-10"))
    assert "0-1-10 here" in problem and "0-2-10 on the primary" in problem
