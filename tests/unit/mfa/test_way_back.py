"""
The way back a partner site's request carries through setting up a second
factor: only a path on this site is taken (never another host, however
spelled), and a step-up asked on the way keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from clickpass.mfa.keys_web import with_next
from clickpass.web.app import SESSION_COOKIE
from clickpass.web.routing import HTTPError
from tests.support.deferreds import async_test
from tests.unit.mfa.test_step_up import PASSWORD, WINDOW, setup

WAITING = "/openid?openid.mode=checkid_setup&openid.return_to=http%3A%2F%2Fsite%2F"


def asking(next_value: str, token: str = "") -> Request:
    """A request (never sent anywhere) whose C{next} field is C{next_value}."""
    request = Request(DummyChannel())
    request.args = {b"next": [next_value.encode("utf-8")]}
    if token:
        request.received_cookies = {SESSION_COOKIE: token.encode("ascii")}
    return request


def test_with_next_carries_a_path_and_nothing_else() -> None:
    assert with_next("/account/mfa", "") == "/account/mfa"
    assert with_next("/account/mfa/totp", "/openid?a=b&c=d") == (
        "/account/mfa/totp?next=%2Fopenid%3Fa%3Db%26c%3Dd"
    )
    assert with_next("/account/mfa/keys/new?kind=key", "/x") == (
        "/account/mfa/keys/new?kind=key&next=%2Fx"
    )


@pytest.mark.parametrize(
    "elsewhere",
    [
        "//evil.example",
        "//evil.example/openid",
        "https://evil.example",
        "http://evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "evil.example",
        "javascript:alert(1)",
        "/\tevil",
        "",
    ],
)
@async_test
async def test_a_way_back_off_this_site_is_none(
    tmp_path: Path, storage_backend: Any, reactor: Any, elsewhere: str
) -> None:
    web, _ = await setup(tmp_path, storage_backend, reactor)
    assert web.way_back(asking(elsewhere)) == ""


@async_test
async def test_a_local_way_back_is_kept(tmp_path: Path, storage_backend: Any, reactor: Any) -> None:
    web, _ = await setup(tmp_path, storage_backend, reactor)
    assert web.way_back(asking(WAITING)) == WAITING


@async_test
async def test_step_up_on_the_way_keeps_it(
    tmp_path: Path, storage_backend: Any, reactor: Any
) -> None:
    """
    A set-up page whose sign-in is too old sends the person to confirm,
    and back to the set-up page still carrying the way back.
    """
    web, clock = await setup(tmp_path, storage_backend, reactor)
    account = await web.app.accounts.sign_up("way@example.org", PASSWORD)
    token = await web.app.accounts.start_session(account, "192.0.2.1")
    clock.now += WINDOW + 30
    request = asking(WAITING, token)
    request.method = b"GET"
    with pytest.raises(HTTPError) as refused:
        await web.totp_form(request)
    assert refused.value.status == 303
    location = refused.value.headers["location"]
    assert location == "/account/confirm?next=" + (
        "%2Faccount%2Fmfa%3Fnext%3D%252Fopenid%253Fopenid.mode%253Dcheckid_setup"
        "%2526openid.return_to%253Dhttp%25253A%25252F%25252Fsite%25252F"
    )
