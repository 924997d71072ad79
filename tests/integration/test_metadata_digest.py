"""A transfer's metadata as the audit hashes it from the jsonb that PostgreSQL sends
(``_replay.copy_digests``, kind ``_METADATA``) is byte for byte what PostgreSQL's own form
(``audit._METADATA_SQL``) gives, for any jsonb: escapes, any Unicode, key orders, values
that are not strings, and values that are not objects."""

from __future__ import annotations

import hashlib
import random
import uuid
from typing import Any

import orjson
import psycopg

from ledger import _replay, audit
from ledger.pgcopy import copy_out
from projections.tracking import dsn

ALPHABET = [
    "a",
    "Z",
    '"',
    "\\",
    "/",
    "\n",
    "\t",
    "\b",
    "\f",
    "\r",
    "\u0001",
    "\u001f",
    "\u007f",
    "é",
    "ключ",
    "☃",
    "\U0001f600",
    " ",
    ":",
    ",",
    "{",
    "}",
]


def text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 6)))


def value(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind < 3:
        return text(rng)
    return [1, 2.5, None, True, [text(rng)], {text(rng): text(rng)}, -7][rng.randrange(7)]


def metadata(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return [None, "s", 3, [1, {"a": "b"}], True][rng.randrange(5)]  # not an object
    return {text(rng): value(rng) for _ in range(rng.randrange(0, 8))}


def test_the_native_form_of_any_jsonb_is_postgresql_s(database_url: str) -> None:
    rng = random.Random(11)
    docs = [metadata(rng) for _ in range(1500)] + [{}, {"": ""}, {"a": "1", "b": "2"}]
    with psycopg.connect(dsn(database_url), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE m (id uuid, position bigint, metadata jsonb)")
        with conn.cursor() as cur, cur.copy("COPY m FROM STDIN") as copy:
            for i, doc in enumerate(docs):
                copy.write_row((uuid.uuid4(), i + 1, orjson.dumps(doc).decode()))
        expected = {
            uuid.UUID(str(r[0])).bytes: hashlib.sha256(bytes(r[1])).digest()
            for r in conn.execute(f"SELECT id, {audit._METADATA_SQL} FROM m").fetchall()
        }
        data = copy_out(
            conn, "COPY (SELECT id, position, metadata FROM m) TO STDOUT (FORMAT binary)"
        )
    got = _replay.copy_digests(data, 3, 1, 0, (bytes((2, audit._METADATA)),))
    assert len(got) == len(docs)
    mismatched = [g for g, _, (d,) in got if d != expected[g]]
    assert mismatched == []
