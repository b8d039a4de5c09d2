"""
A relying party's site on loopback that a browser can come back to: its
realm publishes its return_to in XRDS (relying-party discovery) and, once
told, the token that proves its owner registered it as a partner site;
its return_to is an HTML page (python3-openid's consumer checks the
answer in its address).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERIFICATION_PATH = "/.well-known/clickpass-verification.txt"


class BrowserRelyingParty:
    """The realm, the return_to page and the verification token of one relying party."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        site = self
        self.token = ""

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                # The partner flow's registration and connect pages too:
                # a page to land on, not the XRDS (which a browser downloads).
                if self.path.startswith(("/return", "/register", "/connect")):
                    body = b"<!doctype html><title>Back</title><p id='back'>Back at the site.</p>"
                    kind = "text/html; charset=utf-8"
                elif self.path == VERIFICATION_PATH:
                    body = (site.token + "\n").encode()
                    kind = "text/plain"
                else:
                    body = site.xrds().encode()
                    kind = "application/xrds+xml"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.realm = f"http://{host}:{self.server.server_address[1]}/"
        self.return_to = self.realm + "return"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def xrds(self) -> str:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<xrds:XRDS xmlns:xrds="xri://$xrds" xmlns="xri://$xrd*($v*2.0)"><XRD>'
            "<Service><Type>http://specs.openid.net/auth/2.0/return_to</Type>"
            f"<URI>{self.return_to}</URI></Service></XRD></xrds:XRDS>\n"
        )

    def publish(self, token: str, _webhook_secret: str) -> None:
        """Publish the partner site's verification token (register_site's C{publish})."""
        self.token = token

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
