"""
A rolling upgrade in the lab, as docs/operations.md describes it: the whole
production shape (MariaDB pair, witness, two app nodes) starts on the
previous release (the tag 0.1.0, or CLICKPASS_UPGRADE_FROM), and every node is
moved to this checkout one at a time (witness, each app node drained by a VIP
switchover, then the database replica's host, switchover, old primary's host)
while a relying party in the client namespace signs people in through both
app VIPs without pause; then, every node on this checkout, the database is
switched over again (CLICKPASS_UPGRADE_SWITCHOVERS times, back and forth)
with the sign-ins still flowing. No sign-in may fail, and every account
signed up must be on both database servers at the end.

The app nodes go first so that the previous release's database switchover
(its agent lets the VIP go before it fences its server) is ridden by this
release's app nodes, whose storage runs again what never reached a primary
and whose sign-ins are idempotent. A sign-in in flight on an app node when
its VIP moves away still gets its answer: this release hands the address off
(it stays on the node's lo for the drain) and its new holder bridges the
connections it did not see start to the old holder for that time; for a
node still on a release that does neither, the operator parks the VIP on lo
and bridges by hand before the move, as docs/operations.md says. A database
host must rejoin by itself after its agent restarts under writes (its agent
reads the primary again before it calls anything errant): a quarantined
host fails the test, as does any failed sign-in.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest
from openid.consumer import consumer
from openid.store.memstore import MemoryStore

from clickpass.heartbeat.actions import bridge_ruleset
from tests.integration.openid.harness import Person

from .conftest import _check_possible, enter_namespace, labmod, settle_db

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.mariadb]

ROOT = Path(__file__).resolve().parents[3]
PREFIX = os.environ.get("CLICKPASS_TEST_UPGRADE_PREFIX", "cpu-")
FROM = os.environ.get("CLICKPASS_UPGRADE_FROM", "0.1.0")
# The commit tagged 0.1.0, for a clone made without tags.
RELEASE_0_1_0 = "8cd83c3fcf3577650e43fd207abc71671e670340"
VIP1 = labmod.APP_VIPS["app1"]
VIP2 = labmod.APP_VIPS["app2"]
CLIENT = labmod.HOSTS["client"]
# A new person signs up every this many sign-ins (the writes that must not be lost).
SIGNUP_EVERY = 5
# Seconds a VIP parked by hand on an old release's lo stays there (its lease).
PARK_SECONDS = 120
# Planned database switchovers once every node runs this checkout, sign-ins
# flowing (more, to look for a rare failure: CLICKPASS_UPGRADE_SWITCHOVERS=5).
SWITCHOVERS = int(os.environ.get("CLICKPASS_UPGRADE_SWITCHOVERS", "1"))


def previous_release(directory: Path) -> Path:
    """The release to upgrade from, exported from git and its C parser built."""
    candidates = [FROM, RELEASE_0_1_0] if FROM == "0.1.0" else [FROM]
    for candidate in candidates:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            break
    else:
        pytest.fail(
            f"no release {FROM!r} in this repository to upgrade from: fetch the tags, or set "
            "CLICKPASS_UPGRADE_FROM to a commit",
            pytrace=False,
        )
    tree = directory / f"clickpass-{FROM}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", done.stdout.strip()],
        capture_output=True,
        check=True,
    ).stdout
    (directory / "release.tar").write_bytes(archive)
    with tarfile.open(directory / "release.tar") as tar:
        tar.extractall(tree, filter="data")
    subprocess.run(
        [str(labmod.VENV / "bin" / "python"), "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tree,
        capture_output=True,
        check=True,
    )
    return tree


class RelyingPartySite:
    """The relying party's realm on the client's own address (its XRDS lists /return)."""

    def __init__(self) -> None:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = site.xrds().encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/xrds+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # Made (bound) by a thread inside the client namespace.
        self.server = ThreadingHTTPServer((CLIENT, 0), Handler)
        self.realm = f"http://{CLIENT}:{self.server.server_address[1]}/"
        self.return_to = self.realm + "return"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def xrds(self) -> str:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<xrds:XRDS xmlns:xrds="xri://$xrds" xmlns="xri://$xrd*($v*2.0)"><XRD>'
            "<Service><Type>http://specs.openid.net/auth/2.0/return_to</Type>"
            f"<URI>{self.return_to}</URI></Service></XRD></xrds:XRDS>\n"
        )


def through(vip: str, url: str) -> str:
    """C{url} with its host:port made C{vip}'s (the person's browser resolved the name so)."""
    parts = urlsplit(url)
    if parts.hostname not in (VIP1, VIP2):
        return url
    return urlunsplit(parts._replace(netloc=f"{vip}:{labmod.HTTP_PORT}"))


class LabPerson(Person):
    """A person whose browser reaches the provider through one VIP, a connection a request."""

    def __init__(self, vip: str, email: str) -> None:
        super().__init__(f"http://{vip}:{labmod.HTTP_PORT}/", email)
        self.vip = vip
        self.browser.session.headers["Connection"] = "close"

    def open(self, url: str) -> Any:
        return super().open(through(self.vip, url))


@dataclass
class SignIns:
    """A relying party signing people in through both VIPs, in the client namespace."""

    namespace: str
    ok: list[tuple[float, str]] = field(default_factory=list)
    # (started, finished) of each sign-in that succeeded, CLOCK_MONOTONIC.
    ok_spans: list[tuple[float, float]] = field(default_factory=list)
    # (started, finished, VIP, what went wrong), CLOCK_MONOTONIC.
    failures: list[tuple[float, float, str, str]] = field(default_factory=list)
    identities: dict[str, str] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        enter_namespace(self.namespace)
        self.site = RelyingPartySite()
        self.store = MemoryStore()
        people = [self._new_person(VIP1), self._new_person(VIP2)]
        self.ready.set()
        n = 0
        while not self._stop.is_set():
            n += 1
            vip = (VIP1, VIP2)[n % 2]
            if n % SIGNUP_EVERY == 0:
                self._attempt(vip, lambda v=vip: self._new_person(v))
            else:
                person = people[n % 2]
                self._attempt(vip, lambda p=person: self._sign_in(p))

    def _attempt(self, vip: str, action: Any) -> None:
        started = time.monotonic()
        try:
            action()
        except Exception as e:  # any failure of the sign-in is what is counted
            failure = (started, time.monotonic(), vip, f"{type(e).__name__}: {e}")
            self.failures.append(failure)
        else:
            finished = time.monotonic()
            self.ok.append((finished, vip))
            self.ok_spans.append((started, finished))

    def _begin(self) -> tuple[consumer.Consumer, str]:
        rp = consumer.Consumer({}, self.store)
        request = rp.begin(f"http://{VIP1}:{labmod.HTTP_PORT}/")
        return rp, str(request.redirectURL(self.site.realm, self.site.return_to))

    def _complete(self, rp: consumer.Consumer, location: str) -> str:
        query = dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))
        response = rp.complete(query, location.split("?")[0])
        if response.status != consumer.SUCCESS:
            raise AssertionError(f"the relying party got {response.status}: {response.message}")
        return str(response.identity_url)

    def _new_person(self, vip: str) -> LabPerson:
        person = LabPerson(vip, f"roll-{secrets.token_hex(5)}@example.com")
        rp, url = self._begin()
        answer = person.decide(person.sign_up_and_continue(url))
        if answer.status_code != 302:
            raise AssertionError(f"consent answered {answer.status_code}")
        self.identities[person.email] = self._complete(rp, answer.headers["location"])
        return person

    def _sign_in(self, person: LabPerson) -> None:
        rp, url = self._begin()
        identity = self._complete(rp, person.through_consent(url))
        if identity != self.identities[person.email]:
            raise AssertionError(f"{person.email} came back as {identity}")


@pytest.fixture
def old_lab(tmp_path: Path) -> Iterator[Any]:
    """The production shape on MariaDB, every node on the previous release."""
    _check_possible()
    release = previous_release(tmp_path)
    lab = labmod.Lab.for_run(PREFIX)
    lab.releases = {host: release for host in (*labmod.NODES, *labmod.DB_NODES)}
    try:
        lab.up(shape="production", db=True, timeout=180.0)
        settle_db(lab)
        yield lab
    finally:
        lab.down()


def runs_release(lab: Any, host: str, tree: Path | None) -> bool:
    """Whether the host's node loaded its C parser from C{tree} (None: from this checkout)."""
    maps = Path(f"/proc/{lab.pid(host)}/maps").read_text()
    loaded = re.findall(r"(\S+)/clickpass/balancer/_http1\S*\.so", maps)
    return bool(loaded) and all(
        (Path(p) == tree) if tree is not None else (Path(p) == ROOT) for p in loaded
    )


# This release counts sign-ups per client address ([accounts]
# link_mails_per_client, 20 an hour by default); the relying party here signs
# every new person up from the client namespace's one address, as many in a
# minute as a real site gets from many. The previous release knows no such
# key (it refuses unknown keys), so an app node gets it as it is upgraded.
UPGRADED_APP_CONFIG = "\n[accounts]\nlink_mails_per_client = 100000\n"


def upgrade_config(lab: Any, host: str) -> None:
    """The settings an app node of this checkout runs with in this test."""
    if host in labmod.APP_VIPS:
        config = lab.dir / host / "node.toml"
        if UPGRADED_APP_CONFIG not in config.read_text():
            with config.open("a") as f:
                f.write(UPGRADED_APP_CONFIG)


def upgrade(lab: Any, host: str) -> None:
    """Stop the host's node and start it from this checkout."""
    lab.stop_node(host)
    lab.releases.pop(host, None)
    upgrade_config(lab, host)
    lab.start_node(host)


def answers(lab: Any, host: str) -> bool:
    """Whether the host's node answers on its control socket."""
    try:
        lab.cluster_status(host)
    except labmod.LabError:
        return False
    return True


def retry(command: Any, what: str, timeout: float = 60.0) -> str:
    """
    Run a planned move until it is accepted: it is refused while the peer that
    just restarted is not yet heard as a healthy BACKUP.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(command())
        except labmod.LabError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} refused for {timeout:g} s: {e}") from None
            time.sleep(1.0)


def wait_db(lab: Any, primary: str, replica: str) -> None:
    """
    Wait until C{primary} is primary and C{replica} its replica. A replica
    quarantined meanwhile fails the test with what its agent found: with
    writes flowing, a restarted agent must rejoin by itself.
    """
    deadline = time.monotonic() + 120.0
    while (lab.db_role(primary), lab.db_role(replica)) != ("primary", "replica"):
        assert time.monotonic() < deadline, f"{primary} primary, {replica} replica: not so"
        if lab.db_role(replica) == "quarantined":
            local = lab.sql(replica, "SELECT @@gtid_current_pos").strip()
            theirs = lab.sql(primary, "SELECT @@gtid_binlog_pos").strip()
            problems = lab.db_status(replica).get("problems")
            raise AssertionError(
                f"{replica} quarantined ({problems}); here {local}, on {primary} {theirs}"
            )
        time.sleep(0.5)


def park_if_old(lab: Any, host: str, vip: str) -> None:
    """
    Before a move that takes C{vip} away from C{host}: if the host's node runs
    a release that does not hand the address off (it drops it, and the
    requests in flight there lose their answers), park it on the host's lo
    by hand, as docs/operations.md tells an operator upgrading from one. The
    lease ends it; the lab's hosts have the ARP settings that keep it quiet.
    """
    if host in lab.releases:
        lab.exec(
            host, "ip", "addr", "replace", f"{vip}/32", "dev", "lo",
            "valid_lft", str(PARK_SECONDS), "preferred_lft", str(PARK_SECONDS),
        )  # fmt: skip


# The table an operator loads by hand (docs/operations.md, step 2) on a node
# of a release without the hand-over bridge: the one this release loads.
MANUAL_BRIDGE_TABLE = "clickpass_handoff"


def bridge_if_old(lab: Any, host: str, vip: str, old_holder: str) -> None:
    """
    Before a move that gives C{vip} to C{host}: if the host's node runs a
    release without the hand-over bridge, load it by hand, as
    docs/operations.md tells an operator upgrading from one: a connection
    whose handshake C{old_holder} made just before the move, and whose
    request comes after the client's ARP entry moved, still reaches it.
    """
    if host in lab.releases:
        rules = lab.dir / f"bridge-{host}.nft"
        rules.write_text(bridge_ruleset(MANUAL_BRIDGE_TABLE, vip, labmod.HOSTS[old_holder], "eth0"))
        lab.exec(host, "nft", "-f", str(rules))


def unbridge(lab: Any, host: str) -> None:
    """Remove a bridge loaded by hand (its drain is long over)."""
    lab.exec(host, "nft", "delete", "table", "ip", MANUAL_BRIDGE_TABLE, check=False)


def roll_app(lab: Any, host: str, other: str, moves: list[float]) -> None:
    """
    Drain an app node (its VIP to the other), upgrade it, let it take its VIP
    back; C{moves} gets the moments the VIP was seen to move.
    """
    vip = labmod.APP_VIPS[host]
    park_if_old(lab, host, vip)
    bridge_if_old(lab, other, vip, host)
    answer = retry(lambda: lab.ctl(host, "cluster", "switchover", host), f"{host}'s switchover")
    assert "handing the VIP" in answer
    lab.wait_for(lambda: lab.vip_holders(vip) == [other], 20.0, f"{other} to hold {vip}")
    moves.append(time.monotonic())
    lab.stop_node(host)
    lab.releases.pop(host, None)
    upgrade_config(lab, host)
    park_if_old(lab, other, vip)  # the upgraded node takes its VIP back from it
    lab.start_node(host)
    lab.wait_for(lambda: lab.vip_holders(vip) == [host], 120.0, f"{host} to take {vip} back")
    moves.append(time.monotonic())
    unbridge(lab, other)


def settled_roles(lab: Any) -> tuple[str, str]:
    """The database hosts as (primary, its replica), once one is each."""
    deadline = time.monotonic() + 120.0
    while True:
        roles = {host: lab.db_role(host) for host in labmod.DB_NODES}
        if sorted(roles.values()) == ["primary", "replica"]:
            primary = next(h for h, r in roles.items() if r == "primary")
            return primary, next(h for h in labmod.DB_NODES if h != primary)
        assert time.monotonic() < deadline, f"the database roles did not settle: {roles}"
        time.sleep(0.5)


def switch_over_on_this_release(
    lab: Any, signins: SignIns, step: Any
) -> list[tuple[float, float, int]]:
    """
    Once every node runs this checkout: planned database switchovers back and
    forth (L{SWITCHOVERS}), sign-ins flowing. Returns, for each, when it was
    asked for, when both roles had settled, and how many sign-ins that
    succeeded were under way across that span (some must have been: else
    the switchover proved nothing).
    """
    done = []
    for n in range(SWITCHOVERS):
        # db2 should be the primary after the roll, but a loaded machine may
        # have failed it over meanwhile (missed adverts): start from what is.
        primary, replica = settled_roles(lab)
        began = time.monotonic()
        retry(lambda p=primary: lab.ctl(p, "db", "switchover", timeout=30.0), "db switchover")
        primary, replica = replica, primary
        wait_db(lab, primary, replica)
        ended = time.monotonic()
        step(f"switchover {n + 1} to {primary} (every node on this checkout)")
        lab.wait_for(
            lambda e=ended: any(f > e for _, f in signins.ok_spans) or signins.failures,
            60.0,
            "a sign-in after the switchover",
        )
        spanning = sum(1 for s, f in signins.ok_spans if s < ended and f > began)
        assert spanning > 0, "no sign-in was under way during the switchover"
        done.append((began, ended, spanning))
    return done


@pytest.mark.timeout(1500)
def test_rolling_upgrade_with_sign_ins_flowing(old_lab: Any) -> None:
    """
    From the previous release to this checkout, one node at a time, with sign-ins of
    signed-in people (checkid_setup through a real relying party) and sign-ups going on
    through both app VIPs: none fails, and every account made is on both servers.
    """
    lab = old_lab
    release = lab.releases["app1"]
    assert runs_release(lab, "app1", release), "app1 does not run the previous release"
    signins = SignIns(lab.ns("client"))
    signins.start()
    assert signins.ready.wait(120), f"the first sign-ins failed: {signins.failures[:3]}"
    lab.wait_for(lambda: len(signins.ok) >= 10, 120.0, "sign-ins before the roll")
    started = time.monotonic()
    steps: list[tuple[str, float]] = []
    moves: list[float] = []

    def step(name: str) -> None:
        steps.append((name, round(time.monotonic() - started, 1)))

    try:
        upgrade(lab, "witness")
        lab.wait_for(lambda: answers(lab, "witness"), 60.0, "the witness to answer")
        step("witness")
        roll_app(lab, "app1", "app2", moves)
        step("app1")
        roll_app(lab, "app2", "app1", moves)
        step("app2")
        upgrade(lab, "db2")
        wait_db(lab, "db1", "db2")
        step("db2 (replica)")
        old_switchover = [time.monotonic()]
        retry(lambda: lab.ctl("db1", "db", "switchover", timeout=30.0), "db switchover")
        wait_db(lab, "db2", "db1")
        old_switchover.append(time.monotonic())
        step("switchover to db2 (the previous release's)")
        upgrade(lab, "db1")
        wait_db(lab, "db2", "db1")
        step("db1 (replica)")
        switched = switch_over_on_this_release(lab, signins, step)
        count = len(signins.ok)
        lab.wait_for(lambda: len(signins.ok) >= count + 10, 120.0, "sign-ins after the roll")
        signins.stop()
    except BaseException:
        signins.stop()
        print(
            f"\nthe roll stopped after steps {steps}; sign-ins ok {len(signins.ok)}, failed"
            f" {[(round(a - started, 1), v, e) for a, _, v, e in signins.failures]}"
        )
        raise

    for host in (*labmod.NODES, *labmod.DB_NODES):
        assert runs_release(lab, host, None), f"{host} does not run this checkout"
    during = [t for t, _ in signins.ok if started <= t]
    failures = signins.failures
    per_vip = {v: sum(1 for _, vip in signins.ok if vip == v) for v in (VIP1, VIP2)}
    print(
        f"\nrolling upgrade {FROM} -> HEAD: steps (s from start) {steps}; sign-ins ok"
        f" {len(signins.ok)} ({len(during)} during the roll; per VIP {per_vip}),"
        f" failed {len(signins.failures)}; people signed up {len(signins.identities)};"
        f" app VIPs moved at {[round(m - started, 1) for m in moves]} s; failures"
        f" {[(round(a - started, 1), round(b - started, 1), v, e) for a, b, v, e in failures]}"
    )
    automatic = sum(
        (lab.dir / host / "node.log").read_text(errors="replace").count("PROMOTED (automatic)")
        for host in labmod.DB_NODES
    )
    print(f"unplanned (automatic) database failovers during the test: {automatic}")
    began, ended = old_switchover
    across_old = sum(1 for s, f in signins.ok_spans if s < ended and f > began)
    print(
        f"the previous release's database switchover: {ended - began:.1f} s from the request"
        f" to both roles settled; {across_old} sign-ins in flight across it succeeded"
    )
    for n, (began, ended, spanning) in enumerate(switched, 1):
        print(
            f"database switchover {n} on this release: {ended - began:.1f} s from the request"
            f" to both roles settled; {spanning} sign-ins in flight across it succeeded"
        )
    assert failures == [], f"{len(failures)} sign-ins failed: {[f[2:] for f in failures][:5]}"
    assert len(during) >= 50
    emails = set(signins.identities)
    for host in labmod.DB_NODES:
        present = set(lab.sql(host, "SELECT email FROM clickpass.accounts").split())
        assert emails <= present, f"accounts missing on {host}: {sorted(emails - present)[:5]}"
