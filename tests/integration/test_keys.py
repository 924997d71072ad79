"""API keys: created hashed, listed without secrets, revoked, verified by scope."""

from __future__ import annotations

import psycopg
import pytest

from ledger.api.auth import KeyStore, scope_allows
from ledger.cli import main


def test_created_key_verifies_and_only_its_hash_is_stored(database_url: str) -> None:
    keys = KeyStore(database_url, cache_ttl_s=0)
    key, token = keys.create("payments", "write")
    assert keys.verify(token) == key
    secret = token.rsplit("_", 1)[1]
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT secret_sha256::text, scopes FROM api_keys").fetchone()
    assert row is not None and secret not in row[0] and row[1] == "write"
    keys.close()


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "elk_nokey_secret", "elk__x", "Bearer elk_a_b"],
)
def test_malformed_or_unknown_tokens_do_not_verify(database_url: str, token: str) -> None:
    keys = KeyStore(database_url, cache_ttl_s=0)
    assert keys.verify(token) is None
    keys.close()


def test_wrong_secret_and_revoked_keys_do_not_verify(database_url: str) -> None:
    keys = KeyStore(database_url, cache_ttl_s=0)
    key, token = keys.create("ops", "admin")
    assert keys.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert keys.revoke(key.key_id)
    assert keys.verify(token) is None
    assert not keys.revoke(key.key_id)  # already revoked
    assert [k.revoked_at is not None for k in keys.list()] == [True]
    keys.close()


def test_scopes_nest() -> None:
    assert scope_allows("admin", "write") and scope_allows("write", "read")
    assert not scope_allows("read", "write") and not scope_allows("write", "admin")


def test_keys_cli_create_list_revoke(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = database_url
    assert main(["keys", "create", "--name", "svc", "--scope", "read", "--database-url", url]) == 0
    out = capsys.readouterr().out
    key_id = out.split()[2]
    assert "token (shown once" in out
    assert main(["keys", "list", "--database-url", url]) == 0
    assert key_id in capsys.readouterr().out
    assert main(["keys", "revoke", key_id, "--database-url", url]) == 0
    assert main(["keys", "revoke", key_id, "--database-url", url]) == 1
    assert main(["keys", "create", "--name", "x", "--scope", "root", "--database-url", url]) == 2
