/* Chaining a decided batch into records, in C.
 *
 * Why this exists. After the domain has decided a batch, the writer turns every event
 * into an EventRecord: a random id, the canonical bytes of its envelope, the SHA-256 link
 * to the record before it, and the record object itself. In Python that is a dozen
 * calls and allocations per event (a frozen dataclass's __init__ alone sets twelve
 * attributes through object.__setattr__), and on the node it was about two thirds of the
 * decider thread's time. Here one call chains the whole batch.
 *
 * The Python code in ledger/application/records.py stays the reference: chain_records
 * handles every input, and a test checks that both produce equal records with the same
 * canonical bytes, ids and hashes. Whenever this function meets an event it does not
 * handle (a stream id or type outside [A-Za-z0-9_.:-], an integer that is not an exact
 * int of 64 bits, data that orjson does not return as bytes), it returns None before
 * anything has been handed out, and the caller chains the batch in Python.
 *
 * The canonical bytes are the envelope without "hash", keys sorted, as orjson writes
 * them:
 *   {"data":D,"event_id":"U","position":P,"prev_hash":"H","recorded_at_us":R,
 *    "schema_version":S,"stream_id":"I","stream_version":V,"type":"T"}
 * and hash = sha256(prev_hash || canonical).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#define HASH_BYTES 32
#define ID_BYTES 16

static PyObject *s_int, *s_is_safe;
static PyObject *s_position, *s_event_id, *s_stream_id, *s_stream_version, *s_type,
    *s_schema_version, *s_recorded_at_us, *s_data, *s_prev_hash, *s_hash,
    *s_canonical_cache, *s_data_json;
static PyObject *option_kwnames;
static PyObject *empty_tuple;

static const char HEX[] = "0123456789abcdef";

static int safe_text(PyObject *s, const char **text, Py_ssize_t *length) {
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s)) {
        return 0;
    }
    const unsigned char *p = (const unsigned char *)PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-')) {
            return 0;
        }
    }
    *text = (const char *)p;
    *length = n;
    return 1;
}

/* 1 and the value for an exact int that fits in 64 signed bits, else 0 (no error set). */
static int exact_int(PyObject *o, long long *value) {
    if (!PyLong_CheckExact(o)) {
        return 0;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *value = v;
    return 1;
}

static char *put(char *p, const char *s, size_t n) {
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LITERAL(p, s) put((p), (s), sizeof(s) - 1)

static char *put_int(char *p, long long v) {
    char digits[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        digits[n++] = (char)('0' + (u % 10));
        u /= 10;
    } while (u != 0);
    if (v < 0) {
        *p++ = '-';
    }
    while (n > 0) {
        *p++ = digits[--n];
    }
    return p;
}

static char *put_hex(char *p, const unsigned char *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        *p++ = HEX[b[i] >> 4];
        *p++ = HEX[b[i] & 15];
    }
    return p;
}

static char *put_uuid(char *p, const unsigned char *b) {
    p = put_hex(p, b, 4);
    *p++ = '-';
    p = put_hex(p, b + 4, 2);
    *p++ = '-';
    p = put_hex(p, b + 6, 2);
    *p++ = '-';
    p = put_hex(p, b + 8, 2);
    *p++ = '-';
    return put_hex(p, b + 10, 6);
}

/* A new instance of a slotted class without running its __init__ (the fields are set
 * right after, through the slots' descriptors, as object.__setattr__ would). */
static PyObject *bare_instance(PyTypeObject *type) {
    return PyBaseObject_Type.tp_new(type, empty_tuple, NULL);
}

static int set_fields(PyObject *obj, PyObject **names, PyObject **values, int n) {
    for (int i = 0; i < n; i++) {
        if (PyObject_GenericSetAttr(obj, names[i], values[i]) < 0) {
            return -1;
        }
    }
    return 0;
}

/* chain_events(items, raw_ids, recorded_at_us, first_position, prev_hash, dumps, option,
 *              record_type, uuid_type, uuid_safe) -> list[EventRecord] | None */
static PyObject *py_chain_events(PyObject *self, PyObject *args) {
    PyObject *items, *raw_ids, *recorded_obj, *prev_obj, *dumps, *option, *uuid_safe;
    long long first_position;
    PyTypeObject *record_type, *uuid_type;
    if (!PyArg_ParseTuple(args, "O!O!O!LO!OOO!O!O:chain_events", &PyList_Type, &items,
                          &PyBytes_Type, &raw_ids, &PyLong_Type, &recorded_obj,
                          &first_position, &PyBytes_Type, &prev_obj, &dumps, &option,
                          &PyType_Type, &record_type, &PyType_Type, &uuid_type, &uuid_safe)) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(items);
    if (PyBytes_GET_SIZE(raw_ids) != count * ID_BYTES) {
        PyErr_Format(PyExc_ValueError, "chain_events: %zd items need %zd id bytes, got %zd",
                     count, count * ID_BYTES, PyBytes_GET_SIZE(raw_ids));
        return NULL;
    }
    if (PyBytes_GET_SIZE(prev_obj) != HASH_BYTES) {
        PyErr_SetString(PyExc_ValueError, "chain_events: prev_hash must be 32 bytes");
        return NULL;
    }
    long long recorded_at_us;
    if (!exact_int(recorded_obj, &recorded_at_us) || first_position < 0 ||
        first_position > INT64_MAX - count) {
        Py_RETURN_NONE;
    }
    const unsigned char *raw = (const unsigned char *)PyBytes_AS_STRING(raw_ids);
    PyObject *out = PyList_New(count);
    if (out == NULL) {
        return NULL;
    }
    char stack_buf[2048];
    char *heap_buf = NULL;
    size_t heap_size = 0;
    Py_INCREF(prev_obj);
    PyObject *prev = prev_obj; /* owned */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 5) {
            goto unhandled;
        }
        PyObject *stream_id = PyTuple_GET_ITEM(item, 0);
        PyObject *stream_version = PyTuple_GET_ITEM(item, 1);
        PyObject *type = PyTuple_GET_ITEM(item, 2);
        PyObject *schema_version = PyTuple_GET_ITEM(item, 3);
        PyObject *data = PyTuple_GET_ITEM(item, 4);
        const char *sid, *typ;
        Py_ssize_t sid_n, typ_n;
        long long version, schema;
        if (!safe_text(stream_id, &sid, &sid_n) || !safe_text(type, &typ, &typ_n) ||
            !exact_int(stream_version, &version) || !exact_int(schema_version, &schema)) {
            goto unhandled;
        }
        PyObject *call_args[2] = {data, option};
        PyObject *data_json = PyObject_Vectorcall(dumps, call_args, 1, option_kwnames);
        if (data_json == NULL) {
            goto fail;
        }
        if (!PyBytes_CheckExact(data_json)) {
            Py_DECREF(data_json);
            goto unhandled;
        }
        Py_ssize_t data_n = PyBytes_GET_SIZE(data_json);
        size_t need = (size_t)data_n + (size_t)sid_n + (size_t)typ_n + 400; /* 312 fixed */
        char *buf = stack_buf;
        if (need > sizeof(stack_buf)) {
            if (need > heap_size) {
                char *grown = PyMem_Realloc(heap_buf, need);
                if (grown == NULL) {
                    Py_DECREF(data_json);
                    PyErr_NoMemory();
                    goto fail;
                }
                heap_buf = grown;
                heap_size = need;
            }
            buf = heap_buf;
        }
        unsigned char id[ID_BYTES];
        memcpy(id, raw + i * ID_BYTES, ID_BYTES);
        id[6] = (unsigned char)((id[6] & 0x0F) | 0x40); /* version 4 */
        id[8] = (unsigned char)((id[8] & 0x3F) | 0x80); /* RFC 4122 variant */
        long long position = first_position + i;
        char *p = buf;
        p = PUT_LITERAL(p, "{\"data\":");
        p = put(p, PyBytes_AS_STRING(data_json), (size_t)data_n);
        p = PUT_LITERAL(p, ",\"event_id\":\"");
        p = put_uuid(p, id);
        p = PUT_LITERAL(p, "\",\"position\":");
        p = put_int(p, position);
        p = PUT_LITERAL(p, ",\"prev_hash\":\"");
        p = put_hex(p, (const unsigned char *)PyBytes_AS_STRING(prev), HASH_BYTES);
        p = PUT_LITERAL(p, "\",\"recorded_at_us\":");
        p = put_int(p, recorded_at_us);
        p = PUT_LITERAL(p, ",\"schema_version\":");
        p = put_int(p, schema);
        p = PUT_LITERAL(p, ",\"stream_id\":\"");
        p = put(p, sid, (size_t)sid_n);
        p = PUT_LITERAL(p, "\",\"stream_version\":");
        p = put_int(p, version);
        p = PUT_LITERAL(p, ",\"type\":\"");
        p = put(p, typ, (size_t)typ_n);
        p = PUT_LITERAL(p, "\"}");
        size_t canon_n = (size_t)(p - buf);

        unsigned char digest[HASH_BYTES];
        SHA256_CTX ctx;
        SHA256_Init(&ctx);
        SHA256_Update(&ctx, PyBytes_AS_STRING(prev), HASH_BYTES);
        SHA256_Update(&ctx, buf, canon_n);
        SHA256_Final(digest, &ctx);

        PyObject *canon = PyBytes_FromStringAndSize(buf, (Py_ssize_t)canon_n);
        PyObject *hash = PyBytes_FromStringAndSize((const char *)digest, HASH_BYTES);
        PyObject *position_obj = PyLong_FromLongLong(position);
        PyObject *id_int = _PyLong_FromByteArray(id, ID_BYTES, 0, 0);
        PyObject *uuid = bare_instance(uuid_type);
        PyObject *record = bare_instance(record_type);
        int ok = canon != NULL && hash != NULL && position_obj != NULL && id_int != NULL &&
                 uuid != NULL && record != NULL;
        if (ok) {
            PyObject *uuid_names[2] = {s_int, s_is_safe};
            PyObject *uuid_values[2] = {id_int, uuid_safe};
            PyObject *names[12] = {s_position,       s_event_id,       s_stream_id,
                                   s_stream_version, s_type,           s_schema_version,
                                   s_recorded_at_us, s_data,           s_prev_hash,
                                   s_hash,           s_canonical_cache, s_data_json};
            PyObject *values[12] = {position_obj, uuid,  stream_id, stream_version,
                                    type,         schema_version, recorded_obj, data,
                                    prev,         hash,  canon,     data_json};
            ok = set_fields(uuid, uuid_names, uuid_values, 2) == 0 &&
                 set_fields(record, names, values, 12) == 0;
        }
        Py_XDECREF(canon);
        Py_XDECREF(position_obj);
        Py_XDECREF(id_int);
        Py_XDECREF(uuid);
        Py_DECREF(data_json);
        if (!ok) {
            Py_XDECREF(hash);
            Py_XDECREF(record);
            goto fail;
        }
        PyList_SET_ITEM(out, i, record);
        Py_DECREF(prev);
        prev = hash; /* owned; the next record's prev_hash is this very object */
    }
    Py_DECREF(prev);
    PyMem_Free(heap_buf);
    return out;
unhandled:
    Py_DECREF(prev);
    PyMem_Free(heap_buf);
    Py_DECREF(out);
    Py_RETURN_NONE;
fail:
    Py_DECREF(prev);
    PyMem_Free(heap_buf);
    Py_DECREF(out);
    return NULL;
}


/* --- the event store's COPY rows ---------------------------------------------------------
 *
 * copy_rows(records, book) -> bytes | None: the text-format COPY rows of `records` for
 * the events table (columns book_id, position, event_id, stream_id, stream_version, type,
 * schema_version, data, recorded_at_us, prev_hash, hash), as PostgresEventStore builds
 * them in Python; None when a record is not of the plain kind (no cached data_json, an
 * id or type that COPY would have to escape, an integer beyond 64 bits), and the caller
 * builds the rows in Python. `book` is the book id, already escaped for COPY. */

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t more) {
    if (b->len + more <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + more) {
        cap *= 2;
    }
    char *grown = PyMem_Realloc(b->p, cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = grown;
    b->cap = cap;
    return 0;
}

static int copy_text(PyObject *s, const char **text, Py_ssize_t *length) {
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s)) {
        return 0;
    }
    const char *p = (const char *)PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] == '\\' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r') {
            return 0;
        }
    }
    *text = p;
    *length = n;
    return 1;
}

static int uuid_bytes(PyObject *uuid, unsigned char out[ID_BYTES]) {
    PyObject *value = PyObject_GetAttr(uuid, s_int);
    if (value == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ok = PyLong_CheckExact(value) &&
#if PY_VERSION_HEX >= 0x030D0000
             _PyLong_AsByteArray((PyLongObject *)value, out, ID_BYTES, 0, 0, 0) == 0;
#else
             _PyLong_AsByteArray((PyLongObject *)value, out, ID_BYTES, 0, 0) == 0;
#endif
    Py_DECREF(value);
    if (!ok) {
        PyErr_Clear();
    }
    return ok;
}

static PyObject *py_copy_rows(PyObject *self, PyObject *args) {
    PyObject *records, *book;
    if (!PyArg_ParseTuple(args, "OO!:copy_rows", &records, &PyBytes_Type, &book)) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(records, "copy_rows: records must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    Buf b = {NULL, 0, 0};
    PyObject *result = NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject *names[10] = {s_data_json, s_event_id,     s_stream_id, s_type,
                           s_position,  s_stream_version, s_schema_version,
                           s_recorded_at_us, s_prev_hash, s_hash};
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *r = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *v[10] = {NULL};
        int plain = 1;
        for (int k = 0; k < 10; k++) {
            v[k] = PyObject_GetAttr(r, names[k]);
            if (v[k] == NULL) {
                for (int j = 0; j < k; j++) {
                    Py_DECREF(v[j]);
                }
                goto fail;
            }
        }
        const char *sid = NULL, *typ = NULL;
        Py_ssize_t sid_n = 0, typ_n = 0;
        long long ints[4] = {0, 0, 0, 0};
        unsigned char id[ID_BYTES];
        plain = PyBytes_CheckExact(v[0]) && uuid_bytes(v[1], id) &&
                copy_text(v[2], &sid, &sid_n) && copy_text(v[3], &typ, &typ_n) &&
                exact_int(v[4], &ints[0]) && exact_int(v[5], &ints[1]) &&
                exact_int(v[6], &ints[2]) && exact_int(v[7], &ints[3]) &&
                PyBytes_CheckExact(v[8]) && PyBytes_GET_SIZE(v[8]) == HASH_BYTES &&
                PyBytes_CheckExact(v[9]) && PyBytes_GET_SIZE(v[9]) == HASH_BYTES;
        if (plain) {
            const char *data = PyBytes_AS_STRING(v[0]);
            Py_ssize_t data_n = PyBytes_GET_SIZE(v[0]);
            size_t need = (size_t)PyBytes_GET_SIZE(book) + (size_t)sid_n + (size_t)typ_n +
                          2 * (size_t)data_n + 300;
            if (buf_reserve(&b, need) < 0) {
                for (int k = 0; k < 10; k++) {
                    Py_DECREF(v[k]);
                }
                goto fail;
            }
            char *p = b.p + b.len;
            p = put(p, PyBytes_AS_STRING(book), (size_t)PyBytes_GET_SIZE(book));
            *p++ = '\t';
            p = put_int(p, ints[0]);
            *p++ = '\t';
            p = put_uuid(p, id);
            *p++ = '\t';
            p = put(p, sid, (size_t)sid_n);
            *p++ = '\t';
            p = put_int(p, ints[1]);
            *p++ = '\t';
            p = put(p, typ, (size_t)typ_n);
            *p++ = '\t';
            p = put_int(p, ints[2]);
            *p++ = '\t';
            for (Py_ssize_t j = 0; j < data_n; j++) {
                if (data[j] == '\\') {
                    *p++ = '\\';
                }
                *p++ = data[j];
            }
            *p++ = '\t';
            p = put_int(p, ints[3]);
            p = PUT_LITERAL(p, "\t\\\\x");
            p = put_hex(p, (const unsigned char *)PyBytes_AS_STRING(v[8]), HASH_BYTES);
            p = PUT_LITERAL(p, "\t\\\\x");
            p = put_hex(p, (const unsigned char *)PyBytes_AS_STRING(v[9]), HASH_BYTES);
            *p++ = '\n';
            b.len = (size_t)(p - b.p);
        }
        for (int k = 0; k < 10; k++) {
            Py_DECREF(v[k]);
        }
        if (!plain) {
            Py_INCREF(Py_None);
            result = Py_None;
            goto done;
        }
    }
    result = PyBytes_FromStringAndSize(b.p ? b.p : "", (Py_ssize_t)b.len);
done:
fail:
    PyMem_Free(b.p);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"chain_events", py_chain_events, METH_VARARGS,
     "chain_events(items, raw_ids, recorded_at_us, first_position, prev_hash, dumps, "
     "option, record_type, uuid_type, uuid_safe) -> list[EventRecord] | None"},
    {"copy_rows", py_copy_rows, METH_VARARGS,
     "copy_rows(records, book) -> bytes | None: the events table's COPY text rows"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chain",
    "Native chaining of decided events into records (see ledger.application.records).",
    -1, methods, NULL, NULL, NULL, NULL,
};

static int intern(PyObject **slot, const char *name) {
    *slot = PyUnicode_InternFromString(name);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__chain(void) {
    if (intern(&s_int, "int") < 0 || intern(&s_is_safe, "is_safe") < 0 ||
        intern(&s_position, "position") < 0 || intern(&s_event_id, "event_id") < 0 ||
        intern(&s_stream_id, "stream_id") < 0 ||
        intern(&s_stream_version, "stream_version") < 0 || intern(&s_type, "type") < 0 ||
        intern(&s_schema_version, "schema_version") < 0 ||
        intern(&s_recorded_at_us, "recorded_at_us") < 0 || intern(&s_data, "data") < 0 ||
        intern(&s_prev_hash, "prev_hash") < 0 || intern(&s_hash, "hash") < 0 ||
        intern(&s_canonical_cache, "canonical_cache") < 0 ||
        intern(&s_data_json, "data_json") < 0) {
        return NULL;
    }
    /* Interned: orjson matches keyword names by identity first. */
    PyObject *s_option = PyUnicode_InternFromString("option");
    if (s_option == NULL) {
        return NULL;
    }
    option_kwnames = PyTuple_Pack(1, s_option);
    Py_DECREF(s_option);
    empty_tuple = PyTuple_New(0);
    if (option_kwnames == NULL || empty_tuple == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
