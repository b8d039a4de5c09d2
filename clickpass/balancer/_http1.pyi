"""Types of the front's C HTTP/1.1 parser (csrc/_http1module.c)."""

MAX_HEADERS: int

class RequestError(ValueError):
    """A request the front refuses: args are (status, kind, text)."""

RequestHead = tuple[
    int,  # head_len: bytes of the head, through its empty line
    bytes,  # method
    bytes,  # target (origin-form)
    bytes,  # upstream_head: request line and the headers passed on, no empty line
    bool,  # http10
    bool,  # keep_alive
    int,  # content_length, -1 when absent
    bool,  # chunked
    bool,  # expect_continue
    bytes,  # host, b"" when absent
    bytes,  # forwarded_for: the client's X-Forwarded-For values, b"" when none
    bytes | None,  # if_none_match
]

def parse_request(
    data: bytes | bytearray,
    max_head: int,
    max_body: int,
    trust_forwarded: bool,
    scanned: int = 0,
) -> RequestHead | None: ...

ResponseHead = tuple[
    int,  # head_len
    int,  # status
    int,  # content_length, -1 when absent
    bool,  # chunked
    bool,  # close: the worker ends the connection after this response
    bool,  # hop: hop-by-hop headers (or HTTP/1.0): not relayed as it is
]

def parse_response(data: bytes, max_head: int) -> ResponseHead | None: ...
def strip_response_head(data: bytes, head_len: int, keep_length: bool) -> bytes: ...

class ChunkedBody:
    """A chunked message body, decoded incrementally (strict framing)."""

    def feed(self, data: bytes) -> tuple[bytes, int, bool]: ...
    def scan(self, data: bytes, offset: int) -> tuple[int, bool]: ...
