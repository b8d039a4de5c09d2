"""
clickpass-ctl commands for the OpenID Connect provider: its signing keys,
C{oidc keys list} and C{oidc keys rotate [--alg ALG]}, and its clients,
C{oidc clients add|list|show|set|rotate-secret|remove} (C{delete} is
C{remove}). They ask the running node, which reads
and writes the keys and clients in the database.

This module must never open the database or handle key material itself.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from clickpass.control.ctl import Connection, CtlError, command, format_table
from clickpass.control.ctl import when as _when


def _format_list(result: dict[str, Any]) -> str:
    rows = [
        {
            "kid": k["kid"],
            "alg": k["alg"],
            "state": k["state"],
            "created": _when(k["created"]),
            "signs from": _when(k["signs_from"]),
            "retire after": _when(k["retire_after"]),
        }
        for k in result["keys"]
    ]
    head = (
        f"new keys sign {result['publication_delay']}s after rotate; retired keys stay "
        f"published {result['longest_token_lifetime']}s"
    )
    columns = ["kid", "alg", "state", "created", "signs from", "retire after"]
    return head + "\n\n" + format_table(rows, columns)


@command("oidc", "keys", "list", help="the OpenID Connect signing keys", format=_format_list)
def _keys_list(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("oidc.keys.list")


def _format_rotate(result: dict[str, Any]) -> str:
    lines = []
    for r in result["rotated"]:
        if r["created"]:
            lines.append(
                f"new {r['alg']} key {r['kid']} published; it starts signing at "
                f"{_when(r['signs_from'])}"
            )
        else:
            lines.append(
                f"{r['alg']} key {r['kid']} was already waiting; it starts signing at "
                f"{_when(r['signs_from'])}"
            )
    return "\n".join(lines)


def _alg_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alg", help="only this algorithm (RS256 or ES256); default: both")


@command(
    "oidc",
    "keys",
    "rotate",
    help="publish new signing keys; they sign after the publication delay",
    arguments=_alg_argument,
    format=_format_rotate,
)
def _keys_rotate(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("oidc.keys.rotate", {} if args.alg is None else {"alg": args.alg})


def _client_add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("site", help="the partner site's id (site_...)")
    p.add_argument(
        "--redirect-uri",
        action="append",
        required=True,
        dest="redirect_uris",
        help="a redirect URI, matched exactly (repeat for more; all on one host)",
    )
    p.add_argument(
        "--public",
        action="store_true",
        help="a public client (no secret; PKCE required); default: confidential",
    )
    p.add_argument("--alg", default="RS256", help="ID token algorithm: RS256 (default) or ES256")
    p.add_argument(
        "--post-logout-uri",
        action="append",
        dest="post_logout_uris",
        default=[],
        help="where RP-initiated logout may send the person back to (repeat for more)",
    )
    p.add_argument(
        "--sector-identifier-uri",
        help="a JSON list of the redirect URIs, fetched and checked now; its host is the "
        "client's sector, so the redirect URIs may lie on several hosts",
    )
    p.add_argument(
        "--backchannel-logout-uri",
        help="where Clickpass POSTs a logout token when a session that signed into the "
        "client ends (Back-Channel Logout 1.0)",
    )
    p.add_argument(
        "--backchannel-logout-session-required",
        action="store_true",
        help="the client needs the session id (sid) in logout tokens (they always carry it)",
    )
    p.add_argument(
        "--jwks",
        help="a file with the client's public keys (JWKS): it authenticates with "
        "private_key_jwt instead of a secret",
    )
    p.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        help="a scope the client may ask for (repeat; default: openid, email, profile)",
    )
    _lifetime_arguments(p)


def _lifetime_arguments(p: argparse.ArgumentParser) -> None:
    for kind, default in (
        ("access-token", 3600),
        ("refresh-token", 30 * 86400),
        ("id-token", 3600),
    ):
        p.add_argument(
            f"--{kind}-lifetime",
            type=int,
            metavar="SECONDS",
            help=f"how long the client's {kind.replace('-', ' ')}s live (default {default})",
        )


def _given_lifetimes(args: argparse.Namespace) -> dict[str, int]:
    found = {
        "access_token": args.access_token_lifetime,
        "refresh_token": args.refresh_token_lifetime,
        "id_token": args.id_token_lifetime,
    }
    return {k: v for k, v in found.items() if v is not None}


def _format_client_add(result: dict[str, Any]) -> str:
    lines = [
        f"client {result['client_id']} ({result['type']}, {result['auth_method']}) "
        f"of site {result['site']}",
        f"redirect URIs: {', '.join(result['redirect_uris'])}",
        f"ID tokens: {result['id_token_alg']}; scopes: {' '.join(result['scopes'])}",
    ]
    if result.get("backchannel_logout_uri"):
        lines.append(f"back-channel logout: {result['backchannel_logout_uri']}")
    if result.get("client_secret"):
        lines.append(f"client secret: {result['client_secret']}")
        lines.append("the secret is shown only now: Clickpass keeps only its hash")
    return "\n".join(lines)


@command(
    "oidc",
    "clients",
    "add",
    help="register an OpenID Connect client of a partner site (its secret is shown once)",
    arguments=_client_add_arguments,
    format=_format_client_add,
)
def _clients_add(args: argparse.Namespace, conn: Connection) -> Any:
    params: dict[str, Any] = {
        "site": args.site,
        "redirect_uris": args.redirect_uris,
        "public": args.public,
        "id_token_alg": args.alg,
        "post_logout_uris": args.post_logout_uris,
    }
    if args.sector_identifier_uri:
        params["sector_identifier_uri"] = args.sector_identifier_uri
    if args.backchannel_logout_uri:
        params["backchannel_logout_uri"] = args.backchannel_logout_uri
    if args.backchannel_logout_session_required:
        params["backchannel_logout_session_required"] = True
    if args.scopes:
        params["scopes"] = args.scopes
    if _given_lifetimes(args):
        params["lifetimes"] = _given_lifetimes(args)
    if args.jwks:
        params["jwks"] = _read_jwks(args.jwks)
    return conn.call("oidc.clients.add", params)


def _read_jwks(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CtlError(f"cannot read the client's keys from {path}: {e}") from None


def _format_client_list(result: dict[str, Any]) -> str:
    rows = [
        {
            "client id": c["client_id"],
            "site": c["site"],
            "type": c["type"],
            "alg": c["id_token_alg"],
            "scopes": " ".join(c["scopes"]),
            "redirect uris": " ".join(c["redirect_uris"]),
        }
        for c in result["clients"]
    ]
    if not rows:
        return "no OpenID Connect clients"
    return format_table(rows, ["client id", "site", "type", "alg", "scopes", "redirect uris"])


@command("oidc", "clients", "list", help="the OpenID Connect clients", format=_format_client_list)
def _clients_list(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("oidc.clients.list")


def _client_id_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("client_id")


@command(
    "oidc",
    "clients",
    "remove",
    help="remove an OpenID Connect client and revoke its tokens",
    arguments=_client_id_argument,
    format=lambda r: f"removed client {r['removed']}; its tokens are revoked",
)
def _clients_remove(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("oidc.clients.remove", {"client_id": args.client_id})


@command(
    "oidc",
    "clients",
    "delete",
    help="the same as remove: remove an OpenID Connect client and revoke its tokens",
    arguments=_client_id_argument,
    format=lambda r: f"removed client {r['removed']}; its tokens are revoked",
)
def _clients_delete(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("oidc.clients.remove", {"client_id": args.client_id})


def _format_client_show(result: dict[str, Any]) -> str:
    lifetimes = result["lifetimes"]
    lines = [
        f"client {result['client_id']} ({result['type']}, {result['auth_method']}) "
        f"of site {result['site']} ({result['site_name']})",
        f"created: {_when(result['created'])}",
        f"redirect URIs: {' '.join(result['redirect_uris'])}",
        f"post-logout URIs: {' '.join(result['post_logout_uris']) or 'none'}",
        f"back-channel logout: {result['backchannel_logout_uri'] or 'none'}",
        f"ID tokens: {result['id_token_alg']}; scopes: {' '.join(result['scopes'])}",
        f"lifetimes: access token {lifetimes['access_token']}s, refresh token "
        f"{lifetimes['refresh_token']}s, ID token {lifetimes['id_token']}s",
    ]
    if result.get("previous_secret_expires"):
        lines.append(f"previous secret good until {_when(result['previous_secret_expires'])}")
    logouts = result.get("logouts") or []
    if logouts:
        lines.append("")
        rows = [
            {
                "queued": _when(r["created"]),
                "state": r["state"],
                "attempts": str(r["attempts"]),
                "last error": r["last_error"],
            }
            for r in logouts
        ]
        lines.append(format_table(rows, ["queued", "state", "attempts", "last error"]))
    return "\n".join(lines)


@command(
    "oidc",
    "clients",
    "show",
    help="one OpenID Connect client: its settings and its latest back-channel logouts",
    arguments=_client_id_argument,
    format=_format_client_show,
)
def _clients_show(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call("oidc.clients.show", {"client_id": args.client_id})


def _client_set_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("client_id")
    _lifetime_arguments(p)


@command(
    "oidc",
    "clients",
    "set",
    help="set an OpenID Connect client's token lifetimes (for tokens issued from now on)",
    arguments=_client_set_arguments,
    format=_format_client_show,
)
def _clients_set(args: argparse.Namespace, conn: Connection) -> Any:
    lifetimes = _given_lifetimes(args)
    if not lifetimes:
        raise CtlError("give at least one of --access-token-lifetime, --refresh-token-lifetime, "
                       "--id-token-lifetime")  # fmt: skip
    changed = conn.call("oidc.clients.set", {"client_id": args.client_id, "lifetimes": lifetimes})
    return {**changed, "logouts": []}


def _rotate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("client_id")
    p.add_argument(
        "--grace",
        type=int,
        default=86400,
        metavar="SECONDS",
        help="how long the current secret keeps working (default 86400; 0: it stops now)",
    )


def _format_rotate_secret(result: dict[str, Any]) -> str:
    lines = [
        f"client {result['client_id']}: new client secret: {result['client_secret']}",
        "the secret is shown only now: Clickpass keeps only its hash",
    ]
    if result["previous_secret_expires"]:
        lines.append(f"the previous secret works until {_when(result['previous_secret_expires'])}")
    else:
        lines.append("the previous secret no longer works")
    return "\n".join(lines)


@command(
    "oidc",
    "clients",
    "rotate-secret",
    help="give a client a new secret (shown once); the old one works for a grace period",
    arguments=_rotate_arguments,
    format=_format_rotate_secret,
)
def _clients_rotate_secret(args: argparse.Namespace, conn: Connection) -> Any:
    return conn.call(
        "oidc.clients.rotate_secret", {"client_id": args.client_id, "grace": args.grace}
    )
