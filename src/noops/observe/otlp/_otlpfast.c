/* _otlpfast: OTLP ExportTraceServiceRequest (protobuf wire format) -> otel_traces columns.
 *
 * decode_traces(body: bytes) -> tuple | None
 *
 * Parses the wire format directly (varints, fixed64/32, length-delimited fields) and writes
 * one contiguous buffer per column, Arrow layout: int64 values; strings as int32 offsets plus
 * UTF-8 data; maps as entry offsets plus key and value strings; lists as int32 offsets plus the
 * child's buffers. The tuple is (spans, events, links, buffers...) in the order documented in
 * native.py, which wraps the buffers into a pyarrow.Table without copying.
 *
 * The contract is all-or-nothing: the function returns None (and the caller hands the body to
 * the pure-Python decoder, which then decides: rows, rejected counts, warnings or a 400) for
 * anything that is not a well-formed request whose every span is accepted as is: a parse
 * error, invalid UTF-8, a span the Python decoder would reject, a value it would truncate, a
 * map it would cut, a duplicate attribute key, array/kvlist values, a singular message field
 * given twice (protobuf merges those), groups, string-table indices. So whatever comes back is
 * byte for byte what decode.py would produce, and every error path is decode.py's.
 *
 * Bounds: every read checks the remaining length first; lengths are 64-bit and compared with
 * the bytes left before any pointer arithmetic.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Limits of decode.py (MAX_VALUE_CHARS, MAX_KEY_CHARS, MAX_ATTRIBUTES, MAX_ITEM_CHARS). They
 * count characters; byte lengths are compared here, which is never more permissive. */
#define MAX_VALUE 16384
#define MAX_KEY 256
#define MAX_ATTRS 128
#define MAX_ITEM (1024 * 1024)
/* decode.py's MAX_SHARED_CHARS: resource and scope data repeated in every row of a request;
 * past it the Python decoder decides (it refuses the request with 413). */
#define MAX_SHARED ((size_t)64 * 1024 * 1024)

enum { OK = 0, FALLBACK = -1, NOMEM = -2 };
#define TRY(x)                 \
    do {                       \
        int rc_ = (x);         \
        if (rc_ < 0) return rc_; \
    } while (0)

/* ---- growable buffers ------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t n) {
    if (b->len + n <= b->cap) return OK;
    size_t c = b->cap ? b->cap : 1024;
    while (c < b->len + n) c *= 2;
    char *q = realloc(b->p, c);
    if (!q) return NOMEM;
    b->p = q;
    b->cap = c;
    return OK;
}

static int buf_put(buf_t *b, const void *s, size_t n) {
    TRY(buf_reserve(b, n));
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    return OK;
}

static int buf_i32(buf_t *b, int32_t v) { return buf_put(b, &v, 4); }
static int buf_i64(buf_t *b, int64_t v) { return buf_put(b, &v, 8); }

/* Arrow string column: offsets (int32, starts with 0) + data. */
typedef struct {
    buf_t off, data;
} strcol_t;

static int str_init(strcol_t *s) { return buf_i32(&s->off, 0); }

static int str_end(strcol_t *s) {
    if (s->data.len > INT32_MAX) return FALLBACK; /* over 2 GiB: let Arrow chunk it */
    return buf_i32(&s->off, (int32_t)s->data.len);
}

static int str_add(strcol_t *s, const void *p, size_t n) {
    TRY(buf_put(&s->data, p, n));
    return str_end(s);
}

static int32_t str_count(const strcol_t *s) { return (int32_t)(s->off.len / 4 - 1); }

/* Arrow map column: entry offsets + keys + values. */
typedef struct {
    buf_t off;
    strcol_t keys, vals;
} mapcol_t;

static int map_init(mapcol_t *m) {
    TRY(buf_i32(&m->off, 0));
    TRY(str_init(&m->keys));
    return str_init(&m->vals);
}

static int map_end(mapcol_t *m) { return buf_i32(&m->off, str_count(&m->keys)); }

static void buf_free(buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
static void str_free(strcol_t *s) {
    buf_free(&s->off);
    buf_free(&s->data);
}
static void map_free(mapcol_t *m) {
    buf_free(&m->off);
    str_free(&m->keys);
    str_free(&m->vals);
}

/* ---- wire format ------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *p, *end;
} rd_t;

static int rd_varint(rd_t *r, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (r->p >= r->end) return FALLBACK;
        uint8_t b = *r->p++;
        if (i == 9 && b > 1) return FALLBACK;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = v;
            return OK;
        }
    }
    return FALLBACK;
}

static int rd_fixed64(rd_t *r, uint64_t *out) {
    if (r->end - r->p < 8) return FALLBACK;
    memcpy(out, r->p, 8); /* little-endian host (x86-64, aarch64) */
    r->p += 8;
    return OK;
}

/* Next field: number and wire type; 0 at the end of the message. */
static int rd_tag(rd_t *r, uint32_t *field, uint32_t *wt) {
    uint64_t tag;
    TRY(rd_varint(r, &tag));
    if (tag > UINT32_MAX || (tag >> 3) == 0) return FALLBACK;
    *field = (uint32_t)(tag >> 3);
    *wt = (uint32_t)(tag & 7);
    return OK;
}

static int rd_bytes(rd_t *r, rd_t *sub) {
    uint64_t n;
    TRY(rd_varint(r, &n));
    if (n > (uint64_t)(r->end - r->p)) return FALLBACK;
    sub->p = r->p;
    sub->end = r->p + n;
    r->p += n;
    return OK;
}

static int rd_skip(rd_t *r, uint32_t wt) {
    uint64_t v;
    rd_t sub;
    switch (wt) {
    case 0: return rd_varint(r, &v);
    case 1: return rd_fixed64(r, &v);
    case 2: return rd_bytes(r, &sub);
    case 5:
        if (r->end - r->p < 4) return FALLBACK;
        r->p += 4;
        return OK;
    default: return FALLBACK; /* groups and invalid wire types */
    }
}

#define WANT(wt_, expected) \
    do {                    \
        if ((wt_) != (expected)) return FALLBACK; \
    } while (0)

static int utf8_ok(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += len;
    }
    return 1;
}

/* A proto3 string field: UTF-8 checked (upb rejects invalid UTF-8, so decode.py answers 400). */
static int rd_string(rd_t *r, uint32_t wt, rd_t *out) {
    WANT(wt, 2);
    TRY(rd_bytes(r, out));
    return utf8_ok(out->p, (size_t)(out->end - out->p)) ? OK : FALLBACK;
}

/* ---- value rendering -------------------------------------------------------------------- */

static const char HEX[] = "0123456789abcdef";
static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int put_hex(buf_t *b, const uint8_t *p, size_t n) {
    TRY(buf_reserve(b, 2 * n));
    char *o = b->p + b->len;
    for (size_t i = 0; i < n; i++) {
        o[2 * i] = HEX[p[i] >> 4];
        o[2 * i + 1] = HEX[p[i] & 15];
    }
    b->len += 2 * n;
    return OK;
}

static int put_b64(buf_t *b, const uint8_t *p, size_t n) {
    size_t out = 4 * ((n + 2) / 3);
    TRY(buf_reserve(b, out));
    char *o = b->p + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8) | p[i + 2];
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = B64[(v >> 6) & 63];
        *o++ = B64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8);
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = B64[(v >> 6) & 63];
        *o++ = '=';
    }
    b->len += out;
    return OK;
}

/* Decoder state for one request. */
typedef struct {
    strcol_t trace_id, span_id, parent, trace_state, name, kind, service, scope_name,
        scope_version, status_code, status_msg;
    buf_t ts, dur;
    mapcol_t res_attrs, span_attrs;
    buf_t ev_off, ev_ts, ln_off;
    strcol_t ev_name, ln_trace, ln_span, ln_state;
    mapcol_t ev_attrs, ln_attrs;
    mapcol_t res;     /* the current resource's attributes, copied into res_attrs per span */
    mapcol_t scratch; /* scope attributes: checked, not stored */
    int64_t spans, events, links;
    size_t item; /* bytes of the current span's flattened strings (decode.py's item_chars) */
    size_t shared; /* bytes of resource and scope data repeated by the rows so far */
} st_t;

/* AnyValue -> the string decode.py stores, appended to vals (ends the string). */
static int any_value(st_t *st, rd_t r, strcol_t *vals) {
    int kind = 0; /* 0 none, 1 string, 2 bool, 3 int, 4 double, 7 bytes */
    rd_t s = {0};
    uint64_t v = 0;
    while (r.p < r.end) {
        uint32_t f, wt;
        TRY(rd_tag(&r, &f, &wt));
        switch (f) {
        case 1: TRY(rd_string(&r, wt, &s)); kind = 1; break;
        case 2: WANT(wt, 0); TRY(rd_varint(&r, &v)); kind = 2; break;
        case 3: WANT(wt, 0); TRY(rd_varint(&r, &v)); kind = 3; break;
        case 4: WANT(wt, 1); TRY(rd_fixed64(&r, &v)); kind = 4; break;
        case 7: WANT(wt, 2); TRY(rd_bytes(&r, &s)); kind = 7; break;
        case 5: case 6: case 8: return FALLBACK; /* arrays, kvlists (JSON), string indices */
        default: TRY(rd_skip(&r, wt));
        }
    }
    size_t before = vals->data.len;
    char tmp[32];
    switch (kind) {
    case 0: break;
    case 1: {
        size_t n = (size_t)(s.end - s.p);
        if (n > MAX_VALUE) return FALLBACK;
        TRY(buf_put(&vals->data, s.p, n));
        break;
    }
    case 2: TRY(buf_put(&vals->data, v ? "true" : "false", v ? 4 : 5)); break;
    case 3: {
        int n = snprintf(tmp, sizeof tmp, "%lld", (long long)(int64_t)v);
        TRY(buf_put(&vals->data, tmp, (size_t)n));
        break;
    }
    case 4: {
        double d;
        memcpy(&d, &v, 8);
        char *repr = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (!repr) return NOMEM;
        int rc = buf_put(&vals->data, repr, strlen(repr));
        PyMem_Free(repr);
        TRY(rc);
        break;
    }
    case 7: {
        size_t n = (size_t)(s.end - s.p);
        if (4 * ((n + 2) / 3) > MAX_VALUE) return FALLBACK;
        TRY(put_b64(&vals->data, s.p, n));
        break;
    }
    }
    st->item += vals->data.len - before;
    return str_end(vals);
}

/* One KeyValue appended to m (key and value strings). */
static int key_value(st_t *st, rd_t r, mapcol_t *m) {
    rd_t key = {0}, val = {0};
    int has_val = 0;
    while (r.p < r.end) {
        uint32_t f, wt;
        TRY(rd_tag(&r, &f, &wt));
        if (f == 1) {
            TRY(rd_string(&r, wt, &key));
        } else if (f == 2) {
            WANT(wt, 2);
            if (has_val) return FALLBACK; /* merged by protobuf */
            TRY(rd_bytes(&r, &val));
            has_val = 1;
        } else {
            TRY(rd_skip(&r, wt)); /* key_strindex (3) is an int: ignored by decode.py too */
        }
    }
    size_t kn = (size_t)(key.end - key.p);
    if (kn > MAX_KEY) return FALLBACK;
    st->item += kn;
    TRY(str_add(&m->keys, key.p, kn));
    if (!has_val) return str_end(&m->vals);
    return any_value(st, val, &m->vals);
}

/* Ends the map started when m->keys had `first` entries: limits, duplicate keys. */
static int map_close(mapcol_t *m, int32_t first) {
    int32_t last = str_count(&m->keys);
    if (last - first > MAX_ATTRS) return FALLBACK;
    const int32_t *off = (const int32_t *)m->keys.off.p;
    const char *d = m->keys.data.p;
    for (int32_t i = first; i < last; i++) {
        int32_t li = off[i + 1] - off[i];
        for (int32_t j = first; j < i; j++) {
            if (off[j + 1] - off[j] == li && memcmp(d + off[i], d + off[j], (size_t)li) == 0)
                return FALLBACK; /* decode.py keeps the first position, the last value */
        }
    }
    return map_end(m);
}

/* An id field: n bytes (or empty if allowed), hex into col. */
static int put_id(strcol_t *col, rd_t id, size_t n, int required) {
    size_t len = (size_t)(id.end - id.p);
    if (len == 0) {
        if (required) return FALLBACK;
        return str_end(col);
    }
    if (len != n) return FALLBACK;
    if (required) {
        int any = 0;
        for (size_t i = 0; i < n; i++) any |= id.p[i];
        if (!any) return FALLBACK;
    }
    TRY(put_hex(&col->data, id.p, n));
    return str_end(col);
}

static int str_checked(st_t *st, strcol_t *col, rd_t s, size_t limit) {
    size_t n = (size_t)(s.end - s.p);
    if (n > limit) return FALLBACK;
    st->item += n;
    return str_add(col, s.p, n);
}

static int event(st_t *st, rd_t r) {
    uint64_t ts = 0;
    rd_t name = {0};
    int32_t first = str_count(&st->ev_attrs.keys);
    while (r.p < r.end) {
        uint32_t f, wt;
        TRY(rd_tag(&r, &f, &wt));
        switch (f) {
        case 1: WANT(wt, 1); TRY(rd_fixed64(&r, &ts)); break;
        case 2: TRY(rd_string(&r, wt, &name)); break;
        case 3: {
            rd_t kv;
            WANT(wt, 2);
            TRY(rd_bytes(&r, &kv));
            TRY(key_value(st, kv, &st->ev_attrs));
            break;
        }
        case 4: WANT(wt, 0); TRY(rd_skip(&r, wt)); break;
        default: TRY(rd_skip(&r, wt));
        }
    }
    if (ts > INT64_MAX) return FALLBACK; /* beyond timestamp[ns]: decode.py's rows fail later */
    TRY(map_close(&st->ev_attrs, first));
    TRY(buf_i64(&st->ev_ts, (int64_t)ts));
    TRY(str_checked(st, &st->ev_name, name, MAX_VALUE));
    st->events++;
    return OK;
}

static int span_link(st_t *st, rd_t r) {
    rd_t tid = {0}, sid = {0}, state = {0};
    int32_t first = str_count(&st->ln_attrs.keys);
    while (r.p < r.end) {
        uint32_t f, wt;
        TRY(rd_tag(&r, &f, &wt));
        switch (f) {
        case 1: WANT(wt, 2); TRY(rd_bytes(&r, &tid)); break;
        case 2: WANT(wt, 2); TRY(rd_bytes(&r, &sid)); break;
        case 3: TRY(rd_string(&r, wt, &state)); break;
        case 4: {
            rd_t kv;
            WANT(wt, 2);
            TRY(rd_bytes(&r, &kv));
            TRY(key_value(st, kv, &st->ln_attrs));
            break;
        }
        case 5: WANT(wt, 0); TRY(rd_skip(&r, wt)); break;
        case 6: WANT(wt, 5); TRY(rd_skip(&r, wt)); break;
        default: TRY(rd_skip(&r, wt));
        }
    }
    TRY(map_close(&st->ln_attrs, first));
    TRY(put_id(&st->ln_trace, tid, 16, 1));
    TRY(put_id(&st->ln_span, sid, 8, 1));
    TRY(str_checked(st, &st->ln_state, state, MAX_VALUE));
    st->links++;
    return OK;
}

static const char *const KINDS[] = {"Unspecified", "Internal", "Server", "Client", "Producer",
                                    "Consumer"};
static const char *const CODES[] = {"Unset", "Ok", "Error"};

static int span(st_t *st, rd_t r, rd_t scope_name, rd_t scope_version) {
    rd_t tid = {0}, sid = {0}, pid = {0}, state = {0}, name = {0}, msg = {0};
    uint64_t kind = 0, start = 0, end = 0, code = 0;
    int has_status = 0;
    int32_t first = str_count(&st->span_attrs.keys);
    st->item = 0;
    while (r.p < r.end) {
        uint32_t f, wt;
        TRY(rd_tag(&r, &f, &wt));
        switch (f) {
        case 1: WANT(wt, 2); TRY(rd_bytes(&r, &tid)); break;
        case 2: WANT(wt, 2); TRY(rd_bytes(&r, &sid)); break;
        case 3: TRY(rd_string(&r, wt, &state)); break;
        case 4: WANT(wt, 2); TRY(rd_bytes(&r, &pid)); break;
        case 5: TRY(rd_string(&r, wt, &name)); break;
        case 6: WANT(wt, 0); TRY(rd_varint(&r, &kind)); break;
        case 7: WANT(wt, 1); TRY(rd_fixed64(&r, &start)); break;
        case 8: WANT(wt, 1); TRY(rd_fixed64(&r, &end)); break;
        case 9: {
            rd_t kv;
            WANT(wt, 2);
            TRY(rd_bytes(&r, &kv));
            TRY(key_value(st, kv, &st->span_attrs));
            break;
        }
        case 11: {
            rd_t ev;
            WANT(wt, 2);
            TRY(rd_bytes(&r, &ev));
            TRY(event(st, ev));
            break;
        }
        case 13: {
            rd_t ln;
            WANT(wt, 2);
            TRY(rd_bytes(&r, &ln));
            TRY(span_link(st, ln));
            break;
        }
        case 15: {
            rd_t s;
            WANT(wt, 2);
            if (has_status) return FALLBACK;
            has_status = 1;
            TRY(rd_bytes(&r, &s));
            while (s.p < s.end) {
                uint32_t sf, swt;
                TRY(rd_tag(&s, &sf, &swt));
                if (sf == 2) {
                    TRY(rd_string(&s, swt, &msg));
                } else if (sf == 3) {
                    WANT(swt, 0);
                    TRY(rd_varint(&s, &code));
                } else {
                    TRY(rd_skip(&s, swt));
                }
            }
            break;
        }
        case 10: case 12: case 14: WANT(wt, 0); TRY(rd_skip(&r, wt)); break;
        case 16: WANT(wt, 5); TRY(rd_skip(&r, wt)); break;
        default: TRY(rd_skip(&r, wt));
        }
    }
    int32_t k = (int32_t)kind, c = (int32_t)code; /* proto3 enums are int32 */
    if (name.p == name.end || start == 0 || end < start || start > INT64_MAX || end > INT64_MAX)
        return FALLBACK;
    if (k < 0 || k > 5 || c < 0 || c > 2) return FALLBACK;
    TRY(map_close(&st->span_attrs, first));
    TRY(put_id(&st->trace_id, tid, 16, 1));
    TRY(put_id(&st->span_id, sid, 8, 1));
    TRY(put_id(&st->parent, pid, 8, 0));
    TRY(str_checked(st, &st->trace_state, state, MAX_VALUE));
    TRY(str_checked(st, &st->name, name, MAX_VALUE));
    TRY(str_checked(st, &st->status_msg, msg, MAX_VALUE));
    if (st->item > MAX_ITEM) return FALLBACK;
    TRY(str_add(&st->kind, KINDS[k], strlen(KINDS[k])));
    TRY(str_add(&st->status_code, CODES[c], strlen(CODES[c])));
    TRY(buf_i64(&st->ts, (int64_t)start));
    TRY(buf_i64(&st->dur, (int64_t)(end - start)));
    TRY(str_add(&st->scope_name, scope_name.p, (size_t)(scope_name.end - scope_name.p)));
    TRY(str_add(&st->scope_version, scope_version.p,
                (size_t)(scope_version.end - scope_version.p)));
    /* resource columns: ServiceName and a copy of the resource's map */
    const int32_t *ko = (const int32_t *)st->res.keys.off.p;
    const int32_t *vo = (const int32_t *)st->res.vals.off.p;
    int32_t n = str_count(&st->res.keys);
    const char *svc = "";
    size_t svc_n = 0;
    for (int32_t i = 0; i < n; i++) {
        if (ko[i + 1] - ko[i] == 12 && memcmp(st->res.keys.data.p + ko[i], "service.name", 12) == 0) {
            svc = st->res.vals.data.p + vo[i];
            svc_n = (size_t)(vo[i + 1] - vo[i]);
        }
    }
    TRY(str_add(&st->service, svc, svc_n));
    strcol_t *dst[2] = {&st->res_attrs.keys, &st->res_attrs.vals};
    const strcol_t *src[2] = {&st->res.keys, &st->res.vals};
    for (int side = 0; side < 2; side++) {
        size_t base = dst[side]->data.len;
        if (base + src[side]->data.len > INT32_MAX) return FALLBACK;
        TRY(buf_put(&dst[side]->data, src[side]->data.p, src[side]->data.len));
        const int32_t *so = (const int32_t *)src[side]->off.p;
        TRY(buf_reserve(&dst[side]->off, 4 * (size_t)n));
        for (int32_t i = 1; i <= n; i++) TRY(buf_i32(&dst[side]->off, (int32_t)base + so[i]));
    }
    TRY(map_end(&st->res_attrs));
    st->shared += st->res.keys.data.len + st->res.vals.data.len + st->scratch.keys.data.len +
                  st->scratch.vals.data.len + (size_t)(scope_name.end - scope_name.p) +
                  (size_t)(scope_version.end - scope_version.p);
    if (st->shared > MAX_SHARED) return FALLBACK;
    TRY(buf_i32(&st->ev_off, (int32_t)st->events));
    TRY(buf_i32(&st->ln_off, (int32_t)st->links));
    if (st->events > INT32_MAX || st->links > INT32_MAX) return FALLBACK;
    st->spans++;
    return OK;
}

/* Resource (field 1 of ResourceSpans) -> st->res (reset first). */
static int resource(st_t *st, rd_t r) {
    st->res.off.len = st->res.keys.off.len = st->res.vals.off.len = 0;
    st->res.keys.data.len = st->res.vals.data.len = 0;
    TRY(map_init(&st->res));
    while (r.p < r.end) {
        uint32_t f, wt;
        TRY(rd_tag(&r, &f, &wt));
        if (f == 1) {
            rd_t kv;
            WANT(wt, 2);
            TRY(rd_bytes(&r, &kv));
            TRY(key_value(st, kv, &st->res));
        } else if (f == 2) {
            WANT(wt, 0);
            TRY(rd_skip(&r, wt));
        } else if (f == 3) {
            return FALLBACK; /* entity_refs: parsed (and checked) by protobuf, not stored */
        } else {
            TRY(rd_skip(&r, wt));
        }
    }
    return map_close(&st->res, 0);
}

static int scope_spans(st_t *st, rd_t r) {
    /* first pass: the scope (it may follow the spans on the wire) and schema_url */
    rd_t scope = {0}, name = {0}, version = {0}, s = r;
    int has_scope = 0;
    while (s.p < s.end) {
        uint32_t f, wt;
        TRY(rd_tag(&s, &f, &wt));
        if (f == 1) {
            WANT(wt, 2);
            if (has_scope) return FALLBACK;
            has_scope = 1;
            TRY(rd_bytes(&s, &scope));
        } else if (f == 3) {
            rd_t url;
            TRY(rd_string(&s, wt, &url));
        } else if (f == 2) {
            WANT(wt, 2);
            TRY(rd_skip(&s, wt));
        } else {
            TRY(rd_skip(&s, wt));
        }
    }
    st->scratch.off.len = st->scratch.keys.off.len = st->scratch.vals.off.len = 0;
    st->scratch.keys.data.len = st->scratch.vals.data.len = 0;
    TRY(map_init(&st->scratch));
    while (scope.p < scope.end) {
        uint32_t f, wt;
        TRY(rd_tag(&scope, &f, &wt));
        switch (f) {
        case 1: TRY(rd_string(&scope, wt, &name)); break;
        case 2: TRY(rd_string(&scope, wt, &version)); break;
        case 3: {
            rd_t kv;
            WANT(wt, 2);
            TRY(rd_bytes(&scope, &kv));
            TRY(key_value(st, kv, &st->scratch));
            break;
        }
        case 4: WANT(wt, 0); TRY(rd_skip(&scope, wt)); break;
        default: TRY(rd_skip(&scope, wt));
        }
    }
    TRY(map_close(&st->scratch, 0));
    while (r.p < r.end) {
        uint32_t f, wt;
        TRY(rd_tag(&r, &f, &wt));
        if (f == 2) {
            rd_t sp;
            TRY(rd_bytes(&r, &sp));
            TRY(span(st, sp, name, version));
        } else {
            TRY(rd_skip(&r, wt));
        }
    }
    return OK;
}

static int resource_spans(st_t *st, rd_t r) {
    rd_t res = {0}, s = r;
    int has_res = 0;
    while (s.p < s.end) {
        uint32_t f, wt;
        TRY(rd_tag(&s, &f, &wt));
        if (f == 1) {
            WANT(wt, 2);
            if (has_res) return FALLBACK;
            has_res = 1;
            TRY(rd_bytes(&s, &res));
        } else if (f == 3) {
            rd_t url;
            TRY(rd_string(&s, wt, &url));
        } else if (f == 2) {
            WANT(wt, 2);
            TRY(rd_skip(&s, wt));
        } else {
            TRY(rd_skip(&s, wt));
        }
    }
    TRY(resource(st, res));
    while (r.p < r.end) {
        uint32_t f, wt;
        TRY(rd_tag(&r, &f, &wt));
        if (f == 2) {
            rd_t ss;
            TRY(rd_bytes(&r, &ss));
            TRY(scope_spans(st, ss));
        } else {
            TRY(rd_skip(&r, wt));
        }
    }
    return OK;
}

static int request(st_t *st, rd_t r) {
    while (r.p < r.end) {
        uint32_t f, wt;
        TRY(rd_tag(&r, &f, &wt));
        if (f == 1) {
            rd_t rs;
            WANT(wt, 2);
            TRY(rd_bytes(&r, &rs));
            TRY(resource_spans(st, rs));
        } else {
            TRY(rd_skip(&r, wt));
        }
    }
    return OK;
}

/* ---- Python glue ------------------------------------------------------------------------ */

#define N_STR 11
#define N_MAP 4

static strcol_t *strcols(st_t *st, int i) {
    strcol_t *all[] = {&st->trace_id, &st->span_id, &st->parent, &st->trace_state, &st->name,
                       &st->kind, &st->service, &st->scope_name, &st->scope_version,
                       &st->status_code, &st->status_msg, &st->ev_name, &st->ln_trace,
                       &st->ln_span, &st->ln_state};
    return all[i];
}
#define N_ALLSTR 15

static mapcol_t *mapcols(st_t *st, int i) {
    mapcol_t *all[] = {&st->res_attrs, &st->span_attrs, &st->ev_attrs, &st->ln_attrs,
                       &st->res, &st->scratch};
    return all[i];
}
#define N_ALLMAP 6

static void st_free(st_t *st) {
    for (int i = 0; i < N_ALLSTR; i++) str_free(strcols(st, i));
    for (int i = 0; i < N_ALLMAP; i++) map_free(mapcols(st, i));
    buf_free(&st->ts);
    buf_free(&st->dur);
    buf_free(&st->ev_off);
    buf_free(&st->ev_ts);
    buf_free(&st->ln_off);
}

static int st_init(st_t *st) {
    memset(st, 0, sizeof *st);
    for (int i = 0; i < N_ALLSTR; i++) TRY(str_init(strcols(st, i)));
    for (int i = 0; i < N_ALLMAP; i++) TRY(map_init(mapcols(st, i)));
    TRY(buf_i32(&st->ev_off, 0));
    return buf_i32(&st->ln_off, 0);
}

static int push(PyObject *list, const buf_t *b) {
    PyObject *o = PyBytes_FromStringAndSize(b->p ? b->p : "", (Py_ssize_t)b->len);
    if (!o) return -1;
    int rc = PyList_Append(list, o);
    Py_DECREF(o);
    return rc;
}

/* Buffers, in this order (native.py reads them the same way):
 * Timestamp, Duration; for each of the first 11 string columns: offsets, data;
 * ResourceAttributes, SpanAttributes: offsets, key offsets, key data, value offsets, value data;
 * events: list offsets, Timestamp, Name (offsets, data), Attributes (5 buffers);
 * links: list offsets, TraceId, SpanId, TraceState (2 each), Attributes (5 buffers). */
static PyObject *build(st_t *st) {
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
#define PUSH(b) \
    if (push(list, (b)) < 0) goto fail
#define PUSHSTR(s) \
    PUSH(&(s)->off); \
    PUSH(&(s)->data)
#define PUSHMAP(m)        \
    PUSH(&(m)->off);      \
    PUSHSTR(&(m)->keys);  \
    PUSHSTR(&(m)->vals)
    PUSH(&st->ts);
    PUSH(&st->dur);
    for (int i = 0; i < N_STR; i++) {
        PUSHSTR(strcols(st, i));
    }
    PUSHMAP(&st->res_attrs);
    PUSHMAP(&st->span_attrs);
    PUSH(&st->ev_off);
    PUSH(&st->ev_ts);
    PUSHSTR(&st->ev_name);
    PUSHMAP(&st->ev_attrs);
    PUSH(&st->ln_off);
    PUSHSTR(&st->ln_trace);
    PUSHSTR(&st->ln_span);
    PUSHSTR(&st->ln_state);
    PUSHMAP(&st->ln_attrs);
    PyObject *out = Py_BuildValue("(LLLN)", (long long)st->spans, (long long)st->events,
                                  (long long)st->links, list);
    return out;
fail:
    Py_DECREF(list);
    return NULL;
}

static PyObject *decode_traces(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    st_t st;
    int rc = st_init(&st);
    if (rc == OK) {
        rd_t r = {(const uint8_t *)view.buf, (const uint8_t *)view.buf + view.len};
        rc = request(&st, r);
    }
    PyBuffer_Release(&view);
    PyObject *out;
    if (rc == NOMEM)
        out = PyErr_NoMemory();
    else if (rc == FALLBACK)
        out = Py_NewRef(Py_None);
    else
        out = build(&st);
    st_free(&st);
    return out;
}

static PyMethodDef methods[] = {
    {"decode_traces", decode_traces, METH_O,
     "decode_traces(body) -> (spans, events, links, [buffers]) or None (use decode.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_otlpfast",
    "OTLP ExportTraceServiceRequest protobuf -> otel_traces column buffers.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__otlpfast(void) { return PyModule_Create(&module); }
