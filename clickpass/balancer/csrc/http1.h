/*
 * HTTP/1.1 message heads and chunked bodies, parsed strictly for the front
 * (proxy.py, through _http1module.c). Pure functions over byte spans: no
 * I/O, no allocation, no state but a one-time table, so that they can be
 * tested and fuzzed on their own.
 *
 * The request parser accepts only what the front passes on unchanged in
 * meaning: origin-form targets, HTTP/1.0 and 1.1, CRLF line ends, token
 * header names, no obs-fold, at most one Content-Length (digits only), at
 * most one Transfer-Encoding (exactly "chunked") and never both. Anything
 * else is an error with the status and the sentence the client gets.
 */
#ifndef CLICKPASS_HTTP1_H
#define CLICKPASS_HTTP1_H

#include <stddef.h>
#include <stdint.h>

#define HTTP1_MAX_HEADERS 128
/* The longest request line the front takes (with its CRLF); longer: 414.
 * A worker (Twisted's HTTPChannel) refuses longer lines as well. */
#define HTTP1_MAX_REQUEST_LINE (16 * 1024)
#define HTTP1_MAX_NAMED 32

typedef struct {
    const char *p;
    size_t n;
} span;

/* What a request header is to the front (http1_request.headers[i].kind). */
enum header_kind {
    H_OTHER = 0,
    H_HOST,
    H_CONTENT_LENGTH,
    H_TRANSFER_ENCODING,
    H_CONNECTION,
    H_EXPECT,
    H_UPGRADE,
    H_HOP,           /* keep-alive, proxy-*, te, trailer: dropped */
    H_FORWARDED,     /* x-forwarded-proto/-host, forwarded, x-real-ip */
    H_XFF,           /* x-forwarded-for */
    H_IF_NONE_MATCH,
    H_PROXY_CONNECTION, /* dropped; its keep-alive/close count, as in llhttp */
    H_OWN,           /* x-clickpass-client: the front's own, never a client's */
};

typedef struct {
    span name;
    span value; /* without leading and trailing whitespace */
    uint8_t kind;
    uint8_t named; /* named in a Connection header: dropped */
} http1_header;

enum {
    HTTP1_INCOMPLETE = 0,
    HTTP1_OK = 1,
    HTTP1_ERROR = -1,
};

typedef struct {
    /* On HTTP1_ERROR: the status (400, 413, 501) and one sentence. */
    int status;
    const char *why;
    int too_large; /* the error is about size (counted as too_large) */

    size_t head_len; /* bytes of the head, through its empty line */
    size_t skipped;  /* empty lines before the request line (RFC 9112 2.2) */
    span method;
    span target;
    span host;
    int http10;
    int keep_alive;
    int64_t content_length; /* -1 when absent */
    int chunked;
    int expect_continue;
    int head_method; /* HEAD: the response has no body */
    int idempotent;  /* GET HEAD OPTIONS TRACE PUT DELETE */
    span if_none_match;
    unsigned nheaders;
    http1_header headers[HTTP1_MAX_HEADERS];
} http1_request;

/*
 * Parse the request head at the start of buf[0:len]. Returns HTTP1_OK
 * (req filled, head_len set), HTTP1_INCOMPLETE (no empty line yet, and
 * len <= max_head) or HTTP1_ERROR (req->status and req->why set).
 * max_body is the largest Content-Length accepted (a larger one is 413).
 * scanned: how many bytes at the start of buf an earlier call found
 * incomplete (0 for new bytes); only the rest is searched and checked.
 */
int http1_parse_request(const char *buf, size_t len, size_t scanned, size_t max_head,
                        int64_t max_body, http1_request *req);

/* Where the head ends: the offset just past "\r\n\r\n", or 0. */
size_t http1_head_end(const char *buf, size_t len, size_t from);

typedef struct {
    int status;
    size_t head_len;
    int64_t content_length; /* -1 when absent */
    int chunked;            /* Transfer-Encoding ends in chunked */
    int other_coding;       /* a Transfer-Encoding that is not just chunked */
    int close;              /* Connection: close, or HTTP/1.0 without keep-alive */
    int hop;                /* a hop-by-hop header other than the framing itself */
    int framing_headers;    /* Content-Length and Transfer-Encoding lines seen */
} http1_response;

/* Parse a worker's response head; HTTP1_OK, HTTP1_INCOMPLETE or HTTP1_ERROR. */
int http1_parse_response(const char *buf, size_t len, size_t max_head, http1_response *res);

/*
 * Write the response head buf[0:head_len] without its hop-by-hop lines (and
 * those its Connection header names), without its final empty line, to out
 * (room for HTTP1_STRIP_ROOM(head_len) bytes). Returns the bytes written.
 * Content-Length is kept when keep_length; Transfer-Encoding never is.
 *
 * Each header goes out as "Name: value": a line sent as "Name:value" grows
 * by one byte, and a header line is at least four ("N:" CRLF).
 */
#define HTTP1_STRIP_ROOM(head_len) ((head_len) + (head_len) / 4 + 1)
size_t http1_strip_response_head(const char *head, size_t head_len, int keep_length, char *out);

/* A chunked body, parsed incrementally (request or response). */
typedef struct {
    int state;
    uint64_t size;   /* the current chunk's bytes still to come */
    unsigned digits; /* hex digits of the current size line */
    size_t line;     /* bytes of the current extension or trailer line */
    size_t trailers; /* bytes of trailer section so far */
    int done;
} http1_chunks;

typedef void (*http1_data_cb)(void *ctx, const char *p, size_t n);

void http1_chunks_init(http1_chunks *c);

/*
 * Feed bytes of a chunked body. Calls on_data (when not NULL) for the
 * bytes of chunk data. Returns the bytes consumed: fewer than n only when
 * the body ended inside p (c->done set), or -1 when the framing is invalid.
 */
long http1_chunks_feed(http1_chunks *c, const char *p, size_t n, http1_data_cb on_data, void *ctx);

/* Whether span s equals the lowercase ASCII string lower, ignoring case. */
int http1_ieq(span s, const char *lower, size_t n);

#endif
