"""
Mail through a real node (twistd), driven with clickpass-ctl: the
embedded default writes to a maildir under the data directory and says
where; a node configured for SMTP (STARTTLS, AUTH, a private CA) keeps a
message it could not send across a kill and a restart, and sends it once
the server is there, on SQLite and on MariaDB; and two nodes on one MariaDB
send each message once.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from clickpass.config import load
from clickpass.mail.outbox import Outbox
from clickpass.storage.offline import open_direct
from tests.integration.mail.smtpd import PASSWORD, USER, running_smtp
from tests.support.mariadb import MariaDBServer
from tests.support.node import NodeProcess, free_port, mariadb_config, write_config
from tests.support.tlsca import TestCA
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def status(node: NodeProcess) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(node.ctl("--json", "mail", "status").stdout)
    return found


def test_without_mail_settings_messages_go_to_a_maildir(tmp_path: Path) -> None:
    """
    No [mail]: the node logs the maildir it writes to; clickpass-ctl mail
    test queues a message that appears there, whole (text and HTML), and
    mail status and mail show tell what happened.
    """
    port = free_port()
    node = NodeProcess(tmp_path, write_config(tmp_path, port), port=port)
    node.start()
    try:
        maildir = tmp_path / "data" / "mail"
        assert f"mail delivery: maildir {maildir}" in node.log()
        queued = node.ctl("mail", "test", "person@example.org").stdout
        match = re.search(r"test message (\d+) queued", queued)
        assert match is not None, queued
        row_id = int(match.group(1))
        wait_for(lambda: list((maildir / "new").glob("*")))
        (path,) = (maildir / "new").glob("*")
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert message["To"] == "person@example.org"
        assert message["Delivered-To"] == "person@example.org"
        assert message.get_content_type() == "multipart/alternative"
        text = message.get_body(("plain",))
        assert text is not None and f"http://127.0.0.1:{port}/" in text.get_content()
        wait_for(lambda: status(node)["counts"] == {"pending": 0, "sent": 1, "failed": 0})
        text_status = node.ctl("mail", "status").stdout
        assert f"transport: maildir {maildir}" in text_status
        assert "sent:      1" in text_status
        shown = node.ctl("mail", "show", str(row_id)).stdout
        assert "state:      sent" in shown and "to:         person@example.org" in shown
        assert "(the body is not kept once a message is sent)" in shown
        refused = node.ctl("mail", "retry", str(row_id), check=False)
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            f"clickpass-ctl: message {row_id} was already sent; it is never sent twice"
        )
        bad = node.ctl("mail", "test", "not an address", check=False)
        assert bad.returncode == 1 and "is not an email address" in bad.stderr
    finally:
        node.stop()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mariadb)])
def test_a_message_waits_out_a_down_server_and_a_node_restart(
    tmp_path: Path, ca: TestCA, backend: str, request: pytest.FixtureRequest
) -> None:
    """
    The SMTP server is down: the message waits, with the error in mail
    status. The node is killed (SIGKILL) and started again; the server
    comes up; the message arrives once, over STARTTLS with AUTH, and
    mail status says sent.
    """
    extra = ""
    database = ""
    server: MariaDBServer | None = None
    if backend == "mysql":
        server = request.getfixturevalue("mariadb_server")
        assert server is not None
        database = f"{server.database}_mail{secrets.token_hex(4)}"
        server.create_database(database)
        extra = mariadb_config(tmp_path, server, database)
    smtp_port = free_port()
    password_file = tmp_path / "smtp-password"
    password_file.write_text(PASSWORD + "\n")
    extra += f"""
[mail]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
ca_bundle = "{ca.ca_pem}"
username = "{USER}"
password_file = "{password_file}"
from_address = "Clickpass <login@example.com>"
poll_interval = 0.2
backoff_initial = 0.5
backoff_max = 1.0
timeout = 2.0
batch = 4
parallel = 4
"""
    port = free_port()
    config = write_config(tmp_path, port, extra)
    node = NodeProcess(tmp_path, config, port=port)
    try:
        node.start()
        assert f"mail delivery: smtp 127.0.0.1:{smtp_port} (starttls, AUTH as {USER})" in node.log()
        node.ctl("mail", "test", "person@example.org")
        wait_for(lambda: status(node)["unsent"][0]["attempts"] >= 2)
        waiting = status(node)["unsent"][0]
        assert waiting["state"] == "pending"
        assert "Connection refused" in waiting["last_error"]
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)
        with running_smtp(ca, auth=True, port=smtp_port) as smtp:
            node.start()
            # Were the node killed mid-attempt, its lease (24 s here) would run out first.
            (got,) = smtp.wait_for(1, timeout=60)
            wait_for(lambda: status(node)["counts"] == {"pending": 0, "sent": 1, "failed": 0})
            time.sleep(1)
            assert len(smtp.messages()) == 1
        assert got.tls and got.user == USER
        assert got.mail_from == "login@example.com"
        assert got.message["From"] == "Clickpass <login@example.com>"
    finally:
        node.stop()
        if server is not None:
            server.drop_database(database)


@pytest.mark.mariadb
def test_two_nodes_on_one_mariadb_send_each_message_once(
    tmp_path: Path, ca: TestCA, mariadb_server: MariaDBServer
) -> None:
    """
    Two real nodes (twistd) share one MariaDB database and one SMTP
    server; 40 messages queued at once arrive once each, and both nodes
    sent some of them.
    """
    database = f"{mariadb_server.database}_mail2{secrets.token_hex(4)}"
    mariadb_server.create_database(database)
    password_file = tmp_path / "smtp-password"
    password_file.write_text(PASSWORD + "\n")
    nodes: list[NodeProcess] = []
    # One cluster: one master secret.
    (tmp_path / "secret.key").write_text("ab" * 32 + "\n")
    try:
        with running_smtp(ca, auth=True) as smtp:
            for name in ("node1", "node2"):
                directory = tmp_path / name
                directory.mkdir()
                extra = (
                    mariadb_config(directory, mariadb_server, database)
                    + f"""
[secrets]
secret_file = "{tmp_path / "secret.key"}"

[mail]
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
ca_bundle = "{ca.ca_pem}"
username = "{USER}"
password_file = "{password_file}"
poll_interval = 0.2
batch = 4
"""
                )
                port = free_port()
                node = NodeProcess(directory, write_config(directory, port, extra, name), port=port)
                nodes.append(node)
                node.start()
            settings = load(nodes[0].config)
            storage = open_direct(settings)
            now = int(time.time())
            try:
                box = Outbox(settings.mail, settings.base_url)
                storage.run_blocking(
                    lambda tx: [
                        box.enqueue(tx, f"p{i}@example.org", "Hi", "test", {"node": "-"}, now=now)
                        for i in range(40)
                    ]
                )
            finally:
                storage.close()
            got = smtp.wait_for(40, timeout=60)
            time.sleep(1)
            got = smtp.messages()
        ids = [m.message["Message-ID"] for m in got]
        assert len(ids) == 40 and len(set(ids)) == 40
        sent_by = [node.log().count(") sent to p") for node in nodes]
        assert sum(sent_by) == 40 and all(sent_by), sent_by
    finally:
        for node in nodes:
            node.stop()
        mariadb_server.drop_database(database)
