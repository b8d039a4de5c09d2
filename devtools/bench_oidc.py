"""
The OpenID Connect benchmark behind C{scripts/bench-oidc}: one node (real
C{twistd clickpass}, real application, two workers behind its front) and
a person signed in who approved one partner site; relying-party clients
then sign that person in as fast as they can, in turns:

  - C{oidc}: authorize with C{prompt=none} (302 with a code), the token
    exchange (client_secret_basic; an ID token signed RS256) and UserInfo;
  - C{openid2}: OpenID 2.0's C{checkid_immediate} (302 with a positive
    assertion, signed with a private association) and the relying party's
    C{check_authentication} of it, the stateless verification.

Each is one complete, verified sign-in of the same person at the same
site; the last line gives OpenID Connect's sign-ins per second as a ratio
of OpenID 2.0's, measured in the same run on the same node (the clients
alternate, so a drift of the machine's load does not favour one).

A benchmark, not a test: it asserts nothing but that every answer was
the right one. It must never touch anything but loopback and the
temporary directory it creates.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

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


def oidc_round(session: requests.Session, base: str, client: tuple[str, str]) -> None:
    """One OpenID Connect sign-in: authorize (prompt=none), token, UserInfo."""
    client_id, secret = client
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "response_type": "code",
            "scope": "openid",
            "prompt": "none",
            "state": "s",
            "nonce": "n",
        }
    )
    answer = session.get(f"{base}/oidc/authorize?{query}", allow_redirects=False, timeout=30)
    code = dict(parse_qsl(urlsplit(answer.headers.get("location", "")).query)).get("code")
    if answer.status_code != 302 or not code:
        raise RuntimeError(f"authorize answered {answer.status_code}: {answer.text[:200]}")
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    tokens = session.post(
        f"{base}/oidc/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI},
        headers={"Authorization": "Basic " + basic},
        timeout=30,
    )
    if tokens.status_code != 200 or "id_token" not in tokens.json():
        raise RuntimeError(f"the token endpoint answered {tokens.status_code}: {tokens.text}")
    info = session.get(
        f"{base}/oidc/userinfo",
        headers={"Authorization": "Bearer " + tokens.json()["access_token"]},
        timeout=30,
    )
    if info.status_code != 200 or "sub" not in info.json():
        raise RuntimeError(f"UserInfo answered {info.status_code}: {info.text[:200]}")


def openid2_round(session: requests.Session, base: str, client: tuple[str, str]) -> None:
    """One OpenID 2.0 sign-in: checkid_immediate, then check_authentication of the answer."""
    answer = session.get(base + openid_path("checkid_immediate"), allow_redirects=False, timeout=30)
    fields = dict(parse_qsl(urlsplit(answer.headers.get("location", "")).query))
    if answer.status_code != 302 or fields.get("openid.mode") != "id_res":
        raise RuntimeError(f"checkid_immediate answered {answer.status_code}")
    fields["openid.mode"] = "check_authentication"
    checked = session.post(f"{base}/openid", data=fields, timeout=30)
    if checked.status_code != 200 or "is_valid:true" not in checked.text:
        raise RuntimeError(f"check_authentication answered {checked.status_code}: {checked.text}")


ROUNDS = {"oidc": oidc_round, "openid2": openid2_round}


def _client_loop(args: tuple[str, str, str, tuple[str, str], float]) -> tuple[int, list[float]]:
    """One client process: sign-ins of C{kind} until C{seconds} pass; their count and latencies."""
    kind, base, cookie, client, seconds = args
    session = requests.Session()
    session.headers["Cookie"] = cookie
    run = ROUNDS[kind]
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        run(session, base, client)
        latencies.append(time.monotonic() - started)
    return len(latencies), latencies


def measure(
    pool: Any, kind: str, base: str, cookie: str, client: tuple[str, str], clients: int, s: float
) -> dict[str, float]:
    started = time.monotonic()
    results = pool.map(_client_loop, [(kind, base, cookie, client, s)] * clients)
    elapsed = time.monotonic() - started
    count = sum(n for n, _ in results)
    latencies = sorted(x for _, found in results for x in found)
    return {
        "count": count,
        "rate": count / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-oidc")
    parser.add_argument("--workers", type=int, default=2, help="the node's workers (default 2)")
    parser.add_argument("--seconds", type=float, default=10, help="per run (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--database", choices=("sqlite", "mariadb"), default="sqlite")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="clickpass-bench-oidc-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server: MariaDBServer | None = None
    node: subprocess.Popen[bytes] | None = None
    try:
        if args.database == "mariadb":
            server = MariaDBServer(work / "mariadb")
            try:
                server.start()
            except MariaDBUnavailable as e:
                print(f"bench-oidc: {e}", file=sys.stderr)
                return 1
        write_node_config(work, port, args.workers, server)
        log = open(work / "node.log", "wb")  # noqa: SIM115
        node = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "clickpass", "--config", "node.toml"],
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        ctl = [str(VENV_BIN / "clickpass-ctl"), "--config", str(work / "node.toml"), "--json"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.3)
            done = subprocess.run([*ctl, "workers"], capture_output=True, cwd=work)
            if done.returncode == 0:
                ready = [w for w in json.loads(done.stdout) if w["state"] == "ready"]
                if len(ready) == args.workers:
                    break
        else:
            print(f"bench-oidc: the node did not start; see {work / 'node.log'}", file=sys.stderr)
            return 1
        cookie = sign_in_and_approve(base)
        client = make_client(work, ctl)
        with multiprocessing.get_context("fork").Pool(args.clients) as pool:
            # Warm up both paths (and the signing keys) first.
            for kind in ROUNDS:
                measure(pool, kind, base, cookie, client, args.clients, 1)
            runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in ROUNDS}
            for round_ in range(args.rounds):
                order = ("oidc", "openid2") if round_ % 2 == 0 else ("openid2", "oidc")
                for kind in order:
                    runs[kind].append(
                        measure(pool, kind, base, cookie, client, args.clients, args.seconds)
                    )
        print(
            f"node: {args.workers} workers, {args.database}; {args.clients} client processes, "
            f"{args.rounds} x {args.seconds:g} s each"
        )
        print(f"{'flow':<10}{'sign-ins/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'sign-ins':>10}")
        medians = {}
        for kind in ROUNDS:
            median = sorted(runs[kind], key=lambda r: r["rate"])[len(runs[kind]) // 2]
            medians[kind] = median["rate"]
            print(
                f"{kind:<10}{median['rate']:>12.1f}{median['p50']:>10.1f}{median['p99']:>10.1f}"
                f"{int(sum(r['count'] for r in runs[kind])):>10}"
            )
        ratio = medians["oidc"] / medians["openid2"] if medians["openid2"] else 0.0
        print(
            f"oidc sign-in (authorize + token + userinfo) / openid2 sign-in "
            f"(checkid_immediate + check_authentication): {ratio:.2f}x"
        )
        return 0
    finally:
        if node is not None:
            node.terminate()
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
