"""
Types of the front's C HTTP/1.1 parser (csrc/_http1module.c). The heads are
named structures with read-only fields; the properties below name them in
their order, which tests/unit/balancer/test_http1.py checks against the
module's own members.
"""

from typing import final

MAX_HEADERS: int
# The longest request line the front takes, its CRLF included (longer: 414).
MAX_REQUEST_LINE: int

class RequestError(ValueError):
    """A request the front refuses: args are (status, kind, text)."""

@final
class RequestHead:
    """A complete request head, as parse_request found it."""

    @property
    def head_len(self) -> int: ...
    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def worker_head(self) -> bytes: ...
    @property
    def http10(self) -> bool: ...
    @property
    def keep_alive(self) -> bool: ...
    @property
    def content_length(self) -> int: ...
    @property
    def chunked(self) -> bool: ...
    @property
    def expect_continue(self) -> bool: ...
    @property
    def host(self) -> bytes: ...
    @property
    def forwarded_for(self) -> bytes: ...
    @property
    def if_none_match(self) -> bytes | None: ...

@final
class ResponseHead:
    """A complete response head, as parse_response found it."""

    @property
    def head_len(self) -> int: ...
    @property
    def status(self) -> int: ...
    @property
    def content_length(self) -> int: ...
    @property
    def chunked(self) -> bool: ...
    @property
    def close(self) -> bool: ...
    @property
    def hop(self) -> bool: ...

def parse_request(
    data: bytes | bytearray,
    max_head: int,
    max_body: int,
    trust_forwarded: bool,
    scanned: int = 0,
) -> RequestHead | None: ...
def parse_response(data: bytes, max_head: int) -> ResponseHead | None: ...
def strip_response_head(data: bytes, head_len: int, keep_length: bool) -> bytes: ...

class ChunkedBody:
    """A chunked message body, decoded incrementally (strict framing)."""

    def feed(self, data: bytes) -> tuple[bytes, int, bool]: ...
    def scan(self, data: bytes, offset: int) -> tuple[int, bool]: ...
