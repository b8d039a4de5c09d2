"""
Where Clickpass restricts python3-openid 3.2.0 before it sees a request,
and corrects what it would otherwise do wrong: the library is unmaintained,
so these live at the boundary, each with its test (docs/openid.md lists
them all, with those in C{provider.py} and C{web.py}).

- Randomness (L{use_os_randomness}): the library's C{cryptutil.randrange} is
  C{random.randrange}, a Mersenne Twister whose state can be rebuilt from
  its outputs. It makes the provider's Diffie-Hellman private keys and its
  response nonces' salt. L{use_os_randomness} points it at the OS's CSPRNG;
  L{clickpass.openid.web.install} calls it in every worker before the
  provider is built, so before any request.
- Diffie-Hellman (L{dh_problem}): the library takes any modulus, generator
  and public value, and computes with them in C{Server.decodeRequest}. An
  unbounded modulus holds a worker (and the GIL, so a thread does not help)
  for as long as the sender likes; a degenerate one (5, generator 0, public
  value 0 or 1) gives a network attacker the relying party's MAC key. Only
  the spec's default group is accepted, and the relying party's public
  value must lie in [2, p - 2].
- Realms (L{normalised_url}, L{wildcard_too_broad}): the library compares
  a realm's host after its own normalisation (percent-escapes decoded,
  non-ASCII read as Latin-1), while Clickpass derives the site's sector from
  the realm as written, and fetches relying-party discovery from the
  library's mangled host. A checkid's realm and return_to are normalised
  once, here (percent-escapes decoded, IDNA, lowercase), and that form is
  the only one used afterwards. Wildcard realms are judged with the Public
  Suffix List instead of the library's frozen list of TLDs.
- Logging (L{bound_library_logging}): the library logs whole messages (a
  request's 64 KiB included) and tracebacks for input it refuses; its
  records become one bounded line each.

This module must never do I/O (other than logging), and must never raise
anything but L{BadURL} on network input.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import unquote, urlsplit, urlunsplit

import idna
import openid.cryptutil
from openid.dh import DiffieHellman
from publicsuffixlist import PublicSuffixList

from twisted.logger import Logger

from clickpass.i18n import N_

_system_random = secrets.SystemRandom()


def os_randrange(start: int, stop: int | None = None, step: int = 1) -> int:
    """C{random.randrange}, drawn from the OS's CSPRNG (C{secrets})."""
    return _system_random.randrange(start, stop, step)


def use_os_randomness() -> None:
    """
    Make every random value python3-openid draws come from the OS's CSPRNG.

    The library draws through C{openid.cryptutil.randrange} alone, looked up
    at each call: C{DiffieHellman.__init__} (the provider's private key) and
    C{cryptutil.randomString} (the salt of C{nonce.mkNonce}, every response
    nonce). C{cryptutil.getBytes} is C{os.urandom} already. The one other use
    of C{random} in the library, C{yadis.etxrd}'s shuffle of services of
    equal priority, orders a discovery document and makes no secret.
    Idempotent.
    """
    openid.cryptutil.randrange = os_randrange


def library_randomness_is_os() -> bool:
    """Whether L{use_os_randomness} is in force in this process."""
    return openid.cryptutil.randrange is os_randrange


# Diffie-Hellman.

DEFAULT_MODULUS = int(DiffieHellman.DEFAULT_MOD)
DEFAULT_GENERATOR = int(DiffieHellman.DEFAULT_GEN)
# A 1024-bit number is 172 characters of base64 (with the sign byte the
# library's btwoc form may add); anything longer is not a value we accept,
# and is refused before it is decoded.
MAX_DH_VALUE_CHARS = 180


def _dh_value(text: str) -> int | None:
    if len(text) > MAX_DH_VALUE_CHARS:
        return None
    try:
        return int(openid.cryptutil.base64ToLong(text))
    except Exception:
        # Bad base64, an empty or negative value: the library raises
        # whatever its decoder raises.
        return None


def dh_problem(query: Mapping[str, str]) -> str | None:
    """
    Why an associate request's Diffie-Hellman values are refused, or
    L{None} when they may go to the library (or there are none). Only the
    spec's default group is accepted (written out or left out); the
    relying party's public value must be in [2, p - 2]. Bounded work:
    nothing longer than L{MAX_DH_VALUE_CHARS} is decoded.
    """
    modulus_text = query.get("openid.dh_modulus")
    generator_text = query.get("openid.dh_gen")
    public_text = query.get("openid.dh_consumer_public")
    given_group = modulus_text is not None or generator_text is not None
    if given_group and (
        _dh_value(modulus_text or "") != DEFAULT_MODULUS
        or _dh_value(generator_text or "") != DEFAULT_GENERATOR
    ):
        return (
            "only the default Diffie-Hellman group of OpenID 2.0 (section 8.1.2) "
            "is accepted; leave out dh_modulus and dh_gen"
        )
    if public_text is not None:
        public = _dh_value(public_text)
        if public is None or not 2 <= public <= DEFAULT_MODULUS - 2:
            return "dh_consumer_public is not a valid public value for the default group"
    return None


# Association handles: printable ASCII (33-126), at most 255 characters
# (OpenID 2.0, 8.2.1). The library takes any text, and a newline in one made
# its signing raise (key-value form cannot hold it).
HANDLE = re.compile(r"^[\x21-\x7e]{1,255}$")


def handle_problem(query: Mapping[str, str]) -> str | None:
    """Why a request's association handle (or the one to invalidate) is refused, or L{None}."""
    for key in ("openid.assoc_handle", "openid.invalidate_handle"):
        value = query.get(key)
        if value is not None and not HANDLE.match(value):
            return f"{key[7:]} must be 1 to 255 printable ASCII characters"
    return None


# Realms and return_to URLs.


class BadURL(ValueError):
    """
    A realm or return_to whose host cannot be read as one host name; the
    message (why, marked for translation) completes a sentence for a person.
    """

    def __str__(self) -> str:
        message = self.args[0] if self.args else ""
        return message if isinstance(message, str) else super().__str__()


# After percent-decoding and IDNA: a DNS name (letters, digits, hyphens,
# dots, and the underscores some real hosts have), or an IPv4 address,
# optionally after a wildcard "*.".
_HOST = re.compile(
    r"^(\*\.)?[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*\.?$"
)
_PORT = re.compile(r"^[0-9]{1,5}$")


def _host(raw: str) -> str:
    try:
        host = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise BadURL(N_("its host is not UTF-8 once its percent-escapes are decoded")) from None
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if not host.isascii():
        try:
            host = idna.encode(host.rstrip("."), uts46=True).decode("ascii")
        except (UnicodeError, idna.IDNAError):
            raise BadURL(N_("its host is not a valid domain name")) from None
    host = ("*." if wildcard else "") + host.lower()
    if not _HOST.match(host):
        raise BadURL(N_("its host is not a domain name"))
    return host


def normalised_url(url: str) -> str:
    """
    C{url} (an http(s) realm or return_to) with its host in the one form
    every part of Clickpass reads: percent-escapes decoded, international
    names in IDNA (punycode) form, lowercase. Scheme lowercase, no user
    information; port, path, query and fragment as they were (the
    library's own checks see those). Raises L{BadURL}.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise BadURL(N_("it is not a URL")) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadURL(N_("it is not an http or https URL"))
    netloc = parts.netloc
    if "@" in netloc:
        raise BadURL(N_("it carries user information"))
    host, colon, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    if colon and not port:
        colon = ""
    elif colon and not _PORT.match(port):
        raise BadURL(N_("its port is not a number"))
    return urlunsplit((scheme, _host(host) + colon + port, parts.path, parts.query, parts.fragment))


@lru_cache(maxsize=1)
def _suffixes() -> PublicSuffixList:
    # The list the package ships (no download); unknown TLDs are not suffixes
    # it accepts, so a wildcard over one is refused.
    return PublicSuffixList(accept_unknown=False)


def wildcard_too_broad(host: str) -> bool:
    """
    Whether a wildcard realm C{*.host} would cover more than one site: when
    C{host} is itself a public suffix (C{com}, C{co.uk}, C{github.io}) or
    has no known one, or is an address. C{host} is normalised (lowercase,
    ASCII) and without the C{*.}.
    """
    host = host.rstrip(".")
    if not host or host.replace(".", "").isdigit():
        return True
    private = _suffixes().privatesuffix(host)
    return private is None


# What the library logs.

# Longest text of a request's value, or of a library message, that is logged.
LOGGED_CHARS = 200


def for_log(value: object, limit: int = LOGGED_CHARS) -> str:
    """C{value} as one line of at most about C{limit} characters, for a log field."""
    text = " ".join(str(value).split())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class _IntoTwistedLog(logging.Handler):
    """python3-openid's logging, one bounded line each, into twisted.logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            # The library logs tracebacks for bad input it then refuses: the
            # exception's kind is enough.
            message += f" ({type(record.exc_info[1]).__name__})"
        _log.info("python3-openid: {message}", message=for_log(message))


_log = Logger()


def bound_library_logging() -> None:
    """
    Send python3-openid's log records (it logs whole messages, a request's
    64 KiB included, and tracebacks for input it refuses) to twisted.logger
    as one line of at most L{LOGGED_CHARS} characters, at info. Without this
    they reach stderr through C{logging.lastResort}, in full. Idempotent.
    """
    library = logging.getLogger("openid")
    if not any(isinstance(h, _IntoTwistedLog) for h in library.handlers):
        library.addHandler(_IntoTwistedLog())
    library.propagate = False


def harden_library() -> None:
    """Everything python3-openid needs in a process before it serves: see the module doc."""
    use_os_randomness()
    bound_library_logging()
