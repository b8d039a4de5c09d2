"""
The outside prober behind scripts/monitor: watches the site the way a
pinging service would, from another machine.

Every C{interval} seconds it fetches the public URL and, when given a test
account, runs a synthetic OpenID 2.0 sign-in against the provider (python3-
openid's consumer, stateless: discovery, checkid_setup, the sign-in and
consent pages, and check_authentication of the signed answer). After
C{failures} consecutive failed rounds it raises C{probe.down}; after as
many consecutive slow rounds (slower than C{slow} seconds) it raises
C{probe.slow}. One good, fast round resolves both, and the recovery is
announced. One blip never alerts.

The probing itself is blocking HTTP (urllib and python3-openid) and runs
in a thread; this module must never block the reactor, never follow the
site anywhere but the URLs it was given (and the redirects of the sign-in
itself), and never print the test account's password.
"""

from __future__ import annotations

import argparse
import html
import http.cookiejar
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from clickpass import config as configmod
from clickpass.monitor.alerts import Alerts

DOWN = "probe.down"
SLOW = "probe.slow"
_CSRF = re.compile(r'name="csrf_token"\s+value="([^"]*)"')
_HIDDEN = re.compile(r'<input type="hidden" name="(payload|mac)" value="([^"]*)"')


class ProbeFailed(Exception):
    """One probe round failed; the message says at which step and why."""


@dataclass(frozen=True)
class RoundResult:
    """The outcome of one round."""

    ok: bool
    seconds: float
    error: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Browser:
    """A cookie jar that does not follow redirects (blocking; run it in a thread)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect()
        )

    def request(self, url: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        """(status, Location header, body) of one request."""
        data = urllib.parse.urlencode(form).encode("utf-8") if form is not None else None
        request = urllib.request.Request(url, data=data)  # noqa: S310 - http(s) URLs we were given
        request.add_header("User-Agent", "clickpass-prober")
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return response.status, response.headers.get("location", ""), _body(response)
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("location", ""), _body(e)


def _body(response: Any) -> str:
    return str(response.read(512 * 1024).decode("utf-8", "replace"))


def fetch(url: str, timeout: float) -> None:
    """GET the public URL; L{ProbeFailed} unless it answers 200 (blocking)."""
    try:
        status, _, _ = _Browser(timeout).request(url)
    except (OSError, ValueError) as e:
        raise ProbeFailed(f"GET {url}: {_reason(e)}") from None
    if status != 200:
        raise ProbeFailed(f"GET {url}: HTTP {status}")


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    return " ".join((str(e) or type(e).__name__).split())


def openid_sign_in(base_url: str, email: str, password: str, realm: str, timeout: float) -> str:
    """
    Sign the test account in at the provider as a relying party would
    (blocking). Return the verified identifier, or raise L{ProbeFailed}.
    """
    from openid.consumer import consumer

    base = base_url if base_url.endswith("/") else base_url + "/"
    return_to = realm.rstrip("/") + "/return"
    browser = _Browser(timeout)
    session: dict[str, Any] = {}
    rp = consumer.Consumer(session, None)
    step = "discovery"
    try:
        auth = rp.begin(base)
        url = str(auth.redirectURL(realm, return_to))
        step = "checkid_setup"
        status, location, body = browser.request(url)
        if status in (302, 303) and "/signin" in location:
            step = "sign-in page"
            signin = urllib.parse.urljoin(base, location)
            status, _, page = browser.request(signin)
            token = _CSRF.search(page)
            if status != 200 or token is None:
                raise ProbeFailed(f"{step}: HTTP {status}, no sign-in form")
            next_url = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(signin).query)).get(
                "next", ""
            )
            step = "sign-in"
            status, location, body = browser.request(
                urllib.parse.urljoin(base, "signin"),
                {
                    "email": email,
                    "password": password,
                    "next": next_url,
                    "csrf_token": html.unescape(token.group(1)),
                },
            )
            if status not in (302, 303):
                raise ProbeFailed(f"{step}: HTTP {status} (wrong test account or password?)")
            step = "back to the provider"
            status, location, body = browser.request(urllib.parse.urljoin(base, location))
        if status == 200:
            step = "consent"
            fields = {name: html.unescape(value) for name, value in _HIDDEN.findall(body)}
            token = _CSRF.search(body)
            if set(fields) != {"payload", "mac"} or token is None:
                raise ProbeFailed(f"{step}: the consent page has no decision form")
            fields.update(csrf_token=html.unescape(token.group(1)), decision="allow")
            status, location, body = browser.request(
                urllib.parse.urljoin(base, "openid/decide"), fields
            )
        if status != 302 or not location.startswith(return_to):
            raise ProbeFailed(f"{step}: expected a redirect to the return_to, got HTTP {status}")
        step = "check_authentication"
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query, True))
        response = rp.complete(query, return_to)
    except ProbeFailed:
        raise
    except Exception as e:
        raise ProbeFailed(f"OpenID {step}: {_reason(e)}") from None
    if response.status != consumer.SUCCESS:
        message = getattr(response, "message", "") or response.status
        raise ProbeFailed(f"OpenID assertion not verified: {message}")
    return str(response.identity_url)


class Prober:
    """Counts consecutive bad rounds and raises or resolves the probe alerts."""

    log = Logger()

    def __init__(
        self,
        clock: Any,
        alerts: Alerts,
        url: str,
        run_round: Callable[[], Deferred[RoundResult]],
        failures: int = 3,
        slow: float = 5.0,
    ) -> None:
        self.clock = clock
        self.alerts = alerts
        self.url = url
        self.run_round = run_round
        self.failures_needed = failures
        self.slow = slow
        self.failed_in_a_row = 0
        self.slow_in_a_row = 0
        self.rounds = 0
        self.last_error = ""

    def record(self, result: RoundResult) -> None:
        """Take one round's outcome into account."""
        self.rounds += 1
        if not result.ok:
            self.failed_in_a_row += 1
            self.slow_in_a_row = 0
            self.last_error = result.error
            self.log.warn(
                "probe {url} FAILED ({n} in a row): {error}",
                url=self.url,
                n=self.failed_in_a_row,
                error=result.error,
            )
            if self.failed_in_a_row >= self.failures_needed:
                self.alerts.raise_(
                    DOWN,
                    f"{self.url} is down: {result.error}",
                    {"consecutive_failures": self.failed_in_a_row, "error": result.error},
                )
            return
        self.failed_in_a_row = 0
        self.alerts.resolve(DOWN)
        if result.seconds > self.slow:
            self.slow_in_a_row += 1
            self.log.warn(
                "probe {url} SLOW: {seconds:.2f}s ({n} in a row)",
                url=self.url,
                seconds=result.seconds,
                n=self.slow_in_a_row,
            )
            if self.slow_in_a_row >= self.failures_needed:
                self.alerts.raise_(
                    SLOW,
                    f"{self.url} is slow: {result.seconds:.2f}s (threshold {self.slow:g}s)",
                    {"seconds": round(result.seconds, 3), "consecutive": self.slow_in_a_row},
                )
            return
        self.slow_in_a_row = 0
        self.alerts.resolve(SLOW)
        self.log.info("probe {url} ok in {seconds:.3f}s", url=self.url, seconds=result.seconds)

    async def one_round(self) -> None:
        try:
            result = await self.run_round()
        except Exception as e:
            result = RoundResult(False, 0.0, _reason(e))
        self.record(result)


def blocking_round(
    url: str,
    timeout: float,
    account: tuple[str, str] | None,
    realm: str,
    clock: Callable[[], float] = time.monotonic,
) -> RoundResult:
    """One round: fetch the URL, then (with an account) sign in through OpenID (blocking)."""
    began = clock()
    try:
        fetch(url, timeout)
        if account is not None:
            openid_sign_in(url, account[0], account[1], realm, timeout)
    except ProbeFailed as e:
        return RoundResult(False, clock() - began, str(e))
    return RoundResult(True, clock() - began)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="monitor",
        description="Probe a Clickpass site from outside and alert when it is down or slow.",
    )
    parser.add_argument(
        "--url", required=True, help="the public URL, e.g. https://login.example.com/"
    )
    parser.add_argument(
        "--config", "-c", help="TOML file whose [alerts] section says where alerts go"
    )
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between rounds")
    parser.add_argument(
        "--failures", type=int, default=3, help="consecutive bad rounds before alerting"
    )
    parser.add_argument("--slow", type=float, default=5.0, help="seconds a round may take")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--openid-email", help="test account for the synthetic OpenID sign-in")
    parser.add_argument("--openid-password-file", help="file holding the test account's password")
    parser.add_argument(
        "--realm", help="realm the synthetic relying party claims (default: URL + monitor/)"
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="stop after this many rounds (0: run until stopped)"
    )
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error("--url must start with http:// or https://")
    if args.failures < 1 or args.interval <= 0 or args.timeout <= 0:
        parser.error("--failures must be at least 1; --interval and --timeout more than 0")
    if bool(args.openid_email) != bool(args.openid_password_file):
        parser.error("--openid-email and --openid-password-file go together")
    return args


async def run(reactor: Any, argv: Sequence[str] | None = None) -> None:
    """scripts/monitor: probe until stopped (or for --rounds rounds)."""
    args = parse_args(argv)
    try:
        settings = configmod.load(args.config)
        configmod.check_files(settings)
        account = None
        if args.openid_email:
            password = configmod.read_secret_file(
                Path(args.openid_password_file), "--openid-password-file"
            )
            account = (args.openid_email, password)
    except configmod.ConfigError as e:
        sys.stderr.write(f"monitor: configuration error: {e}\n")
        raise SystemExit(1) from None
    base = args.url if args.url.endswith("/") else args.url + "/"
    realm = args.realm or base + "monitor/"
    alerts = Alerts.from_settings(reactor, settings)
    if not alerts.channels:
        sys.stderr.write("monitor: warning: no [alerts] channel configured; alerts only logged\n")
    alerts.node = f"prober for {base}"
    alerts.startService()

    def round_in_thread() -> Deferred[RoundResult]:
        return deferToThread(blocking_round, base, args.timeout, account, realm)

    prober = Prober(reactor, alerts, base, round_in_thread, args.failures, args.slow)
    done: Deferred[None] = Deferred()

    async def tick() -> None:
        await prober.one_round()
        if args.rounds and prober.rounds >= args.rounds and not done.called:
            done.callback(None)

    loop = LoopingCall(lambda: Deferred.fromCoroutine(tick()))
    loop.clock = reactor

    def stopped(failure: Any) -> None:
        if not done.called:
            done.errback(failure)

    loop.start(args.interval, now=True).addErrback(stopped)
    reactor.addSystemEventTrigger("before", "shutdown", alerts.stopService)
    try:
        await done
    finally:
        if loop.running:
            loop.stop()
        await alerts.stopService()


def main() -> None:
    """Entry point: C{python -m clickpass.monitor.prober --url URL ...}."""
    import sys as _sys

    from twisted.internet.task import react
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(_sys.stdout)])
    react(lambda reactor: Deferred.fromCoroutine(run(reactor, _sys.argv[1:])))


if __name__ == "__main__":
    main()
