"""
The sign-in flood benchmark behind C{scripts/bench-signin-flood}: does a
returning person still get signed in at a partner while a flood of
bad-password sign-ins hashes away on the same node?

One node (real C{twistd clickpass}, its front and workers, on SQLite or with
C{--database mariadb} on a private MariaDB server) in a temporary directory.
A person signs up, signs in and approves a relying party's realm once; then
wrk sends that person's signed C{checkid_immediate} over a few keep-alive
connections, first alone (the baseline, the peer the flood phase is measured
against in the same run), then while a second wrk floods C{POST /signin}
with wrong passwords for ever-new addresses from many connections. Sign-in
throttling is set out of the way (a flood from many client addresses would
not meet it; here every client is 127.0.0.1), so that only the bound on
password hashing (C{[accounts] hash_threads} and C{hash_queue}) stands
between the flood and the node.

It prints, for each phase, checkid's req/s, p50 and p99 latency and its
errors (any answer that is not a 302 carrying a signed positive assertion,
and socket errors), whether one assertion of each phase was confirmed by
the provider's check_authentication, what the flood's sign-ins were answered: 503 with
Retry-After (refused at once, the hashing queue full), 401 (hashed and
refused), 200, and anything else; and on its last line the ratios
flood/baseline.

A benchmark, not a test: it asserts nothing. It must never touch anything
but loopback and the temporary directory it creates.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from clickpass.accounts.settings import AccountsSettings
from clickpass.storage.private_server import MariaDBServer, MariaDBUnavailable
from devtools import bench_balancer as bench

# A flood from many client addresses never meets the per-address or
# per-account limits; from 127.0.0.1 it would, so they are set out of reach.
NO_THROTTLE = "throttle_per_account = 100000000\nthrottle_per_address = 100000000\n"
# Seconds the flood runs before checkid is measured, so that the hashing
# queues are full by then.
FLOOD_LEAD = 2

# Counts each answer of a signed-in checkid_immediate: a 302 whose Location
# carries a positive assertion signed by the provider is the only good one.
CHECKID_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
good, bad, last_bad = 0, 0, ""
function response(status, headers, body)
  local location = headers["Location"] or headers["location"] or ""
  if status == 302 and string.find(location, "openid.mode=id_res", 1, true)
     and string.find(location, "openid.sig=", 1, true) then
    good = good + 1
  else
    bad = bad + 1
    last_bad = status .. " " .. string.sub(location, 1, 200)
  end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write("checkid-answers " .. t:get("good") .. " " .. t:get("bad") .. "\\n")
    if t:get("bad") > 0 then io.write("checkid-last-bad " .. t:get("last_bad") .. "\\n") end
  end
end
"""

# Posts a wrong password for a new address each time, and counts the answers
# by status (a 503 apart when it lacks Retry-After).
FLOOD_LUA = """
local threads = {}
local n = 0
function setup(thread) table.insert(threads, thread) end
counts = {}
function request()
  n = n + 1
  local body = "email=flood" .. n .. "%40example.com&password=wrong+guess%21&csrf_token="
    .. [[TOKEN]]
  return wrk.format("POST", "/signin", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Cookie"] = [[COOKIE]],
  }, body)
end
function delay()
  return DELAY_MS
end
function response(status, headers, body)
  local key = tostring(status)
  if status == 503 then
    local retry = headers["Retry-After"] or headers["retry-after"]
    if retry == nil or tonumber(retry) == nil or tonumber(retry) <= 0 then
      key = "503-without-retry-after"
    else
      key = "503-retry-after"
    end
  end
  counts[key] = (counts[key] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for key, count in pairs(t:get("counts")) do
      io.write("flood-answers " .. key .. " " .. count .. "\\n")
    end
  end
end
"""


def parse_wrk(out: str) -> dict[str, Any]:
    """wrk's C{--latency} report: req/s, requests, p50 and p99 in ms, socket errors."""

    def latency(q: str) -> float:
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(total.group(1)) if total else 0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "socket_errors": sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    }


def wrk_command(url: str, script: Path, seconds: int, connections: int, *extra: str) -> list[str]:
    """wrk on one thread, with latency percentiles and a Lua script."""
    return [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        *extra,
        url,
    ]


def checkid_result(out: str) -> dict[str, Any]:
    """A checkid run: wrk's numbers, and its answers counted good and bad by the script."""
    result = parse_wrk(out)
    good = bad = 0
    for m in re.finditer(r"^checkid-answers (\d+) (\d+)$", out, re.M):
        good, bad = good + int(m.group(1)), bad + int(m.group(2))
    last = re.search(r"^checkid-last-bad (.*)$", out, re.M)
    result.update(good=good, bad=bad, last_bad=last.group(1) if last else "")
    result["errors"] = bad + result["socket_errors"]
    return result


def flood_result(out: str) -> dict[str, Any]:
    """A flood run: wrk's numbers, and its answers counted by status."""
    result = parse_wrk(out)
    answers: dict[str, int] = {}
    for m in re.finditer(r"^flood-answers (\S+) (\d+)$", out, re.M):
        answers[m.group(1)] = answers.get(m.group(1), 0) + int(m.group(2))
    result["answers"] = answers
    return result


def start_node(work: Path, workers: int) -> subprocess.Popen[bytes]:
    """C{twistd clickpass} with the configuration in C{work}, once all its workers are ready."""
    log = open(work / "node.log", "wb")  # noqa: SIM115
    node = subprocess.Popen(
        [str(bench.VENV_BIN / "twistd"), "-n", "--pidfile=", "clickpass", "--config", "node.toml"],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ctl = [str(bench.VENV_BIN / "clickpass-ctl"), "--config", str(work / "node.toml"), "--json"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and node.poll() is None:
        time.sleep(0.3)
        done = subprocess.run([*ctl, "workers"], capture_output=True, cwd=work)
        if done.returncode == 0:
            ready = [w for w in json.loads(done.stdout) if w["state"] == "ready"]
            if len(ready) == workers:
                return node
    bench.stop_all([node], 20)
    tail = "\n".join((work / "node.log").read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"the node did not start:\n{tail}")


def flood_form(base: str) -> tuple[str, str]:
    """A CSRF token for the sign-in form, and the Cookie header it goes with."""
    session = requests.Session()
    page = session.get(base + "/signin", timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
    if token is None:
        raise RuntimeError("the sign-in page holds no CSRF token")
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    return token.group(1), cookie


def _flood_delay_ms(args: argparse.Namespace) -> int:
    """The pause each flood connection takes before each sign-in, for C{--flood-rate}."""
    if args.flood_rate <= 0:
        return 0
    rate: float = args.flood_rate
    connections: int = args.flood_connections
    return max(1, round(1000 * connections / rate))


def assertion_confirmed(base: str, cookie: str) -> bool:
    """
    One signed-in checkid_immediate whose positive assertion the provider
    then confirms, as a relying party in stateless mode would ask it
    (check_authentication answers C{is_valid:true}): the assertions counted
    good are really signed, not only shaped like it.
    """
    answer = requests.get(
        base + bench.openid_path("checkid_immediate"),
        headers={"Cookie": cookie},
        allow_redirects=False,
        timeout=60,
    )
    fields = dict(parse_qsl(urlsplit(answer.headers.get("location", "")).query))
    if answer.status_code != 302 or fields.get("openid.mode") != "id_res":
        return False
    check = requests.post(
        base + "/openid", data={**fields, "openid.mode": "check_authentication"}, timeout=60
    )
    return "is_valid:true" in check.text.splitlines()


def _run_checkid(command: list[str], seconds: int) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    return checkid_result(done.stdout)


def _lua_string(value: str) -> str:
    # Long brackets take the value as it is; a token or cookie never holds "]]".
    if "]]" in value or "\n" in value:
        raise ValueError(f"cannot put {value!r} in a Lua long string")
    return value


def main(argv: list[str] | None = None) -> int:
    defaults = AccountsSettings()
    parser = argparse.ArgumentParser(prog="bench-signin-flood")
    parser.add_argument("--seconds", type=int, default=10, help="length of each phase")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--connections", type=int, default=4, help="keep-alive connections sending checkid"
    )
    parser.add_argument(
        "--flood-connections", type=int, default=64, help="connections flooding POST /signin"
    )
    parser.add_argument(
        "--flood-rate",
        type=float,
        default=0,
        help="sign-ins per second the flood sends over all its connections (0: as fast as the "
        "node answers)",
    )
    parser.add_argument("--hash-threads", type=int, default=defaults.hash_threads)
    parser.add_argument(
        "--hash-queue",
        type=int,
        default=defaults.hash_queue,
        help="[accounts] hash_queue of the node (a large one shows the flood unbounded)",
    )
    parser.add_argument(
        "--hash-nice",
        type=int,
        default=defaults.hash_nice,
        help="[accounts] hash_nice of the node (0: hashing competes with serving pages)",
    )
    parser.add_argument("--database", choices=("sqlite", "mariadb"), default="sqlite")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("bench-signin-flood: wrk is not installed", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="clickpass-bench-flood-"))
    processes: list[subprocess.Popen[bytes]] = []
    server: MariaDBServer | None = None
    try:
        if args.database == "mariadb":
            server = MariaDBServer(work / "mariadb")
            try:
                server.start()
            except MariaDBUnavailable as e:
                print(f"bench-signin-flood: {e}", file=sys.stderr)
                return 1
        port = bench.free_port()
        base = f"http://127.0.0.1:{port}"
        bench.write_node_config(work, port, args.workers, server)
        with open(work / "node.toml", "a") as config:
            config.write(
                f"[accounts]\n{NO_THROTTLE}"
                f"hash_threads = {args.hash_threads}\nhash_queue = {args.hash_queue}\n"
                f"hash_nice = {args.hash_nice}\n"
            )
        processes.append(start_node(work, args.workers))
        cookie = bench.sign_in_and_approve(base)
        token, flood_cookie = flood_form(base)
        (work / "checkid.lua").write_text(CHECKID_LUA)
        (work / "flood.lua").write_text(
            FLOOD_LUA.replace("DELAY_MS", str(_flood_delay_ms(args)))
            .replace("[[TOKEN]]", f"[[{_lua_string(token)}]]")
            .replace("[[COOKIE]]", f"[[{_lua_string(flood_cookie)}]]")
        )
        checkid_url = base + bench.openid_path("checkid_immediate")
        checkid = wrk_command(
            checkid_url, work / "checkid.lua", args.seconds, args.connections,
            "-H", f"Cookie: {cookie}",
        )  # fmt: skip
        # Warm up, then the baseline: checkid alone.
        subprocess.run([*checkid[:2], "-c1", "-d1s", *checkid[4:]], capture_output=True)
        baseline = _run_checkid(checkid, args.seconds)
        baseline["confirmed"] = assertion_confirmed(base, cookie)
        # The flood, and checkid once the flood has filled the queues.
        flood_seconds = args.seconds + 2 * FLOOD_LEAD
        flooding = subprocess.Popen(
            wrk_command(
                base + "/signin", work / "flood.lua", flood_seconds, args.flood_connections
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(FLOOD_LEAD)
        during = _run_checkid(checkid, args.seconds)
        # While the flood still runs (it outlasts checkid by FLOOD_LEAD).
        during["confirmed"] = assertion_confirmed(base, cookie)
        flood_out, _ = flooding.communicate(timeout=flood_seconds + 60)
        flood = flood_result(flood_out)
        _report(args, baseline, during, flood, flood_seconds)
        return 0
    finally:
        bench.stop_all(processes, 20)
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"bench-signin-flood: kept {work}", file=sys.stderr)


def _report(
    args: argparse.Namespace,
    baseline: dict[str, Any],
    during: dict[str, Any],
    flood: dict[str, Any],
    flood_seconds: int,
) -> None:
    print(f"database: {args.database}")
    print(
        f"node: {args.workers} workers; per worker {args.hash_threads} hashing thread(s), "
        f"hash_queue {args.hash_queue}, hash_nice {args.hash_nice}"
    )
    print(
        f"checkid_immediate (signed in, approved): {args.connections} connections, "
        f"{args.seconds} s per phase; flood: {args.flood_connections} connections, "
        + (f"at most {args.flood_rate:g} sign-ins/s" if args.flood_rate > 0 else "no pause")
    )
    print(f"{'phase':<10} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'answers':>8} {'errors':>7}")
    for name, row in (("baseline", baseline), ("flood", during)):
        print(
            f"{name:<10} {row['rps']:>9.1f} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f} "
            f"{row['good']:>8} {row['errors']:>7}"
        )

    answers = dict(flood["answers"])
    busy = answers.pop("503-retry-after", 0)
    refused = answers.pop("401", 0)
    signed_in = answers.pop("200", 0)
    other = ", ".join(f"{k} {v}" for k, v in sorted(answers.items())) or "none"
    total = busy + refused + signed_in + sum(answers.values())
    print(
        f"flood sign-ins: {total} in {flood_seconds} s ({flood['rps']:.1f} req/s, "
        f"p99 {flood['p99_ms']:.0f} ms): 503 with Retry-After {busy}, 401 {refused}, "
        f"200 {signed_in}, other {other}; socket errors {flood['socket_errors']}"
    )
    print(f"checkid errors: {baseline['errors'] + during['errors']}")
    print(
        "an assertion of each phase confirmed by check_authentication: "
        f"baseline {'yes' if baseline['confirmed'] else 'NO'}, "
        f"flood {'yes' if during['confirmed'] else 'NO'}"
    )
    for name, row in (("baseline", baseline), ("flood", during)):
        if row["last_bad"]:
            print(f"last bad checkid answer ({name}): {row['last_bad']}")

    def ratio(key: str) -> str:
        return f"{during[key] / baseline[key]:.2f}" if baseline[key] else "nan"

    # The ratios against the baseline measured in the same run, last.
    print(
        f"checkid flood/baseline: req/s {ratio('rps')}, p50 {ratio('p50_ms')}, "
        f"p99 {ratio('p99_ms')}"
    )


if __name__ == "__main__":
    sys.exit(main())
