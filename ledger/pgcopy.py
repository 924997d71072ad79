"""A ``COPY ... TO STDOUT`` read whole, for the audit's large reads.

psycopg gives Python every COPY row as its own message, a few microseconds each: for the
audit's hundreds of thousands of rows that costs more than the work done with them, and
it holds the interpreter lock the WAL pass needs. :func:`copy_out` has the native module
``ledger._pgcopy`` read the whole COPY through the libpq that psycopg itself has loaded,
without the lock, and returns its data messages end to end, in the memory they were
gathered in: the same bytes as joining what iterating psycopg's ``Copy`` gives.

The native path needs the extension and exactly one libpq mapped in this process (found
in ``/proc/self/maps``, opened with ``RTLD_NOLOAD`` so that it is the same copy psycopg
calls). Where either is missing, :func:`copy_out` reads through psycopg as before;
:func:`native` says which way is taken.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import psycopg

if TYPE_CHECKING:
    from typing_extensions import Buffer

try:
    from ledger import _pgcopy
except ImportError:  # pragma: no cover - the extension is built by the package install
    _pgcopy = None  # type: ignore[assignment]

_FUNCTIONS: Final = (
    "PQsendQuery",
    "PQgetResult",
    "PQresultStatus",
    "PQresultErrorMessage",
    "PQclear",
    "PQgetCopyData",
    "PQfreemem",
    "PQerrorMessage",
)

_bound: bool | None = None
_lock = threading.Lock()


class CopyFailed(psycopg.Error):
    """The COPY failed on the server (its message), read natively; the connection is
    idle again, or in a failed transaction as after any failed statement."""


def _loaded_libpq() -> str | None:
    """The path of the one libpq mapped in this process, or None (none, or several)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    fields = (line.split(None, 5) for line in maps.splitlines())
    paths = {f[5] for f in fields if len(f) == 6 and os.path.basename(f[5]).startswith("libpq")}
    return paths.pop() if len(paths) == 1 else None


def _bind() -> bool:
    """Give the extension libpq's addresses, once; False where the native path cannot be
    taken."""
    global _bound
    with _lock:
        if _bound is None:
            _bound = False
            path = _loaded_libpq() if _pgcopy is not None else None
            if path is not None:
                try:
                    lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)
                    a = [
                        ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
                        for name in _FUNCTIONS
                    ]
                    _pgcopy.bind((a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]))
                    _bound = True
                except (OSError, AttributeError, ValueError):
                    _bound = False
        return _bound


def _pgconn_ptr(conn: psycopg.Connection[Any]) -> int:
    """The address of the connection's PGconn (0 once closed): an attribute of every
    implementation of psycopg.pq, which its abstract class does not declare."""
    ptr: int = getattr(conn.pgconn, "pgconn_ptr", None) or 0
    return ptr


def native() -> bool:
    """Whether :func:`copy_out` reads natively in this process (libpq must be loaded, as
    it is once psycopg is imported)."""
    return _bind()


def copy_out(
    conn: psycopg.Connection[Any], sql: str, params: Any = None, *, size_hint: int = 0
) -> Buffer:
    """Run ``sql`` (a ``COPY ... TO STDOUT``, with psycopg's ``%s``/``%(name)s``
    placeholders filled in on this side, as ``cursor.copy`` does) and return its data: a
    read-only buffer (``bytes()`` of it gives the bytes), gathered natively in memory of
    ``size_hint`` bytes to begin with (it grows as needed).

    On a connection that is not in autocommit and has no transaction open, psycopg would
    open one first: that case takes psycopg's way, so that the COPY is in the transaction
    either way."""
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if not _bind() or (idle and not conn.autocommit):
        with conn.cursor() as cur, cur.copy(sql, params) as copy:
            return b"".join(copy)
    query = psycopg.ClientCursor(conn).mogrify(sql, params) if params is not None else sql
    with conn.lock:
        try:
            data = _pgcopy.copy_out(_pgconn_ptr(conn), query.encode(conn.info.encoding), size_hint)
        except _pgcopy.CopyError as exc:
            raise CopyFailed(str(exc)) from None
    return data
