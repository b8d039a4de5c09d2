"""
A Clickpass worker outside a node's front, for the benchmarks: the worker
of C{python -m clickpass.worker}, with its Site also served on one more
endpoint (TCP), so that wrk or callgrind reach it without the front.

    python -m devtools.worker --also-listen tcp:PORT:interface=127.0.0.1 \\
        --config node.toml --socket PATH [other clickpass.worker options]

It prints C{ready PID} on stdout when it serves, as any worker. Loopback
endpoints only; never for production (the node never starts it).
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.web.server import Site

from clickpass import worker


def also_listen_on(description: str) -> worker.AlsoServe:
    """The worker's hook that serves its Site on the endpoint C{description} too."""

    async def also_serve(reactor: Any, site: Site) -> list[IListeningPort]:
        port: IListeningPort = await serverFromString(reactor, description).listen(site)
        return [port]

    return also_serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="devtools.worker", add_help=False)
    parser.add_argument("--also-listen", required=True, help="also serve on ENDPOINT")
    known, rest = parser.parse_known_args(argv)
    worker.main(rest, also_serve=also_listen_on(known.also_listen))


if __name__ == "__main__":
    main()
