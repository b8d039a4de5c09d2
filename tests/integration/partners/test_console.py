"""
The partner console through a real node over HTTP: every form answers
with a redirect, so reloading repeats nothing; a new API key is shown on
the next page only; a failed verify says why once; an admin marks a
person's deletion request done and deletes a site (after typing its host).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest
import requests

from clickpass import config as configmod
from clickpass.storage.offline import open_direct
from tests.integration.partners.conftest import (
    NEW_KEY,
    PASSWORD,
    Partner,
    PartnerSiteProcess,
    TokenServer,
    register_site,
)
from tests.integration.partners.flows import Person
from tests.support.browser import Browser, csrf_token
from tests.support.node import NodeProcess, free_port

pytestmark = pytest.mark.integration

KEY_ROW = re.compile(r"<tr><td><code>cpk_")


def test_new_key_is_shown_once_and_reload_creates_no_other(
    node: NodeProcess, token_server: TokenServer
) -> None:
    """
    Creating an API key answers 303; the page after it shows the key (which
    works) once, with a copy button; reloading shows it no more and creates
    no key. The sealed cookie that carried it is useless in another session.
    """
    site = register_site(node, token_server.realm, name="Reload Shop", publish=token_server.publish)
    admin = site.admin
    page_path = f"/partners/{site.public_id}"
    page = admin.get(page_path)
    assert len(KEY_ROW.findall(page.text)) == 1

    created = admin.post(
        page_path + "/keys",
        {"csrf_token": csrf_token(page.text), "label": "second"},
        allow_redirects=False,
    )
    assert created.status_code == 303
    assert created.headers["location"] == page_path + "#new-key-heading"
    assert "cpk_" not in created.text
    sealed = created.cookies.get("cp_console_flash")
    assert sealed and "cpk_" not in sealed

    shown = admin.get(page_path)
    key = NEW_KEY.search(shown.text)
    assert key is not None, shown.text[:3000]
    assert shown.text.count(key.group(1)) == 1
    assert 'data-copy="new-key"' in shown.text
    assert '<script src="/static/console.js" defer></script>' in shown.text
    assert len(KEY_ROW.findall(shown.text)) == 2
    api = requests.get(
        node.url + "api/v1/site",
        headers={"Authorization": f"Bearer {key.group(1)}"},
        timeout=10,
    )
    assert api.status_code == 200

    for _ in range(2):
        again = admin.get(page_path)
        assert 'id="new-key"' not in again.text
        assert key.group(1) not in again.text
        assert len(KEY_ROW.findall(again.text)) == 2

    # The same sealed cookie, replayed by another signed-in person, says nothing.
    other = Browser(node.url)
    assert other.sign_up(f"o{secrets.token_hex(4)}@example.com", PASSWORD).ok
    other.session.cookies.set("cp_console_flash", sealed, path="/partners")
    mine = register_site(node, f"http://127.0.0.5:{free_port()}/", admin=other)
    replay = other.session.get(other.url(f"/partners/{mine.public_id}"), timeout=30)
    assert 'id="new-key"' not in replay.text
    # The copy script is served from the node itself (the CSP allows only 'self').
    script = admin.get("/static/console.js")
    assert script.status_code == 200 and "navigator.clipboard" in script.text
    assert "default-src 'self'" in shown.headers["content-security-policy"]


def test_failed_verify_shows_its_error_once(node: NodeProcess) -> None:
    """
    Verify against a realm that does not answer redirects to a page that
    says why exactly once; a reload no longer shows the error, only the
    last check's result.
    """
    realm = f"http://127.0.0.4:{free_port()}/"
    site = register_site(node, realm, name="Silent Shop")
    admin = site.admin
    page_path = f"/partners/{site.public_id}"
    page = admin.get(page_path)
    failed = admin.post(page_path + "/verify", {"csrf_token": csrf_token(page.text)})
    assert [r.status_code for r in failed.history] == [303]
    assert failed.history[0].headers["location"] == page_path + "#verification"
    assert failed.text.count("could not verify 127.0.0.4") == 1
    assert failed.text.count('role="alert"') == 1
    problem = re.search(
        r'id="verify-error">Clickpass could not verify 127\.0\.0\.4: ([^<]+)<', failed.text
    )
    assert problem is not None, failed.text[:3000]
    assert failed.text.count(problem.group(1)) == 1

    reloaded = admin.get(page_path)
    assert "could not verify" not in reloaded.text
    assert 'role="alert"' not in reloaded.text
    assert "Last check: " + problem.group(1) in reloaded.text


def test_deletion_request_is_marked_done_from_the_console(
    node: NodeProcess, partner: Partner
) -> None:
    """
    A person who disconnects and asks for deletion shows up under the site's
    open deletion requests; the admin marks it done in the console, and the
    partner API then lists it as completed.
    """
    person = Person(node, partner.process.url)
    choice = person.sign_up_from(person.start())
    person.choose(choice, "register", email=person.email, nickname="gone")
    sites_page = person.session.get(node.url + "account/sites", timeout=10)
    person.session.post(
        node.url + "account/sites/disconnect",
        data={
            "csrf_token": csrf_token(sites_page.text),
            "site": partner.site.public_id,
            "forget": "yes",
        },
        timeout=10,
    )
    api = node.url + "api/v1/"
    auth = {"Authorization": f"Bearer {partner.site.api_key}"}
    (request,) = requests.get(api + "deletion-requests", headers=auth, timeout=10).json()[
        "deletion_requests"
    ]

    admin = partner.site.admin
    page_path = f"/partners/{partner.site.public_id}"
    page = admin.get(page_path)
    assert f'id="deletion-{request["id"]}"' in page.text
    done = admin.post(
        f"{page_path}/deletion-requests/{request['id']}/complete",
        {"csrf_token": csrf_token(page.text)},
    )
    assert [r.status_code for r in done.history] == [303]
    assert f"Deletion request {request['id']} marked done." in done.text
    assert f'id="deletion-{request["id"]}"' not in done.text
    assert requests.get(api + "deletion-requests", headers=auth, timeout=10).json() == {
        "deletion_requests": []
    }
    (completed,) = requests.get(
        api + "deletion-requests?include_completed=1", headers=auth, timeout=10
    ).json()["deletion_requests"]
    assert completed["id"] == request["id"] and completed["completed"]
    # Somebody else's request id, or one that does not exist: 404.
    missing = admin.post(
        f"{page_path}/deletion-requests/del_0000000000000000/complete",
        {"csrf_token": csrf_token(page.text)},
    )
    assert missing.status_code == 404


@pytest.fixture
def doomed_host() -> Iterator[TokenServer]:
    """A partner host of its own (127.0.0.6): the node's other tests hold 127.0.0.3."""
    server = TokenServer("127.0.0.6")
    try:
        yield server
    finally:
        server.stop()


def test_site_is_deleted_after_its_host_is_typed(
    node: NodeProcess, doomed_host: TokenServer
) -> None:
    """
    Deleting a site takes a second page where the admin types the site's
    host: a wrong host deletes nothing; the right one deletes the site, its
    key stops working, and the console says so once. Nobody else can
    delete it.
    """
    site = register_site(node, doomed_host.realm, name="Doomed Shop", publish=doomed_host.publish)
    admin = site.admin
    page_path = f"/partners/{site.public_id}"
    auth = {"Authorization": f"Bearer {site.api_key}"}
    assert requests.get(node.url + "api/v1/site", headers=auth, timeout=10).status_code == 200

    confirm = admin.get(page_path + "/delete")
    assert confirm.status_code == 200
    assert "type the site's host: <code>127.0.0.6</code>" in confirm.text

    stranger = Browser(node.url)
    assert stranger.sign_up(f"s{secrets.token_hex(4)}@example.com", PASSWORD).ok
    assert stranger.get(page_path + "/delete").status_code == 404
    refused = stranger.post(
        page_path + "/delete",
        {"csrf_token": csrf_token(stranger.get("/partners").text), "confirm": "127.0.0.6"},
    )
    assert refused.status_code == 404

    wrong = admin.post(
        page_path + "/delete", {"csrf_token": csrf_token(confirm.text), "confirm": "127.0.0.9"}
    )
    assert wrong.status_code == 400
    assert "Nothing was deleted: type 127.0.0.6 to confirm." in wrong.text
    assert admin.get(page_path).status_code == 200
    assert requests.get(node.url + "api/v1/site", headers=auth, timeout=10).status_code == 200

    deleted = admin.post(
        page_path + "/delete", {"csrf_token": csrf_token(confirm.text), "confirm": "127.0.0.6"}
    )
    assert [r.status_code for r in deleted.history] == [303]
    assert deleted.url == node.url + "partners"
    assert "The site Doomed Shop (127.0.0.6) was deleted." in deleted.text
    assert "Doomed Shop" not in admin.get("/partners").text
    assert admin.get(page_path).status_code == 404
    assert requests.get(node.url + "api/v1/site", headers=auth, timeout=10).status_code == 401


@pytest.fixture
def linked_shop(node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Partner]:
    """The example partner site on a host of its own (127.0.0.7), registered and verified."""
    process = PartnerSiteProcess("127.0.0.7", node.url, "", [])

    def publish(token: str, webhook_secret: str) -> None:
        process.args[process.args.index("--webhook-secret") + 1] = webhook_secret
        process.args += ["--verification-token", token]
        process.start(tmp_path_factory.mktemp("linked-shop"))

    try:
        site = register_site(node, process.url, name="Linked Shop", publish=publish)
        yield Partner(site, process)
    finally:
        process.stop()


def approved_realms(node: NodeProcess, email: str) -> set[str]:
    """The realms C{email}'s account has a remembered approval for, read from the database."""
    assert node.config is not None
    storage = open_direct(configmod.load(node.config))
    try:
        rows = storage.run_blocking(
            lambda tx: tx.fetchall(
                "SELECT a.realm FROM approvals a JOIN accounts u ON u.id = a.account_id "
                "WHERE u.email = ?",
                email,
            )
        )
    finally:
        storage.close()
    return {str(realm) for (realm,) in rows}


def test_deleting_a_site_forgets_the_approvals_its_links_made(
    node: NodeProcess, linked_shop: Partner
) -> None:
    """
    A person who registered at a partner site through Clickpass holds an
    approval of its realm; deleting the site ends the link and forgets that
    approval with it, so whoever holds the host next asks them again.
    """
    realm = linked_shop.site.realm
    person = Person(node, linked_shop.process.url)
    done = person.choose(
        person.sign_up_from(person.start()), "register", email=person.email, nickname="linked"
    )
    assert done.ok, done.text[:2000]
    assert realm in approved_realms(node, person.email)

    admin = linked_shop.site.admin
    page_path = f"/partners/{linked_shop.site.public_id}"
    confirm = admin.get(page_path + "/delete")
    assert "the one person connected to" in confirm.text, confirm.text[:3000]
    deleted = admin.post(
        page_path + "/delete", {"csrf_token": csrf_token(confirm.text), "confirm": "127.0.0.7"}
    )
    assert "The site Linked Shop (127.0.0.7) was deleted." in deleted.text
    assert realm not in approved_realms(node, person.email)
    sites_page = person.session.get(node.url + "account", timeout=30).text
    assert "Linked Shop" not in sites_page
