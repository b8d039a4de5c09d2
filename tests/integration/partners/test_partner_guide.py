"""
docs/partner-guide.md followed as a partner developer would, on a real
node: the guide's own blocks (fenced blocks marked C{partner-trial:NAME})
are read out of the file and used as written. The node runs the trial
configuration the guide gives; the site is registered in the console with
the values the guide lists; the guide's shell commands start the example
partner site from a fresh directory, with the project's environment and
the token and secret the console showed; Verify succeeds and a person
signs in at the example site through Clickpass, which then receives its
signed webhook. The guides Clickpass serves at /docs/partners are checked
here too.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest
import requests

from tests.integration.partners.conftest import (
    PASSWORD,
    SECRET,
    SITE_URL,
    VERIFICATION_TOKEN,
)
from tests.integration.partners.flows import Person
from tests.support.browser import Browser, csrf_token
from tests.support.node import NodeProcess, running_node
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
GUIDE = ROOT / "docs" / "partner-guide.md"
BLOCK = re.compile(r"^```(\w+) partner-trial:([\w-]+)\n(.*?)^```$", re.M | re.S)
# The console's form, by the labels the guide uses for its fields.
CONSOLE_FIELDS = {
    "Site name": "name",
    "Realm": "realm",
    "Allowed return_to URLs": "return_to_urls",
    "Registration URL": "registration_url",
    "Connect URL": "connect_url",
    "Ask for": "requested_fields",
    "Required": "required_fields",
    "Webhook URL": "webhook_url",
}
# What the guide asks the reader to paste from the console and the node.
VALUES = ("CLICKPASS_URL", "CLICKPASS_VERIFICATION_TOKEN", "CLICKPASS_WEBHOOK_SECRET")
ASSIGNMENT = re.compile(r"^export (\w+)=(.*)$", re.M)


def guide_blocks() -> dict[str, tuple[str, str]]:
    """The guide's marked blocks: name -> (language, text)."""
    found: dict[str, tuple[str, str]] = {}
    for language, name, text in BLOCK.findall(GUIDE.read_text()):
        assert name not in found, f"two partner-trial:{name} blocks in {GUIDE}"
        found[name] = (language, text)
    return found


def console_values(text: str) -> dict[str, str]:
    """The guide's C{Label: value} lines for the console's form."""
    values = {}
    for line in text.splitlines():
        label, _, value = line.partition(":")
        assert label in CONSOLE_FIELDS, f"the guide names a console field {label!r}"
        values[label] = value.strip()
    return values


@pytest.fixture(scope="module")
def blocks() -> dict[str, tuple[str, str]]:
    found = guide_blocks()
    assert sorted(found) == ["config", "console", "start", "values"], sorted(found)
    return found


@pytest.fixture(scope="module")
def trial_node(
    blocks: dict[str, tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    """A node with the guide's trial configuration added to its own."""
    language, config = blocks["config"]
    assert language == "toml"
    trial = tomllib.loads(config)
    assert trial == {
        "openid": {"allow_private_rp_discovery": True},
        "partners": {"allow_private_webhooks": True},
    }
    with running_node(tmp_path_factory.mktemp("guide-node"), config, None, "guide") as node:
        yield node


def project_environment() -> dict[str, str]:
    """
    The environment of a shell where the project's virtualenv is active
    (what C{source .venv/bin/activate} sets), and nothing that would put
    the checkout on the path by other means.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = sys.prefix
    env["PATH"] = str(Path(sys.prefix) / "bin") + os.pathsep + env.get("PATH", "")
    return env


def test_the_guide_commands_run_as_written(
    blocks: dict[str, tuple[str, str]], trial_node: NodeProcess, tmp_path: Path
) -> None:
    """
    Register the guide's site, start the example with the guide's commands
    and the console's token and secret, press Verify, and a new person signs
    in at the example site through Clickpass; the signed webhook arrives.
    """
    node = trial_node
    console = console_values(blocks["console"][1])
    realm = console["Realm"]
    assert realm.startswith("http://127.0.0.1:")
    port = int(realm.rsplit(":", 1)[1].strip("/"))
    try:
        requests.get(realm, timeout=1)
    except requests.ConnectionError:
        pass
    else:
        pytest.fail(f"{realm} is already taken by another program: the guide's example needs it")

    # 2. An account, and the site registered in the console as the guide says.
    admin = Browser(node.url)
    assert admin.sign_up(f"guide-{secrets.token_hex(4)}@example.com", PASSWORD).ok
    form_page = admin.get("/partners/new")
    form: list[tuple[str, str]] = [("csrf_token", csrf_token(form_page.text))]
    for label, value in console.items():
        assert label in form_page.text, f"the console's form has no field {label!r}"
        name = CONSOLE_FIELDS[label]
        if name.endswith("_fields"):
            form += [(name, field.strip()) for field in value.split(",")]
        else:
            form.append((name, value))
    registered = admin.session.post(admin.url("/partners/new"), data=form, timeout=30)
    assert registered.ok, registered.text[:3000]
    site = SITE_URL.search(registered.url)
    token = VERIFICATION_TOKEN.search(registered.text)
    secret = SECRET.search(registered.text)
    assert site and token and secret, registered.text[:3000]

    # 3. The guide's commands: its values block with what the console showed
    # pasted in (the right-hand sides only), then its start block, in a
    # fresh directory, with the project's environment.
    values = blocks["values"][1]
    assert tuple(name for name, _ in ASSIGNMENT.findall(values)) == VALUES
    placeholders = dict(ASSIGNMENT.findall(values))
    assert placeholders["CLICKPASS_URL"] == "http://127.0.0.1:8080/"  # scripts/run's
    assert placeholders["CLICKPASS_VERIFICATION_TOKEN"].startswith("clickpass-verify-")
    assert placeholders["CLICKPASS_WEBHOOK_SECRET"].startswith("whsec_")
    pasted = {
        "CLICKPASS_URL": node.url,
        "CLICKPASS_VERIFICATION_TOKEN": unescape(token.group(1)),
        "CLICKPASS_WEBHOOK_SECRET": unescape(secret.group(1)),
    }
    values = ASSIGNMENT.sub(lambda m: f"export {m[1]}={shlex.quote(pasted[m[1]])}", values)
    start = blocks["start"][1]
    for name in VALUES[1:]:
        assert f'"${name}"' in start, f"the guide's start block does not use {name}"
    assert f"--port {port}" in start
    log_path = tmp_path / "example.log"
    with open(log_path, "wb") as log:
        shell = subprocess.Popen(
            ["bash", "-euc", values + start],
            cwd=tmp_path,
            env=project_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        partner = realm

        def started() -> bool:
            assert shell.poll() is None, "the example site ended:\n" + log_path.read_text()
            try:
                return requests.get(partner, timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_for(started, 30, "the example partner site")
        # The example says what to register: the very values the guide lists.
        said = log_path.read_text()
        for label in ("Realm", "Allowed return_to URLs", "Registration URL", "Connect URL"):
            assert console[label] in said, (label, said)
        assert console["Webhook URL"] in said and "no --webhook-secret" not in said
        # The button the guide's snippet describes, where the guide says.
        home = requests.get(partner, timeout=10).text
        assert "href='/login/clickpass'" in home and "data-clickpass-button" in home

        # 4. Verify, then a person signs in at the example site.
        page = admin.get(f"/partners/{site.group(1)}")
        verified = admin.post(
            f"/partners/{site.group(1)}/verify", {"csrf_token": csrf_token(page.text)}
        )
        assert "Verified: you control 127.0.0.1" in verified.text, verified.text[:3000]
        person = Person(node, partner)
        choice = person.sign_up_from(person.start())
        assert "Continue to Example Partner" in choice.text, choice.text[:3000]
        # The words the guide tells the reader to look for.
        assert "I'm new to Example Partner" in unescape(choice.text)
        assert "Create my Example Partner account" in choice.text
        done = person.choose(choice, "register", email=person.email, nickname="guided")
        assert done.ok, done.text[:3000]
        assert done.url.startswith(partner) and "Signed in as" in done.text, done.text[:3000]
        assert "guided" in done.text

        def linked() -> bool:
            events = requests.get(partner + "webhooks/events", timeout=5).json()
            return any(e["type"] == "user.linked" for e in events)

        # Delivered, and accepted: the example refuses a wrong signature.
        wait_for(linked, 60, "the user.linked webhook at the example site")
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGTERM)
            try:
                shell.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(shell.pid, signal.SIGKILL)
                shell.wait(10)
        # The example listens until it is gone: the next run needs its port.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(realm, timeout=1)
            except requests.ConnectionError:
                break
            time.sleep(0.1)


def test_clickpass_serves_the_guides(trial_node: NodeProcess) -> None:
    """
    The console links to the guides Clickpass serves, not to repository
    paths; the guide is HTML with this node's address in its examples and
    the marked blocks the test above runs; the API guide and the OpenAPI
    document are served beside it.
    """
    node = trial_node
    admin = Browser(node.url)
    assert admin.sign_up(f"reader-{secrets.token_hex(4)}@example.com", PASSWORD).ok
    console = admin.get("/partners").text
    assert 'href="/docs/partners"' in console and 'href="/docs/partners/api"' in console
    assert "docs/partner-guide.md" not in console and "docs/partner-api.md" not in console
    guide = requests.get(node.url + "docs/partners", timeout=10)
    assert guide.status_code == 200
    assert guide.headers["content-type"].startswith("text/html")
    assert "<h1" in guide.text and "Integrating your site with Clickpass" in guide.text
    assert "https://login.example.com/" not in guide.text
    assert f"{node.url}static/clickpass-button.js" in guide.text
    assert 'href="/docs/partners/api"' in guide.text
    assert '<div class="table-wrap">' in guide.text
    assert "python -m examples.partner_site" in guide.text
    api = requests.get(node.url + "docs/partners/api", timeout=10)
    assert api.status_code == 200 and "Clickpass partner API" in api.text
    openapi = requests.get(node.url + "docs/partners/openapi.yaml", timeout=10)
    assert openapi.status_code == 200 and openapi.text.startswith("openapi: 3.")
    assert requests.get(node.url + "docs/partners/nothing", timeout=10).status_code == 404
    assert guide.headers["content-language"] == "en"


def test_the_guides_in_the_readers_language(trial_node: NodeProcess) -> None:
    """
    A browser asking for German gets the German guides (the header and the
    page say so), with the English anchors and links to the other
    languages; an address naming Spanish gets Spanish throughout, links to
    the other guide included; a language Clickpass does not speak gets English.
    """
    node = trial_node
    german = requests.get(
        node.url + "docs/partners", headers={"Accept-Language": "de-DE, en;q=0.5"}, timeout=10
    )
    assert german.status_code == 200 and german.headers["content-language"] == "de"
    assert '<html lang="de">' in german.text and '<article class="guide" lang="de">' in german.text
    assert "Ihre Website mit Clickpass verbinden" in german.text
    assert 'id="try-it-on-your-laptop-first"' in german.text
    assert 'href="/docs/partners?lang=en" hreflang="en"' in german.text
    assert 'href="/docs/partners?lang=es" hreflang="es"' in german.text
    assert f"{node.url}static/clickpass-button.js" in german.text
    spanish = requests.get(
        node.url + "docs/partners/api?lang=es", headers={"Accept-Language": "de"}, timeout=10
    )
    assert spanish.headers["content-language"] == "es" and '<html lang="es">' in spanish.text
    assert "La API de socios de Clickpass" in spanish.text
    assert 'href="/docs/partners?lang=es"' in spanish.text
    other = requests.get(
        node.url + "docs/partners?lang=fr", headers={"Accept-Language": "fr"}, timeout=10
    )
    assert other.status_code == 200 and other.headers["content-language"] == "en"
    assert "Integrating your site with Clickpass" in other.text
