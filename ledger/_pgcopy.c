/* A COPY ... TO STDOUT read whole, without the interpreter lock (see ledger.pgcopy).
 *
 * psycopg hands each COPY row to Python as its own message, which costs a few
 * microseconds a row: for the audit's hundreds of thousands of rows, more than the work
 * done with them. This module calls the libpq that psycopg has loaded (its functions'
 * addresses are given once by bind()) on the PGconn of a psycopg connection, and gathers
 * every row's bytes in one buffer. It needs no libpq headers or library at build time. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;

/* ExecStatusType: values fixed by libpq's ABI. */
enum { PGRES_COMMAND_OK = 1, PGRES_COPY_OUT = 3 };

static int (*pq_send_query)(PGconn *, const char *);
static PGresult *(*pq_get_result)(PGconn *);
static int (*pq_result_status)(const PGresult *);
static char *(*pq_result_error_message)(const PGresult *);
static void (*pq_clear)(PGresult *);
static int (*pq_get_copy_data)(PGconn *, char **, int);
static void (*pq_freemem)(void *);
static char *(*pq_error_message)(const PGconn *);

static PyObject *CopyError; /* the statement failed; the message is the server's */

/* bind((PQsendQuery, PQgetResult, PQresultStatus, PQresultErrorMessage, PQclear,
 * PQgetCopyData, PQfreemem, PQerrorMessage)) -> None: the addresses, as integers. */
static PyObject *py_bind(PyObject *self, PyObject *args) {
    unsigned long long a[8];
    if (!PyArg_ParseTuple(args, "(KKKKKKKK):bind", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5],
                          &a[6], &a[7])) {
        return NULL;
    }
    for (int i = 0; i < 8; i++) {
        if (a[i] == 0) {
            PyErr_SetString(PyExc_ValueError, "bind: a NULL function address");
            return NULL;
        }
    }
    pq_send_query = (int (*)(PGconn *, const char *))(uintptr_t)a[0];
    pq_get_result = (PGresult * (*)(PGconn *))(uintptr_t)a[1];
    pq_result_status = (int (*)(const PGresult *))(uintptr_t)a[2];
    pq_result_error_message = (char *(*)(const PGresult *))(uintptr_t)a[3];
    pq_clear = (void (*)(PGresult *))(uintptr_t)a[4];
    pq_get_copy_data = (int (*)(PGconn *, char **, int))(uintptr_t)a[5];
    pq_freemem = (void (*)(void *))(uintptr_t)a[6];
    pq_error_message = (char *(*)(const PGconn *))(uintptr_t)a[7];
    Py_RETURN_NONE;
}

typedef struct {
    char *data;
    size_t len, cap;
} Buffer;

/* CopyData: the COPY's bytes, in the memory they were gathered in (no copy into a bytes
 * object); read through the buffer protocol (bytes(), memoryview, the audit's parsers). */
typedef struct {
    PyObject_HEAD char *data;
    Py_ssize_t len;
} CopyData;

/* Read-only and never changed: a view holds a reference, which keeps the memory. */
static int copy_data_getbuffer(CopyData *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data ? self->data : "", self->len, 1,
                             flags);
}

static void copy_data_dealloc(CopyData *self) {
    PyMem_RawFree(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t copy_data_length(CopyData *self) { return self->len; }

static PyBufferProcs copy_data_as_buffer = {(getbufferproc)copy_data_getbuffer, NULL};

static PySequenceMethods copy_data_as_sequence = {
    .sq_length = (lenfunc)copy_data_length,
};

static PyTypeObject CopyDataType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ledger._pgcopy.CopyData",
    .tp_basicsize = sizeof(CopyData),
    .tp_dealloc = (destructor)copy_data_dealloc,
    .tp_as_buffer = &copy_data_as_buffer,
    .tp_as_sequence = &copy_data_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The bytes of a COPY read by copy_out (a read-only buffer).",
};

static int buffer_add(Buffer *b, const char *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : (size_t)1 << 20;
        while (cap < b->len + n) {
            cap *= 2;
        }
        char *grown = PyMem_RawRealloc(b->data, cap);
        if (grown == NULL) {
            return -1;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* Copy a message into err (once: the first error is the one reported). */
static void keep_error(char *err, size_t size, const char *message) {
    if (err[0] == '\0') {
        snprintf(err, size, "%s", message && message[0] ? message : "unknown error");
    }
}

/* Read the results left on the connection; keep the first error's message. */
static void drain_results(PGconn *conn, char *err, size_t size) {
    PGresult *res;
    while ((res = pq_get_result(conn)) != NULL) {
        int status = pq_result_status(res);
        if (status != PGRES_COMMAND_OK && status != PGRES_COPY_OUT) {
            keep_error(err, size, pq_result_error_message(res));
        }
        pq_clear(res);
    }
}

/* copy_out(pgconn_ptr, query, size_hint=0) -> CopyData: send query (a COPY ... TO
 * STDOUT, its parameters already in it) and return every data message of the COPY end to
 * end, gathered in a buffer of size_hint bytes to begin with. The connection is left
 * idle, as after any statement; an error raises CopyError with the server's message, once
 * the connection has been read to its end. */
static PyObject *py_copy_out(PyObject *self, PyObject *args) {
    unsigned long long address;
    const char *query;
    Py_ssize_t hint = 0;
    if (!PyArg_ParseTuple(args, "Ky|n:copy_out", &address, &query, &hint)) {
        return NULL;
    }
    if (pq_get_copy_data == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "copy_out: bind() was not called");
        return NULL;
    }
    if (address == 0) {
        PyErr_SetString(PyExc_ValueError, "copy_out: the connection is closed");
        return NULL;
    }
    PGconn *conn = (PGconn *)(uintptr_t)address;
    Buffer out = {NULL, 0, 0};
    char err[1024] = "";
    int nomem = 0;
    if (hint > 0) {
        out.data = PyMem_RawMalloc((size_t)hint);
        out.cap = out.data ? (size_t)hint : 0;
    }
    Py_BEGIN_ALLOW_THREADS;
    if (!pq_send_query(conn, query)) {
        keep_error(err, sizeof err, pq_error_message(conn));
    } else {
        PGresult *res = pq_get_result(conn);
        int status = res ? pq_result_status(res) : -1;
        if (status != PGRES_COPY_OUT) {
            const char *message = res ? pq_result_error_message(res) : NULL;
            keep_error(err, sizeof err,
                       message && message[0] ? message
                       : res                 ? "the statement is not a COPY ... TO STDOUT"
                                             : pq_error_message(conn));
        }
        if (res != NULL) {
            pq_clear(res);
        }
        if (status == PGRES_COPY_OUT) {
            for (;;) {
                char *row = NULL;
                int n = pq_get_copy_data(conn, &row, 0);
                if (n > 0) {
                    if (!nomem && buffer_add(&out, row, (size_t)n) < 0) {
                        nomem = 1; /* read on to the end, so that the connection stays usable */
                    }
                    pq_freemem(row);
                    continue;
                }
                if (row != NULL) {
                    pq_freemem(row);
                }
                if (n == -2) {
                    keep_error(err, sizeof err, pq_error_message(conn));
                }
                break; /* -1: the COPY is done; its result follows */
            }
        }
        drain_results(conn, err, sizeof err);
    }
    Py_END_ALLOW_THREADS;
    if (err[0] != '\0' || nomem) {
        PyMem_RawFree(out.data);
        if (err[0] == '\0') {
            return PyErr_NoMemory();
        }
        size_t n = strlen(err);
        while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' ')) {
            err[--n] = '\0';
        }
        PyErr_SetString(CopyError, err);
        return NULL;
    }
    CopyData *result = PyObject_New(CopyData, &CopyDataType);
    if (result == NULL) {
        PyMem_RawFree(out.data);
        return NULL;
    }
    result->data = out.data;
    result->len = (Py_ssize_t)out.len;
    return (PyObject *)result;
}

static PyMethodDef methods[] = {
    {"bind", py_bind, METH_VARARGS,
     "bind((PQsendQuery, PQgetResult, PQresultStatus, PQresultErrorMessage, PQclear, "
     "PQgetCopyData, PQfreemem, PQerrorMessage)) -> None: libpq's function addresses"},
    {"copy_out", py_copy_out, METH_VARARGS,
     "copy_out(pgconn_ptr, query, size_hint=0) -> CopyData: a COPY ... TO STDOUT read "
     "whole, without the interpreter lock"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pgcopy", "A COPY read whole through libpq (see ledger.pgcopy).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pgcopy(void) {
    if (PyType_Ready(&CopyDataType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "CopyData", (PyObject *)&CopyDataType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    CopyError = PyErr_NewException("ledger._pgcopy.CopyError", PyExc_RuntimeError, NULL);
    if (CopyError == NULL || PyModule_AddObjectRef(m, "CopyError", CopyError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
