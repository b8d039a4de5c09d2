"""
A person who deletes their Clickpass account, end to end over HTTP: a real
node (SQLite and MariaDB), the example partner site as a process. The
partner hears user.deleted (with a deletion request) through its signed
webhook; the person's security log showed the site they disconnected; the
address is free again and a new account there is a stranger to the partner.
"""

from __future__ import annotations

import pytest
import requests

from tests.integration.partners.conftest import PASSWORD, Partner
from tests.integration.partners.flows import Person
from tests.integration.partners.test_flows import wait_for_event
from tests.support.browser import csrf_token
from tests.support.node import NodeProcess

pytestmark = pytest.mark.integration


def _identifiers(node: NodeProcess, partner: Partner) -> set[str]:
    api = node.url + "api/v1/identifiers"
    auth = {"Authorization": f"Bearer {partner.site.api_key}"}
    found = requests.get(api, headers=auth, timeout=10).json()["identifiers"]
    return {str(i["id"]) for i in found}


def test_deleting_the_account_tells_the_partner(node: NodeProcess, partner: Partner) -> None:
    """
    The delete page names the connected partner; deleting sends it
    user.unlinked and user.deleted for the person's identifier there, with
    a deletion request it can see in the API; the link is gone, and the
    same address signs up afresh as a new person.
    """
    person = Person(node, partner.process.url)
    before = _identifiers(node, partner)
    person.choose(
        person.sign_up_from(person.start()), "register", email=person.email, nickname="bye"
    )
    (opaque,) = _identifiers(node, partner) - before
    identifier = node.url + "id/" + opaque
    assert wait_for_event(partner, "user.linked", identifier)

    page = person.session.get(node.url + "account/delete", timeout=30)
    assert page.status_code == 200 and "Example Partner" in page.text
    gone = person.session.post(
        node.url + "account/delete",
        data={"password": PASSWORD, "csrf_token": csrf_token(page.text)},
        timeout=30,
    )
    assert gone.ok and "Your account is deleted" in gone.text
    deleted = wait_for_event(partner, "user.deleted", identifier)
    data = deleted["data"]
    assert isinstance(data, dict) and str(data["deletion_request"]).startswith("del_")
    assert wait_for_event(partner, "user.unlinked", identifier)
    assert opaque not in _identifiers(node, partner)
    requests_api = node.url + "api/v1/deletion-requests"
    auth = {"Authorization": f"Bearer {partner.site.api_key}"}
    listed = requests.get(requests_api, headers=auth, timeout=10)
    assert data["deletion_request"] in listed.text

    again = Person(node, partner.process.url)
    again.email = person.email
    choice = again.sign_up_from(again.start())
    assert "Continue to Example Partner" in choice.text, "a new person to the partner"


def test_disconnecting_a_site_is_in_the_security_log(node: NodeProcess, partner: Partner) -> None:
    """Disconnecting from a site on the account page is a line of the person's security log."""
    person = Person(node, partner.process.url)
    person.choose(
        person.sign_up_from(person.start()), "register", email=person.email, nickname="dc"
    )
    sites = person.session.get(node.url + "account/sites", timeout=30)
    person.session.post(
        node.url + "account/sites/disconnect",
        data={
            "csrf_token": csrf_token(sites.text),
            "site": partner.site.public_id,
            "forget": "yes",
        },
        timeout=30,
    )
    account = person.session.get(node.url + "account", timeout=30).text
    assert "Disconnected a site" in account
    assert "(asked to delete your data)" in account


def test_a_partner_unlinking_the_person_is_in_their_log(
    node: NodeProcess, partner: Partner
) -> None:
    """When the partner unlinks the person through its API, the person's log says so."""
    person = Person(node, partner.process.url)
    before = _identifiers(node, partner)
    person.choose(
        person.sign_up_from(person.start()), "register", email=person.email, nickname="ul"
    )
    (opaque,) = _identifiers(node, partner) - before
    auth = {"Authorization": f"Bearer {partner.site.api_key}"}
    answer = requests.delete(node.url + "api/v1/identifiers/" + opaque, headers=auth, timeout=10)
    assert answer.status_code == 200
    account = person.session.get(node.url + "account", timeout=30).text
    assert "A site disconnected you (its approval was forgotten)" in account
    assert "Example Partner" in account.split("Recent security events")[1]
