/* _auditfast: audit records of a RecordTemplate, chained and formatted in C.
 *
 * Template(head: bytes, rest: bytes, rest_order: tuple[int, ...], line: bytes,
 *          line_order: tuple[int, ...], variables: int)
 *     The C side of one noops.gate.audit.RecordTemplate: ``head`` is the hashed text's fixed
 *     start (hashed once, here), ``rest`` the remainder of the hashed text and ``line`` the
 *     written line, both %-format byte strings holding only ``%s`` and ``%%``, whose ``%s``
 *     take the slots named by ``*_order`` (0 seq, 1 prev_hash, 2 hash, 3.. the variables).
 *
 * chain(items: list, start: int, seq: int, prev_hash: str, size: int, max_bytes: int,
 *       out: list) -> (bytes, int, int, str, int)
 *     Chains items[start:] while each is ``(template, values)`` with a Template in the
 *     template's ``_fast`` slot and values its variables, each canonical JSON text (str, ASCII)
 *     or a float Unix time (written as the log writes times). Returns the lines, the index of
 *     the first item not chained, and the next seq, prev_hash and file size; appends
 *     ``(seq, prev_hash, hash)`` per record to ``out``.
 *
 * The contract is the one of _otlpfast: whatever comes back is byte for byte what the Python
 * path (RecordTemplate.fill, AuditLog.append_fragments) makes of the same items, and anything
 * else stops the chain where it is and is left to that path: a record that is not such a
 * tuple, a value of another type or not ASCII, a time outside years 1970..9999, a line that
 * would need the file rotated first (``size`` nonzero and ``size + len(line) > max_bytes``).
 *
 * SHA-256 is OpenSSL's (EVP), the library Python's hashlib uses.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <openssl/evp.h>

#define SLOT_SEQ 0
#define SLOT_PREV 1
#define SLOT_HASH 2
#define SLOT_VARS 3
#define MAX_VARS 8
#define LAST_TIME 253402300800.0 /* 10000-01-01T00:00:00Z: datetime's limit */

/* A %-format split at its slots: literal i is followed by slot order[i] (none after the last). */
typedef struct {
    char *text;       /* the literals, unescaped, back to back */
    Py_ssize_t *cut;  /* literal i is text[cut[i]:cut[i+1]] */
    int *order;       /* the slot after literal i, for i < n */
    Py_ssize_t n;     /* number of slots; n + 1 literals */
} format_t;

typedef struct {
    PyObject_HEAD
    EVP_MD_CTX *head;
    format_t rest, line;
    int variables;
} TemplateObject;

static const EVP_MD *sha256;
static PyObject *fast_name; /* "_fast", interned */

static void format_free(format_t *f) {
    PyMem_Free(f->text);
    PyMem_Free(f->cut);
    PyMem_Free(f->order);
    f->text = NULL;
    f->cut = NULL;
    f->order = NULL;
}

/* Split ``fmt`` (only %s and %%) at its slots, numbered by ``order`` (a tuple of ints, one per
 * %s, each < slots). 0, or -1 with an exception set. */
static int format_parse(format_t *f, PyObject *fmt, PyObject *order, int slots) {
    char *src;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(fmt, &src, &len) < 0) return -1;
    if (!PyTuple_Check(order)) {
        PyErr_SetString(PyExc_TypeError, "a slot order must be a tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(order);
    f->text = PyMem_Malloc(len + 1);
    f->cut = PyMem_Malloc(sizeof(Py_ssize_t) * (n + 2));
    f->order = PyMem_Malloc(sizeof(int) * (n + 1));
    if (!f->text || !f->cut || !f->order) {
        PyErr_NoMemory();
        return -1;
    }
    f->n = n;
    Py_ssize_t w = 0, k = 0;
    f->cut[0] = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (src[i] != '%') {
            f->text[w++] = src[i];
            continue;
        }
        if (i + 1 < len && src[i + 1] == '%') {
            f->text[w++] = '%';
            i++;
        } else if (i + 1 < len && src[i + 1] == 's' && k < n) {
            long slot = PyLong_AsLong(PyTuple_GET_ITEM(order, k));
            if (slot == -1 && PyErr_Occurred()) return -1;
            if (slot < 0 || slot >= slots) {
                PyErr_SetString(PyExc_ValueError, "a slot number is out of range");
                return -1;
            }
            f->order[k++] = (int)slot;
            f->cut[k] = w;
            i++;
        } else {
            PyErr_SetString(PyExc_ValueError, "a format may hold only %s (one per slot) and %%");
            return -1;
        }
    }
    if (k != n) {
        PyErr_SetString(PyExc_ValueError, "a format has fewer %s than its slot order");
        return -1;
    }
    f->cut[n + 1] = w;
    return 0;
}

static void Template_dealloc(TemplateObject *self) {
    EVP_MD_CTX_free(self->head);
    format_free(&self->rest);
    format_free(&self->line);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Template_init(TemplateObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"head", "rest", "rest_order", "line", "line_order", "variables", NULL};
    Py_buffer head;
    PyObject *rest, *rest_order, *line, *line_order;
    int variables;
    if (self->head != NULL) {
        PyErr_SetString(PyExc_TypeError, "a Template is made once");
        return -1;
    }
    format_free(&self->rest); /* from a call that failed half-way */
    format_free(&self->line);
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*SOSOi", kwlist, &head, &rest, &rest_order, &line,
                                     &line_order, &variables))
        return -1;
    int rc = -1;
    if (variables < 0 || variables > MAX_VARS) {
        PyErr_Format(PyExc_ValueError, "a Template takes 0 to %d variables", MAX_VARS);
        goto done;
    }
    self->variables = variables;
    if (format_parse(&self->rest, rest, rest_order, SLOT_VARS + variables) < 0 ||
        format_parse(&self->line, line, line_order, SLOT_VARS + variables) < 0)
        goto done;
    self->head = EVP_MD_CTX_new();
    if (self->head == NULL || !EVP_DigestInit_ex(self->head, sha256, NULL) ||
        !EVP_DigestUpdate(self->head, head.buf, head.len)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not start a SHA-256 digest");
        EVP_MD_CTX_free(self->head); /* no half-made state: chain() refuses a Template without one */
        self->head = NULL;
        goto done;
    }
    rc = 0;
done:
    PyBuffer_Release(&head);
    return rc;
}

static PyTypeObject TemplateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "noops.gate._auditfast.Template",
    .tp_doc = PyDoc_STR("The C side of a RecordTemplate (see the module's documentation)."),
    .tp_basicsize = sizeof(TemplateObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Template_init,
    .tp_dealloc = (destructor)Template_dealloc,
};

/* ---- output ------------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static int buf_put(buf_t *b, const char *s, size_t n) {
    if (b->len + n > b->cap) {
        size_t c = b->cap ? b->cap : 16384;
        while (c < b->len + n) c *= 2;
        char *q = PyMem_Realloc(b->p, c);
        if (!q) return -1;
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* ---- one record -------------------------------------------------------------------------- */

typedef struct {
    const char *p;
    size_t n;
} span_t;

/* The JSON of a Unix time as noops.gate.audit.JsonTime writes it:
 * "YYYY-MM-DDTHH:MM:SS.ffffff+00:00" (microseconds rounded half to even). 0, or -1 when the
 * time is out of range (the Python path decides). ``dst`` holds 34 bytes. The text up to the
 * second is kept for the next call (the GIL serialises callers). */
static int json_time(double now, char *dst) {
    static double cached_second = -1.0;
    static char cached[22]; /* "YYYY-MM-DDTHH:MM:SS. */
    if (!(now >= 0.0 && now < LAST_TIME)) return -1;
    double second = floor(now);
    long micro = (long)nearbyint((now - second) * 1e6);
    if (micro >= 1000000) {
        second += 1.0;
        micro -= 1000000;
    }
    if (second >= LAST_TIME) return -1;
    if (second != cached_second) {
        time_t t = (time_t)second;
        struct tm tm;
        if (gmtime_r(&t, &tm) == NULL) return -1;
        char text[32];
        if (snprintf(text, sizeof text, "\"%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec) != 21)
            return -1;
        memcpy(cached, text, 21);
        cached_second = second;
    }
    memcpy(dst, cached, 21);
    for (int k = 26; k >= 21; k--, micro /= 10) dst[k] = (char)('0' + micro % 10);
    memcpy(dst + 27, "+00:00\"", 7);
    return 0;
}

/* ``value`` in decimal at ``dst`` (24 bytes); returns the length. */
static size_t decimal(long long value, char *dst) {
    char tmp[24];
    size_t n = 0;
    unsigned long long v = value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (value < 0) tmp[n++] = '-';
    for (size_t k = 0; k < n; k++) dst[k] = tmp[n - 1 - k];
    return n;
}

static int fill(buf_t *b, const format_t *f, const span_t *slots) {
    for (Py_ssize_t i = 0; i <= f->n; i++) {
        if (buf_put(b, f->text + f->cut[i], f->cut[i + 1] - f->cut[i]) < 0) return -1;
        if (i < f->n && buf_put(b, slots[f->order[i]].p, slots[f->order[i]].n) < 0) return -1;
    }
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* ``obj`` as a long long in 0..LLONG_MAX - 1, else -1 (the Python path decides: an int too
 * large, or not an int). Clears any error of the conversion. */
static long long small_int(PyObject *obj) {
    if (!PyLong_CheckExact(obj)) return -1;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return overflow || v < 0 || v == LLONG_MAX ? -1 : v;
}

static PyObject *chain(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *items, *seq_obj0, *prev_obj, *size_obj, *max_obj, *out;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!nOUOOO!", &PyList_Type, &items, &start, &seq_obj0, &prev_obj, &size_obj,
                          &max_obj, &PyList_Type, &out))
        return NULL;
    long long seq = small_int(seq_obj0), size = small_int(size_obj), max_bytes = small_int(max_obj);
    Py_ssize_t prev_len = 0;
    const char *prev = PyUnicode_IS_ASCII(prev_obj) ? PyUnicode_AsUTF8AndSize(prev_obj, &prev_len) : NULL;
    if (seq < 0 || size < 0 || max_bytes < 0 || prev == NULL || prev_len > 64) {
        PyErr_Clear();
        /* nothing chained: the Python path takes it from here */
        return Py_BuildValue("(y#nOOO)", "", (Py_ssize_t)0, start, seq_obj0, prev_obj, size_obj);
    }
    /* Buffers of the chain's own slots: seq, "prev_hash", "hash", and the times. */
    char seq_text[24], prev_text[68], hash_text[68], times[MAX_VARS][34];
    PyObject *last_hash = NULL; /* the str of the last chained hash, once there is one */
    prev_text[0] = '"';
    memcpy(prev_text + 1, prev, prev_len);
    prev_text[prev_len + 1] = '"';
    size_t prev_n = prev_len + 2;

    buf_t lines = {0}, hashed = {0};
    EVP_MD_CTX *work = EVP_MD_CTX_new();
    PyObject *result = NULL, *head_obj = NULL, *item = NULL, *fast = NULL;
    if (work == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_ssize_t i = start < 0 ? 0 : start;
    /* Allocations below may run Python code (a collection): the list may change under us, so
     * its size is read on every pass and the item and its template are held while used. */
    for (; i < PyList_GET_SIZE(items) && seq < LLONG_MAX; i++) {
        item = PyList_GET_ITEM(items, i);
        Py_INCREF(item);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) break;
        fast = PyObject_GetAttr(PyTuple_GET_ITEM(item, 0), fast_name);
        if (fast == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) goto fail;
            PyErr_Clear();
            break;
        }
        TemplateObject *t = (TemplateObject *)fast;
        PyObject *values = PyTuple_GET_ITEM(item, 1);
        if (!Py_IS_TYPE(fast, &TemplateType) || t->head == NULL || !PyTuple_CheckExact(values) ||
            PyTuple_GET_SIZE(values) != t->variables)
            break;
        span_t slots[SLOT_VARS + MAX_VARS];
        int ok = 1;
        for (int v = 0; v < t->variables && ok; v++) {
            PyObject *value = PyTuple_GET_ITEM(values, v);
            if (PyUnicode_CheckExact(value) && PyUnicode_IS_ASCII(value)) {
                slots[SLOT_VARS + v].p = (const char *)PyUnicode_DATA(value);
                slots[SLOT_VARS + v].n = PyUnicode_GET_LENGTH(value);
            } else if (PyFloat_CheckExact(value) && json_time(PyFloat_AS_DOUBLE(value), times[v]) == 0) {
                slots[SLOT_VARS + v].p = times[v];
                slots[SLOT_VARS + v].n = 34;
            } else {
                ok = 0;
            }
        }
        if (!ok) break;
        slots[SLOT_SEQ].p = seq_text;
        slots[SLOT_SEQ].n = decimal(seq, seq_text);
        slots[SLOT_PREV].p = prev_text;
        slots[SLOT_PREV].n = prev_n;
        slots[SLOT_HASH].p = "";
        slots[SLOT_HASH].n = 0;
        hashed.len = 0;
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned int digest_len = 0;
        if (fill(&hashed, &t->rest, slots) < 0) {
            PyErr_NoMemory();
            goto fail;
        }
        if (!EVP_MD_CTX_copy_ex(work, t->head) || !EVP_DigestUpdate(work, hashed.p, hashed.len) ||
            !EVP_DigestFinal_ex(work, digest, &digest_len) || digest_len != 32) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not compute a SHA-256 digest");
            goto fail;
        }
        hash_text[0] = '"';
        for (int k = 0; k < 32; k++) {
            hash_text[1 + 2 * k] = HEX[digest[k] >> 4];
            hash_text[2 + 2 * k] = HEX[digest[k] & 15];
        }
        hash_text[65] = '"';
        slots[SLOT_HASH].p = hash_text;
        slots[SLOT_HASH].n = 66;
        size_t mark = lines.len;
        if (fill(&lines, &t->line, slots) < 0 || buf_put(&lines, "\n", 1) < 0) {
            PyErr_NoMemory();
            goto fail;
        }
        long long line_len = (long long)(lines.len - mark);
        if (size && size + line_len > max_bytes) {
            lines.len = mark; /* rotate first: the Python path does it */
            break;
        }
        /* (seq, prev_hash, hash): the previous record's hash object is this one's prev_hash */
        PyObject *hash_obj = PyUnicode_FromStringAndSize(hash_text + 1, 64);
        PyObject *seq_obj = PyLong_FromLongLong(seq);
        PyObject *prev_hash = last_hash;
        if (prev_hash == NULL) {
            prev_hash = prev_obj;
            Py_INCREF(prev_hash);
        }
        last_hash = NULL;
        PyObject *triple = PyTuple_New(3);
        if (hash_obj == NULL || seq_obj == NULL || triple == NULL) {
            Py_XDECREF(hash_obj);
            Py_XDECREF(seq_obj);
            Py_DECREF(prev_hash);
            Py_XDECREF(triple);
            goto fail;
        }
        PyTuple_SET_ITEM(triple, 0, seq_obj);
        PyTuple_SET_ITEM(triple, 1, prev_hash);
        Py_INCREF(hash_obj);
        PyTuple_SET_ITEM(triple, 2, hash_obj);
        last_hash = hash_obj; /* one reference, ours */
        int appended = PyList_Append(out, triple);
        Py_DECREF(triple);
        if (appended < 0) goto fail;
        size += line_len;
        seq += 1;
        memcpy(prev_text + 1, hash_text + 1, 64);
        prev_n = 66;
        Py_CLEAR(item);
        Py_CLEAR(fast);
    }
    if (last_hash != NULL) {
        head_obj = last_hash;
        last_hash = NULL;
    } else {
        head_obj = prev_obj;
        Py_INCREF(head_obj);
    }
    result = Py_BuildValue("(y#nLOL)", lines.p ? lines.p : "", (Py_ssize_t)lines.len, i, seq, head_obj,
                           size);
fail:
    Py_XDECREF(item);
    Py_XDECREF(fast);
    Py_XDECREF(last_hash);
    Py_XDECREF(head_obj);
    EVP_MD_CTX_free(work);
    PyMem_Free(lines.p);
    PyMem_Free(hashed.p);
    return result;
}

static PyMethodDef methods[] = {
    {"chain", chain, METH_VARARGS,
     PyDoc_STR("chain(items, start, seq, prev_hash, size, max_bytes, out) -> (lines, end, seq, "
               "prev_hash, size)")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_auditfast",
    .m_doc = "Audit records of a RecordTemplate, chained in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__auditfast(void) {
    sha256 = EVP_sha256();
    if (sha256 == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
        return NULL;
    }
    fast_name = PyUnicode_InternFromString("_fast");
    if (fast_name == NULL || PyType_Ready(&TemplateType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&TemplateType);
    if (PyModule_AddObject(m, "Template", (PyObject *)&TemplateType) < 0) {
        Py_DECREF(&TemplateType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_VARIABLES", MAX_VARS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
