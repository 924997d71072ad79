/* The WAL's hot loops in C: framing a batch, and checking a run of records.
 *
 * Why this exists. Framing a record is a CRC32C, two small header fields and a copy; in
 * Python each of those is a function call, and the loop around them costs more than the
 * disk: at a batch of 1000 records the pure-Python framing took about three times as
 * long as the write and fdatasync of the same bytes. Here one call frames the whole
 * batch, and one call checks a run of records (CRC32C, positions, hash chain) with the
 * interpreter lock released, so an auditor's replay can verify the next stretch of the
 * log on one core while it parses the current one on the other.
 *
 * The Python implementation in ledger/adapters/wal.py stays the reference: it produces
 * every error message, handles every unusual case, and a contract test checks that both
 * produce the same bytes and the same verdicts. Whenever these functions meet something
 * they do not handle (a record without its cached canonical bytes, a check that fails,
 * the end of the data), they return early and the Python code takes over from exactly
 * that point, so there is one place where damage is classified and described.
 *
 * Formats (see wal.py): a record is u32 length | u32 crc32c(payload) | payload, payload =
 * u64 position | u64 batch first | u32 batch count | u32 canonical length | canonical |
 * zero padding to 8 bytes | 32-byte hash; hash = sha256(prev_hash || canonical).
 * Integers are little-endian; this file assumes a little-endian machine (checked at
 * import).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define HAVE_X86_CRC 1
#endif

#define HASH_BYTES 32
#define FRAME_BYTES 8
#define RECORD_HEAD_BYTES 32
#define PAYLOAD_HEAD_BYTES 24
#define CANONICAL_BYTES_MAX (16 * 1024 * 1024)
#define BATCH_RECORDS_MAX (1 << 20)
#define PAYLOAD_BYTES_MIN (PAYLOAD_HEAD_BYTES + HASH_BYTES)
#define PAYLOAD_BYTES_MAX (PAYLOAD_HEAD_BYTES + CANONICAL_BYTES_MAX + 7 + HASH_BYTES)

/* --- CRC32C (Castagnoli, reflected polynomial 0x82F63B78) ---------------------------- */

static uint32_t crc_table[8][256];
static int crc_hardware;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        }
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int t = 1; t < 8; t++) {
            uint32_t prev = crc_table[t - 1][i];
            crc_table[t][i] = (prev >> 8) ^ crc_table[0][prev & 0xff];
        }
    }
#ifdef HAVE_X86_CRC
    __builtin_cpu_init();
    crc_hardware = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
}

static uint32_t crc_software(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
              crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
              crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
              crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) {
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    }
    return ~crc;
}

#ifdef HAVE_X86_CRC
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t crc, const uint8_t *p,
                                                           size_t n) {
    uint64_t c = (uint32_t)~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) {
        c32 = _mm_crc32_u8(c32, *p++);
    }
    return ~c32;
}
#endif

#ifdef HAVE_X86_CRC
/* Three independent CRCs at once: the crc32 instruction takes three cycles but a new one
 * can start every cycle, so three streams of records keep it busy where one leaves it
 * idle two cycles out of three. Each record has its own CRC, so no combining is needed. */
__attribute__((target("sse4.2"))) static void crc_sse42_x3(const uint8_t *const p[3],
                                                          const size_t n[3], uint32_t out[3]) {
    size_t common = n[0] < n[1] ? n[0] : n[1];
    common = (common < n[2] ? common : n[2]) & ~(size_t)7;
    uint64_t c0 = 0xffffffffu, c1 = 0xffffffffu, c2 = 0xffffffffu;
    for (size_t i = 0; i < common; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p[0] + i, 8);
        memcpy(&w1, p[1] + i, 8);
        memcpy(&w2, p[2] + i, 8);
        c0 = _mm_crc32_u64(c0, w0);
        c1 = _mm_crc32_u64(c1, w1);
        c2 = _mm_crc32_u64(c2, w2);
    }
    out[0] = crc_sse42(~(uint32_t)c0, p[0] + common, n[0] - common);
    out[1] = crc_sse42(~(uint32_t)c1, p[1] + common, n[1] - common);
    out[2] = crc_sse42(~(uint32_t)c2, p[2] + common, n[2] - common);
}
#endif

static uint32_t crc32c(uint32_t crc, const uint8_t *p, size_t n) {
#ifdef HAVE_X86_CRC
    if (crc_hardware) {
        return crc_sse42(crc, p, n);
    }
#endif
    return crc_software(crc, p, n);
}

static inline void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint32_t get_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline uint64_t get_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void chain_hash(const uint8_t *prev, const uint8_t *canonical, size_t length,
                       uint8_t *out) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, prev, HASH_BYTES);
    SHA256_Update(&ctx, canonical, length);
    SHA256_Final(out, &ctx);
}

/* --- crc32c(data, crc=0) ---------------------------------------------------------------- */

static PyObject *py_crc32c(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I:crc32c", &data, &crc)) {
        return NULL;
    }
    uint32_t out;
    if (data.len > 65536) {
        Py_BEGIN_ALLOW_THREADS out = crc32c(crc, data.buf, (size_t)data.len);
        Py_END_ALLOW_THREADS
    } else {
        out = crc32c(crc, data.buf, (size_t)data.len);
    }
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(out);
}

/* crc32c_portable(data, crc=0) -> int: the table-driven path, whatever the CPU has (for
 * the tests that check both paths against google-crc32c). */
static PyObject *py_crc32c_portable(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I:crc32c_portable", &data, &crc)) {
        return NULL;
    }
    uint32_t out = crc_software(crc, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(out);
}

/* --- encode_batch ------------------------------------------------------------------------ */

/* EventRecord is a frozen dataclass with __slots__: its fields are member descriptors at
 * fixed offsets in the instance. Reading them there skips four attribute look-ups per
 * record; any other type (or a changed class) makes encode_batch decline the batch. */
static PyTypeObject *record_type;
static Py_ssize_t offset_position, offset_prev_hash, offset_hash, offset_canonical;

static int slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset) {
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    if (descr == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ok = 0;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY)) {
            *offset = member->offset;
            ok = 1;
        }
    }
    Py_DECREF(descr);
    return ok;
}

static int resolve_record_type(PyTypeObject *type) {
    if (type == record_type) {
        return 1;
    }
    Py_ssize_t p, ph, h, c;
    if (!slot_offset(type, "position", &p) || !slot_offset(type, "prev_hash", &ph) ||
        !slot_offset(type, "hash", &h) || !slot_offset(type, "canonical_cache", &c)) {
        return 0;
    }
    Py_XDECREF(record_type);
    Py_INCREF(type);
    record_type = type;
    offset_position = p;
    offset_prev_hash = ph;
    offset_hash = h;
    offset_canonical = c;
    return 1;
}

static inline PyObject *slot(PyObject *obj, Py_ssize_t offset) {
    return *(PyObject **)((char *)obj + offset);
}

typedef struct {
    const uint8_t *canonical;
    Py_ssize_t length;
    const uint8_t *hash;
    uint8_t *frame;
} Part;

/* Checks that ``records`` continue the chain from (last_position, last_hash) and fills
 * ``parts``; returns the framed size, 0 to decline (see encode_batch), -1 on error. */
static Py_ssize_t collect(PyObject **items, Py_ssize_t count, long long last_position,
                          const uint8_t *last_hash, Part *parts) {
    const uint8_t *prev = last_hash;
    long long expected = last_position + 1;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++, expected++) {
        PyObject *r = items[i];
        if (Py_TYPE(r) != record_type) {
            return 0;
        }
        PyObject *position = slot(r, offset_position);
        PyObject *prev_hash = slot(r, offset_prev_hash);
        PyObject *hash = slot(r, offset_hash);
        PyObject *canonical = slot(r, offset_canonical);
        if (position == NULL || prev_hash == NULL || hash == NULL || canonical == NULL ||
            !PyLong_CheckExact(position) || !PyBytes_CheckExact(prev_hash) ||
            !PyBytes_CheckExact(hash) || !PyBytes_CheckExact(canonical)) {
            return 0;
        }
        int overflow = 0;
        long long p = PyLong_AsLongLongAndOverflow(position, &overflow);
        if (overflow || p != expected || PyBytes_GET_SIZE(prev_hash) != HASH_BYTES ||
            PyBytes_GET_SIZE(hash) != HASH_BYTES ||
            memcmp(PyBytes_AS_STRING(prev_hash), prev, HASH_BYTES) != 0) {
            return 0;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(canonical);
        if (length > CANONICAL_BYTES_MAX) {
            return 0;
        }
        parts[i].canonical = (const uint8_t *)PyBytes_AS_STRING(canonical);
        parts[i].length = length;
        parts[i].hash = (const uint8_t *)PyBytes_AS_STRING(hash);
        prev = parts[i].hash;
        total += FRAME_BYTES + PAYLOAD_HEAD_BYTES + ((length + 7) & ~(Py_ssize_t)7) + HASH_BYTES;
    }
    return total;
}

/* Writes record i's frame (all but its CRC) at ``w``; returns the frame's size. */
static inline Py_ssize_t frame_one(Part *part, uint64_t position, uint64_t first,
                                   uint32_t count, uint8_t *w) {
    Py_ssize_t length = part->length;
    Py_ssize_t padded = (length + 7) & ~(Py_ssize_t)7;
    uint32_t payload_length = (uint32_t)(PAYLOAD_HEAD_BYTES + padded + HASH_BYTES);
    uint8_t *payload = w + FRAME_BYTES;
    put_u64(payload, position);
    put_u64(payload + 8, first);
    put_u32(payload + 16, count);
    put_u32(payload + 20, (uint32_t)length);
    memcpy(payload + PAYLOAD_HEAD_BYTES, part->canonical, (size_t)length);
    memset(payload + PAYLOAD_HEAD_BYTES + length, 0, (size_t)(padded - length));
    memcpy(payload + PAYLOAD_HEAD_BYTES + padded, part->hash, HASH_BYTES);
    put_u32(w, payload_length);
    part->frame = w;
    return FRAME_BYTES + payload_length;
}

/* Asks the CPU to start loading a record's canonical bytes (a few cache lines ahead). */
static inline void prefetch_part(const Part *part) {
    const uint8_t *p = part->canonical;
    for (Py_ssize_t k = 0; k < part->length; k += 64) {
        __builtin_prefetch(p + k, 0, 3);
    }
}

#define FRAME_GROUP 3

/* Frames the records a group of three at a time: writes the three frames, then their
 * CRCs at once (where the CPU has the crc32 instruction) while those bytes are still in
 * the first-level cache, and meanwhile asks for the next group's canonical bytes. One
 * pass over the batch instead of writing every frame and then reading the whole batch
 * back for the CRCs. (Measured against the two-pass version on a 1000-record batch, the
 * difference was within the noise: most of the framing time is the first touch of
 * freshly made records, which this cannot avoid.) */
static void frame(Part *parts, Py_ssize_t count, long long last_position, uint8_t *w) {
    uint64_t first = (uint64_t)(last_position + 1);
    for (Py_ssize_t i = 0; i < count && i < FRAME_GROUP; i++) {
        prefetch_part(&parts[i]);
    }
    for (Py_ssize_t i = 0; i < count; i += FRAME_GROUP) {
        Py_ssize_t end = i + FRAME_GROUP < count ? i + FRAME_GROUP : count;
        for (Py_ssize_t k = end; k < count && k < end + FRAME_GROUP; k++) {
            prefetch_part(&parts[k]);
        }
        for (Py_ssize_t k = i; k < end; k++) {
            w += frame_one(&parts[k], first + (uint64_t)k, first, (uint32_t)count, w);
        }
#ifdef HAVE_X86_CRC
        if (crc_hardware && end - i == FRAME_GROUP) {
            const uint8_t *p[3];
            size_t n[3];
            uint32_t out[3];
            for (int k = 0; k < 3; k++) {
                p[k] = parts[i + k].frame + FRAME_BYTES;
                n[k] = get_u32(parts[i + k].frame);
            }
            crc_sse42_x3(p, n, out);
            for (int k = 0; k < 3; k++) {
                put_u32(parts[i + k].frame + 4, out[k]);
            }
            continue;
        }
#endif
        for (Py_ssize_t k = i; k < end; k++) {
            uint8_t *f = parts[k].frame;
            put_u32(f + 4, crc32c(0, f + FRAME_BYTES, get_u32(f)));
        }
    }
}

/* encode_batch(records, last_position, last_hash, buffer=None)
 *     -> (bytes, last hash) | (length, last hash) | None
 *
 * Frames ``records`` (a list or tuple of EventRecord) after checking that they continue
 * the chain: positions consecutive from last_position + 1, each prev_hash equal to the
 * hash before it. With a bytearray ``buffer`` the frames are written at its start (it
 * grows when too small, never shrinks: a writer reuses one warm buffer instead of
 * allocating and faulting in fresh pages for every batch) and their length is returned;
 * without one, a new bytes object.
 *
 * None means "not handled here": a record without cached canonical bytes (it did not
 * come from chain_records in this process, so its hash must be recomputed), a check that
 * failed, or an unexpected type. The caller then runs the reference encoder, which
 * re-hashes and raises the precise error. */
static PyObject *py_encode_batch(PyObject *self, PyObject *args) {
    PyObject *records;
    long long last_position;
    const char *last_hash;
    Py_ssize_t last_hash_len;
    PyObject *buffer = Py_None;
    if (!PyArg_ParseTuple(args, "OLy#|O:encode_batch", &records, &last_position, &last_hash,
                          &last_hash_len, &buffer)) {
        return NULL;
    }
    if (buffer != Py_None && !PyByteArray_CheckExact(buffer)) {
        PyErr_SetString(PyExc_TypeError, "encode_batch: buffer must be a bytearray or None");
        return NULL;
    }
    if (last_hash_len != HASH_BYTES ||
        !(PyList_CheckExact(records) || PyTuple_CheckExact(records))) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(records);
    PyObject **items = PySequence_Fast_ITEMS(records);
    if (count == 0 || count > BATCH_RECORDS_MAX) {
        Py_RETURN_NONE;
    }
    if (!resolve_record_type(Py_TYPE(items[0]))) {
        Py_RETURN_NONE;
    }
    Part *parts = PyMem_Malloc(sizeof(Part) * (size_t)count);
    if (parts == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t total = collect(items, count, last_position, (const uint8_t *)last_hash, parts);
    if (total <= 0) {
        PyMem_Free(parts);
        Py_RETURN_NONE;
    }
    PyObject *last = slot(items[count - 1], offset_hash);
    PyObject *result;
    if (buffer == Py_None) {
        PyObject *out = PyBytes_FromStringAndSize(NULL, total);
        if (out == NULL) {
            PyMem_Free(parts);
            return NULL;
        }
        frame(parts, count, last_position, (uint8_t *)PyBytes_AS_STRING(out));
        result = Py_BuildValue("(NO)", out, last);
    } else {
        if (PyByteArray_GET_SIZE(buffer) < total && PyByteArray_Resize(buffer, total) < 0) {
            PyMem_Free(parts);
            return NULL;
        }
        frame(parts, count, last_position, (uint8_t *)PyByteArray_AS_STRING(buffer));
        result = Py_BuildValue("(nO)", total, last);
    }
    PyMem_Free(parts);
    return result;
}

/* --- verify_span ------------------------------------------------------------------------- */

enum { SPAN_MORE = 0, SPAN_END = 1, SPAN_STOPPED_AT_BAD = 2 };

/* verify_span(buf, offset, size, position, prev_hash, records_max)
 *     -> (offset, position, prev_hash, count, status)
 *
 * Checks up to records_max records of a segment from byte ``offset`` (each must be
 * complete within ``size``, have a good CRC32C, the next position and a hash that chains
 * from the one before) without holding the interpreter lock. ``position`` is the last
 * position before ``offset``. Returns where it stopped and why: SPAN_MORE (records_max
 * checked), SPAN_END (a zero length field, or exactly the end of the data) or
 * SPAN_STOPPED_AT_BAD (the record at the returned offset is incomplete or fails a check:
 * the caller's reference scanner describes it). */
static PyObject *py_verify_span(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset, size, records_max;
    long long position;
    const char *prev_in;
    Py_ssize_t prev_len;
    if (!PyArg_ParseTuple(args, "y*nnLy#n:verify_span", &view, &offset, &size, &position,
                          &prev_in, &prev_len, &records_max)) {
        return NULL;
    }
    if (prev_len != HASH_BYTES || offset < 0 || size > view.len || offset > size) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "verify_span: bad arguments");
        return NULL;
    }
    uint8_t prev[HASH_BYTES];
    memcpy(prev, prev_in, HASH_BYTES);
    const uint8_t *buf = view.buf;
    Py_ssize_t count = 0;
    int status = SPAN_MORE;
    Py_BEGIN_ALLOW_THREADS
    while (count < records_max) {
        if (offset == size) {
            status = SPAN_END;
            break;
        }
        if (offset + RECORD_HEAD_BYTES > size) {
            if (offset + FRAME_BYTES <= size && get_u32(buf + offset) == 0) {
                status = SPAN_END;
            } else {
                status = SPAN_STOPPED_AT_BAD;
            }
            break;
        }
        uint32_t length = get_u32(buf + offset);
        if (length == 0) {
            status = SPAN_END;
            break;
        }
        if ((length & 7) || length < PAYLOAD_BYTES_MIN || length > PAYLOAD_BYTES_MAX ||
            offset + FRAME_BYTES + (Py_ssize_t)length > size) {
            status = SPAN_STOPPED_AT_BAD;
            break;
        }
        const uint8_t *payload = buf + offset + FRAME_BYTES;
        if (crc32c(0, payload, length) != get_u32(buf + offset + 4)) {
            status = SPAN_STOPPED_AT_BAD;
            break;
        }
        uint64_t record_position = get_u64(payload);
        uint32_t canonical_length = get_u32(payload + 20);
        Py_ssize_t hash_at = FRAME_BYTES + (Py_ssize_t)length - HASH_BYTES;
        Py_ssize_t canonical_end = RECORD_HEAD_BYTES + (Py_ssize_t)canonical_length;
        if (record_position != (uint64_t)(position + 1) || hash_at < canonical_end ||
            hash_at - canonical_end >= 8) {
            status = SPAN_STOPPED_AT_BAD;
            break;
        }
        uint8_t digest[HASH_BYTES];
        chain_hash(prev, buf + offset + RECORD_HEAD_BYTES, canonical_length, digest);
        if (memcmp(digest, buf + offset + hash_at, HASH_BYTES) != 0) {
            status = SPAN_STOPPED_AT_BAD;
            break;
        }
        memcpy(prev, digest, HASH_BYTES);
        position += 1;
        offset += FRAME_BYTES + (Py_ssize_t)length;
        count += 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("(nLy#ni)", offset, position, (const char *)prev,
                         (Py_ssize_t)HASH_BYTES, count, status);
}

/* --- scan_frames ------------------------------------------------------------------------ */

/* scan_frames(buf, offset, base, expected, prev_hash, batch_first, batch_last,
 *             stop_position, offsets, index, index_next, index_stride)
 *     -> (offset, stopped, expected, prev_hash, batch_first, batch_last,
 *         batch_start_offset, batch_start_prev, index_next)
 *
 * The good-record path of wal._scan_frames (read that first): from ``offset`` in
 * ``buf`` (whose first byte is at file offset ``base``), accept every record that is
 * complete, has a plausible length and a good CRC32C, the expected position, a canonical
 * length that fits, a hash that chains, and batch fields that start or continue a batch
 * correctly. It appends each accepted record's offset to ``offsets`` (a list, or None)
 * and an index entry (position, file offset, hash before it) to ``index`` (a list, or
 * None) at the first batch start at or after ``index_next``, as the reference does.
 * ``stopped`` is true when the record at ``stop_position`` was accepted; otherwise the
 * record at the returned offset is not accepted here (end of data, incomplete, damaged)
 * and the reference loop must classify it. ``batch_start_offset`` is -1 and
 * ``batch_start_prev`` None when no batch started in the span. */
static PyObject *py_scan_frames(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset, base;
    long long expected, batch_first, batch_last, stop_position, index_next, index_stride;
    const char *prev_in;
    Py_ssize_t prev_len;
    PyObject *offsets, *index;
    if (!PyArg_ParseTuple(args, "y*nnLy#LLLOOLL:scan_frames", &view, &offset, &base, &expected,
                          &prev_in, &prev_len, &batch_first, &batch_last, &stop_position,
                          &offsets, &index, &index_next, &index_stride)) {
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *start_prev = NULL;
    Py_ssize_t end = view.len;
    if (prev_len != HASH_BYTES || offset < 0 || offset > end ||
        (offsets != Py_None && !PyList_Check(offsets)) ||
        (index != Py_None && !PyList_Check(index))) {
        PyErr_SetString(PyExc_ValueError, "scan_frames: bad arguments");
        goto done;
    }
    const uint8_t *buf = view.buf;
    uint8_t prev[HASH_BYTES];
    memcpy(prev, prev_in, HASH_BYTES);
    Py_ssize_t start_offset = -1;
    uint8_t start_hash[HASH_BYTES];
    int stopped = 0;
    while (offset + RECORD_HEAD_BYTES <= end) {
        uint32_t length = get_u32(buf + offset);
        if (length == 0 || (length & 7) || length < PAYLOAD_BYTES_MIN ||
            length > PAYLOAD_BYTES_MAX || offset + FRAME_BYTES + (Py_ssize_t)length > end) {
            break;
        }
        const uint8_t *payload = buf + offset + FRAME_BYTES;
        if (crc32c(0, payload, length) != get_u32(buf + offset + 4)) {
            break;
        }
        long long position = (long long)get_u64(payload);
        long long first = (long long)get_u64(payload + 8);
        long long count = (long long)get_u32(payload + 16);
        uint32_t canonical_length = get_u32(payload + 20);
        Py_ssize_t hash_at = FRAME_BYTES + (Py_ssize_t)length - HASH_BYTES;
        Py_ssize_t canonical_end = RECORD_HEAD_BYTES + (Py_ssize_t)canonical_length;
        if (position != expected || hash_at < canonical_end || hash_at - canonical_end >= 8) {
            break;
        }
        uint8_t digest[HASH_BYTES];
        chain_hash(prev, buf + offset + RECORD_HEAD_BYTES, canonical_length, digest);
        if (memcmp(digest, buf + offset + hash_at, HASH_BYTES) != 0) {
            break;
        }
        int starts = 0;
        if (batch_last < position) {
            if (first != position || count < 1) {
                break;
            }
            starts = 1;
        } else if (first != batch_first || first + count - 1 != batch_last) {
            break;
        }
        if (offsets != Py_None) {
            PyObject *o = PyLong_FromSsize_t(offset);
            if (o == NULL || PyList_Append(offsets, o) < 0) {
                Py_XDECREF(o);
                goto done;
            }
            Py_DECREF(o);
        }
        if (starts) {
            batch_first = position;
            batch_last = position + count - 1;
            start_offset = base + offset;
            memcpy(start_hash, prev, HASH_BYTES);
            if (index != Py_None && position >= index_next) {
                PyObject *entry = Py_BuildValue("(Lny#)", position, base + offset,
                                                (const char *)prev, (Py_ssize_t)HASH_BYTES);
                if (entry == NULL || PyList_Append(index, entry) < 0) {
                    Py_XDECREF(entry);
                    goto done;
                }
                Py_DECREF(entry);
                index_next = position + index_stride;
            }
        }
        memcpy(prev, digest, HASH_BYTES);
        expected = position + 1;
        offset += FRAME_BYTES + (Py_ssize_t)length;
        if (position == stop_position) {
            stopped = 1;
            break;
        }
    }
    if (start_offset >= 0) {
        start_prev = PyBytes_FromStringAndSize((const char *)start_hash, HASH_BYTES);
        if (start_prev == NULL) {
            goto done;
        }
    } else {
        start_prev = Py_NewRef(Py_None);
    }
    result = Py_BuildValue("(niLy#LLnOL)", offset, stopped, expected, (const char *)prev,
                           (Py_ssize_t)HASH_BYTES, batch_first, batch_last, start_offset,
                           start_prev, index_next);
done:
    Py_XDECREF(start_prev);
    PyBuffer_Release(&view);
    return result;
}

/* --- record_parts ------------------------------------------------------------------------ */

/* record_parts(buf, offsets, position, from_position) -> [(position, canonical, hash), ...]
 *
 * The parts of records that a scan has already checked: ``offsets`` (a list of int) are
 * where they start in ``buf`` and ``position`` is the first one's. Records before
 * ``from_position`` are skipped. One call per chunk instead of a slice, an unpack and a
 * tuple per record in Python; a record that does not fit in ``buf`` raises ValueError
 * (the offsets did not come from a scan of this buffer). */
static PyObject *py_record_parts(PyObject *self, PyObject *args) {
    Py_buffer view;
    PyObject *offsets;
    long long position, from_position;
    if (!PyArg_ParseTuple(args, "y*O!LL:record_parts", &view, &PyList_Type, &offsets, &position,
                          &from_position)) {
        return NULL;
    }
    const uint8_t *buf = view.buf;
    Py_ssize_t size = view.len;
    Py_ssize_t count = PyList_GET_SIZE(offsets);
    Py_ssize_t skip = from_position > position ? (Py_ssize_t)(from_position - position) : 0;
    if (skip > count) {
        skip = count;
    }
    PyObject *out = PyList_New(count - skip);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (Py_ssize_t i = skip; i < count; i++) {
        Py_ssize_t off = PyLong_AsSsize_t(PyList_GET_ITEM(offsets, i));
        if (off == -1 && PyErr_Occurred()) {
            goto fail;
        }
        if (off < 0 || off > size - RECORD_HEAD_BYTES) {
            goto bounds;
        }
        Py_ssize_t end = off + FRAME_BYTES + (Py_ssize_t)get_u32(buf + off);
        Py_ssize_t length = (Py_ssize_t)get_u32(buf + off + FRAME_BYTES + 20);
        if (end > size || end - HASH_BYTES < off + RECORD_HEAD_BYTES + length) {
            goto bounds;
        }
        PyObject *item = Py_BuildValue(
            "(Ly#y#)", position + (long long)i, (const char *)buf + off + RECORD_HEAD_BYTES,
            length, (const char *)buf + end - HASH_BYTES, (Py_ssize_t)HASH_BYTES);
        if (item == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(out, i - skip, item);
    }
    PyBuffer_Release(&view);
    return out;
bounds:
    PyErr_SetString(PyExc_ValueError, "record_parts: a record does not fit in the buffer");
fail:
    Py_DECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

/* --- module ------------------------------------------------------------------------------ */

static PyMethodDef methods[] = {
    {"crc32c", py_crc32c, METH_VARARGS,
     "crc32c(data, crc=0) -> int: CRC32C of data, continuing from crc."},
    {"crc32c_portable", py_crc32c_portable, METH_VARARGS,
     "crc32c_portable(data, crc=0) -> int: the table-driven CRC32C (no CPU instructions)."},
    {"encode_batch", py_encode_batch, METH_VARARGS,
     "encode_batch(records, last_position, last_hash, buffer=None) -> "
     "(bytes | length, last_hash) | None"},
    {"verify_span", py_verify_span, METH_VARARGS,
     "verify_span(buf, offset, size, position, prev_hash, records_max) -> "
     "(offset, position, prev_hash, count, status)"},
    {"scan_frames", py_scan_frames, METH_VARARGS,
     "scan_frames(buf, offset, base, expected, prev_hash, batch_first, batch_last, "
     "stop_position, offsets, index, index_next, index_stride) -> (offset, stopped, "
     "expected, prev_hash, batch_first, batch_last, batch_start_offset, batch_start_prev, "
     "index_next)"},
    {"record_parts", py_record_parts, METH_VARARGS,
     "record_parts(buf, offsets, position, from_position) -> [(position, canonical, hash)]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_walcodec",
    "Native framing and checking of WAL records (see ledger.adapters.wal).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__walcodec(void) {
    uint16_t probe = 1;
    if (*(uint8_t *)&probe != 1) {
        PyErr_SetString(PyExc_ImportError, "_walcodec supports little-endian machines only");
        return NULL;
    }
    crc_init();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "SPAN_MORE", SPAN_MORE) < 0 ||
        PyModule_AddIntConstant(m, "SPAN_END", SPAN_END) < 0 ||
        PyModule_AddIntConstant(m, "SPAN_STOPPED_AT_BAD", SPAN_STOPPED_AT_BAD) < 0 ||
        PyModule_AddIntConstant(m, "CRC_HARDWARE", crc_hardware) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
