"""Site settings checks, API keys, links and the profile-field rules (pure and on SQLite)."""

from __future__ import annotations

import datetime

import pytest

from clickpass.partners import fields, sites
from clickpass.partners.flow import retarget
from clickpass.storage.sql import DirectStorage
from tests.unit.partners.conftest import NOW, add_account, make_site, verify_site

REALM = "https://partner.example/"


def settings(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "Partner",
        "realm": REALM,
        "return_to_urls": REALM + "return",
        "requested_fields": ["email"],
        "required_fields": ["nickname"],
    }
    base.update(changes)
    return base


def test_settings_are_checked_against_the_realm() -> None:
    """Return, registration and connect URLs must lie inside the realm; fields must exist."""
    ok = sites.check_settings(settings())
    assert ok.requested_fields == ("nickname", "email")  # required fields are asked for too
    with pytest.raises(sites.SiteError, match="outside the realm"):
        sites.check_settings(settings(return_to_urls="https://evil.example/return"))
    with pytest.raises(sites.SiteError, match="registration URL"):
        sites.check_settings(settings(registration_url="https://evil.example/r"))
    with pytest.raises(sites.SiteError, match="unknown profile field shoe_size"):
        sites.check_settings(settings(requested_fields=["shoe_size"]))
    with pytest.raises(sites.SiteError, match="at least one return_to"):
        sites.check_settings(settings(return_to_urls=""))
    with pytest.raises(sites.SiteError, match="http"):
        sites.check_settings(settings(webhook_url="ftp://partner.example/hook"))


def test_one_site_per_host_and_the_host_stays(storage: DirectStorage) -> None:
    """A second registration of a host is refused; a site cannot move to another host."""
    site = make_site(storage, REALM)
    admin = storage.run_blocking(add_account, "other@example.com")
    again = sites.check_settings(
        settings(
            realm="http://partner.example:8080/", return_to_urls="http://partner.example:8080/"
        )
    )
    with pytest.raises(sites.SiteError):
        storage.run_blocking(sites.create_site, again, admin, NOW)
    moved = sites.check_settings(
        settings(realm="https://elsewhere.example/", return_to_urls="https://elsewhere.example/")
    )
    with pytest.raises(sites.SiteError, match=r"must stay on partner\.example"):
        storage.run_blocking(sites.update_site, site, moved, NOW)


def test_unverified_registration_does_not_hold_the_host(storage: DirectStorage) -> None:
    """
    A host registered but never verified (and with nobody linked) can be
    registered again by someone else, which removes the first registration
    with its admins and keys; a verified host cannot.
    """
    first = make_site(storage, REALM, verified=False)
    storage.run_blocking(sites.create_key, first.id, 1, "early", NOW)
    claimant = storage.run_blocking(add_account, "owner@partner.example")
    again = sites.check_settings(settings())
    second = storage.run_blocking(sites.create_site, again, claimant, NOW + 1)
    assert second.id != first.id
    assert storage.run_blocking(sites.site_by_id, first.id) is None
    assert storage.run_blocking(sites.keys_for_site, first.id) == []
    assert [a.email for a in storage.run_blocking(sites.admins, second.id)] == [
        "owner@partner.example"
    ]
    assert second.verification_token != first.verification_token

    token = storage.run_blocking(sites.verification_token, second.id)
    storage.run_blocking(sites.record_verification, second.id, token, None, NOW + 2)
    late = storage.run_blocking(add_account, "late@example.com")
    with pytest.raises(sites.SiteError, match="already registered"):
        storage.run_blocking(sites.create_site, again, late, NOW + 3)


def test_unverified_site_with_people_is_kept(storage: DirectStorage) -> None:
    """An unverified site that people are linked to (from before verification) is never replaced."""
    first = make_site(storage, REALM, verified=False)
    person = storage.run_blocking(add_account, "p@example.com")
    storage.run_blocking(
        sites.create_link,
        first,
        person,
        "a" * 32,
        "https://c.example/id/" + "a" * 32,
        "register",
        NOW,
    )
    claimant = storage.run_blocking(add_account, "owner@partner.example")
    with pytest.raises(sites.SiteError, match="already registered"):
        storage.run_blocking(sites.create_site, sites.check_settings(settings()), claimant, NOW)
    assert storage.run_blocking(sites.site_by_id, first.id) is not None


def test_api_keys_are_stored_hashed_and_can_be_revoked(storage: DirectStorage) -> None:
    """Only the key's hash is in the database; a revoked key opens nothing."""
    site = make_site(storage, REALM)
    key = storage.run_blocking(sites.create_key, site.id, 1, "ci", NOW)
    rows = storage.run_blocking(lambda tx: tx.fetchall("SELECT * FROM partner_api_keys"))
    assert key not in repr(rows)
    found = storage.run_blocking(sites.site_for_key, sites.key_hash(key), NOW)
    assert found is not None and found.id == site.id
    (listed,) = storage.run_blocking(sites.keys_for_site, site.id)
    assert storage.run_blocking(sites.revoke_key, site.id, listed.id, NOW)
    assert storage.run_blocking(sites.site_for_key, sites.key_hash(key), NOW) is None


def test_deletion_request_belongs_to_its_site(storage: DirectStorage) -> None:
    """A person's deletion request ends the link and only its own site can complete it."""
    site = make_site(storage, REALM)
    other = make_site(storage, "https://other.example/")
    account = storage.run_blocking(add_account, "d@example.com")
    storage.run_blocking(sites.create_link, site, account, "d" * 32, "id-d", "register", NOW)
    link = storage.run_blocking(sites.get_link, site.id, account)
    request_id = storage.run_blocking(sites.request_deletion, site, link, "id-d", NOW)
    assert request_id is not None
    assert storage.run_blocking(sites.get_link, site.id, account) is None
    assert storage.run_blocking(sites.complete_deletion, other.id, request_id, NOW) is None
    assert storage.run_blocking(sites.complete_deletion, site.id, request_id, NOW) is True
    assert storage.run_blocking(sites.complete_deletion, site.id, request_id, NOW) is False
    types = [e.event_type for e in storage.run_blocking(sites.recent_events, site.id)]
    assert sorted(types) == ["user.deleted", "user.linked", "user.unlinked"]


def test_registration_form_rules() -> None:
    """Required fields must be filled; each value is checked and normalised."""
    today = datetime.date(2024, 6, 1)
    values, errors = fields.check_form(
        ["email", "nickname", "dob", "country", "timezone", "gender"],
        {"email", "nickname"},
        {
            "email": " A@Example.COM ",
            "dob": "2030-01-01",
            "country": "gb",
            "timezone": "Europe/London",
            "gender": "X",
        },
        today,
    )
    assert values == {"email": "a@example.com", "country": "GB", "timezone": "Europe/London"}
    assert set(errors) == {"nickname", "dob", "gender"}
    assert "required" in errors["nickname"]


def test_retarget_keeps_partner_state_inside_the_realm() -> None:
    """The assertion goes to the registration URL with the return_to's own query kept."""
    moved = retarget(REALM + "register", REALM + "return?next=%2Fcart&x=1", REALM)
    assert moved == REALM + "register?next=%2Fcart&x=1"
    assert retarget("https://evil.example/register", REALM + "return", REALM) is None
    assert retarget("", REALM + "return", REALM) is None


def test_branding_reads_only_openid_continuations() -> None:
    """The sign-in page's partner comes only from an /openid?... next URL's realm and return_to."""
    from clickpass.partners.flow import _realm_of_next

    assert _realm_of_next(
        "/openid?openid.realm=https%3A%2F%2Fp.example%2F&openid.return_to=https%3A%2F%2Fp.example%2Fr"
    ) == ("https://p.example/", "https://p.example/r")
    assert _realm_of_next("/openid?openid.return_to=https%3A%2F%2Fp.example%2Fr") == (
        "https://p.example/r",
        "https://p.example/r",
    )
    assert _realm_of_next("/account?openid.realm=https%3A%2F%2Fp.example%2F") == ("", "")
    assert _realm_of_next("/openid?" + "x" * 20000) == ("", "")


@pytest.mark.parametrize(
    ("return_to", "allowed"),
    [
        (REALM + "return", True),
        ("HTTPS://Partner.Example:443/return", True),  # scheme, host case, default port
        (REALM + "return/", False),
        (REALM + "return/anything", False),
        (REALM + "returned", False),
        (REALM + "return?x=1", False),
        (REALM + "return#top", False),
        ("http://partner.example/return", False),
        ("https://partner.example:8443/return", False),
        ("https://user@partner.example/return", False),
        (REALM + "Return", False),
        (REALM + "any", True),
        (REALM + "any?", True),
        (REALM + "any?janrain_nonce=2026-12-06T00%3A00%3A00Zabc&next=%2F", True),
        (REALM + "any/more?x=1", False),
        (REALM + "fixed?a=1", True),
        (REALM + "fixed", False),
        (REALM + "fixed?a=1&b=2", False),
        (REALM + "fixed?b=2&a=1", False),
        ("https://partner.example:99999/return", False),
        ("javascript:alert(1)//partner.example/return", False),
    ],
)
def test_return_to_matches_a_registered_url_exactly(return_to: str, allowed: bool) -> None:
    """
    Scheme, host, port and path must be those of a registered URL, and the
    query the registered one, unless the URL was registered with ?*; no
    prefix of a registered URL, and no fragment, ever matches.
    """
    registered = (REALM + "return", REALM + "any?*", REALM + "fixed?a=1")
    assert sites.return_to_allowed(registered, return_to) is allowed


def test_return_to_registration_syntax() -> None:
    """?* is kept as registered; a query before it is refused, as is a URL outside the realm."""
    checked = sites.check_settings(settings(return_to_urls=f"{REALM}return?*\n{REALM}done?x=1"))
    assert checked.return_to_urls == (REALM + "return?*", REALM + "done?x=1")
    with pytest.raises(sites.SiteError, match=r"query before \?\*"):
        sites.check_settings(settings(return_to_urls=REALM + "return?x=1?*"))
    with pytest.raises(sites.SiteError, match="outside the realm"):
        sites.check_settings(settings(return_to_urls="https://evil.example/return?*"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Shop\x00"}, r"name must not contain control characters \('\\x00'\)"),
        ({"name": "Shop\u202ekcab"}, "name must not contain control characters"),
        ({"name": "a\ud800"}, "name must not contain control characters"),
        ({"logo_url": "https://partner.example/\x7flogo"}, "logo URL must not contain control"),
        ({"return_to_urls": [REALM + "r\x00"]}, "return_to URL must not contain control"),
        ({"requested_fields": ["email\x00"]}, "profile field name must not contain control"),
        ({"webhook_url": "https://partner.example:99999/hook"}, "webhook URL .* is not a URL"),
        ({"webhook_url": "https://[2001:db8::1]/hook"}, "IPv6 address literal"),
        ({"webhook_url": "http://[::ffff:127.0.0.1]:8080/hook"}, "IPv6 address literal"),
    ],
)
def test_settings_refuse_unusable_text(changes: dict[str, object], message: str) -> None:
    """Control characters anywhere, bad ports and IPv6-literal webhook URLs are refused."""
    with pytest.raises(sites.SiteError, match=message):
        sites.check_settings(settings(**changes))


def test_webhook_url_may_name_an_ipv4_address() -> None:
    """Only IPv6 literals are refused: an IPv4 address can be delivered to."""
    ok = sites.check_settings(settings(webhook_url="http://192.0.2.7:8080/hook"))
    assert ok.webhook_url == "http://192.0.2.7:8080/hook"


def test_unverified_site_is_displayed_by_its_host(storage: DirectStorage) -> None:
    """A site's name is what people see only once its realm is verified."""
    site = make_site(storage, REALM, verified=False)
    assert site.display_name == "partner.example"
    assert verify_site(storage, site).display_name == "Partner"


def test_invitations_are_single_use_hashed_and_expire(storage: DirectStorage) -> None:
    """
    Only the token's hash is stored; the account with another email cannot
    use it (and it stays usable); the addressee accepts it once; it expires;
    a new invitation for the same email replaces the old one.
    """
    site = make_site(storage, REALM)
    inviter = storage.run_blocking(sites.admins, site.id)[0].account_id
    invitee = storage.run_blocking(add_account, "invitee@example.com")
    other = storage.run_blocking(add_account, "other@example.com")
    token = storage.run_blocking(sites.invite_admin, site.id, "invitee@example.com", inviter, NOW)
    rows = storage.run_blocking(lambda tx: tx.fetchall("SELECT * FROM partner_invitations"))
    assert token not in repr(rows) and sites.key_hash(token) in repr(rows)

    accept = sites.accept_invitation
    assert storage.run_blocking(accept, token, other, "other@example.com", NOW)[0] == (
        "other_account"
    )
    assert not storage.run_blocking(sites.is_admin, site.id, other)
    assert storage.run_blocking(accept, token, invitee, "invitee@example.com", NOW)[0] == (
        "accepted"
    )
    assert storage.run_blocking(sites.is_admin, site.id, invitee)
    assert storage.run_blocking(accept, token, invitee, "invitee@example.com", NOW)[0] == (
        "invalid"
    )

    late = storage.run_blocking(sites.invite_admin, site.id, "late@example.com", inviter, NOW)
    expiry = NOW + sites.INVITATION_LIFETIME
    assert storage.run_blocking(sites.invitation_by_token, late, expiry - 1) is not None
    assert storage.run_blocking(sites.invitation_by_token, late, expiry) is None

    old = storage.run_blocking(sites.invite_admin, site.id, "again@example.com", inviter, NOW)
    new = storage.run_blocking(sites.invite_admin, site.id, "again@example.com", inviter, NOW)
    assert storage.run_blocking(sites.invitation_by_token, old, NOW) is None
    found = storage.run_blocking(sites.invitation_by_token, new, NOW)
    assert found is not None and found[0].email == "again@example.com"
    assert storage.run_blocking(sites.withdraw_invitation, site.id, found[0].id)
    assert storage.run_blocking(sites.invitation_by_token, new, NOW) is None


def test_the_last_admin_is_never_removed(storage: DirectStorage) -> None:
    """Removing an admin works until one is left; an account that is not an admin is 'absent'."""
    site = make_site(storage, REALM)
    first = storage.run_blocking(sites.admins, site.id)[0].account_id
    second = storage.run_blocking(add_account, "second@example.com")
    token = storage.run_blocking(sites.invite_admin, site.id, "second@example.com", first, NOW)
    storage.run_blocking(sites.accept_invitation, token, second, "second@example.com", NOW)
    assert storage.run_blocking(sites.remove_admin, site.id, 999, NOW) == "absent"
    assert storage.run_blocking(sites.remove_admin, site.id, first, NOW) == "removed"
    assert storage.run_blocking(sites.remove_admin, site.id, second, NOW) == "last"
    assert [a.account_id for a in storage.run_blocking(sites.admins, site.id)] == [second]


@pytest.mark.parametrize(
    ("realm", "stored"),
    [
        ("https://%70artner.example/", "https://partner.example/"),
        ("https://PARTNER.Example/", "https://partner.example/"),
        ("https://bücher.example/", "https://xn--bcher-kva.example/"),
    ],
)
def test_a_realm_is_registered_in_the_form_the_provider_matches(realm: str, stored: str) -> None:
    """
    A realm written with percent-escapes, capitals or an international name is
    stored as the OpenID provider normalises it, so registration and sign-in
    agree on which host it names.
    """
    ok = sites.check_settings(settings(realm=realm, return_to_urls=realm + "return"))
    assert ok.realm == stored
    assert ok.return_to_urls == (stored + "return",)


@pytest.mark.parametrize("realm", ["https://*.github.io/", "https://*.co.uk/", "https://*.com/"])
def test_a_wildcard_realm_over_a_public_suffix_is_refused(realm: str) -> None:
    """A wildcard realm must not cover every site under a public suffix."""
    with pytest.raises(sites.SiteError, match="not a usable OpenID realm"):
        sites.check_settings(settings(realm=realm, return_to_urls="https://a.github.io/return"))


def test_a_wildcard_realm_under_a_registrable_name_is_accepted() -> None:
    """*.partner.co.uk covers only the partner's own hosts."""
    ok = sites.check_settings(
        settings(realm="https://*.partner.co.uk/", return_to_urls="https://www.partner.co.uk/r")
    )
    assert ok.realm == "https://*.partner.co.uk/"
