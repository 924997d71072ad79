/* The audit's balance arithmetic over verified WAL records, in C.
 *
 * Why this exists. `ledger wal replay` re-derives every balance from the log: for each
 * record it decodes the envelope and moves amounts between accounts, checking each
 * event's "balances after" against its own arithmetic. In Python that was about 12 us
 * per event (decoding 3.4, the loop 2.7, the arithmetic 5.9). Here one call walks a run
 * of records that the native check (ledger/adapters/_walcodec.c) has already verified.
 *
 * The Python code in ledger/audit.py (_Books) stays the reference and owns every
 * finding. This function changes the audit's state only for records it can apply
 * completely: a transfer event whose envelope is well formed, whose accounts and hold
 * exist and agree, and whose balances-after match. At the first record of any other
 * kind (another event type, a field that is missing or of another type, an escaped
 * string, a number beyond 64 bits, a mismatch of any sort) it stops *before* changing
 * anything, and the reference code applies that record, or says what is wrong with it.
 * A test replays the same logs both ways and compares the whole state.
 *
 * The state is the reference's own objects: accounts {id: [debits_pending,
 * debits_posted, credits_pending, credits_posted, ledger, closed, entries, entries
 * amount, last entry position, sha256 of the entries]}, transfers {id: tuple | list
 * (a hold, with its resolving position last)}, forbidden {id}, and rows, the sha256 of the
 * transfers rows' other columns (transfer_bytes below, _transfer_bytes there). Each
 * movement adds one entry to each of its two accounts, in the bytes that ledger/audit.py
 * (_entry_bytes) defines and PostgreSQL rebuilds from the stored rows;
 * entry_bytes below writes the same bytes, and the account's hash object takes them.
 *
 * Record format (see ledger/adapters/wal.py): u32 length | u32 crc | u64 position |
 * u64 batch first | u32 batch count | u32 canonical length | canonical | padding |
 * 32-byte hash, little-endian.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define HASH_BYTES 32
#define HEAD_BYTES 32
#define DEPTH_MAX 64

static PyObject *s_pending, *s_none, *s_single, *s_post, *s_void, *s_posted, *s_voided,
    *s_expired, *s_update;

typedef struct {
    const char *s;
    Py_ssize_t n;
    int kind; /* 0 absent, 1 string without escapes, 2 null, 3 anything else */
} Field;

typedef struct {
    int seen;
    long long v[4]; /* debits_pending, debits_posted, credits_pending, credits_posted */
} Balances;

typedef struct {
    int has_amount, has_ts, has_code, has_timeout;
    int expires; /* 0 absent, 1 a number, 2 null */
    long long amount, ts, code, timeout, expires_at;
    Field debit_id, credit_id, transfer_id, pending_id, ledger;
    Field metadata; /* the raw value: kind 1 if it is exactly {}, 3 for any other */
    int flags; /* 0 absent, 1 being read, 2 pending true, 3 pending false */
    Balances debit_after, credit_after;
} Data;

typedef struct {
    Field type, event_id;
    int has_data;
    Data data;
} Envelope;

/* --- a strict reader for the compact JSON that orjson writes -------------------------- */

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
        p++;
    }
    return p;
}

/* A string at p (which is at the opening quote); *escaped says whether it has escapes. */
static const char *read_string(const char *p, const char *end, const char **s, Py_ssize_t *n,
                               int *escaped) {
    if (p >= end || *p != '"') {
        return NULL;
    }
    const char *start = ++p;
    int esc = 0;
    while (p < end) {
#if defined(__SSE2__)
        /* 16 bytes at a time up to the first quote, backslash or control character. */
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            __m128i special = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                             _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))),
                /* c < 0x20 (unsigned): the signed compare after flipping the top bit */
                _mm_cmplt_epi8(_mm_xor_si128(v, _mm_set1_epi8((char)0x80)),
                               _mm_set1_epi8((char)(0x20 ^ 0x80))));
            int mask = _mm_movemask_epi8(special);
            if (mask != 0) {
                p += __builtin_ctz((unsigned)mask);
                break;
            }
            p += 16;
        }
        if (p >= end) {
            break;
        }
#endif
        char c = *p;
        if (c == '"') {
            *s = start;
            *n = p - start;
            *escaped = esc;
            return p + 1;
        }
        if (c == '\\') {
            esc = 1;
            p += 2;
            continue;
        }
        if ((unsigned char)c < 0x20) {
            return NULL;
        }
        p++;
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *end, int depth);

static const char *skip_container(const char *p, const char *end, int depth, char close) {
    if (depth > DEPTH_MAX) {
        return NULL;
    }
    p = skip_ws(p + 1, end);
    if (p < end && *p == close) {
        return p + 1;
    }
    while (p < end) {
        if (close == '}') {
            const char *s;
            Py_ssize_t n;
            int esc;
            p = read_string(p, end, &s, &n, &esc);
            if (p == NULL) {
                return NULL;
            }
            p = skip_ws(p, end);
            if (p >= end || *p != ':') {
                return NULL;
            }
            p = skip_ws(p + 1, end);
        }
        p = skip_value(p, end, depth + 1);
        if (p == NULL) {
            return NULL;
        }
        p = skip_ws(p, end);
        if (p >= end) {
            return NULL;
        }
        if (*p == close) {
            return p + 1;
        }
        if (*p != ',') {
            return NULL;
        }
        p = skip_ws(p + 1, end);
    }
    return NULL;
}

static const char *skip_literal(const char *p, const char *end, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(end - p) < n || memcmp(p, word, n) != 0) {
        return NULL;
    }
    return p + n;
}

static const char *skip_value(const char *p, const char *end, int depth) {
    if (p >= end) {
        return NULL;
    }
    switch (*p) {
    case '"': {
        const char *s;
        Py_ssize_t n;
        int esc;
        return read_string(p, end, &s, &n, &esc);
    }
    case '{':
        return skip_container(p, end, depth, '}');
    case '[':
        return skip_container(p, end, depth, ']');
    case 't':
        return skip_literal(p, end, "true");
    case 'f':
        return skip_literal(p, end, "false");
    case 'n':
        return skip_literal(p, end, "null");
    default:
        if (*p == '-' || (*p >= '0' && *p <= '9')) {
            p++;
            while (p < end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' ||
                               *p == 'E' || *p == '+' || *p == '-')) {
                p++;
            }
            return p;
        }
        return NULL;
    }
}

/* An integer of at most 18 digits (so it fits in 64 bits); NULL for anything else. */
static const char *read_int(const char *p, const char *end, long long *out) {
    int negative = 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    const char *digits = p;
    long long v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        v = v * 10 + (*p - '0');
        p++;
        if (p - digits > 18) {
            return NULL;
        }
    }
    if (p == digits || (p - digits > 1 && *digits == '0')) {
        return NULL;
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) {
        return NULL;
    }
    *out = negative ? -v : v;
    return p;
}

static const char *read_field(const char *p, const char *end, Field *f) {
    if (f->kind != 0) {
        return NULL; /* a key given twice: the reference decides */
    }
    if (p < end && *p == '"') {
        int esc = 0;
        p = read_string(p, end, &f->s, &f->n, &esc);
        f->kind = esc ? 3 : 1;
        return p;
    }
    if (p < end && *p == 'n') {
        f->kind = 2;
        return skip_literal(p, end, "null");
    }
    f->kind = 3;
    return skip_value(p, end, 1);
}

#define KEY_IS(s, n, lit) ((n) == (Py_ssize_t)sizeof(lit) - 1 && memcmp((s), (lit), (n)) == 0)

/* Iterate an object's members: calls member(key, value position) for each. */
typedef const char *(*Member)(void *ctx, const char *key, Py_ssize_t key_n, const char *p,
                              const char *end);

static const char *read_object(const char *p, const char *end, Member member, void *ctx) {
    if (p >= end || *p != '{') {
        return NULL;
    }
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        return p + 1;
    }
    while (p < end) {
        const char *key;
        Py_ssize_t key_n;
        int esc;
        p = read_string(p, end, &key, &key_n, &esc);
        if (p == NULL || esc) {
            return NULL;
        }
        p = skip_ws(p, end);
        if (p >= end || *p != ':') {
            return NULL;
        }
        p = member(ctx, key, key_n, skip_ws(p + 1, end), end);
        if (p == NULL) {
            return NULL;
        }
        p = skip_ws(p, end);
        if (p >= end) {
            return NULL;
        }
        if (*p == '}') {
            return p + 1;
        }
        if (*p != ',') {
            return NULL;
        }
        p = skip_ws(p + 1, end);
    }
    return NULL;
}

static const char *balances_member(void *ctx, const char *k, Py_ssize_t n, const char *p,
                                   const char *end) {
    Balances *b = ctx;
    int i;
    if (KEY_IS(k, n, "debits_pending")) {
        i = 0;
    } else if (KEY_IS(k, n, "debits_posted")) {
        i = 1;
    } else if (KEY_IS(k, n, "credits_pending")) {
        i = 2;
    } else if (KEY_IS(k, n, "credits_posted")) {
        i = 3;
    } else {
        return skip_value(p, end, 2);
    }
    if (b->seen & (1 << i)) {
        return NULL;
    }
    b->seen |= 1 << i;
    return read_int(p, end, &b->v[i]);
}

static const char *flags_member(void *ctx, const char *k, Py_ssize_t n, const char *p,
                                const char *end) {
    int *flags = ctx;
    if (!KEY_IS(k, n, "pending")) {
        return skip_value(p, end, 2);
    }
    if (*flags != 1 || p >= end) { /* 1: the object was seen, pending not yet */
        return NULL;
    }
    if (*p == 't') {
        *flags = 2;
        return skip_literal(p, end, "true");
    }
    if (*p == 'f') {
        *flags = 3;
        return skip_literal(p, end, "false");
    }
    return NULL;
}

static const char *data_member(void *ctx, const char *k, Py_ssize_t n, const char *p,
                               const char *end) {
    Data *d = ctx;
    if (KEY_IS(k, n, "amount_minor")) {
        if (d->has_amount) {
            return NULL;
        }
        d->has_amount = 1;
        return read_int(p, end, &d->amount);
    }
    if (KEY_IS(k, n, "code") || KEY_IS(k, n, "timeout_s")) {
        int *seen = k[0] == 'c' ? &d->has_code : &d->has_timeout;
        if (*seen) {
            return NULL;
        }
        *seen = 1;
        return read_int(p, end, k[0] == 'c' ? &d->code : &d->timeout);
    }
    if (KEY_IS(k, n, "expires_at_us")) {
        if (d->expires != 0) {
            return NULL;
        }
        if (p < end && *p == 'n') {
            d->expires = 2;
            return skip_literal(p, end, "null");
        }
        d->expires = 1;
        return read_int(p, end, &d->expires_at);
    }
    if (KEY_IS(k, n, "timestamp_us")) {
        if (d->has_ts) {
            return NULL;
        }
        d->has_ts = 1;
        return read_int(p, end, &d->ts);
    }
    if (KEY_IS(k, n, "debit_account_id")) {
        return read_field(p, end, &d->debit_id);
    }
    if (KEY_IS(k, n, "credit_account_id")) {
        return read_field(p, end, &d->credit_id);
    }
    if (KEY_IS(k, n, "transfer_id")) {
        return read_field(p, end, &d->transfer_id);
    }
    if (KEY_IS(k, n, "pending_id")) {
        return read_field(p, end, &d->pending_id);
    }
    if (KEY_IS(k, n, "ledger")) {
        return read_field(p, end, &d->ledger);
    }
    if (KEY_IS(k, n, "flags")) {
        if (d->flags != 0 || p >= end || *p != '{') {
            return NULL;
        }
        d->flags = 1;
        p = read_object(p, end, flags_member, &d->flags);
        if (d->flags == 1) {
            d->flags = 3; /* no "pending": the reference's default, False */
        }
        return p;
    }
    if (KEY_IS(k, n, "debit_account_after") || KEY_IS(k, n, "credit_account_after")) {
        Balances *b = k[0] == 'd' ? &d->debit_after : &d->credit_after;
        if (b->seen) {
            return NULL;
        }
        p = read_object(p, end, balances_member, b);
        if (b->seen != 15) {
            return NULL;
        }
        return p;
    }
    if (KEY_IS(k, n, "metadata")) {
        if (d->metadata.kind != 0) {
            return NULL;
        }
        const char *start = p;
        p = skip_value(p, end, 2);
        if (p != NULL) {
            d->metadata.s = start;
            d->metadata.n = p - start;
            d->metadata.kind = d->metadata.n == 2 && start[0] == '{' && start[1] == '}' ? 1 : 3;
        }
        return p;
    }
    if (KEY_IS(k, n, "account_id") || KEY_IS(k, n, "account_after")) {
        return NULL; /* fields of other event types: the reference */
    }
    return skip_value(p, end, 2);
}

static const char *envelope_member(void *ctx, const char *k, Py_ssize_t n, const char *p,
                                   const char *end) {
    Envelope *e = ctx;
    if (KEY_IS(k, n, "data")) {
        if (e->has_data) {
            return NULL;
        }
        e->has_data = 1;
        return read_object(p, end, data_member, &e->data);
    }
    if (KEY_IS(k, n, "type")) {
        return read_field(p, end, &e->type);
    }
    if (KEY_IS(k, n, "event_id")) {
        return read_field(p, end, &e->event_id);
    }
    return skip_value(p, end, 1);
}

/* --- the arithmetic ------------------------------------------------------------------- */

enum { T_CREATED = 1, T_POSTED, T_VOIDED, T_EXPIRED };

static int event_kind(const Field *t) {
    if (t->kind != 1) {
        return 0;
    }
    if (KEY_IS(t->s, t->n, "TransferCreated")) {
        return T_CREATED;
    }
    if (KEY_IS(t->s, t->n, "PendingTransferPosted")) {
        return T_POSTED;
    }
    if (KEY_IS(t->s, t->n, "PendingTransferVoided")) {
        return T_VOIDED;
    }
    if (KEY_IS(t->s, t->n, "PendingTransferExpired")) {
        return T_EXPIRED;
    }
    return 0;
}

/* 1 and the value of an exact int of 64 bits; 0 otherwise (no error left set). */
static int int_of(PyObject *o, long long *v) {
    if (!PyLong_CheckExact(o)) {
        return 0;
    }
    int overflow = 0;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (*v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* The account's four balances and its entry amount, if it is a list of the expected
 * shape holding 64-bit ints. */
static int account_of(PyObject *account, long long b[4], long long *entries,
                      long long *entry_sum) {
    if (account == NULL || !PyList_CheckExact(account) || PyList_GET_SIZE(account) != 10) {
        return 0;
    }
    for (int i = 0; i < 4; i++) {
        if (!int_of(PyList_GET_ITEM(account, i), &b[i])) {
            return 0;
        }
    }
    return int_of(PyList_GET_ITEM(account, 6), entries) &&
           int_of(PyList_GET_ITEM(account, 7), entry_sum);
}

static int same_text(PyObject *o, const Field *f) {
    if (!PyUnicode_CheckExact(o) || !PyUnicode_IS_ASCII(o)) {
        return 0;
    }
    return PyUnicode_GET_LENGTH(o) == f->n && memcmp(PyUnicode_DATA(o), f->s, f->n) == 0;
}

static int is_text(PyObject *o, const char *ascii) {
    return PyUnicode_CheckExact(o) && PyUnicode_CompareWithASCIIString(o, ascii) == 0;
}

static PyObject *text(const Field *f) {
    return PyUnicode_DecodeUTF8(f->s, f->n, "strict");
}

/* Set item i of list to a new int v (steals nothing; returns -1 on error). */
static int set_int(PyObject *list, Py_ssize_t i, long long v) {
    PyObject *o = PyLong_FromLongLong(v);
    if (o == NULL) {
        return -1;
    }
    return PyList_SetItem(list, i, o); /* steals o */
}

static int set_obj(PyObject *list, Py_ssize_t i, PyObject *o) {
    Py_INCREF(o);
    return PyList_SetItem(list, i, o);
}

/* --- the accounts by id text, without making a str per look-up --------------------------
 *
 * Every transfer event names two accounts; a book has few of them. Making a str of each
 * id and looking it up in the accounts dict was the largest single cost of this loop, so
 * the accounts already found are kept here by the bytes of their id, with the key and
 * the list of the accounts dict (strong references). The reference code never replaces
 * an account's list (it changes it in place), so an entry stays right; the table belongs
 * to one accounts dict and starts afresh when another one is passed. */

#define ID_INLINE 40

typedef struct {
    uint64_t hash;
    PyObject *key;  /* the str key of the accounts dict */
    PyObject *list; /* its value */
    /* Within one apply_records call, the account's numbers are kept here and written
     * back to its list when the call returns: read in call `gen`; `dirty` once changed. */
    unsigned long gen;
    int dirty;
    long long b[4], entries, sum, last;
    /* The id's bytes, kept beside the hash so that a look-up compares them without
     * reading the str object (id_n is ID_INLINE + 1 for an id too long to keep). */
    uint8_t id_n;
    char id[ID_INLINE];
} Slot;

static Slot *slots;
static size_t slots_cap, slots_used;
static PyObject *slots_owner; /* the accounts dict the table describes (strong ref) */
static unsigned long slots_gen = 1; /* the apply_records call: values of another are stale */
static size_t *dirty;               /* the slots changed in this call (indices) */
static size_t dirty_n;

static int set_int(PyObject *list, Py_ssize_t i, long long v);

/* Write the changed accounts' numbers back to their lists (before any return to Python,
 * which reads and changes the lists: the reference applies the records this code leaves
 * to it). */
static int slots_flush(void) {
    int failed = 0;
    for (size_t i = 0; i < dirty_n; i++) {
        Slot *t = &slots[dirty[i]];
        for (int k = 0; k < 4 && !failed; k++) {
            failed = set_int(t->list, k, t->b[k]) < 0;
        }
        failed = failed || set_int(t->list, 6, t->entries) < 0 ||
                 set_int(t->list, 7, t->sum) < 0 || set_int(t->list, 8, t->last) < 0;
        t->dirty = 0;
    }
    dirty_n = 0;
    return failed ? -1 : 0;
}

/* A hash of an id's bytes, eight at a time (a multiply and a shift each, then a final
 * mix so that the low bits, which pick the slot, depend on every byte): a byte-at-a-time
 * hash of a 36-character id was a chain of 36 dependent multiplies, per look-up. */
static inline uint64_t id_hash(const char *s, Py_ssize_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL * (uint64_t)(n + 1);
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 31;
    }
    if (i < n) {
        uint64_t w = 0;
        memcpy(&w, s + i, (size_t)(n - i));
        h = (h ^ w) * 0x94d049bb133111ebULL;
        h ^= h >> 29;
    }
    h = (h ^ (h >> 32)) * 0xff51afd7ed558ccdULL;
    return h ^ (h >> 33);
}

/* Whether the slot's account has the id f names (the 36 bytes of a canonical id compared
 * as five words, in line). */
static inline int slot_is(const Slot *t, const Field *f) {
    if (t->id_n > ID_INLINE) {
        PyObject *k = t->key;
        return PyUnicode_GET_LENGTH(k) == f->n &&
               memcmp(PyUnicode_DATA(k), f->s, (size_t)f->n) == 0;
    }
    if (t->id_n != f->n) {
        return 0;
    }
    if (f->n == 36) {
        uint64_t a[4], b[4];
        uint32_t a4, b4;
        memcpy(a, t->id, 32);
        memcpy(b, f->s, 32);
        memcpy(&a4, t->id + 32, 4);
        memcpy(&b4, f->s + 32, 4);
        return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a4 ^ b4)) == 0;
    }
    return memcmp(t->id, f->s, (size_t)f->n) == 0;
}

static void slots_reset(void) {
    for (size_t i = 0; i < slots_cap; i++) {
        Py_XDECREF(slots[i].key);
        Py_XDECREF(slots[i].list);
    }
    PyMem_Free(slots);
    PyMem_Free(dirty);
    slots = NULL;
    dirty = NULL;
    slots_cap = slots_used = dirty_n = 0;
    Py_CLEAR(slots_owner);
}

static int slots_grow(void) {
    size_t cap = slots_cap ? slots_cap * 2 : 1024;
    if (slots_flush() < 0) { /* the dirty list names slots by where they are now */
        return -1;
    }
    Slot *grown = PyMem_Calloc(cap, sizeof(Slot));
    size_t *grown_dirty = PyMem_Realloc(dirty, cap * sizeof(size_t));
    if (grown_dirty != NULL) {
        dirty = grown_dirty;
    }
    if (grown == NULL || grown_dirty == NULL) {
        PyMem_Free(grown);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < slots_cap; i++) {
        if (slots[i].key != NULL) {
            size_t j = slots[i].hash & (cap - 1);
            while (grown[j].key != NULL) {
                j = (j + 1) & (cap - 1);
            }
            grown[j] = slots[i];
        }
    }
    PyMem_Free(slots);
    slots = grown;
    slots_cap = cap;
    return 0;
}

/* Room for two more accounts, so that the look-ups of one event move no slot; and the
 * table of this accounts dict. -1 on error. */
static int slots_ready(PyObject *accounts) {
    if (slots_owner != accounts) {
        slots_reset();
        Py_INCREF(accounts);
        slots_owner = accounts;
    }
    return (slots_used + 2) * 2 > slots_cap ? slots_grow() : 0;
}

/* The slot of the account named by f, NULL if there is none (no error) or on error (error
 * set). Call slots_ready first. */
static Slot *account_named(PyObject *accounts, const Field *f) {
    uint64_t h = id_hash(f->s, f->n);
    size_t i = h & (slots_cap - 1);
    while (slots[i].key != NULL) {
        if (slots[i].hash == h && slot_is(&slots[i], f)) {
            return &slots[i];
        }
        i = (i + 1) & (slots_cap - 1);
    }
    PyObject *k = PyUnicode_DecodeUTF8(f->s, f->n, "strict");
    if (k == NULL) {
        PyErr_Clear(); /* not UTF-8: the reference says so */
        return NULL;
    }
    PyObject *list = PyDict_GetItemWithError(accounts, k);
    if (list == NULL || !PyUnicode_IS_ASCII(k)) {
        Py_DECREF(k);
        return NULL; /* no such account (or an error, which stays set) */
    }
    Py_INCREF(list);
    slots[i].hash = h;
    slots[i].key = k;
    slots[i].list = list;
    if (f->n <= ID_INLINE) {
        slots[i].id_n = (uint8_t)f->n;
        memcpy(slots[i].id, f->s, (size_t)f->n);
    } else {
        slots[i].id_n = ID_INLINE + 1;
    }
    slots[i].gen = 0;
    slots[i].dirty = 0;
    slots_used++;
    return &slots[i];
}

/* The account's numbers in its slot, read from its list once per call; 0 if the list is
 * not of the shape this code writes (the reference then applies the record). */
static int slot_load(Slot *t) {
    if (t->gen == slots_gen) {
        return 1;
    }
    if (!account_of(t->list, t->b, &t->entries, &t->sum)) {
        return 0;
    }
    t->gen = slots_gen;
    t->dirty = 0;
    return 1;
}

static void slot_changed(Slot *t, const long long b[4], long long entries, long long sum,
                         long long last) {
    memcpy(t->b, b, 4 * sizeof(long long));
    t->entries = entries;
    t->sum = sum;
    t->last = last;
    if (!t->dirty) {
        t->dirty = 1;
        dirty[dirty_n++] = (size_t)(t - slots);
    }
}

/* The few ledger names, made once each. */
#define LEDGERS_MAX 64
static PyObject *ledgers[LEDGERS_MAX];
static int ledgers_n;

static PyObject *ledger_text(const Field *f) {
    for (int i = 0; i < ledgers_n; i++) {
        PyObject *o = ledgers[i];
        if (PyUnicode_GET_LENGTH(o) == f->n && memcmp(PyUnicode_DATA(o), f->s, (size_t)f->n) == 0) {
            return Py_NewRef(o);
        }
    }
    PyObject *o = PyUnicode_DecodeUTF8(f->s, f->n, "strict");
    if (o != NULL && ledgers_n < LEDGERS_MAX && PyUnicode_IS_ASCII(o)) {
        ledgers[ledgers_n++] = Py_NewRef(o);
    }
    return o;
}

/* Hex digit values, and 16 for a byte that is not one. */
static uint8_t hex_value[256];

static void hex_init(void) {
    memset(hex_value, 16, sizeof(hex_value));
    for (int c = 0; c < 10; c++) {
        hex_value['0' + c] = (uint8_t)c;
    }
    for (int c = 0; c < 6; c++) {
        hex_value['a' + c] = hex_value['A' + c] = (uint8_t)(10 + c);
    }
}

#if defined(__SSE2__)
/* The values of 16 hex digits (either case), each in its byte; *ok is cleared if any
 * byte is not a hex digit. A byte is in [lo, lo + n) when, less lo and with its top bit
 * flipped, it compares below n - 128 as a signed byte. */
static inline __m128i hex_nibbles(__m128i v, int *ok) {
    const __m128i flip = _mm_set1_epi8((char)0x80);
    __m128i digit = _mm_sub_epi8(v, _mm_set1_epi8('0'));
    __m128i is_digit = _mm_cmplt_epi8(_mm_xor_si128(digit, flip), _mm_set1_epi8((char)(10 ^ 0x80)));
    __m128i letter = _mm_sub_epi8(_mm_or_si128(v, _mm_set1_epi8(0x20)), _mm_set1_epi8('a'));
    __m128i is_letter = _mm_cmplt_epi8(_mm_xor_si128(letter, flip), _mm_set1_epi8((char)(6 ^ 0x80)));
    if (_mm_movemask_epi8(_mm_or_si128(is_digit, is_letter)) != 0xffff) {
        *ok = 0;
    }
    return _mm_or_si128(_mm_and_si128(is_digit, digit),
                        _mm_and_si128(is_letter, _mm_add_epi8(letter, _mm_set1_epi8(10))));
}
#endif

/* The 16 bytes of an id in the canonical text form (8-4-4-4-12 hex digits, either
 * case); 0 for any other form, which the reference parses. */
static int uuid16(const Field *f, uint8_t out[16]) {
    if (f->kind != 1 || f->n != 36) {
        return 0;
    }
    const uint8_t *s = (const uint8_t *)f->s;
    if (s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-') {
        return 0;
    }
#if defined(__SSE2__)
    /* The 32 hex digits side by side, decoded 16 at a time; then each pair of nibbles
     * (a 16-bit lane: the high nibble's byte first) becomes one byte. */
    uint8_t h[32];
    memcpy(h, s, 8);
    memcpy(h + 8, s + 9, 4);
    memcpy(h + 12, s + 14, 4);
    memcpy(h + 16, s + 19, 4);
    memcpy(h + 20, s + 24, 12);
    int ok = 1;
    __m128i va = hex_nibbles(_mm_loadu_si128((const __m128i *)h), &ok);
    __m128i vb = hex_nibbles(_mm_loadu_si128((const __m128i *)(h + 16)), &ok);
    if (!ok) {
        return 0;
    }
    const __m128i low = _mm_set1_epi16(0x00ff);
    __m128i pa = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(va, low), 4), _mm_srli_epi16(va, 8));
    __m128i pb = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(vb, low), 4), _mm_srli_epi16(vb, 8));
    _mm_storeu_si128((__m128i *)out, _mm_packus_epi16(pa, pb));
    return 1;
#else
    static const uint8_t at[16] = {0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34};
    unsigned bad = 0;
    for (int k = 0; k < 16; k++) {
        uint8_t hi = hex_value[s[at[k]]], lo = hex_value[s[at[k] + 1]];
        bad |= (hi | lo) & 16;
        out[k] = (uint8_t)(hi << 4 | (lo & 15));
    }
    return bad == 0;
#endif
}

/* v as 8 bytes, big-endian (one byte swap and one store where the host is little-endian). */
static inline uint8_t *put_i64(uint8_t *p, long long v) {
    uint64_t u = (uint64_t)v;
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    u = __builtin_bswap64(u);
    memcpy(p, &u, 8);
#else
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)(u & 0xff);
        u >>= 8;
    }
#endif
    return p + 8;
}

static uint8_t *put_text(uint8_t *p, const char *s, Py_ssize_t n) {
    memcpy(p, s, (size_t)n);
    p[n] = 0;
    return p + n + 1;
}

#define LEDGER_TEXT_MAX 64
#define ENTRY_BYTES_MAX (88 + 32 + 7 + LEDGER_TEXT_MAX + 1 + 17)

typedef struct {
    uint8_t account[16], transfer[16], pending[16];
    int has_pending;
} EntryIds;

/* One entry as ledger/audit.py's _entry_bytes forms it; returns its length. */
static Py_ssize_t entry_bytes(uint8_t *out, long long position, const uint8_t account[16],
                              const EntryIds *ids, long long amount, long long ts,
                              const long long b[4], const char *type, const char *side,
                              const Field *ledger) {
    uint8_t *p = put_i64(out, position);
    memcpy(p, account, 16);
    memcpy(p + 16, ids->transfer, 16);
    p = put_i64(p + 32, amount);
    p = put_i64(p, ts);
    for (int i = 0; i < 4; i++) {
        p = put_i64(p, b[i]);
    }
    p = put_text(p, type, (Py_ssize_t)strlen(type));
    p = put_text(p, side, (Py_ssize_t)strlen(side));
    p = put_text(p, ledger->s, ledger->n);
    if (ids->has_pending) {
        *p++ = 1;
        memcpy(p, ids->pending, 16);
        p += 16;
    } else {
        *p++ = 0;
    }
    return p - out;
}

/* EntryHash: the sha256 of an account's entries, as hashlib's sha256 would give it, with
 * an update that the native pass calls without building a bytes object. */
typedef struct {
    PyObject_HEAD SHA256_CTX ctx;
} EntryHash;

static PyObject *entry_hash_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "EntryHash() takes no arguments");
        return NULL;
    }
    EntryHash *self = (EntryHash *)type->tp_alloc(type, 0);
    if (self != NULL) {
        SHA256_Init(&self->ctx);
    }
    return (PyObject *)self;
}

static PyObject *entry_hash_update(EntryHash *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    SHA256_Update(&self->ctx, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *entry_hash_digest(EntryHash *self, PyObject *unused) {
    SHA256_CTX copy = self->ctx;
    unsigned char out[SHA256_DIGEST_LENGTH];
    SHA256_Final(out, &copy);
    return PyBytes_FromStringAndSize((const char *)out, SHA256_DIGEST_LENGTH);
}

static PyMethodDef entry_hash_methods[] = {
    {"update", (PyCFunction)entry_hash_update, METH_O, "update(data) -> None"},
    {"digest", (PyCFunction)entry_hash_digest, METH_NOARGS, "digest() -> bytes (32)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EntryHashType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ledger._replay.EntryHash",
    .tp_basicsize = sizeof(EntryHash),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "sha256 of an account's entries (hashlib.sha256's digest, a faster update)",
    .tp_new = entry_hash_new,
    .tp_methods = entry_hash_methods,
};

static int hash_update(PyObject *hash, const uint8_t *bytes, Py_ssize_t n) {
    if (Py_IS_TYPE(hash, &EntryHashType)) {
        SHA256_Update(&((EntryHash *)hash)->ctx, bytes, (size_t)n);
        return 0;
    }
    PyObject *chunk = PyBytes_FromStringAndSize((const char *)bytes, n);
    if (chunk == NULL) {
        return -1;
    }
    PyObject *r = PyObject_CallMethodOneArg(hash, s_update, chunk);
    Py_DECREF(chunk);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static const char *const TYPE_NAMES[] = {"", "TransferCreated", "PendingTransferPosted",
                                         "PendingTransferVoided", "PendingTransferExpired"};

#define TRANSFER_BYTES_MAX (8 + 16 + 4 + 8 + 8 + 9 + 17)

/* A transfers row's hashed columns as ledger/audit.py's _transfer_bytes forms them. */
static Py_ssize_t transfer_bytes(uint8_t *out, long long position, const EntryIds *ids,
                                 long long code, long long ts, long long timeout,
                                 int has_expiry, long long expires_at, int has_pending) {
    uint8_t *p = put_i64(out, position);
    memcpy(p, ids->transfer, 16);
    p += 16;
    uint32_t c = (uint32_t)(int32_t)code;
    for (int i = 3; i >= 0; i--) {
        p[i] = (uint8_t)(c & 0xff);
        c >>= 8;
    }
    p = put_i64(p + 4, ts);
    p = put_i64(p, timeout);
    *p++ = has_expiry ? 1 : 0;
    if (has_expiry) {
        p = put_i64(p, expires_at);
    }
    *p++ = has_pending ? 1 : 0;
    if (has_pending) {
        memcpy(p, ids->pending, 16);
        p += 16;
    }
    return p - out;
}

typedef struct {
    PyObject *accounts, *transfers, *forbidden, *rows;
} Books;

/* ledger/audit.py's _metadata_bytes, for a transfer's metadata that is not {} (set by
 * set_metadata_bytes; without it such a record is left to the reference). */
static PyObject *metadata_fn = NULL;

#define METADATA_PAIRS_MAX 32
#define METADATA_BYTES_MAX 2048

typedef struct {
    const char *key, *value; /* value NULL: not a string */
    Py_ssize_t key_n, value_n;
} MetaPair;

typedef struct {
    MetaPair pair[METADATA_PAIRS_MAX];
    int n;
} MetaPairs;

static const char *meta_member(void *ctx, const char *k, Py_ssize_t n, const char *p,
                               const char *end) {
    MetaPairs *m = ctx;
    if (m->n == METADATA_PAIRS_MAX) {
        return NULL;
    }
    MetaPair *t = &m->pair[m->n++];
    t->key = k;
    t->key_n = n;
    t->value = NULL;
    if (p < end && *p == '"') {
        int esc = 0;
        p = read_string(p, end, &t->value, &t->value_n, &esc);
        return esc ? NULL : p;
    }
    return skip_value(p, end, 1);
}

static int meta_key_cmp(const MetaPair *a, const MetaPair *b) {
    Py_ssize_t n = a->key_n < b->key_n ? a->key_n : b->key_n;
    int c = memcmp(a->key, b->key, (size_t)n);
    return c != 0 ? c : (a->key_n > b->key_n) - (a->key_n < b->key_n);
}

static uint8_t *put_u32(uint8_t *p, size_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

/* _metadata_bytes here, for the metadata this code reads without the reference: an object
 * whose keys and string values need no unescaping, no key given twice, a few pairs in
 * all. Returns the length written to out, or -1 to leave it to _metadata_bytes. */
static Py_ssize_t metadata_bytes(const char *s, Py_ssize_t n, uint8_t *out) {
    MetaPairs m;
    m.n = 0;
    const char *end = s + n;
    const char *p = read_object(skip_ws(s, end), end, meta_member, &m);
    if (p == NULL || skip_ws(p, end) != end) {
        return -1;
    }
    if (m.n == 0) {
        out[0] = 0;
        return 1;
    }
    for (int i = 1; i < m.n; i++) { /* insertion sort: a few pairs */
        MetaPair t = m.pair[i];
        int j = i - 1;
        while (j >= 0 && meta_key_cmp(&m.pair[j], &t) > 0) {
            m.pair[j + 1] = m.pair[j];
            j--;
        }
        m.pair[j + 1] = t;
    }
    size_t size = 1;
    for (int i = 0; i < m.n; i++) {
        if (i > 0 && meta_key_cmp(&m.pair[i - 1], &m.pair[i]) == 0) {
            return -1; /* a key twice: the reference keeps the last, as orjson does */
        }
        size += 4 + (size_t)m.pair[i].key_n + (m.pair[i].value ? 4 + (size_t)m.pair[i].value_n : 1);
    }
    if (size > METADATA_BYTES_MAX) {
        return -1;
    }
    uint8_t *q = out;
    *q++ = 1;
    for (int i = 0; i < m.n; i++) {
        const MetaPair *t = &m.pair[i];
        q = put_u32(q, (size_t)t->key_n);
        memcpy(q, t->key, (size_t)t->key_n);
        q += t->key_n;
        if (t->value != NULL) {
            q = put_u32(q, (size_t)t->value_n);
            memcpy(q, t->value, (size_t)t->value_n);
            q += t->value_n;
        } else {
            *q++ = 0xff;
        }
    }
    return q - out;
}

/* Apply one decoded transfer event at `position`: 1 applied, 0 left to the reference
 * (nothing changed), -1 error. */
static int apply(Books *books, const Envelope *e, int kind, long long position) {
    const Data *d = &e->data;
    if (!e->has_data || e->event_id.kind != 1 || d->debit_id.kind != 1 ||
        d->credit_id.kind != 1 || !d->debit_after.seen || !d->credit_after.seen ||
        d->ledger.kind == 3 || d->transfer_id.kind == 3 || d->pending_id.kind == 3) {
        return 0;
    }
    long long amount = d->has_amount ? d->amount : 0;
    int result = 0;
    PyObject *debit_key = NULL, *credit_key = NULL; /* borrowed from the table */
    PyObject *transfer_key = d->transfer_id.kind == 1 ? text(&d->transfer_id) : NULL;
    PyObject *pending_key = d->pending_id.kind == 1 ? text(&d->pending_id) : NULL;
    PyObject *ledger = d->ledger.kind == 1 ? ledger_text(&d->ledger) : Py_NewRef(Py_None);
    PyObject *record = NULL, *meta = NULL;
    if (ledger == NULL || (d->transfer_id.kind == 1 && transfer_key == NULL) ||
        (d->pending_id.kind == 1 && pending_key == NULL)) {
        PyErr_Clear(); /* not UTF-8: the reference says so */
        goto done;
    }
    if (slots_ready(books->accounts) < 0) {
        result = -1;
        goto done;
    }
    Slot *ds = account_named(books->accounts, &d->debit_id);
    Slot *cs = ds ? account_named(books->accounts, &d->credit_id) : NULL;
    if (PyErr_Occurred()) {
        result = -1;
        goto done;
    }
    if (ds == NULL || cs == NULL || ds == cs || !slot_load(ds) || !slot_load(cs)) {
        goto done;
    }
    PyObject *debit = ds->list, *credit = cs->list;
    debit_key = ds->key;
    credit_key = cs->key;
    long long db[4], cb[4];
    long long d_entries = ds->entries, d_sum = ds->sum, c_entries = cs->entries,
              c_sum = cs->sum;
    memcpy(db, ds->b, sizeof(db));
    memcpy(cb, cs->b, sizeof(cb));
    PyObject *hold = NULL;
    long long held = 0;
    int ok = 1;
    if (kind == T_CREATED) {
        if (transfer_key == NULL || d->flags < 2) {
            goto done;
        }
        int forbidden = PySet_Contains(books->forbidden, transfer_key);
        if (forbidden != 0) {
            result = forbidden < 0 ? -1 : 0;
            goto done;
        }
        if (d->flags == 2) {
            ok = !__builtin_add_overflow(db[0], amount, &db[0]) &&
                 !__builtin_add_overflow(cb[2], amount, &cb[2]);
        } else {
            ok = !__builtin_add_overflow(db[1], amount, &db[1]) &&
                 !__builtin_add_overflow(cb[3], amount, &cb[3]);
        }
    } else {
        if (pending_key == NULL || (kind != T_EXPIRED && transfer_key == NULL)) {
            goto done;
        }
        hold = PyDict_GetItemWithError(books->transfers, pending_key);
        if (hold == NULL) {
            result = PyErr_Occurred() ? -1 : 0;
            goto done;
        }
        if (!PyList_CheckExact(hold) || PyList_GET_SIZE(hold) != 8 ||
            !is_text(PyList_GET_ITEM(hold, 0), "pending") ||
            !same_text(PyList_GET_ITEM(hold, 3), &d->debit_id) ||
            !same_text(PyList_GET_ITEM(hold, 4), &d->credit_id) ||
            !int_of(PyList_GET_ITEM(hold, 1), &held)) {
            goto done; /* not a pending hold of these accounts (or not of the shape this
                          code writes): the reference */
        }
        ok = !__builtin_sub_overflow(db[0], held, &db[0]) &&
             !__builtin_sub_overflow(cb[2], held, &cb[2]);
        if (kind == T_POSTED) {
            ok = ok && !__builtin_add_overflow(db[1], amount, &db[1]) &&
                 !__builtin_add_overflow(cb[3], amount, &cb[3]);
        }
    }
    ok = ok && !__builtin_add_overflow(d_sum, amount, &d_sum) &&
         !__builtin_add_overflow(c_sum, amount, &c_sum);
    if (!ok || memcmp(db, d->debit_after.v, sizeof(db)) != 0 ||
        memcmp(cb, d->credit_after.v, sizeof(cb)) != 0) {
        goto done;
    }
    /* The two entries' bytes, still before any change: a timestamp that is missing, or an
     * id or a ledger of another form, leaves the record to the reference. */
    EntryIds ids;
    uint8_t debit_account[16], credit_account[16];
    ids.has_pending = d->pending_id.kind == 1;
    if (!d->has_ts || d->ledger.kind != 1 || d->ledger.n > LEDGER_TEXT_MAX ||
        !uuid16(&d->debit_id, debit_account) || !uuid16(&d->credit_id, credit_account) ||
        !uuid16(kind == T_EXPIRED ? &d->pending_id : &d->transfer_id, ids.transfer) ||
        (ids.has_pending && !uuid16(&d->pending_id, ids.pending))) {
        goto done;
    }
    /* The transfers row this event writes (an expiry writes none). */
    uint8_t row[TRANSFER_BYTES_MAX];
    Py_ssize_t row_n = 0;
    uint8_t meta_bytes[METADATA_BYTES_MAX];
    Py_ssize_t meta_n = -1;
    if (kind != T_EXPIRED) {
        int hold_created = kind == T_CREATED && d->flags == 2;
        if (!d->has_code || d->code < INT32_MIN || d->code > INT32_MAX ||
            (hold_created && (!d->has_timeout || d->expires == 0))) {
            goto done;
        }
        EntryIds row_ids = ids;
        row_ids.has_pending = kind != T_CREATED && ids.has_pending;
        row_n = transfer_bytes(row, position, &row_ids, d->code, d->ts,
                               hold_created ? d->timeout : 0, hold_created && d->expires == 1,
                               d->expires_at, row_ids.has_pending);
        /* The metadata's bytes follow the row's: a 0 for {}, else from the reference. */
        if (d->metadata.kind == 0 || (d->metadata.kind == 3 && metadata_fn == NULL)) {
            goto done;
        }
        if (d->metadata.kind == 3) {
            meta_n = metadata_bytes(d->metadata.s, d->metadata.n, meta_bytes);
        }
        if (d->metadata.kind == 3 && meta_n < 0) {
            meta = PyObject_CallFunction(metadata_fn, "y#", d->metadata.s, d->metadata.n);
            if (meta == NULL || !PyBytes_Check(meta)) {
                if (meta != NULL) {
                    PyErr_SetString(PyExc_TypeError, "metadata bytes must be bytes");
                }
                result = -1;
                goto done;
            }
        }
    }
    uint8_t debit_entry[ENTRY_BYTES_MAX], credit_entry[ENTRY_BYTES_MAX];
    Py_ssize_t debit_n = entry_bytes(debit_entry, position, debit_account, &ids, amount,
                                     d->ts, db, TYPE_NAMES[kind], "debit", &d->ledger);
    Py_ssize_t credit_n = entry_bytes(credit_entry, position, credit_account, &ids, amount,
                                      d->ts, cb, TYPE_NAMES[kind], "credit", &d->ledger);
    /* Everything checks: from here on the state changes. */
    if (hash_update(PyList_GET_ITEM(debit, 9), debit_entry, debit_n) < 0 ||
        hash_update(PyList_GET_ITEM(credit, 9), credit_entry, credit_n) < 0 ||
        (row_n > 0 && hash_update(books->rows, row, row_n) < 0) ||
        (row_n > 0 && hash_update(books->rows,
                                  meta        ? (const uint8_t *)PyBytes_AS_STRING(meta)
                                  : meta_n > 0 ? meta_bytes
                                              : (const uint8_t *)"",
                                  meta ? PyBytes_GET_SIZE(meta) : meta_n > 0 ? meta_n : 1) < 0)) {
        result = -1;
        goto done;
    }
    if (kind == T_CREATED && d->flags == 2) {
        record = PyList_New(8);
        if (record != NULL) {
            PyObject *items[8] = {s_pending, NULL,      NULL,  debit_key, credit_key,
                                  s_pending, ledger,    Py_None};
            PyObject *amount_obj = PyLong_FromLongLong(amount);
            PyObject *zero = PyLong_FromLong(0);
            items[1] = amount_obj;
            items[2] = zero;
            for (int i = 0; i < 8 && amount_obj && zero; i++) {
                Py_INCREF(items[i]);
                PyList_SET_ITEM(record, i, items[i]);
            }
            Py_XDECREF(amount_obj);
            Py_XDECREF(zero);
            if (amount_obj == NULL || zero == NULL) {
                Py_CLEAR(record);
            }
        }
    } else if (kind != T_EXPIRED) {
        PyObject *kind_name = kind == T_CREATED ? s_single : kind == T_POSTED ? s_post : s_void;
        record = Py_BuildValue("(OLiOOOO)", s_none, amount, 0, debit_key, credit_key,
                               kind_name, ledger);
    }
    if (kind != T_EXPIRED && record == NULL) {
        result = -1;
        goto done;
    }
    if (hold != NULL) {
        PyObject *status = kind == T_POSTED ? s_posted : kind == T_VOIDED ? s_voided : s_expired;
        if (set_obj(hold, 0, status) < 0 || (kind == T_POSTED && set_int(hold, 2, amount) < 0) ||
            set_int(hold, 7, position) < 0) {
            result = -1;
            goto done;
        }
    }
    slot_changed(ds, db, d_entries + 1, d_sum, position);
    slot_changed(cs, cb, c_entries + 1, c_sum, position);
    int failed = record != NULL && PyDict_SetItem(books->transfers, transfer_key, record) < 0;
    result = failed ? -1 : 1;
done:
    Py_XDECREF(meta);
    Py_XDECREF(record);
    Py_XDECREF(transfer_key);
    Py_XDECREF(pending_key);
    Py_XDECREF(ledger);
    return result;
}

static inline uint32_t get_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* apply_records(buf, offset, count, position, accounts, transfers, forbidden, hashes,
 *               stop_position) -> (offset, position, applied)
 *
 * Applies up to `count` consecutive records from `offset` (already verified: positions,
 * CRCs, hash chain) whose position follows `position`, appending each record's hash to
 * `hashes`; stops after the record at `stop_position`, or before the first record it
 * leaves to the reference. */
/* One record at `offset`: its end and kind (1..4, or 0 for one left to the reference),
 * its envelope in *e. No Python objects are touched, so it runs without the lock. */
typedef struct {
    Py_ssize_t offset, end;
    int kind;
    Envelope e;
} Parsed;

static void parse_record(const uint8_t *buf, Py_ssize_t size, Py_ssize_t offset, Parsed *out) {
    memset(out, 0, sizeof(*out));
    out->offset = offset;
    out->end = -1;
    if (offset < 0 || offset + HEAD_BYTES > size) {
        return;
    }
    uint32_t length = get_u32(buf + offset);
    uint32_t clen = get_u32(buf + offset + 28);
    Py_ssize_t end = offset + 8 + (Py_ssize_t)length;
    if (end > size || (Py_ssize_t)clen + HEAD_BYTES + HASH_BYTES > 8 + (Py_ssize_t)length) {
        return; /* not a record this code should see: the reference */
    }
    out->end = end;
    const char *canonical = (const char *)buf + offset + HEAD_BYTES;
    const char *p = read_object(skip_ws(canonical, canonical + clen), canonical + clen,
                                envelope_member, &out->e);
    if (p == NULL || skip_ws(p, canonical + clen) != canonical + clen) {
        return;
    }
    out->kind = event_kind(&out->e.type);
}

/* The parsed records of a span: a header naming the buffer they point into. */
typedef struct {
    const void *base;
    Py_ssize_t size, count;
} ParsedHead;

/* parse_records(buf, offset, count) -> bytes: the envelopes of `count` records from
 * `offset`, read without the interpreter lock (the audit's checking thread does this
 * right after it has verified them), for apply_records to use. */
static PyObject *py_parse_records(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset, count;
    if (!PyArg_ParseTuple(args, "y*nn:parse_records", &view, &offset, &count)) {
        return NULL;
    }
    if (count < 0 || count > (1 << 20)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "parse_records: count out of range");
        return NULL;
    }
    PyObject *out =
        PyBytes_FromStringAndSize(NULL, sizeof(ParsedHead) + (size_t)count * sizeof(Parsed));
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    ParsedHead *head = (ParsedHead *)PyBytes_AS_STRING(out);
    Parsed *records = (Parsed *)(head + 1);
    head->base = view.buf;
    head->size = view.len;
    head->count = count;
    const uint8_t *buf = view.buf;
    Py_ssize_t size = view.len;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < count; i++) {
        parse_record(buf, size, offset, &records[i]);
        if (records[i].end < 0) {
            for (Py_ssize_t j = i + 1; j < count; j++) {
                memset(&records[j], 0, sizeof(Parsed));
                records[j].end = -1;
            }
            break;
        }
        offset = records[i].end;
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&view);
    return out;
}

static PyObject *py_apply_records(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset, count, first = 0;
    long long position, stop_position;
    Books books;
    PyObject *hashes, *parsed_obj = Py_None;
    if (!PyArg_ParseTuple(args, "y*nnLO!O!O!O!OL|On:apply_records", &view, &offset, &count,
                          &position, &PyDict_Type, &books.accounts, &PyDict_Type,
                          &books.transfers, &PySet_Type, &books.forbidden, &PyList_Type,
                          &hashes, &books.rows, &stop_position, &parsed_obj, &first)) {
        return NULL;
    }
    const uint8_t *buf = view.buf;
    Py_ssize_t size = view.len;
    slots_gen++; /* the lists may have changed since the last call: read them again */
    /* Records parsed beforehand are used only if they were read from this very buffer
     * and at the same offsets; any other record is read here. */
    const Parsed *parsed = NULL;
    Py_ssize_t parsed_count = 0;
    if (parsed_obj != Py_None && PyBytes_CheckExact(parsed_obj) &&
        (size_t)PyBytes_GET_SIZE(parsed_obj) >= sizeof(ParsedHead)) {
        const ParsedHead *head = (const ParsedHead *)PyBytes_AS_STRING(parsed_obj);
        if (head->base == view.buf && head->size == view.len && first >= 0 &&
            (size_t)PyBytes_GET_SIZE(parsed_obj) ==
                sizeof(ParsedHead) + (size_t)head->count * sizeof(Parsed)) {
            parsed = (const Parsed *)(head + 1);
            parsed_count = head->count;
        }
    }
    Py_ssize_t applied = 0;
    Parsed local;
    while (applied < count && position != stop_position) {
        const Parsed *rec;
        Py_ssize_t index = first + applied;
        if (parsed != NULL && index < parsed_count && parsed[index].offset == offset) {
            rec = &parsed[index];
        } else {
            parse_record(buf, size, offset, &local);
            rec = &local;
        }
        if (rec->end < 0 || rec->kind == 0) {
            break;
        }
        int r = apply(&books, &rec->e, rec->kind, position + 1);
        if (r < 0) {
            PyBuffer_Release(&view);
            slots_flush(); /* what was applied stays applied; the error is reported */
            return NULL;
        }
        if (r == 0) {
            break;
        }
        PyObject *digest = PyBytes_FromStringAndSize((const char *)buf + rec->end - HASH_BYTES,
                                                     HASH_BYTES);
        if (digest == NULL || PyList_Append(hashes, digest) < 0) {
            Py_XDECREF(digest);
            PyBuffer_Release(&view);
            slots_flush();
            return NULL;
        }
        Py_DECREF(digest);
        position++;
        offset = rec->end;
        applied++;
    }
    PyBuffer_Release(&view);
    if (slots_flush() < 0) {
        return NULL;
    }
    return Py_BuildValue("nLn", offset, position, applied);
}

/* --- the transfers' state (ledger/audit.py, _transfer_states) -------------------------
 *
 * The sha256 of every transfer's state in the order of the transfers dict (the order of
 * their positions): status, then a NUL; amount and amount posted as 64-bit big-endian
 * numbers; the debit and credit account ids as 16 bytes; kind and ledger, each ended by a
 * NUL; the resolving position after a 1, or a 0 for none (a transfer that is not a hold
 * has none). PostgreSQL builds the same bytes from the stored rows. Any value this code
 * does not take (an id not in the canonical text form, a number that is not an int, a
 * text that is not a str) makes it return None, and the reference computes the digest. */

/* The bytes of many small parts gathered before they are hashed: SHA256_Update has a cost
 * per call that the parts of a transfer's state (a few bytes each) would pay many times. */
typedef struct {
    SHA256_CTX ctx;
    size_t n;
    uint8_t buf[8192];
} Gather;

static void gather(Gather *g, const void *s, size_t n) {
    if (g->n + n > sizeof(g->buf)) {
        SHA256_Update(&g->ctx, g->buf, g->n);
        g->n = 0;
        if (n > sizeof(g->buf)) {
            SHA256_Update(&g->ctx, s, n);
            return;
        }
    }
    memcpy(g->buf + g->n, s, n);
    g->n += n;
}

static int text_part(Gather *g, PyObject *o) {
    Py_ssize_t n;
    const char *s = PyUnicode_Check(o) ? PyUnicode_AsUTF8AndSize(o, &n) : NULL;
    if (s == NULL) {
        PyErr_Clear();
        return 0;
    }
    gather(g, s, (size_t)n);
    gather(g, "", 1);
    return 1;
}

static int id_part(uint8_t *out, PyObject *o) {
    Field f = {0};
    Py_ssize_t n;
    if (!PyUnicode_Check(o)) {
        return 0;
    }
    f.s = PyUnicode_AsUTF8AndSize(o, &n);
    if (f.s == NULL) {
        PyErr_Clear();
        return 0;
    }
    f.n = n;
    f.kind = 1;
    return uuid16(&f, out);
}

/* Account ids by the str object that holds them: the transfers of an account share its
 * key object, so each is parsed about once. The objects live as long as the dict. */
#define ID_CACHE 4096
typedef struct {
    PyObject *key;
    uint8_t id[16];
} IdCached;

static int id_cached(IdCached *cache, uint8_t *out, PyObject *o) {
    IdCached *c = &cache[((uintptr_t)o >> 4) & (ID_CACHE - 1)];
    if (c->key == o) {
        memcpy(out, c->id, 16);
        return 1;
    }
    if (!id_part(out, o)) {
        return 0;
    }
    c->key = o;
    memcpy(c->id, out, 16);
    return 1;
}

static PyObject *py_transfer_states(PyObject *self, PyObject *transfers) {
    if (!PyDict_Check(transfers)) {
        PyErr_SetString(PyExc_TypeError, "transfer_states needs a dict");
        return NULL;
    }
    Gather *g = PyMem_Malloc(sizeof(Gather));
    IdCached *cache = PyMem_Calloc(ID_CACHE, sizeof(IdCached));
    if (g == NULL || cache == NULL) {
        PyMem_Free(g);
        PyMem_Free(cache);
        return PyErr_NoMemory();
    }
    SHA256_Init(&g->ctx);
    g->n = 0;
    PyObject *result = NULL;
    Py_ssize_t at = 0;
    PyObject *key, *value;
    while (PyDict_Next(transfers, &at, &key, &value)) {
        PyObject **items;
        Py_ssize_t n;
        if (PyTuple_CheckExact(value)) {
            items = &PyTuple_GET_ITEM(value, 0);
            n = PyTuple_GET_SIZE(value);
        } else if (PyList_CheckExact(value)) {
            items = PySequence_Fast_ITEMS(value);
            n = PyList_GET_SIZE(value);
        } else {
            goto none;
        }
        long long amount, posted, resolved = 0;
        uint8_t fixed[48], *p = fixed;
        int has_resolved = n > 7 && items[7] != Py_None;
        if (n < 7 || !int_of(items[1], &amount) || !int_of(items[2], &posted) ||
            (has_resolved && !int_of(items[7], &resolved)) ||
            !id_cached(cache, fixed + 16, items[3]) || !id_cached(cache, fixed + 32, items[4]) ||
            !text_part(g, items[0])) {
            PyErr_Clear();
            goto none;
        }
        p = put_i64(p, amount);
        put_i64(p, posted);
        gather(g, fixed, sizeof(fixed));
        if (!text_part(g, items[5]) || !text_part(g, items[6])) {
            goto none;
        }
        uint8_t tail[9] = {0};
        if (has_resolved) {
            tail[0] = 1;
            put_i64(tail + 1, resolved);
        }
        gather(g, tail, has_resolved ? 9 : 1);
    }
    SHA256_Update(&g->ctx, g->buf, g->n);
    unsigned char out[SHA256_DIGEST_LENGTH];
    SHA256_Final(out, &g->ctx);
    result = PyBytes_FromStringAndSize((const char *)out, SHA256_DIGEST_LENGTH);
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(g);
    PyMem_Free(cache);
    return result;
}

/* metadata_bytes(raw) -> bytes | None: what the pass hashes for a transfer's metadata
 * (raw JSON), or None where it calls _metadata_bytes. */
static PyObject *py_metadata_bytes(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    uint8_t out[METADATA_BYTES_MAX];
    Py_ssize_t n = metadata_bytes(view.buf, view.len, out);
    PyBuffer_Release(&view);
    if (n < 0) {
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize((const char *)out, n);
}

static PyObject *py_forget(PyObject *self, PyObject *unused) {
    slots_reset();
    Py_RETURN_NONE;
}

static PyObject *py_set_metadata_bytes(PyObject *self, PyObject *fn) {
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "set_metadata_bytes needs a callable");
        return NULL;
    }
    Py_XSETREF(metadata_fn, Py_NewRef(fn));
    Py_RETURN_NONE;
}

/* --- the event store's rows, checked on this side ------------------------------------ */

static uint64_t be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

static int32_t be32(const uint8_t *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

/* A position, or None for -1 (nothing found). */
static PyObject *position_or_none(long long v) {
    return v < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(v);
}

/* A row's canonical bytes as ledger.audit's _ROW_TEXT has PostgreSQL put them together
 * (concat of the columns' texts), from the columns of a binary COPY: data (json: its text),
 * event_id (uuid), recorded_at_us (bigint), schema_version (int), stream_id and type
 * (text), stream_version (bigint), with the position and prev_hash of the row. Returns the
 * length, or -1 where a column is NULL or not of its type's width (the row then does not
 * hash, as concat would give other bytes). */
typedef struct {
    uint8_t *p;
    size_t n, cap;
} Bytes;

static int bytes_room(Bytes *b, size_t more) {
    if (b->n + more <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more) {
        cap *= 2;
    }
    uint8_t *grown = PyMem_RawRealloc(b->p, cap);
    if (grown == NULL) {
        return -1;
    }
    b->p = grown;
    b->cap = cap;
    return 0;
}

static void put_raw(Bytes *b, const void *s, size_t n) {
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

#define PUT_LITERAL(b, s) put_raw((b), (s), sizeof(s) - 1)

static void put_decimal(Bytes *b, long long v) {
    char digits[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0) {
        b->p[b->n++] = '-';
    }
    while (n > 0) {
        b->p[b->n++] = (uint8_t)digits[--n];
    }
}

static void put_hex(Bytes *b, const uint8_t *s, size_t n) {
    static const char HEX[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        b->p[b->n++] = (uint8_t)HEX[s[i] >> 4];
        b->p[b->n++] = (uint8_t)HEX[s[i] & 15];
    }
}

enum { C_POSITION, C_PREV, C_HASH, C_DATA, C_EVENT, C_RECORDED, C_SCHEMA, C_STREAM, C_VERSION,
       C_TYPE, C_FIELDS };

static Py_ssize_t canonical_of(Bytes *b, const uint8_t *const *part, const int32_t *len) {
    static const int32_t width[C_FIELDS] = {8, -2, -2, -2, 16, 8, 4, -2, 8, -2};
    for (int f = 0; f < C_FIELDS; f++) {
        if (len[f] < 0 || (width[f] > 0 && len[f] != width[f])) {
            return -1;
        }
    }
    b->n = 0;
    if (bytes_room(b, (size_t)len[C_DATA] + (size_t)len[C_STREAM] + (size_t)len[C_TYPE] +
                          2 * (size_t)len[C_PREV] + 256) < 0) {
        return -2;
    }
    const uint8_t *u = part[C_EVENT];
    PUT_LITERAL(b, "{\"data\":");
    put_raw(b, part[C_DATA], (size_t)len[C_DATA]);
    PUT_LITERAL(b, ",\"event_id\":\"");
    put_hex(b, u, 4);
    b->p[b->n++] = '-';
    put_hex(b, u + 4, 2);
    b->p[b->n++] = '-';
    put_hex(b, u + 6, 2);
    b->p[b->n++] = '-';
    put_hex(b, u + 8, 2);
    b->p[b->n++] = '-';
    put_hex(b, u + 10, 6);
    PUT_LITERAL(b, "\",\"position\":");
    put_decimal(b, (long long)be64(part[C_POSITION]));
    PUT_LITERAL(b, ",\"prev_hash\":\"");
    put_hex(b, part[C_PREV], (size_t)len[C_PREV]);
    PUT_LITERAL(b, "\",\"recorded_at_us\":");
    put_decimal(b, (long long)be64(part[C_RECORDED]));
    PUT_LITERAL(b, ",\"schema_version\":");
    put_decimal(b, (long long)be32(part[C_SCHEMA]));
    PUT_LITERAL(b, ",\"stream_id\":\"");
    put_raw(b, part[C_STREAM], (size_t)len[C_STREAM]);
    PUT_LITERAL(b, "\",\"stream_version\":");
    put_decimal(b, (long long)be64(part[C_VERSION]));
    PUT_LITERAL(b, ",\"type\":\"");
    put_raw(b, part[C_TYPE], (size_t)len[C_TYPE]);
    PUT_LITERAL(b, "\"}");
    return (Py_ssize_t)b->n;
}

/* The WAL's records beside the store check: a cursor over the segments' buffers that finds
 * the record of each position the store's rows ask for, walking the records by their
 * lengths. It only says where a record is; nothing is trusted from it but the bytes it
 * points at, which the WAL pass checks (CRC32C and hash chain) on its own. Any record that
 * does not look as expected (a position out of turn, a length past its segment) ends the
 * cursor: the rows after it are hashed as without one. */
#define WAL_SEGMENT_HEADER 72
#define WAL_SEGMENTS_MAX 1048576

typedef struct {
    Py_buffer *seg;  /* the segments' buffers */
    Py_ssize_t nseg; /* how many; 0: no cursor */
    Py_ssize_t s;    /* the segment of the record after `position` */
    Py_ssize_t off;  /* where that record starts in it */
    long long position;
    uint8_t prev[HASH_BYTES]; /* the hash of the record at `position` */
    int lost;
} WalCursor;

/* Move the cursor to the record at `position`: its canonical bytes and hash, and the hash
 * before it in *prev; 0 when it is not found so (the cursor is then lost). */
static int wal_find(WalCursor *w, long long position, const uint8_t **canonical,
                    Py_ssize_t *canonical_n, const uint8_t **hash, const uint8_t **prev) {
    if (w->nseg == 0 || w->lost || position <= w->position) {
        return 0;
    }
    for (;;) {
        if (w->s >= w->nseg) {
            w->lost = 1;
            return 0;
        }
        const uint8_t *b = w->seg[w->s].buf;
        Py_ssize_t size = w->seg[w->s].len;
        Py_ssize_t off = w->off;
        uint32_t length = off + HEAD_BYTES <= size ? get_u32(b + off) : 0;
        if (length == 0) { /* the end of this segment's data */
            w->s++;
            w->off = WAL_SEGMENT_HEADER;
            continue;
        }
        Py_ssize_t end = off + 8 + (Py_ssize_t)length;
        uint64_t at;
        memcpy(&at, b + off + 8, 8);
        uint32_t clen = get_u32(b + off + 28);
        if (end > size || (long long)at != w->position + 1 ||
            (Py_ssize_t)clen > (Py_ssize_t)length - 24 - HASH_BYTES) {
            w->lost = 1;
            return 0;
        }
        if ((long long)at == position) {
            *canonical = b + off + HEAD_BYTES;
            *canonical_n = (Py_ssize_t)clen;
            *hash = b + end - HASH_BYTES;
            *prev = w->prev;
            /* the cursor stays on this record until the next is asked for */
            return 1;
        }
        memcpy(w->prev, b + end - HASH_BYTES, HASH_BYTES);
        w->position = (long long)at;
        w->off = end;
    }
}

/* After the row at `position` was compared: step past its record. */
static void wal_past(WalCursor *w, long long position, const uint8_t *hash) {
    if (w->nseg == 0 || w->lost) {
        return;
    }
    const uint8_t *b = w->seg[w->s].buf;
    uint32_t length = get_u32(b + w->off);
    memcpy(w->prev, hash, HASH_BYTES);
    w->position = position;
    w->off += 8 + (Py_ssize_t)length;
}

/* Take the cursor's state out of `wal` ([segments, segment, offset, position, prev]) with
 * the lock held; the segments' buffers are held until wal_put. */
static int wal_get(PyObject *wal, WalCursor *w) {
    memset(w, 0, sizeof(*w));
    if (wal == NULL || wal == Py_None) {
        return 0;
    }
    if (!PyList_Check(wal) || PyList_GET_SIZE(wal) != 5 || !PyList_Check(PyList_GET_ITEM(wal, 0))) {
        PyErr_SetString(PyExc_TypeError,
                        "store_chunk: wal is [segments, segment, offset, position, prev]");
        return -1;
    }
    PyObject *segments = PyList_GET_ITEM(wal, 0);
    Py_ssize_t n = PyList_GET_SIZE(segments);
    w->s = PyLong_AsSsize_t(PyList_GET_ITEM(wal, 1));
    w->off = PyLong_AsSsize_t(PyList_GET_ITEM(wal, 2));
    w->position = PyLong_AsLongLong(PyList_GET_ITEM(wal, 3));
    if (PyErr_Occurred()) {
        return -1;
    }
    PyObject *prev = PyList_GET_ITEM(wal, 4);
    if (!PyBytes_Check(prev) || PyBytes_GET_SIZE(prev) != HASH_BYTES || n > WAL_SEGMENTS_MAX) {
        PyErr_SetString(PyExc_ValueError, "store_chunk: a bad cursor");
        return -1;
    }
    memcpy(w->prev, PyBytes_AS_STRING(prev), HASH_BYTES);
    w->seg = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    if (w->seg == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(segments, i), &w->seg[i], PyBUF_SIMPLE) < 0) {
            w->nseg = i;
            return -1;
        }
        w->nseg = i + 1;
    }
    w->lost = w->s < 0 || w->off < WAL_SEGMENT_HEADER;
    return 0;
}

/* Store the cursor back in `wal` (a lost one as past the last segment) and release the
 * buffers; -1 with an error set when that fails. */
static int wal_put(PyObject *wal, WalCursor *w, int store) {
    int rc = 0;
    if (store && wal != NULL && wal != Py_None) {
        PyObject *items[4] = {
            PyLong_FromSsize_t(w->lost ? w->nseg : w->s),
            PyLong_FromSsize_t(w->off),
            PyLong_FromLongLong(w->position),
            PyBytes_FromStringAndSize((const char *)w->prev, HASH_BYTES),
        };
        rc = items[0] && items[1] && items[2] && items[3] ? 0 : -1;
        for (int i = 0; i < 4; i++) {
            if (rc < 0) {
                Py_XDECREF(items[i]);
            } else {
                PyList_SetItem(wal, i + 1, items[i]); /* steals it */
            }
        }
    }
    for (Py_ssize_t i = 0; i < w->nseg; i++) {
        PyBuffer_Release(&w->seg[i]);
    }
    PyMem_Free(w->seg);
    w->seg = NULL;
    w->nseg = 0;
    return rc;
}

/* store_chunk(buf, last_position, last_hash[, wal]) -> (gap, missing, unchained, unsame,
 * hashes, top): buf is a binary COPY of (position bigint, prev_hash bytea, hash bytea,
 * canonical bytea), or of the columns the canonical bytes are put together from, in
 * position order. As the SQL check of ledger.audit does it, row by row: the first
 * position that does not follow the one before it (and the position missing there), the
 * first whose prev_hash is not the hash of the row before it, how many rows do not give
 * their hash (sha256(prev_hash || canonical)), the stored hashes end to end and the last
 * position (None when there is no row). The row before the first is (last_position,
 * last_hash). The work runs without the interpreter lock.
 *
 * With `wal`, a cursor over the WAL's segment buffers ([segments, segment, offset, position,
 * prev hash], moved on in place), a row whose canonical bytes, hash and prev_hash are the
 * bytes of the WAL's record at its position is not hashed again: the WAL pass checks that
 * record's hash, and a row that is its copy hashes alike. Every other row is hashed. */
static PyObject *py_store_chunk(PyObject *self, PyObject *args) {
    Py_buffer view, lastv;
    long long last_position;
    PyObject *wal = NULL;
    if (!PyArg_ParseTuple(args, "y*Ly*|O:store_chunk", &view, &last_position, &lastv, &wal)) {
        return NULL;
    }
    WalCursor cursor;
    if (wal_get(wal, &cursor) < 0) {
        wal_put(wal, &cursor, 0);
        PyBuffer_Release(&view);
        PyBuffer_Release(&lastv);
        return NULL;
    }
    static const uint8_t SIGNATURE[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0};
    const uint8_t *buf = view.buf;
    Py_ssize_t size = view.len;
    if (lastv.len != SHA256_DIGEST_LENGTH || size < 19 || memcmp(buf, SIGNATURE, 11) != 0) {
        wal_put(wal, &cursor, 0);
        PyBuffer_Release(&view);
        PyBuffer_Release(&lastv);
        PyErr_SetString(PyExc_ValueError, "store_chunk: not a binary COPY, or a bad last hash");
        return NULL;
    }
    /* a row takes at least 2 + 12 + 4 + 4 + 4 bytes (hashes of any length are read) */
    size_t most = (size_t)size / 26 + 1;
    uint8_t *hashes = PyMem_RawMalloc(most * SHA256_DIGEST_LENGTH);
    if (hashes == NULL) {
        wal_put(wal, &cursor, 0);
        PyBuffer_Release(&view);
        PyBuffer_Release(&lastv);
        return PyErr_NoMemory();
    }
    uint8_t before_hash[SHA256_DIGEST_LENGTH];
    memcpy(before_hash, lastv.buf, SHA256_DIGEST_LENGTH);
    PyBuffer_Release(&lastv);
    long long before = last_position, gap = -1, missing = -1, unchained = -1, unsame = 0;
    size_t count = 0;
    const char *bad = NULL;
    Bytes built = {NULL, 0, 0};
    Py_BEGIN_ALLOW_THREADS;
    Py_ssize_t off = 19 + (Py_ssize_t)be32(buf + 15);
    for (;;) {
        if (off < 19 || off + 2 > size) {
            bad = "store_chunk: the COPY ends without its trailer";
            break;
        }
        int fields = (int16_t)((buf[off] << 8) | buf[off + 1]);
        off += 2;
        if (fields == -1) {
            break;
        }
        if ((fields != 4 && fields != C_FIELDS) || count >= most) {
            bad = "store_chunk: a row that is not (position, prev_hash, hash, canonical) or "
                  "the columns of the canonical bytes";
            break;
        }
        const uint8_t *part[C_FIELDS];
        int32_t len[C_FIELDS];
        for (int f = 0; f < fields; f++) {
            if (off + 4 > size) {
                bad = "store_chunk: a row cut short";
                break;
            }
            len[f] = be32(buf + off);
            off += 4;
            /* in the columns' form, a NULL column is a row that does not hash */
            if (len[f] < (fields == C_FIELDS && f >= 3 ? -1 : 0) || off + len[f] > size) {
                bad = "store_chunk: a NULL or a value cut short";
                break;
            }
            part[f] = buf + off;
            off += len[f] > 0 ? len[f] : 0;
        }
        if (bad != NULL) {
            break;
        }
        if (len[0] != 8) {
            bad = "store_chunk: a position that is not a bigint";
            break;
        }
        long long position = (long long)be64(part[0]);
        if (gap < 0 && position != before + 1) {
            gap = position;
            missing = before + 1;
        }
        int hashes_ok = len[1] == SHA256_DIGEST_LENGTH && len[2] == SHA256_DIGEST_LENGTH;
        if (unchained < 0 &&
            (len[1] != SHA256_DIGEST_LENGTH || memcmp(part[1], before_hash, SHA256_DIGEST_LENGTH))) {
            unchained = position;
        }
        uint8_t *slot = hashes + count * SHA256_DIGEST_LENGTH;
        memset(slot, 0, SHA256_DIGEST_LENGTH);
        memcpy(slot, part[2], len[2] < SHA256_DIGEST_LENGTH ? (size_t)len[2] : SHA256_DIGEST_LENGTH);
        const uint8_t *canonical = part[3];
        Py_ssize_t canonical_n = len[3];
        if (fields == C_FIELDS) {
            canonical_n = canonical_of(&built, part, len);
            if (canonical_n == -2) {
                bad = "";
                break;
            }
            canonical = built.p;
        }
        const uint8_t *wal_canonical, *wal_hash, *wal_prev;
        Py_ssize_t wal_n;
        int copy = hashes_ok && canonical_n >= 0 &&
                   wal_find(&cursor, position, &wal_canonical, &wal_n, &wal_hash, &wal_prev);
        if (copy) {
            if (wal_n != canonical_n || memcmp(wal_canonical, canonical, (size_t)wal_n) != 0 ||
                memcmp(wal_hash, part[2], HASH_BYTES) != 0 ||
                memcmp(wal_prev, part[1], HASH_BYTES) != 0) {
                copy = 0; /* hashed, below, to tell an edited row from another event */
            }
            wal_past(&cursor, position, wal_hash);
        }
        if (copy) {
            /* the WAL's record: the WAL pass checks its hash */
        } else if (hashes_ok && canonical_n >= 0) {
            SHA256_CTX ctx;
            uint8_t digest[SHA256_DIGEST_LENGTH];
            SHA256_Init(&ctx);
            SHA256_Update(&ctx, part[1], SHA256_DIGEST_LENGTH);
            SHA256_Update(&ctx, canonical, (size_t)canonical_n);
            SHA256_Final(digest, &ctx);
            if (memcmp(digest, part[2], SHA256_DIGEST_LENGTH) != 0) {
                unsame++;
            }
        } else {
            unsame++;
        }
        memcpy(before_hash, slot, SHA256_DIGEST_LENGTH);
        before = position;
        count++;
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&view);
    PyMem_RawFree(built.p);
    if (wal_put(wal, &cursor, bad == NULL) < 0) {
        PyMem_RawFree(hashes);
        return NULL;
    }
    if (bad != NULL) {
        PyMem_RawFree(hashes);
        if (bad[0] == '\0') {
            return PyErr_NoMemory();
        }
        PyErr_SetString(PyExc_ValueError, bad);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)hashes,
                                              (Py_ssize_t)(count * SHA256_DIGEST_LENGTH));
    PyMem_RawFree(hashes);
    if (out == NULL) {
        return NULL;
    }
    return Py_BuildValue("NNNLNN", position_or_none(gap), position_or_none(missing),
                         position_or_none(unchained), unsame, out,
                         position_or_none(count ? before : -1));
}

/* --- read models' digests, from a binary COPY of their rows ---------------------------- */

/* How a COPY field goes into a row's hashed bytes (ledger.audit's digest forms): a number
 * or an id as its binary send bytes (of the width given); a text followed by a NUL; an
 * optional number or id as a 1 and its bytes, or a 0 for NULL; bytes as they are. */
enum { K_FIXED8 = 1, K_FIXED4, K_FIXED16, K_TEXT, K_OPT8, K_OPT16, K_RAW, K_METADATA };

#define DIGEST_FIELDS_MAX 32
#define DIGEST_SPECS_MAX 4

typedef struct {
    long long order;
    Py_ssize_t off; /* the row's first field */
    uint32_t group; /* its group's number, in the order first seen */
} DigestRow;

static int digest_row_cmp(const void *a, const void *b) {
    const DigestRow *x = a, *y = b;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* The fields of the row at off: pointers and lengths (-1 for NULL); the offset after it,
 * or -1 for a row that is not as described. */
static Py_ssize_t copy_fields(const uint8_t *buf, Py_ssize_t size, Py_ssize_t off, int nfields,
                              const uint8_t **part, int32_t *len) {
    for (int f = 0; f < nfields; f++) {
        if (off + 4 > size) {
            return -1;
        }
        len[f] = be32(buf + off);
        off += 4;
        if (len[f] < -1 || (len[f] > 0 && off + len[f] > size)) {
            return -1;
        }
        part[f] = buf + off;
        if (len[f] > 0) {
            off += len[f];
        }
    }
    return off;
}

/* A row's hashed bytes gathered before they go to sha256, so that a row costs one update
 * (a value larger than the room left goes on its own). */
typedef struct {
    SHA256_CTX *ctx;
    size_t n;
    uint8_t bytes[512];
} Sink;

static void sink_add(Sink *k, const void *p, size_t n) {
    if (k->n + n > sizeof k->bytes) {
        SHA256_Update(k->ctx, k->bytes, k->n);
        k->n = 0;
        if (n > sizeof k->bytes) {
            SHA256_Update(k->ctx, p, n);
            return;
        }
    }
    memcpy(k->bytes + k->n, p, n);
    k->n += n;
}

static void sink_flush(Sink *k) {
    SHA256_Update(k->ctx, k->bytes, k->n);
    k->n = 0;
}

/* One row's bytes for each spec, into the contexts ctx[0..nspecs). */
static void hash_row(SHA256_CTX *ctx, Py_ssize_t nspecs, const uint8_t *const *spec,
                     const Py_ssize_t *spec_len, const uint8_t *const *part, const int32_t *len);

static const uint8_t ODD_FIELD[2] = {0xff, 0xfe};

/* --- a transfer's metadata from its jsonb, in _metadata_bytes' form -------------------- */

static void utf8_put(uint8_t **q, uint32_t c) {
    uint8_t *p = *q;
    if (c < 0x80) {
        *p++ = (uint8_t)c;
    } else if (c < 0x800) {
        *p++ = (uint8_t)(0xc0 | (c >> 6));
        *p++ = (uint8_t)(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
        *p++ = (uint8_t)(0xe0 | (c >> 12));
        *p++ = (uint8_t)(0x80 | ((c >> 6) & 0x3f));
        *p++ = (uint8_t)(0x80 | (c & 0x3f));
    } else {
        *p++ = (uint8_t)(0xf0 | (c >> 18));
        *p++ = (uint8_t)(0x80 | ((c >> 12) & 0x3f));
        *p++ = (uint8_t)(0x80 | ((c >> 6) & 0x3f));
        *p++ = (uint8_t)(0x80 | (c & 0x3f));
    }
    *q = p;
}

static int hex4(const char *p, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) {
            return 0;
        }
        v = v * 16 + (uint32_t)d;
    }
    *out = v;
    return 1;
}

/* The JSON string s[0..n) (between its quotes) unescaped into out (room for n bytes: no
 * escape is shorter than what it gives); its length, or -1 for a bad escape. */
static Py_ssize_t json_unescape(const char *s, Py_ssize_t n, uint8_t *out) {
    uint8_t *q = out;
    const char *end = s + n;
    while (s < end) {
        if (*s != '\\') {
            *q++ = (uint8_t)*s++;
            continue;
        }
        if (end - s < 2) {
            return -1;
        }
        char c = s[1];
        s += 2;
        switch (c) {
        case '"': *q++ = '"'; break;
        case '\\': *q++ = '\\'; break;
        case '/': *q++ = '/'; break;
        case 'b': *q++ = '\b'; break;
        case 'f': *q++ = '\f'; break;
        case 'n': *q++ = '\n'; break;
        case 'r': *q++ = '\r'; break;
        case 't': *q++ = '\t'; break;
        case 'u': {
            uint32_t cp, low;
            if (end - s < 4 || !hex4(s, &cp)) {
                return -1;
            }
            s += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && end - s >= 6 && s[0] == '\\' && s[1] == 'u' &&
                hex4(s + 2, &low) && low >= 0xdc00 && low < 0xe000) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                s += 6;
            }
            utf8_put(&q, cp);
            break;
        }
        default:
            return -1;
        }
    }
    return q - out;
}

typedef struct {
    Py_ssize_t key, key_n, value, value_n; /* offsets into the scratch; value -1: not a string */
} MetaText;

static int meta_text_cmp(const uint8_t *base, const MetaText *a, const MetaText *b) {
    Py_ssize_t n = a->key_n < b->key_n ? a->key_n : b->key_n;
    int c = memcmp(base + a->key, base + b->key, (size_t)n);
    return c != 0 ? c : (a->key_n > b->key_n) - (a->key_n < b->key_n);
}

/* A jsonb value as binary COPY sends it (a version byte, then its text) into the sink as
 * _metadata_bytes gives it: a 0 for {}, a 254 for anything but an object, else a 1 and
 * each pair in the byte order of its key. 0 when it cannot be read (the caller hashes a
 * marker that no metadata gives). */
static int metadata_of_jsonb(Sink *k, const uint8_t *v, int32_t n) {
    static const uint8_t zero = 0, one = 1, not_object = 0xfe, not_string = 0xff;
    if (n < 1 || v[0] != 1) {
        return 0;
    }
    const char *p = (const char *)v + 1, *end = (const char *)v + n;
    p = skip_ws(p, end);
    if (p >= end) {
        return 0;
    }
    if (*p != '{') {
        sink_add(k, &not_object, 1);
        return 1;
    }
    /* Unescaped keys and values go to a scratch of the text's size (none is longer). */
    uint8_t *scratch = PyMem_RawMalloc((size_t)n + 1);
    size_t pairs_cap = 16, pairs_n = 0;
    MetaText *pairs = PyMem_RawMalloc(pairs_cap * sizeof(MetaText));
    int ok = scratch != NULL && pairs != NULL;
    Py_ssize_t used = 0;
    p = skip_ws(p + 1, end);
    if (ok && p < end && *p == '}') {
        p++;
    } else {
        while (ok) {
            const char *s;
            Py_ssize_t sn;
            int esc;
            p = read_string(p, end, &s, &sn, &esc);
            if (p == NULL) {
                ok = 0;
                break;
            }
            if (pairs_n == pairs_cap) {
                MetaText *grown = PyMem_RawRealloc(pairs, 2 * pairs_cap * sizeof(MetaText));
                if (grown == NULL) {
                    ok = 0;
                    break;
                }
                pairs = grown;
                pairs_cap *= 2;
            }
            MetaText *t = &pairs[pairs_n++];
            t->key = used;
            t->key_n = json_unescape(s, sn, scratch + used);
            if (t->key_n < 0) {
                ok = 0;
                break;
            }
            used += t->key_n;
            p = skip_ws(p, end);
            if (p >= end || *p != ':') {
                ok = 0;
                break;
            }
            p = skip_ws(p + 1, end);
            t->value = -1;
            if (p < end && *p == '"') {
                p = read_string(p, end, &s, &sn, &esc);
                t->value_n = p ? json_unescape(s, sn, scratch + used) : -1;
                if (t->value_n < 0) {
                    ok = 0;
                    break;
                }
                t->value = used;
                used += t->value_n;
            } else {
                p = skip_value(p, end, 1);
            }
            p = p ? skip_ws(p, end) : NULL;
            if (p == NULL || p >= end) {
                ok = 0;
                break;
            }
            if (*p == '}') {
                p++;
                break;
            }
            if (*p != ',') {
                ok = 0;
                break;
            }
            p = skip_ws(p + 1, end);
        }
    }
    if (ok && skip_ws(p, end) != end) {
        ok = 0;
    }
    if (ok) {
        for (size_t i = 1; i < pairs_n; i++) { /* insertion sort: metadata has few pairs */
            MetaText t = pairs[i];
            size_t j = i;
            while (j > 0 && meta_text_cmp(scratch, &pairs[j - 1], &t) > 0) {
                pairs[j] = pairs[j - 1];
                j--;
            }
            pairs[j] = t;
        }
        if (pairs_n == 0) {
            sink_add(k, &zero, 1);
        } else {
            sink_add(k, &one, 1);
            for (size_t i = 0; i < pairs_n; i++) {
                uint8_t length[4];
                put_u32(length, (size_t)pairs[i].key_n);
                sink_add(k, length, 4);
                sink_add(k, scratch + pairs[i].key, (size_t)pairs[i].key_n);
                if (pairs[i].value < 0) {
                    sink_add(k, &not_string, 1);
                } else {
                    put_u32(length, (size_t)pairs[i].value_n);
                    sink_add(k, length, 4);
                    sink_add(k, scratch + pairs[i].value, (size_t)pairs[i].value_n);
                }
            }
        }
    }
    PyMem_RawFree(scratch);
    PyMem_RawFree(pairs);
    return ok;
}

static void hash_field(Sink *k, int kind, const uint8_t *p, int32_t n) {
    static const uint8_t zero = 0, one = 1;
    int width = kind == K_FIXED8 || kind == K_OPT8 ? 8 : kind == K_FIXED4 ? 4 : 16;
    switch (kind) {
    case K_TEXT:
        if (n < 0) {
            break;
        }
        sink_add(k, p, (size_t)n);
        sink_add(k, &zero, 1);
        return;
    case K_RAW:
        if (n < 0) {
            break;
        }
        sink_add(k, p, (size_t)n);
        return;
    case K_METADATA:
        if (n >= 0 && metadata_of_jsonb(k, p, n)) {
            return;
        }
        break;
    case K_OPT8:
    case K_OPT16:
        if (n == -1) {
            sink_add(k, &zero, 1);
            return;
        }
        if (n != width) {
            break;
        }
        sink_add(k, &one, 1);
        sink_add(k, p, (size_t)n);
        return;
    default:
        if (n != width) {
            break;
        }
        sink_add(k, p, (size_t)n);
        return;
    }
    /* NULL where the column has none, or a width the type does not have: bytes that no
     * well-formed row gives, so that the digest differs and the row is looked for. */
    sink_add(k, ODD_FIELD, sizeof ODD_FIELD);
}

typedef struct {
    uint8_t id[16];
    size_t count, first; /* rows, and where they start in the grouped order */
    long long last;      /* the order of its last row, while the rows come in order */
    int unordered;       /* Digests: a row came out of order; the group is read again */
    SHA256_CTX ctx[DIGEST_SPECS_MAX];
    uint8_t digest[DIGEST_SPECS_MAX][SHA256_DIGEST_LENGTH];
} DigestGroup;

/* Rows are hashed as they are read while every group's rows come in order (as a table
 * written in position order gives them) and there are at most this many groups; else
 * they are placed by group and sorted first. */
#define DIGEST_IN_ORDER_GROUPS_MAX 65536

static void hash_row(SHA256_CTX *ctx, Py_ssize_t nspecs, const uint8_t *const *spec,
                     const Py_ssize_t *spec_len, const uint8_t *const *part, const int32_t *len) {
    Sink sink;
    for (Py_ssize_t s = 0; s < nspecs; s++) {
        sink.ctx = &ctx[s];
        sink.n = 0;
        for (Py_ssize_t j = 0; j < spec_len[s]; j += 2) {
            int f = spec[s][j];
            hash_field(&sink, spec[s][j + 1], part[f], len[f]);
        }
        sink_flush(&sink);
    }
}

/* Groups by id: an open-addressing table of group numbers + 1 (0: empty). */
typedef struct {
    uint32_t *slot;
    size_t mask;
} GroupTable;

static uint64_t mix64(uint64_t z) { /* splitmix64's finaliser: every bit reaches the low ones */
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Ids of any kind (random, time-ordered, counters) spread over the table's low bits. */
static size_t group_hash(const uint8_t id[16]) {
    uint64_t a, b;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    return (size_t)mix64(a ^ mix64(b));
}

/* The groups met so far, by id. */
typedef struct {
    DigestGroup *out;
    size_t n, cap;
    GroupTable table;
} Groups;

static int groups_init(Groups *gs) {
    gs->n = 0;
    gs->cap = 64;
    gs->out = PyMem_RawMalloc(gs->cap * sizeof(DigestGroup));
    gs->table.slot = PyMem_RawCalloc(128, sizeof(uint32_t));
    gs->table.mask = 127;
    return gs->out != NULL && gs->table.slot != NULL ? 0 : -1;
}

static void groups_free(Groups *gs) {
    PyMem_RawFree(gs->out);
    PyMem_RawFree(gs->table.slot);
    gs->out = NULL;
    gs->table.slot = NULL;
}

/* The number of the group of id, made (count 0, last LLONG_MIN) if it is new (*created);
 * -1 when out of memory. Needs no interpreter lock. */
static long groups_find(Groups *gs, const uint8_t id[16], int *created) {
    size_t h = group_hash(id) & gs->table.mask;
    *created = 0;
    while (gs->table.slot[h] != 0) {
        uint32_t g = gs->table.slot[h] - 1;
        if (memcmp(gs->out[g].id, id, 16) == 0) {
            return (long)g;
        }
        h = (h + 1) & gs->table.mask;
    }
    if (gs->n == gs->cap) {
        DigestGroup *grown = PyMem_RawRealloc(gs->out, 2 * gs->cap * sizeof(DigestGroup));
        if (grown == NULL) {
            return -1;
        }
        gs->out = grown;
        gs->cap *= 2;
    }
    DigestGroup *g = &gs->out[gs->n];
    memcpy(g->id, id, 16);
    g->count = 0;
    g->last = LLONG_MIN;
    g->unordered = 0;
    gs->table.slot[h] = (uint32_t)++gs->n;
    *created = 1;
    if (2 * gs->n > gs->table.mask) { /* keep the table at most half full */
        size_t mask = 2 * gs->table.mask + 1;
        uint32_t *slot = PyMem_RawCalloc(mask + 1, sizeof(uint32_t));
        if (slot == NULL) {
            return -1;
        }
        for (size_t i = 0; i < gs->n; i++) {
            size_t at = group_hash(gs->out[i].id) & mask;
            while (slot[at] != 0) {
                at = (at + 1) & mask;
            }
            slot[at] = (uint32_t)(i + 1);
        }
        PyMem_RawFree(gs->table.slot);
        gs->table.slot = slot;
        gs->table.mask = mask;
    }
    return (long)(gs->n - 1);
}

/* The field numbers and specs of copy_digests and Digests, checked: spec[i] points into
 * the bytes objects of specs. NULL, or what is wrong. */
static const char *digest_args(int nfields, int order, int group, PyObject *specs,
                               const uint8_t **spec, Py_ssize_t *spec_len) {
    Py_ssize_t nspecs = PyTuple_GET_SIZE(specs);
    if (nfields < 1 || nfields > DIGEST_FIELDS_MAX || order < 0 || order >= nfields ||
        group < -1 || group >= nfields || nspecs < 1 || nspecs > DIGEST_SPECS_MAX) {
        return "bad field numbers or specs";
    }
    for (Py_ssize_t i = 0; i < nspecs; i++) {
        PyObject *item = PyTuple_GET_ITEM(specs, i);
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) % 2 != 0 ||
            PyBytes_GET_SIZE(item) > 2 * DIGEST_FIELDS_MAX) {
            return "a spec is not bytes of (field, kind) pairs";
        }
        spec[i] = (const uint8_t *)PyBytes_AS_STRING(item);
        spec_len[i] = PyBytes_GET_SIZE(item);
        for (Py_ssize_t j = 0; j < spec_len[i]; j += 2) {
            if (spec[i][j] >= nfields || spec[i][j + 1] < K_FIXED8 || spec[i][j + 1] > K_METADATA) {
                return "a spec names no such field or kind";
            }
        }
    }
    return NULL;
}

/* The offset of a binary COPY's first row, or -1 if buf is not one. */
static Py_ssize_t copy_first_row(const uint8_t *buf, Py_ssize_t size) {
    static const uint8_t SIGNATURE[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0};
    return size < 19 || memcmp(buf, SIGNATURE, 11) != 0 ? -1 : 19 + (Py_ssize_t)be32(buf + 15);
}

/* The row at *off of a binary COPY of rows of nfields fields, with a bigint at `order`
 * and a uuid at `group` (unless -1): 1 and *off past it, 0 at the trailer, -1 with *bad
 * set for anything else. */
static int copy_next_row(const uint8_t *buf, Py_ssize_t size, Py_ssize_t *off, int nfields,
                         int order, int group, const uint8_t **part, int32_t *len,
                         const char **bad) {
    Py_ssize_t at = *off;
    if (at < 19 || at + 2 > size) {
        *bad = "the COPY ends without its trailer";
        return -1;
    }
    int fields = (int16_t)((buf[at] << 8) | buf[at + 1]);
    if (fields == -1) {
        return 0;
    }
    if (fields != nfields) {
        *bad = "a row with another number of fields";
        return -1;
    }
    Py_ssize_t next = copy_fields(buf, size, at + 2, nfields, part, len);
    if (next < 0) {
        *bad = "a row cut short";
        return -1;
    }
    if (len[order] != 8 || (group >= 0 && len[group] != 16)) {
        *bad = "a row without its position or its id";
        return -1;
    }
    *off = next;
    return 1;
}

/* [(group id, count, digests or None for a group left unordered)] of the first n
 * groups, from their digest[] (the id is b"" without groups). */
static PyObject *groups_list(const Groups *gs, size_t n, Py_ssize_t nspecs, int group) {
    PyObject *result = PyList_New((Py_ssize_t)n);
    for (size_t g = 0; result != NULL && g < n; g++) {
        const DigestGroup *d = &gs->out[g];
        PyObject *digests = d->unordered ? Py_NewRef(Py_None) : PyTuple_New(nspecs);
        for (Py_ssize_t s = 0; digests != NULL && digests != Py_None && s < nspecs; s++) {
            PyObject *b = PyBytes_FromStringAndSize((const char *)d->digest[s],
                                                    SHA256_DIGEST_LENGTH);
            if (b == NULL) {
                Py_CLEAR(digests);
                break;
            }
            PyTuple_SET_ITEM(digests, s, b);
        }
        PyObject *item = digests == NULL
                             ? NULL
                             : Py_BuildValue("y#nN", (const char *)d->id,
                                             (Py_ssize_t)(group >= 0 ? 16 : 0),
                                             (Py_ssize_t)d->count, digests);
        if (item == NULL) { /* Py_BuildValue has released digests ("N") */
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)g, item);
    }
    return result;
}

/* Raise ValueError("who: what"), or MemoryError for "" (an allocation failed). */
static PyObject *digest_error(const char *who, const char *bad) {
    if (bad[0] == '\0') {
        return PyErr_NoMemory();
    }
    return PyErr_Format(PyExc_ValueError, "%s: %s", who, bad);
}

/* copy_digests(buf, fields, order, group, specs) -> list[(group, count, digests)]: buf is
 * a binary COPY of rows of `fields` fields, in any order. The rows are hashed in the order
 * of their bigint field `order`, per value of their uuid field `group` (or all together
 * for -1; then the one item's group is b""); each spec (bytes of (field, kind) pairs) gives
 * one sha256 over the rows' bytes it describes. Groups come in the order the COPY first
 * gives them. The work runs without the interpreter lock. */
static PyObject *py_copy_digests(PyObject *self, PyObject *args) {
    Py_buffer view;
    int nfields, order, group;
    PyObject *specs;
    if (!PyArg_ParseTuple(args, "y*iiiO!:copy_digests", &view, &nfields, &order, &group,
                          &PyTuple_Type, &specs)) {
        return NULL;
    }
    const uint8_t *buf = view.buf;
    Py_ssize_t size = view.len;
    Py_ssize_t nspecs = PyTuple_GET_SIZE(specs);
    const uint8_t *spec[DIGEST_SPECS_MAX];
    Py_ssize_t spec_len[DIGEST_SPECS_MAX];
    const char *bad = digest_args(nfields, order, group, specs, spec, spec_len);
    Py_ssize_t off = copy_first_row(buf, size);
    if (bad == NULL && off < 0) {
        bad = "not a binary COPY";
    }
    if (bad != NULL) {
        PyBuffer_Release(&view);
        return digest_error("copy_digests", bad);
    }
    size_t most = (size_t)size / (size_t)(2 + 4 * nfields) + 1;
    DigestRow *rows = PyMem_RawMalloc(most * sizeof(DigestRow));
    uint32_t *grouped = PyMem_RawMalloc(most * sizeof(uint32_t));
    Groups gs;
    int gs_ok = groups_init(&gs) == 0;
    if (rows == NULL || grouped == NULL || !gs_ok) {
        PyMem_RawFree(rows);
        PyMem_RawFree(grouped);
        groups_free(&gs);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    size_t count = 0, groups = 0;
    DigestGroup *out = NULL;
    Py_BEGIN_ALLOW_THREADS;
    const uint8_t *part[DIGEST_FIELDS_MAX];
    int32_t len[DIGEST_FIELDS_MAX];
    static const uint8_t no_id[16] = {0};
    int in_order = 1;
    for (;;) {
        const uint8_t *row = buf + off; /* its field count; its fields follow */
        int r = copy_next_row(buf, size, &off, nfields, order, group, part, len, &bad);
        if (r <= 0) {
            break;
        }
        if (count >= most) {
            bad = "a row with another number of fields";
            break;
        }
        const uint8_t *id = group >= 0 ? part[group] : no_id;
        int created;
        long found = groups_find(&gs, id, &created);
        if (found < 0) {
            bad = "";
            break;
        }
        rows[count].group = (uint32_t)found;
        if (created && gs.n > DIGEST_IN_ORDER_GROUPS_MAX) {
            in_order = 0;
        }
        for (Py_ssize_t s = 0; created && in_order && s < nspecs; s++) {
            SHA256_Init(&gs.out[found].ctx[s]);
        }
        DigestGroup *g = &gs.out[rows[count].group];
        g->count++;
        rows[count].order = (long long)be64(part[order]);
        rows[count].off = row + 2 - buf;
        if (in_order) {
            if (rows[count].order > g->last) {
                g->last = rows[count].order;
                hash_row(g->ctx, nspecs, spec, spec_len, part, len);
            } else {
                in_order = 0;
            }
        }
        count++;
    }
    out = gs.out;
    groups = gs.n;
    if (bad == NULL && in_order) {
        for (size_t g = 0; g < groups; g++) {
            for (Py_ssize_t s = 0; s < nspecs; s++) {
                SHA256_Final(out[g].digest[s], &out[g].ctx[s]);
            }
        }
    }
    if (bad == NULL && !in_order) {
        /* The rows of each group together, in the order they came (a stable placement),
         * then each group in order of `order` where it is not already. */
        size_t at = 0;
        for (size_t g = 0; g < groups; g++) {
            out[g].first = at;
            at += out[g].count;
            out[g].count = 0;
        }
        for (size_t i = 0; i < count; i++) {
            DigestGroup *g = &out[rows[i].group];
            grouped[g->first + g->count++] = (uint32_t)i;
        }
        DigestRow *sorted = PyMem_RawMalloc((count ? count : 1) * sizeof(DigestRow));
        if (sorted == NULL) {
            bad = "";
        } else {
            for (size_t i = 0; i < count; i++) {
                sorted[i] = rows[grouped[i]];
            }
            PyMem_RawFree(rows);
            rows = sorted;
        }
    }
    for (size_t g = 0; bad == NULL && !in_order && g < groups; g++) {
        DigestRow *r = rows + out[g].first;
        size_t n = out[g].count;
        for (size_t i = 1; i < n; i++) {
            if (r[i - 1].order > r[i].order) {
                qsort(r, n, sizeof(DigestRow), digest_row_cmp);
                break;
            }
        }
        SHA256_CTX *ctx = out[g].ctx;
        for (Py_ssize_t s = 0; s < nspecs; s++) {
            SHA256_Init(&ctx[s]);
        }
        for (size_t i = 0; i < n; i++) {
            copy_fields(buf, size, r[i].off, nfields, part, len);
            hash_row(ctx, nspecs, spec, spec_len, part, len);
        }
        for (Py_ssize_t s = 0; s < nspecs; s++) {
            SHA256_Final(out[g].digest[s], &ctx[s]);
        }
    }
    if (bad == NULL && groups == 0 && group < 0) { /* no rows: the digests of nothing */
        SHA256_CTX ctx;
        for (Py_ssize_t s = 0; s < nspecs; s++) {
            SHA256_Init(&ctx);
            SHA256_Final(out[0].digest[s], &ctx);
        }
        memset(out[0].id, 0, 16);
        out[0].count = 0;
        out[0].unordered = 0;
        groups = 1;
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&view);
    PyMem_RawFree(rows);
    PyMem_RawFree(grouped);
    if (bad != NULL) {
        groups_free(&gs);
        return digest_error("copy_digests", bad);
    }
    PyObject *result = groups_list(&gs, groups, nspecs, group);
    groups_free(&gs);
    return result;
}

/* Digests(fields, order, group, specs): copy_digests over several COPYs of one table
 * (slices of it, in table order), hashing each row as it comes, so that only the groups'
 * states are kept. feed(buf) takes one slice; result() gives copy_digests' list, where a
 * group whose rows came out of order has None for its digests (the caller reads that
 * group again), or None for all past DIGEST_IN_ORDER_GROUPS_MAX groups. */
typedef struct {
    PyObject_HEAD int nfields, order, group, in_order;
    Py_ssize_t nspecs;
    uint8_t spec[DIGEST_SPECS_MAX][2 * DIGEST_FIELDS_MAX];
    Py_ssize_t spec_len[DIGEST_SPECS_MAX];
    Groups gs;
} Digests;

static void digests_dealloc(Digests *self) {
    groups_free(&self->gs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int digests_init(Digests *self, PyObject *args, PyObject *kwargs) {
    PyObject *specs;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Digests() takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "iiiO!:Digests", &self->nfields, &self->order, &self->group,
                          &PyTuple_Type, &specs)) {
        return -1;
    }
    const uint8_t *spec[DIGEST_SPECS_MAX];
    const char *bad = digest_args(self->nfields, self->order, self->group, specs, spec,
                                  self->spec_len);
    if (bad != NULL) {
        digest_error("Digests", bad);
        return -1;
    }
    self->nspecs = PyTuple_GET_SIZE(specs);
    for (Py_ssize_t i = 0; i < self->nspecs; i++) {
        memcpy(self->spec[i], spec[i], (size_t)self->spec_len[i]);
    }
    groups_free(&self->gs);
    if (groups_init(&self->gs) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->in_order = 1;
    return 0;
}

static PyObject *digests_feed(Digests *self, PyObject *arg) {
    if (self->gs.out == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Digests: not initialised");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const uint8_t *buf = view.buf;
    Py_ssize_t size = view.len;
    Py_ssize_t off = copy_first_row(buf, size);
    const char *bad = off < 0 ? "not a binary COPY" : NULL;
    int order = self->order, group = self->group;
    const uint8_t *spec[DIGEST_SPECS_MAX];
    for (Py_ssize_t i = 0; i < self->nspecs; i++) {
        spec[i] = self->spec[i];
    }
    Py_BEGIN_ALLOW_THREADS;
    const uint8_t *part[DIGEST_FIELDS_MAX];
    int32_t len[DIGEST_FIELDS_MAX];
    static const uint8_t no_id[16] = {0};
    while (bad == NULL && self->in_order &&
           copy_next_row(buf, size, &off, self->nfields, order, group, part, len, &bad) > 0) {
        int created;
        long found = groups_find(&self->gs, group >= 0 ? part[group] : no_id, &created);
        if (found < 0) {
            bad = "";
            break;
        }
        if (created && self->gs.n > DIGEST_IN_ORDER_GROUPS_MAX) {
            self->in_order = 0; /* as many states as that: the table is read whole */
            break;
        }
        DigestGroup *g = &self->gs.out[found];
        long long at = (long long)be64(part[order]);
        if (created) {
            for (Py_ssize_t s = 0; s < self->nspecs; s++) {
                SHA256_Init(&g->ctx[s]);
            }
        }
        g->count++;
        if (at <= g->last) {
            g->unordered = 1; /* its digests can no longer be had from here */
        }
        if (!g->unordered) {
            g->last = at;
            hash_row(g->ctx, self->nspecs, spec, self->spec_len, part, len);
        }
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&view);
    if (bad != NULL) {
        return digest_error("Digests.feed", bad);
    }
    return PyBool_FromLong(self->in_order);
}

static PyObject *digests_result(Digests *self, PyObject *unused) {
    if (self->gs.out == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Digests: not initialised");
        return NULL;
    }
    if (!self->in_order) {
        Py_RETURN_NONE;
    }
    Groups *gs = &self->gs;
    size_t n = gs->n;
    if (n == 0 && self->group < 0) { /* no rows: one item, the digests of nothing */
        memset(gs->out[0].id, 0, 16);
        gs->out[0].count = 0;
        gs->out[0].unordered = 0;
        for (Py_ssize_t s = 0; s < self->nspecs; s++) {
            SHA256_Init(&gs->out[0].ctx[s]);
        }
        n = 1;
    }
    for (size_t g = 0; g < n; g++) {
        for (Py_ssize_t s = 0; s < self->nspecs; s++) {
            SHA256_CTX ctx = gs->out[g].ctx[s]; /* a copy: result() can be asked again */
            SHA256_Final(gs->out[g].digest[s], &ctx);
        }
    }
    return groups_list(gs, n, self->nspecs, self->group);
}

static PyMethodDef digests_methods[] = {
    {"feed", (PyCFunction)digests_feed, METH_O,
     "feed(buf) -> bool: hash one binary COPY's rows; False past the groups' limit"},
    {"result", (PyCFunction)digests_result, METH_NOARGS,
     "result() -> list[(group, count, digests | None)] | None: None for a group whose rows "
     "came out of order, None for all past the groups' limit"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DigestsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ledger._replay.Digests",
    .tp_basicsize = sizeof(Digests),
    .tp_dealloc = (destructor)digests_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "copy_digests over slices of a table, hashing rows as they come.",
    .tp_methods = digests_methods,
    .tp_init = (initproc)digests_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef methods[] = {
    {"apply_records", py_apply_records, METH_VARARGS,
     "apply_records(buf, offset, count, position, accounts, transfers, forbidden, hashes, "
     "rows, stop_position, parsed=None, first=0) -> (offset, position, applied)"},
    {"parse_records", py_parse_records, METH_VARARGS,
     "parse_records(buf, offset, count) -> bytes: envelopes read without the lock"},
    {"transfer_states", py_transfer_states, METH_O,
     "transfer_states(transfers) -> bytes | None: the sha256 of the transfers' states, "
     "or None for a value left to the reference"},
    {"metadata_bytes", py_metadata_bytes, METH_O,
     "metadata_bytes(raw) -> bytes | None: a transfer's metadata as the pass hashes it, or "
     "None where _metadata_bytes gives it"},
    {"set_metadata_bytes", py_set_metadata_bytes, METH_O,
     "set_metadata_bytes(fn) -> None: fn(raw JSON) gives the hashed bytes of a transfer's "
     "metadata that is not {}"},
    {"store_chunk", py_store_chunk, METH_VARARGS,
     "store_chunk(buf, last_position, last_hash[, wal]) -> (gap, missing, unchained, unsame, "
     "hashes, top): a binary COPY of the events rows, checked (see ledger.audit)"},
    {"copy_digests", py_copy_digests, METH_VARARGS,
     "copy_digests(buf, fields, order, group, specs) -> [(group, count, digests)]: sha256 "
     "of a binary COPY's rows in order, per group (see ledger.audit)"},
    {"forget", py_forget, METH_NOARGS,
     "forget() -> None: drop the table of accounts kept between calls."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_replay",
    "Native balance arithmetic of the WAL audit (see ledger.audit).", -1, methods,
    NULL, NULL, NULL, NULL,
};

static int intern(PyObject **slot, const char *name) {
    *slot = PyUnicode_InternFromString(name);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__replay(void) {
    if (intern(&s_pending, "pending") < 0 || intern(&s_none, "none") < 0 ||
        intern(&s_single, "single") < 0 || intern(&s_post, "post") < 0 ||
        intern(&s_void, "void") < 0 || intern(&s_posted, "posted") < 0 ||
        intern(&s_voided, "voided") < 0 || intern(&s_expired, "expired") < 0 ||
        intern(&s_update, "update") < 0) {
        return NULL;
    }
    hex_init();
    if (PyType_Ready(&EntryHashType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (PyType_Ready(&DigestsType) < 0) {
        Py_XDECREF(m);
        return NULL;
    }
    if (m != NULL && (PyModule_AddObjectRef(m, "EntryHash", (PyObject *)&EntryHashType) < 0 ||
                      PyModule_AddObjectRef(m, "Digests", (PyObject *)&DigestsType) < 0)) {
        Py_CLEAR(m);
    }
    return m;
}
