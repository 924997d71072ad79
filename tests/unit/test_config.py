from __future__ import annotations

import pytest

from ledger.config import ConfigError, load_settings


def test_defaults_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_BATCH_SIZE_MAX", raising=False)
    settings = load_settings()
    assert settings.batch_size_max == 8190


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_BATCH_SIZE_MAX", "0")
    monkeypatch.setenv("LEDGER_BOOK_ID", "no spaces allowed")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "LEDGER_BATCH_SIZE_MAX" in message
    assert "LEDGER_BOOK_ID" in message


def test_env_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_WAL_SEGMENT_SIZE_BYTES", "8192")
    assert load_settings().wal_segment_size_bytes == 8192
