/*
 * libFuzzer target for http1.c (tests/integration/balancer/test_fuzz_http1.py
 * builds it with AddressSanitizer and UndefinedBehaviorSanitizer). Every
 * input goes through each parser from an exact-size heap copy, so a read
 * one byte past the input is caught, and what the parsers return is checked
 * against the input: no span outside it, no head longer than it, no output
 * past the room the header promises. Not part of the extension.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http1.h"

#define MAX_HEAD 2048
#define MAX_BODY 4096

static void check(int ok)
{
    if (!ok)
        __builtin_trap();
}

static void inside(span s, const char *buf, size_t len)
{
    check(s.n == 0 || (s.p >= buf && s.p + s.n <= buf + len));
}

typedef struct {
    size_t bytes;
} counted;

static void count(void *ctx, const char *p, size_t n)
{
    counted *c = ctx;
    /* Touch every byte handed out: ASan checks they are in the input. */
    volatile char sink = 0;
    for (size_t i = 0; i < n; i++)
        sink ^= p[i];
    (void)sink;
    c->bytes += n;
}

static void requests(const char *buf, size_t len, size_t cut)
{
    http1_request req;
    int r = http1_parse_request(buf, len, 0, MAX_HEAD, MAX_BODY, &req);
    /* The same bytes in two reads: when the first part alone is incomplete,
     * parsing the whole with it marked as scanned gives the same answer. */
    http1_request again;
    if (http1_parse_request(buf, cut, 0, MAX_HEAD, MAX_BODY, &again) == HTTP1_INCOMPLETE) {
        int r2 = http1_parse_request(buf, len, cut, MAX_HEAD, MAX_BODY, &again);
        check(r2 == r);
        if (r == HTTP1_OK)
            check(again.head_len == req.head_len && again.nheaders == req.nheaders);
        if (r == HTTP1_ERROR)
            check(again.status == req.status && again.why == req.why);
    }
    if (r == HTTP1_ERROR) {
        check(req.status == 400 || req.status == 413 || req.status == 414 || req.status == 431 ||
              req.status == 501);
        check(req.why != NULL && req.why[0] != '\0');
        check(req.too_large == 0 || req.status == 413);
        return;
    }
    if (r != HTTP1_OK) {
        check(r == HTTP1_INCOMPLETE && len <= MAX_HEAD + 4);
        return;
    }
    check(req.head_len > 0 && req.head_len <= len);
    check(req.head_len - req.skipped <= MAX_HEAD);
    check(req.nheaders <= HTTP1_MAX_HEADERS);
    check(req.content_length >= -1 && req.content_length <= MAX_BODY);
    check(!(req.chunked && req.content_length >= 0));
    check(req.target.n > 0 && req.target.p[0] == '/');
    inside(req.method, buf, req.head_len);
    inside(req.target, buf, req.head_len);
    inside(req.host, buf, req.head_len);
    inside(req.if_none_match, buf, req.head_len);
    for (unsigned i = 0; i < req.nheaders; i++) {
        inside(req.headers[i].name, buf, req.head_len);
        inside(req.headers[i].value, buf, req.head_len);
        check(req.headers[i].name.n > 0);
    }
}

static void responses(const char *buf, size_t len, int keep_length)
{
    http1_response res;
    int r = http1_parse_response(buf, len, MAX_HEAD, &res);
    if (r != HTTP1_OK)
        return;
    check(res.head_len > 0 && res.head_len <= len && res.head_len <= MAX_HEAD);
    check(res.status >= 100 && res.status <= 999);
    size_t room = HTTP1_STRIP_ROOM(res.head_len);
    char *out = malloc(room);
    check(out != NULL);
    size_t n = http1_strip_response_head(buf, res.head_len, keep_length, out);
    check(n <= room);
    free(out);
}

static void chunks(const char *buf, size_t len, size_t cut)
{
    http1_chunks c;
    http1_chunks_init(&c);
    counted data = {0};
    size_t used = 0;
    long a = http1_chunks_feed(&c, buf, cut, count, &data);
    if (a < 0)
        return;
    check((size_t)a <= cut);
    used += (size_t)a;
    if (!c.done) {
        check((size_t)a == cut);
        long b = http1_chunks_feed(&c, buf + cut, len - cut, count, &data);
        if (b < 0)
            return;
        check((size_t)b <= len - cut);
        used += (size_t)b;
    }
    check(data.bytes <= used);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy: the input's own buffer may have slack after it. */
    char *buf = malloc(size ? size : 1);
    check(buf != NULL);
    memcpy(buf, data, size);
    size_t cut = size ? (size_t)data[0] % (size + 1) : 0;
    requests(buf, size, cut);
    responses(buf, size, size & 1);
    chunks(buf, size, cut);
    free(buf);
    return 0;
}
