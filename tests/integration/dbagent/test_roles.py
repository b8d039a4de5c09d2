"""
The MariaDB role operations on two real servers: replica set-up, lossless
promotion, fencing, GTID containment and the errant-transaction check.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pymysql
import pytest

from clickpass.dbagent import mariadb as ops
from tests.integration.dbagent.pair import Pair
from tests.support import waiting

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]


def wait_for(predicate, timeout=15.0, what="condition"):
    return waiting.wait_for(predicate, timeout, what, interval=0.02)


def make_primary_and_replica(pair: Pair) -> None:
    pair.run("db1", ops.promote, 5.0, True)
    pair.run("db2", ops.configure_replica, pair.account("db1"), False)
    wait_for(lambda: pair.status("db1").semisync_master_clients == 1, what="semi-sync replica")
    conn = pair["db1"].connection("app", autocommit=True)
    with conn.cursor() as c:
        c.execute("CREATE TABLE rows_ (id INT PRIMARY KEY) ENGINE=InnoDB")
    conn.close()


def insert(pair: Pair, name: str, *ids: int) -> None:
    conn = pair[name].connection("app", autocommit=True, read_timeout=10)
    try:
        with conn.cursor() as c:
            for i in ids:
                c.execute("INSERT INTO rows_ (id) VALUES (%s)", (i,))
    finally:
        conn.close()


def rows(pair: Pair, name: str) -> set[int]:
    conn = pair[name].connection("app", autocommit=True)
    try:
        with conn.cursor() as c:
            c.execute("SELECT id FROM rows_")
            return {int(r[0]) for r in c.fetchall()}
    finally:
        conn.close()


def test_replica_set_up_is_strict_semisync_and_read_only(pair: Pair) -> None:
    """A configured replica is read-only, GTID-strict, semi-sync, sync_relay_log=1, and applies."""
    make_primary_and_replica(pair)
    insert(pair, "db1", 1, 2, 3)
    primary, replica = pair.status("db1"), pair.status("db2")
    assert not primary.read_only and primary.semisync_master_enabled
    assert primary.semisync_master_active
    assert replica.read_only and replica.replicating and replica.semisync_slave_active
    assert pair["db2"].admin_execute("SELECT @@gtid_strict_mode, @@sync_relay_log") == [(1, 1)]
    wait_for(lambda: pair.status("db2").slave_pos.reached(pair.status("db1").binlog_pos))
    assert rows(pair, "db2") == {1, 2, 3}


def test_a_write_waits_for_the_replica_instead_of_falling_back(pair: Pair) -> None:
    """With the replica stopped, a commit is not acknowledged (no silent async fallback)."""
    make_primary_and_replica(pair)
    pair.run("db2", ops.stop_replica)
    wait_for(lambda: pair.status("db1").semisync_master_clients == 0, what="replica gone")
    conn = pair["db1"].connection("app", autocommit=True, read_timeout=1)
    with pytest.raises(pymysql.err.OperationalError), conn.cursor() as c:
        c.execute("INSERT INTO rows_ (id) VALUES (7)")
    assert pair.status("db1").semisync_master_active


def test_promotion_applies_everything_received_first(pair: Pair) -> None:
    """Promotion waits for the relay log: every row the primary acknowledged is on the new one."""
    make_primary_and_replica(pair)
    # Hold the applier so the relay log has a backlog at promotion time.
    pair["db2"].admin_execute("STOP SLAVE SQL_THREAD")
    insert(pair, "db1", *range(100, 160))
    assert pair.status("db2").io_pos.reached(pair.status("db1").binlog_pos)
    assert not pair.status("db2").applied_received
    pair["db1"].kill()
    position = pair.run("db2", ops.promote, 10.0, False)
    status = pair.status("db2")
    assert not status.read_only and not status.replica_configured
    assert set(range(100, 160)) <= rows(pair, "db2")
    assert status.binlog_pos == position


def test_a_promotion_given_up_keeps_the_replica_configured(pair: Pair) -> None:
    """
    A promotion given up right before the server would become writable
    leaves it read-only and still a (stopped) replica of the old primary:
    the next attempt is a replica's promotion again, not a bootstrap (which
    refuses to promote while the peer does not answer). It succeeds, and
    the replica configuration is gone only once the server is writable.
    """
    make_primary_and_replica(pair)
    insert(pair, "db1", *range(200, 220))
    wait_for(lambda: pair.status("db2").applied_received, what="db2 applied")
    pair["db1"].kill()
    with pytest.raises(ops.OperationFailed, match="given up"):
        pair.run("db2", ops.promote, 10.0, False, lambda step: None, lambda: False)
    status = pair.status("db2")
    assert status.read_only and status.replica_configured
    pair.run("db2", ops.promote, 10.0, False)
    status = pair.status("db2")
    assert not status.read_only and not status.replica_configured
    assert set(range(200, 220)) <= rows(pair, "db2")


def test_fence_refuses_writes_and_never_acknowledges_a_waiting_one(pair: Pair) -> None:
    """
    Fencing a primary whose write waits for a semi-sync ack ends that client
    with an error (never an OK) and leaves the server read-only.
    """
    make_primary_and_replica(pair)
    pair.run("db2", ops.stop_replica)
    wait_for(lambda: pair.status("db1").semisync_master_clients == 0, what="replica gone")
    outcome: list[str] = []

    def write() -> None:
        conn = pair["db1"].connection("app", autocommit=True, read_timeout=20)
        try:
            with conn.cursor() as c:
                c.execute("INSERT INTO rows_ (id) VALUES (42)")
            outcome.append("ok")
        except pymysql.err.MySQLError as e:
            outcome.append(f"error {e.args[0]}")
        finally:
            conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    wait_for(
        lambda: pair["db1"].admin_execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT%'"
        )[0][0],
        what="the write to wait",
    )
    killed = pair.run("db1", ops.fence)
    writer.join(10)
    assert killed >= 1
    assert outcome and outcome[0] != "ok", outcome
    status = pair.status("db1")
    assert status.read_only and not status.semisync_master_enabled
    with pytest.raises(pymysql.err.OperationalError) as refused:
        insert(pair, "db1", 43)
    assert refused.value.args[0] == 1290  # --read-only


def test_old_primary_with_contained_history_rejoins(pair: Pair) -> None:
    """A former primary whose GTIDs are all on the new primary rejoins and catches up."""
    make_primary_and_replica(pair)
    insert(pair, "db1", 1, 2)
    wait_for(lambda: pair.status("db2").applied_received and rows(pair, "db2") == {1, 2})
    pair.run("db1", ops.fence)
    pair.run("db2", ops.promote, 5.0, False)
    insert(pair, "db2", 3, 4)
    local, primary = pair.status("db1"), pair.status("db2")
    assert ops.rejoin_problems(local, primary) == []
    pair.run("db1", ops.configure_replica, pair.account("db2"), True)
    wait_for(lambda: rows(pair, "db1") == {1, 2, 3, 4}, what="catch-up")
    wait_for(lambda: pair.status("db1").current_pos == pair.status("db2").current_pos)
    assert pair.status("db1").binlog_pos == pair.status("db2").binlog_pos


def test_errant_transaction_is_detected(pair: Pair) -> None:
    """
    A write the new primary never saw (made on the old primary after the
    split) is found by the position check, or, at the same sequence
    number, refused by the primary (error 1236) when replication starts.
    """
    make_primary_and_replica(pair)
    insert(pair, "db1", 1)
    wait_for(lambda: rows(pair, "db2") == {1})
    pair.run("db2", ops.stop_replica)
    pair["db1"].admin_execute("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
    insert(pair, "db1", 2)  # errant: only on db1
    pair.run("db1", ops.fence)
    pair.run("db2", ops.promote, 5.0, False)
    # Past the primary: found by position.
    assert ops.rejoin_problems(pair.status("db1"), pair.status("db2"))
    insert(pair, "db2", 3)  # same sequence number, other server
    problems = ops.rejoin_problems(pair.status("db1"), pair.status("db2"))
    assert problems and "on the primary" in problems[0]
    insert(pair, "db2", 4)  # now the primary is ahead: positions alone cannot tell
    assert ops.rejoin_problems(pair.status("db1"), pair.status("db2")) == []
    pair.run("db1", ops.configure_replica, pair.account("db2"), True)
    wait_for(lambda: ops.diverged(pair.status("db1")), what="error 1236")
    assert rows(pair, "db1") == {1, 2}


def split_with_errant_writes(pair: Pair, errant_rows: int, primary_rows: int) -> None:
    """
    db1 primary, db2 its replica; then db1 binlogs C{errant_rows} writes
    db2 never receives, is fenced, db2 is promoted and takes
    C{primary_rows} writes of its own.
    """
    make_primary_and_replica(pair)
    insert(pair, "db1", 1)
    wait_for(lambda: rows(pair, "db2") == {1})
    pair.run("db2", ops.stop_replica)
    pair["db1"].admin_execute("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
    insert(pair, "db1", *range(2, 2 + errant_rows))
    pair.run("db1", ops.fence)
    pair.run("db2", ops.promote, 5.0, False)
    insert(pair, "db2", *range(100, 100 + primary_rows))


def test_rejoin_of_a_history_positions_cannot_judge_ends_in_the_primarys_refusal(
    pair: Pair,
) -> None:
    """
    Local 0-1-N against a primary at 0-2-M, M > N, passes the position
    check; the rejoin reads and checks the history on its own connection,
    and the primary refuses the position (1236): divergence, never
    streaming, the local rows untouched.
    """
    split_with_errant_writes(pair, 5, 10)
    local, primary = pair.status("db1"), pair.status("db2")
    assert primary.binlog_pos.seq(0) > local.binlog_pos.seq(0)
    assert ops.rejoin_problems(local, primary) == []  # "maybe contained"
    problems, status = pair.run("db1", ops.rejoin, pair.account("db2"), primary.binlog_pos, 10.0)
    assert problems == []
    assert ops.divergence(status) and "1236" in ops.divergence(status), status
    assert not status.streaming
    assert rows(pair, "db1") == {1, 2, 3, 4, 5, 6}


def test_rejoin_refuses_a_history_past_the_primary_on_its_own_connection(pair: Pair) -> None:
    """The check made by the rejoin itself finds a local history past the primary's."""
    split_with_errant_writes(pair, 5, 1)
    primary = pair.status("db2")
    problems, status = pair.run("db1", ops.rejoin, pair.account("db2"), primary.binlog_pos, 10.0)
    assert problems and "past the primary" in problems[0]
    assert not status.replica_configured and status.read_only


def test_rejoin_of_a_contained_history_streams_from_the_position_checked(pair: Pair) -> None:
    """A contained old primary rejoins: streaming, replica position = its own binlog's."""
    make_primary_and_replica(pair)
    insert(pair, "db1", 1, 2)
    wait_for(lambda: pair.status("db2").applied_received and rows(pair, "db2") == {1, 2})
    pair.run("db1", ops.fence)
    pair.run("db2", ops.promote, 5.0, False)
    insert(pair, "db2", 3)
    before = pair.status("db1").binlog_pos
    problems, status = pair.run(
        "db1", ops.rejoin, pair.account("db2"), pair.status("db2").binlog_pos, 10.0
    )
    assert problems == [] and status.streaming and status.semisync_slave_active, status
    assert status.slave_pos.reached(before)
    wait_for(lambda: rows(pair, "db1") == {1, 2, 3}, what="catch-up")


def test_a_replica_applier_stopped_by_a_local_transaction_is_diverged(pair: Pair) -> None:
    """
    A transaction committed on the replica itself (an administrator past
    read_only) makes the applier stop on the primary's next one with
    out-of-order GTID (1950): L{ops.divergence} says so.
    """
    make_primary_and_replica(pair)
    insert(pair, "db1", 1)
    wait_for(lambda: rows(pair, "db2") == {1})
    pair["db2"].admin_execute("INSERT INTO app.rows_ (id) VALUES (500)")  # root: past read_only
    insert(pair, "db1", 2)
    status = wait_for(
        lambda: (lambda s: s if s.sql_running != "Yes" else None)(pair.status("db2")),
        what="the applier to stop",
    )
    assert status.last_sql_errno == 1950, (status.last_sql_errno, status.last_sql_error)
    assert "1950" in ops.divergence(status)


def test_a_primary_fenced_by_a_given_up_promotion_lifts_the_fence_under_its_lock(
    pair: Pair,
) -> None:
    """
    On real servers, the abort as the lab saw it: the candidate (db2) stops
    its receiver and fences the primary (db1) over the network, then gives
    its promotion up. Writes on db1 are refused; db1's lift (its peer
    read-only, nothing newer there) makes it writable again with semi-sync
    on, and once db2 replicates again a write is acknowledged and on both.
    Meanwhile a candidate's promotion holding db1's fence lock keeps it
    fenced, and one that goes on after the lift fences db1 again.
    """
    make_primary_and_replica(pair)
    insert(pair, "db1", 1, 2)
    wait_for(lambda: pair.status("db2").slave_pos.reached(pair.status("db1").binlog_pos))
    # The candidate's promotion, up to its fence of the old primary.
    pair.run("db2", ops.stop_receiving)
    _, fenced = pair.run("db1", ops.fence_if_writable, True)
    assert fenced and pair.status("db1").read_only
    assert not pair.status("db1").semisync_master_enabled
    with pytest.raises(pymysql.err.OperationalError) as refused:
        insert(pair, "db1", 3)
    assert refused.value.args[0] in (1290, 1836)

    def read_db2() -> ops.ServerStatus:
        return pair.status("db2")

    # A promotion of db2 at its last check holds db1's fence lock: no lift.
    held = pair["db1"].admin_connection(read_timeout=10)
    try:
        with held.cursor() as c:
            assert ops.guard_fence(c, 1.0) is False  # already read-only
            why = pair.run("db1", ops.lift_fence, read_db2, lambda: True, True)
            assert why.startswith("the fence lock is held")
            assert pair.status("db1").read_only
    finally:
        held.close()

    # Given up: db1's agent lifts the fence.
    started = time.monotonic()
    why = pair.run("db1", ops.lift_fence, read_db2, lambda: True, True)
    took = time.monotonic() - started
    assert why == ""
    status = pair.status("db1")
    assert not status.read_only and status.semisync_master_enabled
    print(f"lift_fence on real servers took {took * 1000:.0f} ms")

    # db2 rejoins; a write is acknowledged through semi-sync and on both.
    pair.run("db2", ops.configure_replica, pair.account("db1"), True)
    wait_for(lambda: pair.status("db1").semisync_master_clients == 1, what="semi-sync replica")
    insert(pair, "db1", 4)
    assert pair.status("db1").semisync_master_active
    wait_for(lambda: rows(pair, "db2") == {1, 2, 4}, what="row 4 on db2")

    # A promotion of db2 that goes on after all finds db1 writable at its
    # last check and fences it again before its own read_only OFF; db1's
    # lift then finds db2 writable and leaves the fence.
    pair.run("db2", ops.stop_receiving)
    held = pair["db1"].admin_connection(read_timeout=10)
    try:
        with held.cursor() as c:
            assert ops.guard_fence(c, 1.0) is True
            assert pair.status("db1").read_only
            pair.run("db2", ops.promote, 5.0, True)
    finally:
        held.close()
    why = pair.run("db1", ops.lift_fence, read_db2, lambda: True, True)
    assert why == "the peer's server is writable"
    assert pair.status("db1").read_only and not pair.status("db2").read_only

    # A fence ends every client connection first, a lift's with its lock
    # (released only once its statement is over), then takes the lock: a
    # lift's read_only = OFF cannot land after the fence's read_only = ON.
    held = pair["db2"].admin_connection(read_timeout=10)
    try:
        with held.cursor() as c:
            c.execute("SELECT GET_LOCK(%s, 0)", (ops.FENCE_LOCK,))
            assert c.fetchone()[0] == 1
            other = pair["db2"].admin_connection(read_timeout=10)
            with other.cursor() as o:
                started = time.monotonic()
                o.execute("SELECT GET_LOCK(%s, 0.2)", (ops.FENCE_LOCK,))
                assert o.fetchone()[0] == 0  # a fractional wait, then no
                assert 0.15 <= time.monotonic() - started < 2.0
            other.close()
            pair.run("db2", ops.fence, 3, 0.2)
            assert pair.status("db2").read_only
            with pytest.raises(pymysql.err.MySQLError):
                c.execute("SELECT 1")
    finally:
        with contextlib.suppress(Exception):
            held.close()


def test_a_switchover_is_undone_only_under_the_fence_lock(pair: Pair) -> None:
    """
    A drained primary whose switchover no peer took up is writable again
    (resume_writes), but not while another connection (a peer's promotion
    at its last check) holds its fence lock.
    """
    make_primary_and_replica(pair)
    pair.run("db1", ops.drain_writes, 0.3)
    assert pair.status("db1").read_only
    held = pair["db1"].admin_connection(read_timeout=10)
    try:
        with held.cursor() as c:
            c.execute("SELECT GET_LOCK(%s, 0)", (ops.FENCE_LOCK,))
            assert c.fetchone()[0] == 1
            assert pair.run("db1", ops.resume_writes, lambda: True) is False
            assert pair.status("db1").read_only
    finally:
        held.close()
    assert pair.run("db1", ops.resume_writes, lambda: True) is True
    assert not pair.status("db1").read_only
    insert(pair, "db1", 7)
    wait_for(lambda: 7 in rows(pair, "db2"), what="row 7 on db2")
