/*
 * clickpass.balancer._http1: the front's HTTP/1.1 parser (http1.c) for
 * Python. One call per request head and one per response head instead of
 * httptools' callback per URL piece, per header and per body piece: each
 * callback into Python cost the front about 4,300 instructions
 * (docs/balancer.md), more than the rest of its header work.
 *
 * parse_request() returns what the front needs of a complete head as a
 * named structure (RequestHead: read-only named fields), with the head to send the worker already built (request
 * line and the headers that are not hop-by-hop); the front appends its
 * forwarding headers. parse_response() returns a ResponseHead. Neither keeps
 * a reference to its input or holds state between calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "http1.h"

static PyObject *RequestError;
static PyObject *method_get, *method_head, *method_post;
/*
 * RequestHead and ResponseHead: named structures, read-only objects whose
 * fields are slots (PyObject_HEAD, then one PyObject * per field, in the
 * order of their PyMemberDef). Not PyStructSequences: in Python 3.11 a
 * structure sequence looks its size up in its type's dict on every
 * creation and deletion (about 1,200 instructions, against a tuple's
 * 100), and its fields are T_OBJECT members, which the interpreter does not
 * specialise; T_OBJECT_EX fields read like __slots__ (LOAD_ATTR_SLOT), and
 * nothing in these objects can form a cycle, so the garbage collector does
 * not track them. That keeps the front's instructions per request where the
 * 12-tuple had them (docs/balancer.md).
 */
#define HEAD_FIELD(index, name, doc)                                                        \
    {                                                                                       \
        name, T_OBJECT_EX, (Py_ssize_t)(sizeof(PyObject) + (index) * sizeof(PyObject *)), \
            READONLY, doc                                                                   \
    }

enum { REQUEST_FIELDS = 12, RESPONSE_FIELDS = 6 };

static PyMemberDef request_head_members[] = {
    HEAD_FIELD(0, "head_len", "bytes of the head, through its empty line"),
    HEAD_FIELD(1, "method", "the request method"),
    HEAD_FIELD(2, "target", "the request target (origin-form)"),
    HEAD_FIELD(3, "worker_head",
               "the request line (always HTTP/1.1) and the headers to pass on to the worker, "
               "without the empty line"),
    HEAD_FIELD(4, "http10", "the request is HTTP/1.0"),
    HEAD_FIELD(5, "keep_alive", "the client keeps the connection open after this request"),
    HEAD_FIELD(6, "content_length", "the Content-Length, -1 when absent"),
    HEAD_FIELD(7, "chunked", "the body is chunked"),
    HEAD_FIELD(8, "expect_continue", "the client sent Expect: 100-continue"),
    HEAD_FIELD(9, "host", "the Host, b'' when absent"),
    HEAD_FIELD(10, "forwarded_for", "the client's X-Forwarded-For values (joined), b'' when none"),
    HEAD_FIELD(11, "if_none_match", "the If-None-Match value, None when absent"),
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef response_head_members[] = {
    HEAD_FIELD(0, "head_len", "bytes of the head, through its empty line"),
    HEAD_FIELD(1, "status", "the status code"),
    HEAD_FIELD(2, "content_length", "the Content-Length, -1 when absent"),
    HEAD_FIELD(3, "chunked", "the body is chunked"),
    HEAD_FIELD(4, "close", "the worker ends the connection after this response"),
    HEAD_FIELD(5, "hop", "hop-by-hop headers (or HTTP/1.0): not relayed as it is"),
    {NULL, 0, 0, 0, NULL},
};

static PyObject **head_fields(PyObject *self)
{
    return (PyObject **)((char *)self + sizeof(PyObject));
}

static void head_dealloc(PyObject *self)
{
    PyObject **fields = head_fields(self);
    Py_ssize_t n = (Py_TYPE(self)->tp_basicsize - (Py_ssize_t)sizeof(PyObject)) /
                   (Py_ssize_t)sizeof(PyObject *);
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(fields[i]);
    Py_TYPE(self)->tp_free(self);
}

/* RequestHead(head_len=..., method=..., ...), for logs and test failures. */
static PyObject *head_repr(PyObject *self)
{
    PyObject *parts = PyList_New(0);
    if (parts == NULL)
        return NULL;
    PyObject **fields = head_fields(self);
    PyMemberDef *member = Py_TYPE(self)->tp_members;
    for (Py_ssize_t i = 0; member[i].name != NULL; i++) {
        PyObject *part = PyUnicode_FromFormat("%s=%R", member[i].name, fields[i]);
        if (part == NULL || PyList_Append(parts, part) < 0) {
            Py_XDECREF(part);
            Py_DECREF(parts);
            return NULL;
        }
        Py_DECREF(part);
    }
    PyObject *sep = PyUnicode_FromString(", ");
    PyObject *joined = sep != NULL ? PyUnicode_Join(sep, parts) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(parts);
    if (joined == NULL)
        return NULL;
    const char *name = strrchr(Py_TYPE(self)->tp_name, '.') + 1;
    PyObject *repr = PyUnicode_FromFormat("%s(%U)", name, joined);
    Py_DECREF(joined);
    return repr;
}

static PyTypeObject RequestHeadType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "clickpass.balancer._http1.RequestHead",
    .tp_basicsize = sizeof(PyObject) + REQUEST_FIELDS * sizeof(PyObject *),
    .tp_dealloc = head_dealloc,
    .tp_repr = head_repr,
    .tp_getattro = PyObject_GenericGetAttr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A complete request head, as parse_request found it (read-only fields).",
    .tp_members = request_head_members,
    .tp_free = PyObject_Free,
};

static PyTypeObject ResponseHeadType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "clickpass.balancer._http1.ResponseHead",
    .tp_basicsize = sizeof(PyObject) + RESPONSE_FIELDS * sizeof(PyObject *),
    .tp_dealloc = head_dealloc,
    .tp_repr = head_repr,
    .tp_getattro = PyObject_GenericGetAttr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A complete response head, as parse_response found it (read-only fields).",
    .tp_members = response_head_members,
    .tp_free = PyObject_Free,
};

static PyObject *request_error(const http1_request *req)
{
    const char *kind = req->too_large            ? "too_large"
                       : req->status == 414      ? "target_too_long"
                       : req->status == 431      ? "head_too_large"
                                                 : "bad_request";
    PyObject *args = Py_BuildValue("(iss)", req->status, kind, req->why);
    if (args != NULL) {
        PyErr_SetObject(RequestError, args);
        Py_DECREF(args);
    }
    return NULL;
}

static PyObject *boolean(int b)
{
    PyObject *o = b ? Py_True : Py_False;
    Py_INCREF(o);
    return o;
}

/*
 * A tuple of n new references (any of them NULL after a failed allocation:
 * then all are released and NULL returned), or with a type, a RequestHead
 * or ResponseHead of them. Cheaper than Py_BuildValue, which parses its
 * format on every call.
 */
static PyObject *tuple_of(PyTypeObject *type, PyObject **items, Py_ssize_t n)
{
    PyObject *t = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == NULL)
            goto fail;
    if (type != NULL) {
        t = PyObject_New(PyObject, type);
        if (t == NULL)
            goto fail;
        memcpy(head_fields(t), items, (size_t)n * sizeof(PyObject *));
        return t;
    }
    t = PyTuple_New(n);
    if (t == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, items[i]);
    return t;
fail:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

static PyObject *bytes_of(span s)
{
    return PyBytes_FromStringAndSize(s.p, (Py_ssize_t)s.n);
}

static PyObject *method_of(span m)
{
    PyObject *known = NULL;
    if (m.n == 3 && memcmp(m.p, "GET", 3) == 0)
        known = method_get;
    else if (m.n == 4 && memcmp(m.p, "HEAD", 4) == 0)
        known = method_head;
    else if (m.n == 4 && memcmp(m.p, "POST", 4) == 0)
        known = method_post;
    if (known != NULL) {
        Py_INCREF(known);
        return known;
    }
    return bytes_of(m);
}

/* Whether a header of the client's request goes on to the worker as it is. */
static int forwarded_as_is(const http1_header *h, int trust)
{
    if (h->named)
        return 0;
    switch (h->kind) {
    case H_OTHER:
    case H_HOST:
    case H_CONTENT_LENGTH:
    case H_IF_NONE_MATCH:
        return 1;
    case H_FORWARDED:
        return trust;
    default: /* framing, Connection, Expect, Upgrade, hop-by-hop, X-Forwarded-For,
                and the front's own X-Clickpass-Client, whoever sent it */
        return 0;
    }
}

/* The answer to parse_request for the head at the start of buf[0:len]. */
static PyObject *request_head(const char *buf, size_t len, size_t scanned, size_t max_head,
                              int64_t max_body, int trust)
{
    http1_request req;
    int r = http1_parse_request(buf, len, scanned, max_head, max_body, &req);
    if (r == HTTP1_INCOMPLETE)
        Py_RETURN_NONE;
    if (r == HTTP1_ERROR)
        return request_error(&req);

    /* The head for the worker: "METHOD SP target SP HTTP/1.1\r\n", then
     * each header passed on as "Name: value\r\n". */
    size_t size = req.method.n + 1 + req.target.n + 11;
    size_t xff = 0, xff_count = 0;
    for (unsigned i = 0; i < req.nheaders; i++) {
        const http1_header *h = &req.headers[i];
        if (forwarded_as_is(h, trust))
            size += h->name.n + 2 + h->value.n + 2;
        else if (h->kind == H_XFF && !h->named && h->value.n) {
            xff += h->value.n;
            xff_count++;
        }
    }
    PyObject *head = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (head == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(head);
    memcpy(out, req.method.p, req.method.n);
    out += req.method.n;
    *out++ = ' ';
    memcpy(out, req.target.p, req.target.n);
    out += req.target.n;
    memcpy(out, " HTTP/1.1\r\n", 11);
    out += 11;
    for (unsigned i = 0; i < req.nheaders; i++) {
        const http1_header *h = &req.headers[i];
        if (!forwarded_as_is(h, trust))
            continue;
        memcpy(out, h->name.p, h->name.n);
        out += h->name.n;
        *out++ = ':';
        *out++ = ' ';
        memcpy(out, h->value.p, h->value.n);
        out += h->value.n;
        *out++ = '\r';
        *out++ = '\n';
    }

    PyObject *forwarded_for;
    if (xff_count == 0) {
        forwarded_for = PyBytes_FromStringAndSize(NULL, 0);
    } else {
        forwarded_for = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(xff + 2 * (xff_count - 1)));
        if (forwarded_for != NULL) {
            char *f = PyBytes_AS_STRING(forwarded_for);
            size_t seen = 0;
            for (unsigned i = 0; i < req.nheaders; i++) {
                const http1_header *h = &req.headers[i];
                if (h->kind != H_XFF || h->named || h->value.n == 0)
                    continue;
                if (seen++) {
                    *f++ = ',';
                    *f++ = ' ';
                }
                memcpy(f, h->value.p, h->value.n);
                f += h->value.n;
            }
        }
    }
    if (forwarded_for == NULL) {
        Py_DECREF(head);
        return NULL;
    }
    PyObject *if_none_match;
    if (req.if_none_match.p != NULL) {
        if_none_match = bytes_of(req.if_none_match);
    } else {
        if_none_match = Py_None;
        Py_INCREF(Py_None);
    }
    PyObject *items[12] = {
        PyLong_FromSsize_t((Py_ssize_t)req.head_len),
        method_of(req.method),
        bytes_of(req.target),
        head,
        boolean(req.http10),
        boolean(req.keep_alive),
        PyLong_FromLongLong((long long)req.content_length),
        boolean(req.chunked),
        boolean(req.expect_continue),
        bytes_of(req.host),
        forwarded_for,
        if_none_match,
    };
    return tuple_of(&RequestHeadType, items, REQUEST_FIELDS);
}

PyDoc_STRVAR(parse_request_doc,
             "parse_request(data, max_head, max_body, trust_forwarded, scanned=0)\n--\n\n"
             "Parse the request head at the start of data (bytes or bytearray). None while\n"
             "it is incomplete; scanned says how many of its first bytes an earlier call\n"
             "found incomplete, so that only the rest is searched. Otherwise a\n"
             "RequestHead (named fields). Raises RequestError(status, kind, text).");

static PyObject *parse_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "parse_request takes 4 or 5 arguments");
        return NULL;
    }
    Py_ssize_t max_head = PyLong_AsSsize_t(args[1]);
    if (max_head < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "parse_request: max_head must not be negative");
        return NULL;
    }
    long long max_body = PyLong_AsLongLong(args[2]);
    if (max_body == -1 && PyErr_Occurred())
        return NULL;
    int trust = PyObject_IsTrue(args[3]);
    if (trust < 0)
        return NULL;
    Py_ssize_t scanned = 0;
    if (nargs == 5) {
        scanned = PyLong_AsSsize_t(args[4]);
        if (scanned == -1 && PyErr_Occurred())
            return NULL;
    }
    /* bytes, or the bytearray a head that came in several reads is gathered in. */
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (scanned < 0 || scanned > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "parse_request: scanned is out of range");
        return NULL;
    }
    PyObject *result = request_head((const char *)view.buf, (size_t)view.len, (size_t)scanned,
                                    (size_t)max_head, (int64_t)max_body, trust);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(parse_response_doc,
             "parse_response(data, max_head)\n--\n\n"
             "Parse a worker's response head at the start of data. None while it is\n"
             "incomplete; otherwise a ResponseHead (named fields). Raises ValueError\n"
             "saying what is wrong.");

static PyObject *parse_response(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "parse_response takes data (bytes) and max_head");
        return NULL;
    }
    Py_ssize_t max_head = PyLong_AsSsize_t(args[1]);
    if (max_head < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "parse_response: max_head must not be negative");
        return NULL;
    }
    const char *buf = PyBytes_AS_STRING(args[0]);
    size_t len = (size_t)PyBytes_GET_SIZE(args[0]);
    http1_response res;
    int r = http1_parse_response(buf, len, (size_t)max_head, &res);
    if (r == HTTP1_INCOMPLETE)
        Py_RETURN_NONE;
    if (r == HTTP1_ERROR) {
        size_t end = http1_head_end(buf, len, 0);
        PyErr_SetString(PyExc_ValueError, (end == 0 || end > (size_t)max_head)
                                              ? "response headers too large"
                                              : "malformed response");
        return NULL;
    }
    PyObject *items[6] = {
        PyLong_FromSsize_t((Py_ssize_t)res.head_len),
        PyLong_FromLong(res.status),
        PyLong_FromLongLong((long long)res.content_length),
        boolean(res.chunked),
        boolean(res.close),
        boolean(res.hop),
    };
    return tuple_of(&ResponseHeadType, items, RESPONSE_FIELDS);
}

PyDoc_STRVAR(strip_response_head_doc,
             "strip_response_head(data, head_len, keep_length)\n--\n\n"
             "The response head data[:head_len] without its hop-by-hop headers (and\n"
             "those its Connection header names), Transfer-Encoding and, unless\n"
             "keep_length, Content-Length; without its final empty line.");

static PyObject *strip_response_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "strip_response_head takes data (bytes), head_len and keep_length");
        return NULL;
    }
    Py_ssize_t head_len = PyLong_AsSsize_t(args[1]);
    if (head_len == -1 && PyErr_Occurred())
        return NULL;
    if (head_len < 0 || head_len > PyBytes_GET_SIZE(args[0])) {
        PyErr_SetString(PyExc_ValueError, "strip_response_head: head_len is out of range");
        return NULL;
    }
    int keep_length = PyObject_IsTrue(args[2]);
    if (keep_length < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, HTTP1_STRIP_ROOM(head_len));
    if (out == NULL)
        return NULL;
    size_t n = http1_strip_response_head(PyBytes_AS_STRING(args[0]), (size_t)head_len,
                                         keep_length, PyBytes_AS_STRING(out));
    if (_PyBytes_Resize(&out, (Py_ssize_t)n) < 0)
        return NULL;
    return out;
}

/* ChunkedBody: a chunked body (a request's, or a response's), read as it arrives. */

typedef struct {
    PyObject_HEAD
    http1_chunks chunks;
} ChunkedBody;

typedef struct {
    char *out;
    size_t n;
} decoded;

static void collect(void *ctx, const char *p, size_t n)
{
    decoded *d = ctx;
    memcpy(d->out + d->n, p, n);
    d->n += n;
}

static int chunked_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    if (!PyArg_ParseTuple(args, ":ChunkedBody") || (kwargs && PyDict_Size(kwargs))) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "ChunkedBody takes no arguments");
        return -1;
    }
    http1_chunks_init(&((ChunkedBody *)self)->chunks);
    return 0;
}

PyDoc_STRVAR(feed_doc, "feed(data)\n--\n\n"
                       "Read bytes of the body: (data, consumed, done). data is the chunk\n"
                       "data they held; consumed is less than len(data) only when the body\n"
                       "ended inside them (done). Raises ValueError on invalid framing.");

static PyObject *chunked_feed(PyObject *self, PyObject *arg)
{
    ChunkedBody *c = (ChunkedBody *)self;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "feed: data must be bytes");
        return NULL;
    }
    if (c->chunks.done) {
        PyErr_SetString(PyExc_ValueError, "the chunked body has already ended");
        return NULL;
    }
    size_t n = (size_t)PyBytes_GET_SIZE(arg);
    /* Chunk data is never longer than the bytes that carry it. */
    PyObject *data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (data == NULL)
        return NULL;
    decoded d = {PyBytes_AS_STRING(data), 0};
    long used = http1_chunks_feed(&c->chunks, PyBytes_AS_STRING(arg), n, collect, &d);
    if (used < 0) {
        Py_DECREF(data);
        PyErr_SetString(PyExc_ValueError, "invalid chunked framing");
        return NULL;
    }
    if (d.n != n && _PyBytes_Resize(&data, (Py_ssize_t)d.n) < 0)
        return NULL;
    return Py_BuildValue("(NlO)", data, used, c->chunks.done ? Py_True : Py_False);
}

PyDoc_STRVAR(scan_doc, "scan(data, offset)\n--\n\n"
                       "Read the bytes of data from offset on without decoding them:\n"
                       "(consumed, done), as feed. For relaying a body as it is.");

static PyObject *chunked_scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    ChunkedBody *c = (ChunkedBody *)self;
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan takes data (bytes) and offset");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    if (offset < 0 || offset > PyBytes_GET_SIZE(args[0])) {
        PyErr_SetString(PyExc_ValueError, "scan: offset is out of range");
        return NULL;
    }
    if (c->chunks.done) {
        PyErr_SetString(PyExc_ValueError, "the chunked body has already ended");
        return NULL;
    }
    long used = http1_chunks_feed(&c->chunks, PyBytes_AS_STRING(args[0]) + offset,
                                  (size_t)(PyBytes_GET_SIZE(args[0]) - offset), NULL, NULL);
    if (used < 0) {
        PyErr_SetString(PyExc_ValueError, "invalid chunked framing");
        return NULL;
    }
    PyObject *items[2] = {PyLong_FromLong(used), boolean(c->chunks.done)};
    return tuple_of(NULL, items, 2);
}

static PyMethodDef chunked_methods[] = {
    {"feed", chunked_feed, METH_O, feed_doc},
    {"scan", (PyCFunction)(void (*)(void))chunked_scan, METH_FASTCALL, scan_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ChunkedBodyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "clickpass.balancer._http1.ChunkedBody",
    .tp_basicsize = sizeof(ChunkedBody),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A chunked message body, decoded incrementally (strict framing).",
    .tp_new = PyType_GenericNew,
    .tp_init = chunked_init,
    .tp_methods = chunked_methods,
};

static PyMethodDef module_methods[] = {
    {"parse_request", (PyCFunction)(void (*)(void))parse_request, METH_FASTCALL,
     parse_request_doc},
    {"parse_response", (PyCFunction)(void (*)(void))parse_response, METH_FASTCALL,
     parse_response_doc},
    {"strip_response_head", (PyCFunction)(void (*)(void))strip_response_head, METH_FASTCALL,
     strip_response_head_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "clickpass.balancer._http1",
    .m_doc = "Strict HTTP/1.1 parsing for the front (csrc/http1.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__http1(void)
{
    if (PyType_Ready(&ChunkedBodyType) < 0)
        return NULL;
    if (PyType_Ready(&RequestHeadType) < 0 || PyType_Ready(&ResponseHeadType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    RequestError = PyErr_NewExceptionWithDoc(
        "clickpass.balancer._http1.RequestError",
        "A request the front refuses: args are (status, kind, text), text one sentence "
        "for the client.",
        PyExc_ValueError, NULL);
    method_get = PyBytes_FromString("GET");
    method_head = PyBytes_FromString("HEAD");
    method_post = PyBytes_FromString("POST");
    if (RequestError == NULL || method_get == NULL || method_head == NULL ||
        method_post == NULL || PyModule_AddObjectRef(m, "RequestError", RequestError) < 0 ||
        PyModule_AddObjectRef(m, "ChunkedBody", (PyObject *)&ChunkedBodyType) < 0 ||
        PyModule_AddObjectRef(m, "RequestHead", (PyObject *)&RequestHeadType) < 0 ||
        PyModule_AddObjectRef(m, "ResponseHead", (PyObject *)&ResponseHeadType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_HEADERS", HTTP1_MAX_HEADERS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_REQUEST_LINE", HTTP1_MAX_REQUEST_LINE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
