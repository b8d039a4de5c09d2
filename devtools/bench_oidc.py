"""
The OpenID Connect benchmark behind C{scripts/bench-oidc}: Clickpass
against the certified npm package oidc-provider, on the same machine in
the same run. One node (real C{twistd clickpass}, two workers behind its
front) and oidc-provider in node's C{cluster} with as many workers
(devtools/bench_oidc_peer/peer.mjs), both keeping their sessions, grants,
codes and tokens in the same private MariaDB server (oidc-provider through
a plain adapter over one table; node 20 has no SQLite driver without a
native build, so with C{--database sqlite} only Clickpass moves). At each
a person is signed in (a session cookie) and has approved the client;
the same client processes then sign that person in as fast as they can,
the flows taking turns:

  - C{clickpass} and C{oidc-provider}, the same request at each:
    authorize with C{prompt=none} and PKCE S256 (a redirect with a code),
    then the token exchange with C{client_secret_basic} (an ID token signed
    RS256 with an RSA 2048 key, an opaque access token, a refresh token);
  - C{openid2}: Clickpass's OpenID 2.0 C{checkid_immediate} (a positive
    assertion signed with a private association) and the relying party's
    C{check_authentication} of it (C{--no-openid2} leaves it out).

The last line gives Clickpass's sign-ins per second as a ratio of
oidc-provider's (medians of the rounds); the line before it, the ratio to
OpenID 2.0's.

A benchmark, not a test: it asserts nothing but that every answer was
the right one. It must never touch anything but loopback and the
temporary directory it creates.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import requests

from clickpass import config as configmod
from clickpass.partners import sites
from clickpass.storage.offline import open_direct
from clickpass.storage.private_server import MariaDBServer, MariaDBUnavailable
from clickpass.storage.sql import Transaction
from devtools.bench_balancer import (
    REALM,
    VENV_BIN,
    free_port,
    openid_path,
    sign_in_and_approve,
    write_node_config,
)

# The client's redirect URI lies in the OpenID 2.0 realm the person
# approved: one partner site, one consent for both protocols.
REDIRECT_URI = REALM + "cb"
PEER_DIR = Path(__file__).parent / "bench_oidc_peer"


def make_client(work: Path, ctl: list[str]) -> tuple[str, str]:
    """A partner site whose realm is L{REALM} (in the node's database), and a client of it."""
    settings = sites.SiteSettings(
        name="Bench Partner", logo_url="", realm=REALM, return_to_urls=(REALM,),
        registration_url="", connect_url="", requested_fields=(), required_fields=(),
        webhook_url="",
    )  # fmt: skip

    def create(tx: Transaction) -> str:
        admin = int(tx.scalar("SELECT MIN(id) FROM accounts"))
        return sites.create_site(tx, settings, admin, int(time.time())).public_id

    storage = open_direct(configmod.load(str(work / "node.toml")))
    try:
        site: str = storage.run_blocking(create)
    finally:
        storage.close()
    made = subprocess.run(
        [*ctl, "oidc", "clients", "add", site, "--redirect-uri", REDIRECT_URI],
        capture_output=True, check=True, cwd=work,
    )  # fmt: skip
    client = json.loads(made.stdout)
    return str(client["client_id"]), str(client["client_secret"])


@dataclass(frozen=True)
class Target:
    """Where one OpenID Connect provider answers, and the client the benchmark is there."""

    authorize: str
    token: str
    client_id: str
    secret: str


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(32)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_query(target: Target, challenge: str, prompt: str = "none") -> str:
    fields = {
        "client_id": target.client_id,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": "openid",
        "state": "s",
        "nonce": "n",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if prompt:
        fields["prompt"] = prompt
    return f"{target.authorize}?{urlencode(fields)}"


def oidc_round(session: requests.Session, target: Target) -> None:
    """
    One OpenID Connect sign-in, the same request at either provider:
    authorize (prompt=none, PKCE S256) answered with a code, then the token
    exchange (client_secret_basic) answered with an ID token.
    """
    verifier, challenge = pkce_pair()
    answer = session.get(authorize_query(target, challenge), allow_redirects=False, timeout=30)
    location = answer.headers.get("location", "")
    code = dict(parse_qsl(urlsplit(location).query)).get("code")
    if answer.status_code not in (302, 303) or not code or not location.startswith(REDIRECT_URI):
        raise RuntimeError(f"authorize answered {answer.status_code}: {location or answer.text}")
    basic = base64.b64encode(f"{target.client_id}:{target.secret}".encode()).decode()
    tokens = session.post(
        target.token,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        headers={"Authorization": "Basic " + basic},
        timeout=30,
    )
    if tokens.status_code != 200 or not {"id_token", "refresh_token"} <= set(tokens.json()):
        raise RuntimeError(f"the token endpoint answered {tokens.status_code}: {tokens.text}")


def openid2_round(session: requests.Session, target: Target) -> None:
    """One OpenID 2.0 sign-in: checkid_immediate, then check_authentication of the answer."""
    base = target.authorize.removesuffix("/oidc/authorize")
    answer = session.get(base + openid_path("checkid_immediate"), allow_redirects=False, timeout=30)
    fields = dict(parse_qsl(urlsplit(answer.headers.get("location", "")).query))
    if answer.status_code != 302 or fields.get("openid.mode") != "id_res":
        raise RuntimeError(f"checkid_immediate answered {answer.status_code}")
    fields["openid.mode"] = "check_authentication"
    checked = session.post(f"{base}/openid", data=fields, timeout=30)
    if checked.status_code != 200 or "is_valid:true" not in checked.text:
        raise RuntimeError(f"check_authentication answered {checked.status_code}: {checked.text}")


@dataclass(frozen=True)
class Flow:
    """One row of the benchmark: a sign-in, where, and the signed-in person's cookies."""

    name: str
    run: Callable[[requests.Session, Target], None]
    target: Target
    cookie: str


def _client_loop(args: tuple[Flow, float]) -> tuple[int, list[float]]:
    """One client process: sign-ins of C{flow} until C{seconds} pass; their count and latencies."""
    flow, seconds = args
    session = requests.Session()
    session.headers["Cookie"] = flow.cookie
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        flow.run(session, flow.target)
        latencies.append(time.monotonic() - started)
    return len(latencies), latencies


def measure(pool: Any, flow: Flow, clients: int, seconds: float) -> dict[str, float]:
    started = time.monotonic()
    results = pool.map(_client_loop, [(flow, seconds)] * clients)
    elapsed = time.monotonic() - started
    count = sum(n for n, _ in results)
    latencies = sorted(x for _, found in results for x in found)
    return {
        "count": count,
        "rate": count / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
    }


def install_peer() -> None:
    """oidc-provider and mysql2 from the peer's package-lock.json, unless they are there."""
    if (PEER_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise BenchError("npm is needed to install oidc-provider (apt-get install npm)")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=PEER_DIR, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"npm ci for oidc-provider failed: {done.stderr[-500:]}")


def start_peer(
    work: Path, workers: int, server: MariaDBServer, client: tuple[str, str]
) -> tuple[subprocess.Popen[bytes], Target]:
    """oidc-provider in node's cluster with C{workers} workers, its store in C{server}."""
    node = shutil.which("node")
    if node is None:
        raise BenchError("node is needed to run oidc-provider (apt-get install nodejs)")
    install_peer()
    port = free_port()
    env = {
        **os.environ,
        "NODE_ENV": "production",
        "PEER_PORT": str(port),
        "PEER_WORKERS": str(workers),
        "PEER_CLIENT_ID": client[0],
        "PEER_CLIENT_SECRET": client[1],
        "PEER_REDIRECT_URI": REDIRECT_URI,
        "PEER_DB_HOST": server.host,
        "PEER_DB_PORT": str(server.port),
        "PEER_DB_USER": server.user,
        "PEER_DB_PASSWORD": server.password,
        "PEER_DB_NAME": server.database,
    }
    log_path = work / "peer.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [node, str(PEER_DIR / "peer.mjs")], cwd=PEER_DIR, env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while b"peer ready" not in log_path.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise BenchError(f"oidc-provider did not start; see {log_path}")
        time.sleep(0.1)
    base = f"http://127.0.0.1:{port}"
    return process, Target(f"{base}/auth", f"{base}/token", *client)


def sign_in_at_peer(target: Target) -> str:
    """
    Sign the peer's account in and grant the client its scope (the peer's
    interaction route does both without a page); check that prompt=none now
    answers a code; return the Cookie header carrying that session.
    """
    session = requests.Session()
    url = authorize_query(target, pkce_pair()[1], prompt="")
    for _ in range(10):
        answer = session.get(url, allow_redirects=False, timeout=30)
        url = urljoin(url, answer.headers.get("location", ""))
        if answer.status_code not in (302, 303) or url.startswith(REDIRECT_URI):
            break
    if "code=" not in url:
        raise BenchError(f"signing in at oidc-provider ended at {answer.status_code} {url}")
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies if c.path == "/")
    check = requests.Session()
    check.headers["Cookie"] = cookie
    oidc_round(check, target)
    return cookie


class BenchError(Exception):
    """The benchmark could not run; the message says why."""


def report(runs: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """A row per flow (its median run by rate); the median rates."""
    print(f"{'flow':<15}{'sign-ins/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'sign-ins':>10}")
    medians = {}
    for name, found in runs.items():
        median = sorted(found, key=lambda r: r["rate"])[len(found) // 2]
        medians[name] = median["rate"]
        print(
            f"{name:<15}{median['rate']:>12.1f}{median['p50']:>10.1f}{median['p99']:>10.1f}"
            f"{int(sum(r['count'] for r in found)):>10}"
        )
    return medians


def start_node(work: Path, port: int, workers: int, server: MariaDBServer | None) -> Any:
    """A real node in C{work} once all its workers are ready; its process."""
    write_node_config(work, port, workers, server)
    log = open(work / "node.log", "wb")  # noqa: SIM115
    node = subprocess.Popen(
        [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "clickpass", "--config", "node.toml"],
        cwd=work, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    ctl = [str(VENV_BIN / "clickpass-ctl"), "--config", str(work / "node.toml"), "--json"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.3)
        done = subprocess.run([*ctl, "workers"], capture_output=True, cwd=work)
        if done.returncode == 0:
            ready = [w for w in json.loads(done.stdout) if w["state"] == "ready"]
            if len(ready) == workers:
                return node
    node.terminate()
    raise BenchError(f"the node did not start; see {work / 'node.log'}")


def run(args: argparse.Namespace, work: Path, stack: ExitStack) -> None:
    """Start both providers, sign the person in at each, measure, print."""
    server = MariaDBServer(work / "mariadb")
    try:
        server.start()
    except MariaDBUnavailable as e:
        raise BenchError(str(e)) from e
    stack.callback(server.stop)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    node = start_node(work, port, args.workers, server if args.database == "mariadb" else None)
    stack.callback(stop_process, node)
    cookie = sign_in_and_approve(base)
    ctl = [str(VENV_BIN / "clickpass-ctl"), "--config", str(work / "node.toml"), "--json"]
    client = make_client(work, ctl)
    clickpass = Target(f"{base}/oidc/authorize", f"{base}/oidc/token", *client)
    peer_process, peer = start_peer(work, args.workers, server, client)
    stack.callback(stop_process, peer_process)
    flows = [
        Flow("clickpass", oidc_round, clickpass, cookie),
        Flow("oidc-provider", oidc_round, peer, sign_in_at_peer(peer)),
    ]
    if not args.no_openid2:
        flows.append(Flow("openid2", openid2_round, clickpass, cookie))
    with multiprocessing.get_context("fork").Pool(args.clients) as pool:
        for flow in flows:  # warm up every path (and the signing keys) first
            measure(pool, flow, args.clients, 1)
        runs: dict[str, list[dict[str, float]]] = {flow.name: [] for flow in flows}
        for round_ in range(args.rounds):
            # Each flow goes first in turn, so a drift of the machine's load favours none.
            shift = round_ % len(flows)
            for flow in flows[shift:] + flows[:shift]:
                runs[flow.name].append(measure(pool, flow, args.clients, args.seconds))
    peer_store = "MariaDB" if args.database == "mariadb" else "MariaDB (node has no SQLite)"
    print(
        f"both: {args.workers} workers, {args.clients} client processes, "
        f"{args.rounds} x {args.seconds:g} s each; clickpass on {args.database}, "
        f"oidc-provider {peer_version()} in node's cluster on {peer_store}"
    )
    medians = report(runs)
    if "openid2" in medians:
        print(
            f"clickpass oidc sign-in / openid2 sign-in (checkid_immediate + "
            f"check_authentication): {medians['clickpass'] / medians['openid2']:.2f}x"
        )
    print(
        "clickpass / oidc-provider (authorize prompt=none + token exchange): "
        f"{medians['clickpass'] / medians['oidc-provider']:.2f}x"
    )


def peer_version() -> str:
    package = PEER_DIR / "node_modules" / "oidc-provider" / "package.json"
    return str(json.loads(package.read_text())["version"])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-oidc")
    parser.add_argument("--workers", type=int, default=2, help="processes of each (default 2)")
    parser.add_argument("--seconds", type=float, default=10, help="per run (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--database", choices=("sqlite", "mariadb"), default="mariadb")
    parser.add_argument("--no-openid2", action="store_true", help="skip the OpenID 2.0 row")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="clickpass-bench-oidc-"))
    try:
        with ExitStack() as stack:
            run(args, work, stack)
        return 0
    except BenchError as e:
        print(f"bench-oidc: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
