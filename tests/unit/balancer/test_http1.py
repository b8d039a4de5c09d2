"""
The front's C request parser (clickpass.balancer._http1), through its Python
binding: what it accepts, what it refuses and with which answer, which
headers it passes on, and chunked bodies split at every byte.
"""

import random

import pytest

from clickpass.balancer._http1 import (
    MAX_HEADERS,
    ChunkedBody,
    RequestError,
    RequestHead,
    ResponseHead,
    parse_request,
    parse_response,
    strip_response_head,
)

MAX_HEAD = 8192
MAX_BODY = 1000


def parse(data: bytes, trust: bool = False, max_head: int = MAX_HEAD, max_body: int = MAX_BODY):
    return parse_request(data, max_head, max_body, trust)


def request_fields(parsed: RequestHead | None) -> tuple[object, ...]:
    """A parsed request head's fields, in order."""
    assert parsed is not None
    return tuple(getattr(parsed, name) for name in _stub_fields("RequestHead"))


def response_fields(parsed: ResponseHead | None) -> tuple[object, ...]:
    """A parsed response head's fields, in order."""
    assert parsed is not None
    return (
        parsed.head_len,
        parsed.status,
        parsed.content_length,
        parsed.chunked,
        parsed.close,
        parsed.hop,
    )


def refusal(data: bytes, **kwargs) -> tuple[int, str, str]:
    with pytest.raises(RequestError) as caught:
        parse(data, **kwargs)
    status, kind, text = caught.value.args
    return status, kind, text


def test_a_plain_request():
    """Every field of a simple keep-alive GET, and the head for the worker."""
    data = b"GET /a?b=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n"
    assert request_fields(parse(data + b"next")) == (
        len(data),
        b"GET",
        b"/a?b=1",
        b"GET /a?b=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n",
        False,
        True,
        -1,
        False,
        False,
        b"example.org",
        b"",
        None,
    )


INCOMPLETE = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"


@pytest.mark.parametrize("cut", range(1, len(INCOMPLETE)))
def test_an_incomplete_head_is_none(cut):
    """Until the empty line arrives there is nothing to act on."""
    data = INCOMPLETE
    assert parse(data[:cut]) is None
    assert parse(data) is not None


def test_empty_lines_before_the_request_line_are_skipped():
    data = b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"
    parsed = parse(data)
    assert parsed is not None
    assert parsed.head_len == len(data)
    assert parsed.worker_head == b"GET / HTTP/1.1\r\nHost: h\r\n"


def test_header_values_lose_surrounding_whitespace_and_names_keep_their_case():
    parsed = parse(b"GET / HTTP/1.1\r\nHost:h\r\nX-MiXed: \t a b \t\r\n\r\n")
    assert parsed is not None
    assert parsed.worker_head == b"GET / HTTP/1.1\r\nHost: h\r\nX-MiXed: a b\r\n"


def test_any_request_goes_to_the_worker_as_http11():
    parsed = parse(b"GET / HTTP/1.0\r\n\r\n")
    assert parsed is not None
    assert parsed.worker_head == b"GET / HTTP/1.1\r\n"
    assert parsed.http10 is True  # http10
    assert parsed.keep_alive is False  # no keep-alive without asking for it


@pytest.mark.parametrize(
    ("request_head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive(request_head, keep_alive):
    parsed = parse(request_head)
    assert parsed is not None
    assert parsed.keep_alive is keep_alive


def test_hop_by_hop_headers_and_those_connection_names_are_not_passed_on():
    parsed = parse(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n"
        b"Keep-Alive: 5\r\nTE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: x\r\n"
        b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nExpect: 100-continue\r\n"
        b"X-Secret: 1\r\nx-secret: 2\r\nContent-Length: 3\r\nX-Kept: 1\r\n\r\n"
    )
    assert parsed is not None
    assert parsed.worker_head == b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Kept: 1\r\n"
    assert parsed.content_length == 3
    assert parsed.expect_continue is True  # expect_continue


def test_connection_cannot_name_the_framing_or_the_host_away():
    parsed = parse(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: host, content-length\r\n"
        b"Content-Length: 2\r\n\r\n"
    )
    assert parsed is not None
    assert parsed.worker_head == b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"


FORWARDING = (
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: evil\r\nForwarded: for=x\r\nX-Real-IP: 2.2.2.2\r\n"
    b"X-Forwarded-For: 3.3.3.3\r\n\r\n"
)


def test_client_forwarding_headers_are_dropped_unless_trusted():
    """Untrusted, none pass; their X-Forwarded-For values are still reported."""
    parsed = parse(FORWARDING)
    assert parsed is not None
    assert parsed.worker_head == b"GET / HTTP/1.1\r\nHost: h\r\n"
    assert parsed.forwarded_for == b"1.1.1.1, 3.3.3.3"


def test_trusted_forwarding_headers_pass_but_for_x_forwarded_for():
    """Trusted, they pass on; X-Forwarded-For is the front's to extend."""
    parsed = parse(FORWARDING, trust=True)
    assert parsed is not None
    assert parsed.worker_head == (
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: evil\r\nForwarded: for=x\r\nX-Real-IP: 2.2.2.2\r\n"
    )
    assert parsed.forwarded_for == b"1.1.1.1, 3.3.3.3"


def test_the_fronts_own_client_header_never_passes_from_a_client():
    """X-Clickpass-Client is the front's to set: a client's copy is dropped, trusted or not."""
    data = b"GET / HTTP/1.1\r\nHost: h\r\nx-CLICKPASS-client: 6.6.6.6\r\nA: b\r\n\r\n"
    for trust in (False, True):
        parsed = parse(data, trust=trust)
        assert parsed is not None
        assert parsed.worker_head == b"GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n"


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"GET / HTTP/1.1\nHost: h\n",
        b"GET / HTTP/1.1\r\nHost: h\n",
        b"GET / HTTP/1.1\r\nHost: h\rX",
        b"GET / HTTP/1.1\n",
    ],
)
def test_a_bare_lf_or_cr_is_refused_before_the_head_is_complete(head):
    """
    A head whose lines end in a bare LF (or CR) never holds the CRLF CRLF that
    ends a head: it is refused at once rather than left to time out.
    """
    assert refusal(head)[0] == 400


def test_a_bare_lf_after_a_cr_that_came_in_an_earlier_read_is_refused():
    """The byte after a CR is checked when it arrives in a later read."""
    first = b"GET / HTTP/1.1\r\nHost: h\r"
    assert parse_request(bytearray(first), MAX_HEAD, MAX_BODY, False, 0) is None
    with pytest.raises(RequestError):
        parse_request(bytearray(first + b"X"), MAX_HEAD, MAX_BODY, False, len(first))


def test_framing_fields():
    chunked = parse(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n")
    assert chunked is not None
    assert (chunked.content_length, chunked.chunked) == (-1, True)
    assert b"Transfer-Encoding" not in chunked.worker_head
    length = parse(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 0010\r\n\r\n")
    assert length is not None
    assert (length.content_length, length.chunked) == (10, False)


def test_if_none_match_and_common_methods():
    parsed = parse(b'HEAD /s HTTP/1.1\r\nHost: h\r\nIf-None-Match: "abc"\r\n\r\n')
    assert parsed is not None
    assert parsed.method == b"HEAD"
    assert parsed.if_none_match == b'"abc"'
    other = parse(b"PROPFIND / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert other is not None
    assert other.method == b"PROPFIND"


NOT_HTTP = (400, "bad_request", "The request is not valid HTTP/1.1.")


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"GARBAGE\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", NOT_HTTP),
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", NOT_HTTP),
        (b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\nHost: h\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\r\nHost: h\rX: 1\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", NOT_HTTP),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: a b\r\n\r\n", NOT_HTTP),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            (400, "bad_request", "Content-Length together with Transfer-Encoding."),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            (400, "bad_request", "Unsupported Transfer-Encoding."),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            (400, "bad_request", "Unsupported Transfer-Encoding."),
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            (400, "bad_request", "Unsupported Transfer-Encoding."),
        ),
        (
            b"GET http://evil/ HTTP/1.1\r\nHost: h\r\n\r\n",
            (400, "bad_request", "Only origin-form request targets are accepted."),
        ),
        (
            b"CONNECT evil:443 HTTP/1.1\r\nHost: evil\r\n\r\n",
            (400, "bad_request", "Only origin-form request targets are accepted."),
        ),
        (
            b"GET / HTTP/1.1\r\n\r\n",
            (400, "bad_request", "HTTP/1.1 requests need a Host header."),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
            (400, "bad_request", "HTTP/1.1 requests need a Host header."),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nExpect: something\r\n\r\n",
            (400, "bad_request", "Unsupported Expect header."),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            (501, "bad_request", "Protocol upgrades are not supported here."),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n",
            (413, "too_large", "The request body is too large."),
        ),
    ],
)
def test_refusals(data, answer):
    """Malformed or smuggling-shaped heads: the status and sentence the client gets."""
    assert refusal(data) == answer


def test_a_bare_line_feed_before_the_request_line_is_refused_at_once():
    assert refusal(b"\nGET / HTTP/1.1\r\n") == NOT_HTTP


def test_control_bytes_are_refused_before_the_head_is_complete():
    """A stream that can never become a request is refused without waiting for more."""
    assert refusal(b"GET / HTTP/1.1\r\nHost: \x01") == NOT_HTTP


def test_oversized_heads_are_refused_complete_or_not():
    """A header section above the limit: 431 Request Header Fields Too Large."""
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 2000
    too_large = (431, "head_too_large", "The request headers are too large.")
    assert refusal(big, max_head=1024) == too_large
    assert refusal(big + b"\r\n\r\n", max_head=1024) == too_large
    assert parse(big + b"\r\n\r\n", max_head=4096) is not None


TOO_LONG = (414, "target_too_long", "The request target is too long.")


def test_a_request_line_longer_than_16_kib_is_refused_complete_or_not():
    """
    414 URI Too Long for a request line above 16 KiB (its CRLF included),
    however large the head may be; one of exactly 16 KiB passes.
    """
    room = 16 * 1024 - len(b"GET / HTTP/1.1\r\n")
    line = b"GET /" + b"a" * (room + 1) + b" HTTP/1.1\r\n"
    assert len(line) == 16 * 1024 + 1
    head = line + b"Host: h\r\n\r\n"
    assert refusal(head, max_head=64 * 1024) == TOO_LONG
    assert refusal(line[:-1], max_head=64 * 1024) == TOO_LONG
    assert refusal(b"GET /" + b"a" * 40000, max_head=64 * 1024) == TOO_LONG
    fits = b"GET /" + b"a" * room + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    assert parse(fits, max_head=64 * 1024) is not None


def test_a_request_line_above_a_smaller_head_limit_is_too_long():
    """With a head limit under 16 KiB, a request line longer than the limit is the 414."""
    assert refusal(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n", max_head=1024) == TOO_LONG


def test_a_long_request_line_trickled_in_is_refused_once_it_is_too_long():
    """Read by read (the front's scanned offset), the 414 comes when the line passes the limit."""
    data = b"GET /" + b"a" * (17 * 1024)
    refused_at = None
    for cut in range(1024, len(data) + 1, 1024):
        try:
            parse_request(data[:cut], 64 * 1024, MAX_BODY, False, cut - 1024)
        except RequestError as e:
            assert e.args == TOO_LONG
            refused_at = cut
            break
    assert refused_at == 16 * 1024


def test_too_many_headers():
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * MAX_HEADERS + b"\r\n"
    too_many = (400, "bad_request", "The request has too many headers.")
    assert refusal(data, max_head=65536) == too_many


def test_the_body_limit_is_inclusive():
    parsed = parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n")
    assert parsed is not None
    assert parsed.content_length == 1000


def test_arguments_are_checked():
    with pytest.raises(TypeError):
        parse_request("GET / HTTP/1.1\r\n\r\n", 10, 10, False)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_request(b"", 10, 10)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        parse_request(b"", -1, 10, False)


CHUNKED = b"3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n"


def feed_in_pieces(body: bytes, sizes: list[int]) -> tuple[bytes, int, bool]:
    decoder = ChunkedBody()
    data, used, offset = b"", 0, 0
    for size in sizes:
        piece = body[offset : offset + size]
        offset += size
        got, n, done = decoder.feed(piece)
        data += got
        used += n
        if done:
            return data, used, True
        assert n == len(piece)
    return data, used, False


def test_chunked_body_in_one_piece_stops_at_its_end():
    decoder = ChunkedBody()
    assert decoder.feed(CHUNKED + b"GET") == (b"abc0123456789abcdef", len(CHUNKED), True)
    with pytest.raises(ValueError):
        decoder.feed(b"more")


@pytest.mark.parametrize("cut", range(1, len(CHUNKED)))
def test_chunked_body_split_anywhere(cut):
    assert feed_in_pieces(CHUNKED, [cut, len(CHUNKED)]) == (
        b"abc0123456789abcdef",
        len(CHUNKED),
        True,
    )


def test_chunked_body_a_byte_at_a_time():
    assert feed_in_pieces(CHUNKED, [1] * len(CHUNKED)) == (
        b"abc0123456789abcdef",
        len(CHUNKED),
        True,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"x\r\n",
        b"3\r\nabcd\r\n",
        b"3\nabc\r\n",
        b"3\r\nabc\n",
        b"-1\r\n",
        b"1000000000000000\r\n",
        b"3;\x01\r\n",
        b"0\r\nbad trailer\r\n",
        b"0\r\n: no name\r\n",
        b"0\r\nX-T: \x01\r\n",
    ],
)
def test_invalid_chunked_framing(body):
    with pytest.raises(ValueError):
        ChunkedBody().feed(body)


def test_random_bytes_never_break_the_parser():
    """
    Mutations of valid requests (a seeded, repeatable walk): every answer
    is None, a parsed head that starts the buffer, or a RequestError, and
    the parsed head's length never runs past the input.
    """
    rng = random.Random(20261206)
    seeds = [
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close, x\r\nX: y\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\nProxy-Connection: keep-alive\r\nContent-Length: 5\r\n\r\n",
    ]
    alphabet = b"\r\n :,;\t\x00\x7f\x80GETPOSTHTTP/1.01chunkedContent-LengthHost"
    for _ in range(20000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data) + 1)
            action = rng.randrange(3)
            if action == 0 and at < len(data):
                del data[at]
            elif action == 1:
                data.insert(at, rng.choice(alphabet))
            elif at < len(data):
                data[at] = rng.randrange(256)
        sample = bytes(data)
        try:
            parsed = parse(sample, trust=rng.random() < 0.5, max_head=rng.choice([16, 64, 8192]))
        except RequestError as e:
            status, kind, text = e.args
            assert (status, kind) in {
                (400, "bad_request"), (413, "too_large"), (414, "target_too_long"),
                (431, "head_too_large"), (501, "bad_request"),
            } and text  # fmt: skip
            continue
        if parsed is not None:
            assert 0 < parsed.head_len <= len(sample)
            assert parsed.worker_head.endswith(b"\r\n")
        decoder = ChunkedBody()
        try:
            got, used, _done = decoder.feed(sample)
        except ValueError:
            continue
        assert 0 <= used <= len(sample) and len(got) <= used


FIELD_REFUSED = [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F]
FIELD_ALLOWED = [0x09, 0x20, 0x21, 0x7E, 0x80, 0xFF]


@pytest.mark.parametrize("length", [1, 7, 8, 9, 15, 16, 17, 64])
def test_every_byte_of_a_long_header_value_is_checked(length):
    """
    Header values are scanned eight bytes at a time: a byte no field value
    may hold is refused wherever it stands, and every allowed byte passes.
    """
    for at in range(length):
        for byte in FIELD_REFUSED:
            value = bytearray(b"v" * length)
            value[at] = byte
            data = b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: " + bytes(value) + b"x\r\n\r\n"
            if byte in (0x0D, 0x0A):
                # A bare CR or LF inside a value is not a line end either.
                with pytest.raises(RequestError):
                    parse(data)
                continue
            assert refusal(data) == NOT_HTTP, (at, byte)
        for byte in FIELD_ALLOWED:
            value = bytearray(b"v" * length)
            value[at] = byte
            parsed = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: " + bytes(value) + b"x\r\n\r\n")
            assert parsed is not None, (at, byte)
            assert bytes(value).lstrip(b" \t") + b"x\r\n" in parsed.worker_head


@pytest.mark.parametrize("length", [1, 7, 8, 9, 16, 17, 64])
def test_every_byte_of_a_long_target_is_checked(length):
    """The target is scanned eight bytes at a time too: only VCHAR passes."""
    for at in range(length):
        for byte in [*range(0x00, 0x21), 0x7F, 0x80, 0xFF]:
            target = bytearray(b"/" + b"a" * length)
            target[1 + at] = byte
            with pytest.raises(RequestError):
                parse(b"GET " + bytes(target) + b"x HTTP/1.1\r\nHost: h\r\n\r\n")
        for byte in (0x21, 0x7E, ord("%")):
            target = bytearray(b"/" + b"a" * length)
            target[1 + at] = byte
            parsed = parse(b"GET " + bytes(target) + b" HTTP/1.1\r\nHost: h\r\n\r\n")
            assert parsed is not None and parsed.target == bytes(target), (at, byte)


def test_a_stripped_head_may_be_longer_than_the_worker_sent_it():
    """
    Headers go out as "Name: value"; a worker that wrote "Name:value" on
    hundreds of short lines gets a longer head back, whole.
    """
    head = b"HTTP/1.1 200 OK\r\n" + b"A:b\r\n" * 500 + b"Connection: x\r\nX:\r\n\r\n"
    parsed = parse_response(head, 65536)
    assert parsed is not None
    stripped = strip_response_head(head, parsed.head_len, True)
    assert stripped == b"HTTP/1.1 200 OK\r\n" + b"A: b\r\n" * 500


def test_response_heads():
    head = (
        b"HTTP/1.1 302 Found\r\nLocation: /x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close, X-A\r\nX-A: 1\r\nKeep-Alive: 5\r\nX-B:  2 \r\n\r\n5\r\n"
    )
    parsed = parse_response(head, 65536)
    assert parsed is not None
    assert response_fields(parsed) == (len(head) - 3, 302, -1, True, True, True)
    assert strip_response_head(head, parsed.head_len, False) == (
        b"HTTP/1.1 302 Found\r\nLocation: /x\r\nX-B: 2\r\n"
    )
    assert parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", 65536) is None
    assert response_fields(parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", 65536)) == (
        27,
        204,
        -1,
        False,
        False,
        False,
    )
    # HTTP/1.0 answers are never relayed as they are, and close unless kept alive.
    assert response_fields(
        parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 65536)
    ) == (
        38,
        200,
        0,
        False,
        True,
        True,
    )
    with pytest.raises(ValueError, match="response headers too large"):
        parse_response(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100, 64)
    with pytest.raises(ValueError, match="malformed response"):
        parse_response(b"HTTP/1.1 200 OK\r\nX : 1\r\n\r\n", 64)


@pytest.mark.parametrize("cut", range(1, len(INCOMPLETE)))
def test_scanned_bytes_are_not_searched_again_but_the_answer_is_the_same(cut):
    """Marking the first bytes as already scanned changes nothing in the answer."""
    assert parse(INCOMPLETE[:cut]) is None
    again = parse_request(bytearray(INCOMPLETE), MAX_HEAD, MAX_BODY, False, cut)
    assert request_fields(again) == request_fields(parse(INCOMPLETE))


def test_an_error_in_the_new_bytes_is_still_found():
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX: a"
    assert parse(data) is None
    with pytest.raises(RequestError):
        parse_request(data + b"\x01", MAX_HEAD, MAX_BODY, False, len(data))
    with pytest.raises(ValueError):
        parse_request(data, MAX_HEAD, MAX_BODY, False, len(data) + 1)


def _stub_fields(class_name: str) -> list[str]:
    """The properties the type stub (_http1.pyi) declares on C{class_name}, in order."""
    import ast
    from pathlib import Path

    import clickpass.balancer

    stub = Path(clickpass.balancer.__file__).parent / "_http1.pyi"
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return [item.name for item in node.body if isinstance(item, ast.FunctionDef)]
    raise AssertionError(f"_http1.pyi declares no {class_name}")


@pytest.mark.parametrize("name", ["RequestHead", "ResponseHead"])
def test_the_heads_fields_are_named_as_the_stub_says(name: str) -> None:
    """
    The parser's answers are named structures whose fields, in order, are
    the properties the type stub declares: the stub cannot drift from the C.
    Their fields are read-only, and Python code cannot make one.
    """
    import clickpass.balancer._http1 as http1

    kind = getattr(http1, name)
    members = [
        key for key, value in vars(kind).items() if type(value).__name__ == "member_descriptor"
    ]
    assert members == _stub_fields(name)
    with pytest.raises(TypeError):
        kind()


def test_a_request_head_is_read_by_name() -> None:
    """Each field of a parsed request head has its name."""
    parsed = parse(
        b"POST /a?b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Forwarded-For: 1.1.1.1\r\n"
        b'If-None-Match: "e"\r\nExpect: 100-continue\r\n\r\n',
        trust=True,
    )
    assert parsed is not None
    assert (parsed.method, parsed.target, parsed.host) == (b"POST", b"/a?b", b"h")
    assert parsed.worker_head.startswith(b"POST /a?b HTTP/1.1\r\nHost: h\r\n")
    assert (parsed.http10, parsed.keep_alive, parsed.chunked) == (False, True, False)
    assert (parsed.content_length, parsed.expect_continue) == (3, True)
    assert (parsed.forwarded_for, parsed.if_none_match) == (b"1.1.1.1", b'"e"')
    assert parsed.head_len == len(parsed.worker_head) + len(b"X-Forwarded-For: 1.1.1.1\r\n") + (
        len(b"Expect: 100-continue\r\n\r\n")
    )
    with pytest.raises(AttributeError):
        setattr(parsed, "method", b"GET")  # noqa: B010 - the setter that is not there
    assert repr(parsed).startswith("RequestHead(head_len=")


def test_a_response_head_is_read_by_name() -> None:
    """Each field of a parsed response head has its name."""
    head = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    parsed = parse_response(head + b"0\r\n\r\n", MAX_HEAD)
    assert parsed is not None
    assert (parsed.head_len, parsed.status, parsed.content_length) == (len(head), 404, -1)
    assert (parsed.chunked, parsed.close, parsed.hop) == (True, True, True)
