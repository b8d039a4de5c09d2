/*
 * Strict HTTP/1.1 parsing for the relay engine; see http1.h.
 */
#include "http1.h"

#include <string.h>

/* Character classes (RFC 9110 5.6.2, 5.5). */
#define C_TCHAR 1  /* token */
#define C_VCHAR 2  /* visible ASCII: request targets */
#define C_FIELD 4  /* field-value: VCHAR, obs-text, SP, HTAB */
#define C_HEX 8

static unsigned char classes[256];
static int classes_ready;

static void init_classes(void)
{
    if (classes_ready)
        return;
    for (int c = 0; c < 256; c++) {
        unsigned char k = 0;
        if (c >= 0x21 && c <= 0x7e)
            k |= C_VCHAR | C_FIELD;
        if (c >= 0x80 || c == ' ' || c == '\t')
            k |= C_FIELD;
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c && strchr("!#$%&'*+-.^_`|~", c)))
            k |= C_TCHAR;
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))
            k |= C_HEX;
        classes[c] = k;
    }
    classes_ready = 1;
}

#define IS(c, k) (classes[(unsigned char)(c)] & (k))

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/*
 * Word-at-a-time scans for the long runs of a head (request targets, header
 * values such as cookies and redirect URLs): eight bytes are tested in a few
 * instructions, and the byte loop takes over at the first word that may hold
 * a byte the class does not allow, so the result is exactly the byte loop's.
 * (x - n) & ~x & 0x80.. is non-zero exactly when a byte of x is below n.
 */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static inline uint64_t load8(const char *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

static inline uint64_t below(uint64_t w, unsigned n)
{
    return (w - ONES * n) & ~w & HIGHS;
}

static inline uint64_t has_del(uint64_t w)
{
    uint64_t x = w ^ (ONES * 0x7f);
    return (x - ONES) & ~x & HIGHS;
}

/* The end of a run of field-value bytes (VCHAR, obs-text, SP, HTAB) from pos. */
static size_t scan_field(const char *buf, size_t pos, size_t end)
{
    while (end - pos >= 8) {
        uint64_t w = load8(buf + pos);
        if (below(w, 0x20) | has_del(w))
            break;
        pos += 8;
    }
    while (pos < end && IS(buf[pos], C_FIELD))
        pos++;
    return pos;
}

/* The end of a run of VCHAR (request-target) bytes from pos. */
static size_t scan_vchar(const char *buf, size_t pos, size_t end)
{
    while (end - pos >= 8) {
        uint64_t w = load8(buf + pos);
        if (below(w, 0x21) | has_del(w) | (w & HIGHS))
            break;
        pos += 8;
    }
    while (pos < end && IS(buf[pos], C_VCHAR))
        pos++;
    return pos;
}

int http1_ieq(span s, const char *low, size_t n)
{
    if (s.n != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s.p[i]) != (unsigned char)low[i])
            return 0;
    return 1;
}

#define IEQ(s, lit) http1_ieq((s), (lit), sizeof(lit) - 1)

size_t http1_head_end(const char *buf, size_t len, size_t from)
{
    if (len < 4)
        return 0;
    size_t i = from;
    while (i + 3 < len) {
        const char *cr = memchr(buf + i, '\r', len - 3 - i);
        if (cr == NULL)
            return 0;
        i = (size_t)(cr - buf);
        if (buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n')
            return i + 4;
        i++;
    }
    return 0;
}

static int classify(span name)
{
    switch (name.n) {
    case 2:
        if (IEQ(name, "te"))
            return H_HOP;
        break;
    case 4:
        if (IEQ(name, "host"))
            return H_HOST;
        break;
    case 6:
        if (IEQ(name, "expect"))
            return H_EXPECT;
        break;
    case 7:
        if (IEQ(name, "upgrade"))
            return H_UPGRADE;
        if (IEQ(name, "trailer"))
            return H_HOP;
        break;
    case 9:
        if (IEQ(name, "forwarded") || IEQ(name, "x-real-ip"))
            return H_FORWARDED;
        break;
    case 10:
        if (IEQ(name, "connection"))
            return H_CONNECTION;
        if (IEQ(name, "keep-alive"))
            return H_HOP;
        break;
    case 13:
        if (IEQ(name, "if-none-match"))
            return H_IF_NONE_MATCH;
        break;
    case 14:
        if (IEQ(name, "content-length"))
            return H_CONTENT_LENGTH;
        break;
    case 15:
        if (IEQ(name, "x-forwarded-for"))
            return H_XFF;
        break;
    case 16:
        if (IEQ(name, "proxy-connection"))
            return H_PROXY_CONNECTION;
        if (IEQ(name, "x-forwarded-host"))
            return H_FORWARDED;
        break;
    case 17:
        if (IEQ(name, "transfer-encoding"))
            return H_TRANSFER_ENCODING;
        if (IEQ(name, "x-forwarded-proto"))
            return H_FORWARDED;
        break;
    case 18:
        if (IEQ(name, "proxy-authenticate"))
            return H_HOP;
        if (IEQ(name, "x-clickpass-client"))
            return H_OWN;
        break;
    case 19:
        if (IEQ(name, "proxy-authorization"))
            return H_HOP;
        break;
    }
    return H_OTHER;
}

static const char NOT_HTTP[] = "The request is not valid HTTP/1.1.";

static int fail(http1_request *req, int status, const char *why)
{
    req->status = status;
    req->why = why;
    return HTTP1_ERROR;
}

/* Parse a decimal Content-Length; -1 when it is not 1*DIGIT or too long. */
static int64_t parse_length(span v)
{
    if (v.n == 0 || v.n > 18)
        return -1;
    int64_t n = 0;
    for (size_t i = 0; i < v.n; i++) {
        unsigned char c = (unsigned char)v.p[i];
        if (c < '0' || c > '9')
            return -1;
        n = n * 10 + (c - '0');
    }
    return n;
}

/*
 * Split a Connection value into its tokens; calls back for each. Returns 0,
 * or -1 when an element is not a token.
 */
typedef int (*token_cb)(void *ctx, span token);

static int each_token(span v, token_cb cb, void *ctx)
{
    size_t i = 0;
    while (i <= v.n) {
        size_t start = i;
        while (i < v.n && v.p[i] != ',')
            i++;
        size_t a = start, b = i;
        while (a < b && (v.p[a] == ' ' || v.p[a] == '\t'))
            a++;
        while (b > a && (v.p[b - 1] == ' ' || v.p[b - 1] == '\t'))
            b--;
        if (b > a) {
            for (size_t k = a; k < b; k++)
                if (!IS(v.p[k], C_TCHAR))
                    return -1;
            span t = {v.p + a, b - a};
            if (cb(ctx, t) < 0)
                return -1;
        }
        i++;
    }
    return 0;
}

typedef struct {
    int close, keep_alive, upgrade;
    unsigned nnamed;
    span named[HTTP1_MAX_NAMED];
} conn_tokens;

static int on_conn_token(void *ctx, span t)
{
    conn_tokens *ct = ctx;
    if (IEQ(t, "close"))
        ct->close = 1;
    else if (IEQ(t, "keep-alive"))
        ct->keep_alive = 1;
    else {
        if (IEQ(t, "upgrade"))
            ct->upgrade = 1;
        if (ct->nnamed >= HTTP1_MAX_NAMED)
            return -1;
        ct->named[ct->nnamed++] = t;
    }
    return 0;
}

static int span_ieq(span a, span b)
{
    if (a.n != b.n)
        return 0;
    for (size_t i = 0; i < a.n; i++)
        if (lower((unsigned char)a.p[i]) != lower((unsigned char)b.p[i]))
            return 0;
    return 1;
}

/*
 * Parse header lines from buf[pos] up to and including the empty line that
 * ends the head at end. Calls back for each. Returns 0 or -1.
 */
typedef int (*header_cb)(void *ctx, span name, span value);

static int each_header(const char *buf, size_t pos, size_t end, header_cb cb, void *ctx)
{
    while (pos < end) {
        if (buf[pos] == '\r') {
            /* The empty line. */
            return (pos + 2 == end && buf[pos + 1] == '\n') ? 0 : -1;
        }
        size_t name_start = pos;
        while (pos < end && IS(buf[pos], C_TCHAR))
            pos++;
        if (pos == name_start || pos >= end || buf[pos] != ':')
            return -1; /* no name, whitespace before ':', obs-fold, bad byte */
        span name = {buf + name_start, pos - name_start};
        pos++;
        while (pos < end && (buf[pos] == ' ' || buf[pos] == '\t'))
            pos++;
        size_t value_start = pos;
        pos = scan_field(buf, pos, end);
        if (pos + 1 >= end || buf[pos] != '\r' || buf[pos + 1] != '\n')
            return -1; /* a control byte, a bare CR or LF */
        size_t value_end = pos;
        while (value_end > value_start &&
               (buf[value_end - 1] == ' ' || buf[value_end - 1] == '\t'))
            value_end--;
        span value = {buf + value_start, value_end - value_start};
        if (cb(ctx, name, value) < 0)
            return -1;
        pos += 2;
    }
    return -1;
}

typedef struct {
    http1_request *req;
    int hosts, lengths, codings, expects;
    int upgrade_header;
    span length, coding, expect;
    conn_tokens tokens;
    int bad_connection;
} req_scan;

static int on_request_header(void *ctx, span name, span value)
{
    req_scan *s = ctx;
    http1_request *req = s->req;
    if (req->nheaders >= HTTP1_MAX_HEADERS)
        return -1;
    http1_header *h = &req->headers[req->nheaders++];
    h->name = name;
    h->value = value;
    h->named = 0;
    h->kind = (uint8_t)classify(name);
    switch (h->kind) {
    case H_HOST:
        s->hosts++;
        req->host = value;
        break;
    case H_CONTENT_LENGTH:
        s->lengths++;
        s->length = value;
        break;
    case H_TRANSFER_ENCODING:
        s->codings++;
        s->coding = value;
        break;
    case H_EXPECT:
        s->expects++;
        s->expect = value;
        break;
    case H_UPGRADE:
        s->upgrade_header = 1;
        break;
    case H_CONNECTION:
    case H_PROXY_CONNECTION:
        if (each_token(value, on_conn_token, &s->tokens) < 0)
            s->bad_connection = 1;
        break;
    case H_IF_NONE_MATCH:
        req->if_none_match = value;
        break;
    }
    return 0;
}

static int method_is(span m, const char *s)
{
    size_t n = strlen(s);
    return m.n == n && memcmp(m.p, s, n) == 0;
}

int http1_parse_request(const char *buf, size_t len, size_t scanned, size_t max_head,
                        int64_t max_body, http1_request *req)
{
    init_classes();
    req->too_large = 0;
    size_t pos = 0;
    /* Empty lines before the request line are ignored (RFC 9112 2.2). */
    while (pos + 1 < len && buf[pos] == '\r' && buf[pos + 1] == '\n')
        pos += 2;
    if (pos < len && buf[pos] == '\n')
        return fail(req, 400, NOT_HTTP);
    /* The first `scanned` bytes were seen incomplete before: only the new
     * ones are searched (the empty line may begin up to three bytes back)
     * and checked, so a head trickled in byte by byte costs linear time. */
    size_t from = scanned > pos + 3 ? scanned - 3 : pos;
    size_t end = http1_head_end(buf, len, from);
    /* The request line, LF included, at most line_max bytes (RFC 9112 3:
     * 414): it is not when line_max bytes are in and none is its LF. That
     * is looked at once, when they are first in (or the head is whole),
     * not again on each new read. */
    size_t line_max = max_head < HTTP1_MAX_REQUEST_LINE ? max_head : HTTP1_MAX_REQUEST_LINE;
    size_t have = (end ? end : len) - pos;
    if (have >= line_max && (end || scanned < pos + line_max) &&
        memchr(buf + pos, '\n', line_max) == NULL)
        return fail(req, 414, "The request target is too long.");
    if (end == 0) {
        /* Not complete: refuse early what can never become a request: a
         * control byte, or a line that ends in a bare LF or CR (a head
         * written with bare LFs never holds the CRLF CRLF that ends it,
         * and would otherwise wait for header_timeout). The last byte seen
         * before is looked at again: it may be a CR whose LF is new. */
        for (size_t i = scanned > pos ? scanned - 1 : pos; i < len; i++) {
            unsigned char c = (unsigned char)buf[i];
            if (c >= 0x20 || c == '\t')
                continue;
            if (c == '\n') {
                if (i == 0 || buf[i - 1] != '\r')
                    return fail(req, 400, NOT_HTTP);
            } else if (c == '\r') {
                if (i + 1 < len && buf[i + 1] != '\n')
                    return fail(req, 400, NOT_HTTP);
            } else {
                return fail(req, 400, NOT_HTTP);
            }
        }
        if (len > max_head)
            return fail(req, 431, "The request headers are too large.");
        return HTTP1_INCOMPLETE;
    }
    if (end - pos > max_head)
        return fail(req, 431, "The request headers are too large.");
    req->skipped = pos;
    req->head_len = end;
    req->nheaders = 0;
    req->host.p = NULL;
    req->host.n = 0;
    req->if_none_match.p = NULL;
    req->if_none_match.n = 0;
    req->content_length = -1;
    req->chunked = 0;
    req->expect_continue = 0;

    /* The request line: method SP target SP version CRLF. */
    size_t m0 = pos;
    while (pos < end && IS(buf[pos], C_TCHAR))
        pos++;
    if (pos == m0 || buf[pos] != ' ')
        return fail(req, 400, NOT_HTTP);
    req->method.p = buf + m0;
    req->method.n = pos - m0;
    pos++;
    size_t t0 = pos;
    pos = scan_vchar(buf, pos, end);
    if (pos == t0 || buf[pos] != ' ')
        return fail(req, 400, NOT_HTTP);
    req->target.p = buf + t0;
    req->target.n = pos - t0;
    pos++;
    if (end - pos < 10 || memcmp(buf + pos, "HTTP/1.", 7) != 0 ||
        (buf[pos + 7] != '1' && buf[pos + 7] != '0') || buf[pos + 8] != '\r' ||
        buf[pos + 9] != '\n')
        return fail(req, 400, NOT_HTTP);
    req->http10 = buf[pos + 7] == '0';
    pos += 10;

    req_scan s;
    memset(&s, 0, sizeof s);
    s.req = req;
    if (each_header(buf, pos, end, on_request_header, &s) < 0) {
        if (req->nheaders >= HTTP1_MAX_HEADERS)
            return fail(req, 400, "The request has too many headers.");
        return fail(req, 400, NOT_HTTP);
    }
    if (s.bad_connection)
        return fail(req, 400, NOT_HTTP);
    if (req->target.p[0] != '/')
        return fail(req, 400, "Only origin-form request targets are accepted.");
    if (s.upgrade_header && s.tokens.upgrade)
        return fail(req, 501, "Protocol upgrades are not supported here.");
    if (s.lengths > 1)
        return fail(req, 400, NOT_HTTP);
    if (s.codings > 1 || (s.codings && !IEQ(s.coding, "chunked")))
        return fail(req, 400, "Unsupported Transfer-Encoding.");
    if (s.codings && s.lengths)
        return fail(req, 400, "Content-Length together with Transfer-Encoding.");
    if (s.codings && req->http10)
        return fail(req, 400, "Unsupported Transfer-Encoding.");
    if (s.expects > 1 || (s.expects && !IEQ(s.expect, "100-continue")))
        return fail(req, 400, "Unsupported Expect header.");
    if (s.lengths) {
        req->content_length = parse_length(s.length);
        if (req->content_length < 0)
            return fail(req, 400, NOT_HTTP);
        if (req->content_length > max_body) {
            req->too_large = 1;
            return fail(req, 413, "The request body is too large.");
        }
    }
    if (s.hosts > 1)
        return fail(req, 400, NOT_HTTP);
    if (!req->http10 && (s.hosts == 0 || req->host.n == 0))
        return fail(req, 400, "HTTP/1.1 requests need a Host header.");
    req->chunked = s.codings == 1;
    req->expect_continue = s.expects == 1;
    req->keep_alive = req->http10 ? s.tokens.keep_alive : !s.tokens.close;
    req->head_method = method_is(req->method, "HEAD");
    req->idempotent = req->head_method || method_is(req->method, "GET") ||
                      method_is(req->method, "OPTIONS") || method_is(req->method, "TRACE") ||
                      method_is(req->method, "PUT") || method_is(req->method, "DELETE");
    /* Headers the Connection header names are hop-by-hop too; never the
     * framing or the Host, which the front itself relies on. */
    for (unsigned t = 0; t < s.tokens.nnamed; t++) {
        for (unsigned i = 0; i < req->nheaders; i++) {
            http1_header *h = &req->headers[i];
            if (h->kind == H_HOST || h->kind == H_CONTENT_LENGTH ||
                h->kind == H_TRANSFER_ENCODING)
                continue;
            if (span_ieq(h->name, s.tokens.named[t]))
                h->named = 1;
        }
    }
    return HTTP1_OK;
}

/* Responses. */

typedef struct {
    http1_response *res;
    int lengths, codings;
    span length, coding;
    conn_tokens tokens;
    int bad;
} res_scan;

static int on_response_header(void *ctx, span name, span value)
{
    res_scan *s = ctx;
    switch (classify(name)) {
    case H_CONTENT_LENGTH:
        s->lengths++;
        s->length = value;
        break;
    case H_TRANSFER_ENCODING:
        s->codings++;
        s->coding = value;
        break;
    case H_CONNECTION:
        s->res->hop = 1;
        if (each_token(value, on_conn_token, &s->tokens) < 0)
            s->bad = 1;
        break;
    case H_HOP:
    case H_UPGRADE:
    case H_PROXY_CONNECTION:
        s->res->hop = 1;
        break;
    }
    return 0;
}

int http1_parse_response(const char *buf, size_t len, size_t max_head, http1_response *res)
{
    init_classes();
    size_t end = http1_head_end(buf, len, 0);
    if (end == 0)
        return len > max_head ? HTTP1_ERROR : HTTP1_INCOMPLETE;
    if (end > max_head)
        return HTTP1_ERROR;
    memset(res, 0, sizeof *res);
    res->head_len = end;
    res->content_length = -1;
    /* HTTP/1.x SP 3DIGIT [SP reason] CRLF */
    if (end < 14 || memcmp(buf, "HTTP/1.", 7) != 0 || (buf[7] != '0' && buf[7] != '1') ||
        buf[8] != ' ')
        return HTTP1_ERROR;
    int http10 = buf[7] == '0';
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return HTTP1_ERROR;
        status = status * 10 + (buf[i] - '0');
    }
    if (status < 100)
        return HTTP1_ERROR;
    res->status = status;
    size_t pos = 12;
    if (buf[pos] == ' ') {
        pos++;
        while (pos < end && IS(buf[pos], C_FIELD))
            pos++;
    }
    if (pos + 1 >= end || buf[pos] != '\r' || buf[pos + 1] != '\n')
        return HTTP1_ERROR;
    pos += 2;
    res_scan s;
    memset(&s, 0, sizeof s);
    s.res = res;
    if (each_header(buf, pos, end, on_response_header, &s) < 0 || s.bad)
        return HTTP1_ERROR;
    if (s.lengths > 1 || s.codings > 1 || (s.lengths && s.codings))
        return HTTP1_ERROR;
    if (s.lengths) {
        res->content_length = parse_length(s.length);
        if (res->content_length < 0)
            return HTTP1_ERROR;
    }
    if (s.codings) {
        if (!IEQ(s.coding, "chunked"))
            return HTTP1_ERROR;
        res->chunked = 1;
    }
    res->framing_headers = s.lengths + s.codings;
    res->close = http10 ? !s.tokens.keep_alive : s.tokens.close;
    if (http10)
        res->hop = 1; /* relayed re-serialised, never as it is */
    return HTTP1_OK;
}

typedef struct {
    conn_tokens tokens;
} strip_scan;

static int collect_connection(void *ctx, span name, span value)
{
    strip_scan *s = ctx;
    if (classify(name) == H_CONNECTION)
        each_token(value, on_conn_token, &s->tokens);
    return 0;
}

typedef struct {
    strip_scan *scan;
    int keep_length;
    char *out;
    size_t n;
} strip_out;

static int copy_wanted(void *ctx, span name, span value)
{
    strip_out *o = ctx;
    int kind = classify(name);
    if (kind == H_CONNECTION || kind == H_HOP || kind == H_UPGRADE || kind == H_PROXY_CONNECTION ||
        kind == H_TRANSFER_ENCODING || (kind == H_CONTENT_LENGTH && !o->keep_length))
        return 0;
    for (unsigned t = 0; t < o->scan->tokens.nnamed; t++)
        if (kind != H_CONTENT_LENGTH && span_ieq(name, o->scan->tokens.named[t]))
            return 0;
    memcpy(o->out + o->n, name.p, name.n);
    o->n += name.n;
    memcpy(o->out + o->n, ": ", 2);
    o->n += 2;
    memcpy(o->out + o->n, value.p, value.n);
    o->n += value.n;
    memcpy(o->out + o->n, "\r\n", 2);
    o->n += 2;
    return 0;
}

size_t http1_strip_response_head(const char *head, size_t head_len, int keep_length, char *out)
{
    init_classes();
    const char *eol = memchr(head, '\n', head_len);
    if (eol == NULL)
        return 0;
    size_t first = (size_t)(eol - head) + 1;
    strip_scan scan;
    memset(&scan, 0, sizeof scan);
    each_header(head, first, head_len, collect_connection, &scan);
    /* The status line, as the worker sent it (HTTP/1.1 from twisted.web). */
    memcpy(out, head, first);
    strip_out o = {&scan, keep_length, out, first};
    each_header(head, first, head_len, copy_wanted, &o);
    return o.n;
}

/* Chunked bodies. */

enum {
    K_SIZE0 = 0, /* first hex digit */
    K_SIZE,      /* more hex digits */
    K_SIZE_WS,   /* whitespace before an extension */
    K_EXT,
    K_SIZE_LF,
    K_DATA,
    K_DATA_CR,
    K_DATA_LF,
    K_TRAILER0, /* start of a trailer line, or the final CRLF */
    K_TRAILER,       /* a trailer field's name */
    K_TRAILER_VALUE, /* after its colon */
    K_TRAILER_LF,
    K_END_LF,
    K_DONE,
};

#define MAX_CHUNK_LINE 4096
#define MAX_TRAILERS (16 * 1024)

void http1_chunks_init(http1_chunks *c)
{
    memset(c, 0, sizeof *c);
}

static inline int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    return c - 'a' + 10;
}

long http1_chunks_feed(http1_chunks *c, const char *p, size_t n, http1_data_cb on_data, void *ctx)
{
    init_classes();
    size_t i = 0;
    while (i < n) {
        unsigned char b = (unsigned char)p[i];
        switch (c->state) {
        case K_SIZE0:
            if (!IS(b, C_HEX))
                return -1;
            c->size = (uint64_t)hexval(b);
            c->digits = 1;
            c->state = K_SIZE;
            i++;
            break;
        case K_SIZE:
            if (IS(b, C_HEX)) {
                if (++c->digits > 15)
                    return -1;
                c->size = c->size * 16 + (uint64_t)hexval(b);
                i++;
            } else if (b == '\r') {
                c->state = K_SIZE_LF;
                i++;
            } else if (b == ';') {
                c->state = K_EXT;
                c->line = 0;
                i++;
            } else if (b == ' ' || b == '\t') {
                c->state = K_SIZE_WS;
                i++;
            } else {
                return -1;
            }
            break;
        case K_SIZE_WS:
            if (b == ' ' || b == '\t') {
                i++;
            } else if (b == ';') {
                c->state = K_EXT;
                c->line = 0;
                i++;
            } else {
                return -1;
            }
            break;
        case K_EXT:
            if (b == '\r') {
                c->state = K_SIZE_LF;
            } else if (!IS(b, C_FIELD) || ++c->line > MAX_CHUNK_LINE) {
                return -1;
            }
            i++;
            break;
        case K_SIZE_LF:
            if (b != '\n')
                return -1;
            i++;
            c->state = c->size ? K_DATA : K_TRAILER0;
            break;
        case K_DATA: {
            size_t take = n - i;
            if ((uint64_t)take > c->size)
                take = (size_t)c->size;
            if (on_data != NULL)
                on_data(ctx, p + i, take);
            c->size -= take;
            i += take;
            if (c->size == 0)
                c->state = K_DATA_CR;
            break;
        }
        case K_DATA_CR:
            if (b != '\r')
                return -1;
            c->state = K_DATA_LF;
            i++;
            break;
        case K_DATA_LF:
            if (b != '\n')
                return -1;
            c->state = K_SIZE0;
            i++;
            break;
        case K_TRAILER0:
            if (b == '\r') {
                c->state = K_END_LF;
            } else if (IS(b, C_TCHAR)) {
                c->state = K_TRAILER;
                c->line = 1;
            } else {
                return -1;
            }
            if (++c->trailers > MAX_TRAILERS)
                return -1;
            i++;
            break;
        case K_TRAILER:
            if (b == ':') {
                c->state = K_TRAILER_VALUE;
            } else if (!IS(b, C_TCHAR) || ++c->line > MAX_CHUNK_LINE) {
                return -1;
            }
            if (++c->trailers > MAX_TRAILERS)
                return -1;
            i++;
            break;
        case K_TRAILER_VALUE:
            if (b == '\r') {
                c->state = K_TRAILER_LF;
            } else if (!IS(b, C_FIELD) || ++c->line > MAX_CHUNK_LINE) {
                return -1;
            }
            if (++c->trailers > MAX_TRAILERS)
                return -1;
            i++;
            break;
        case K_TRAILER_LF:
            if (b != '\n')
                return -1;
            c->state = K_TRAILER0;
            i++;
            break;
        case K_END_LF:
            if (b != '\n')
                return -1;
            c->state = K_DONE;
            c->done = 1;
            return (long)(i + 1);
        case K_DONE:
            return (long)i;
        }
    }
    return (long)i;
}
