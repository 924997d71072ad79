"""Smoke test of the eventsourcing peer benchmark on a real PostgreSQL."""

from __future__ import annotations

from benchmarks.peer_eventsourcing import OPENING_BALANCE, open_bank, run_peer


def test_peer_transfers_conserve_money(database_url: str) -> None:
    result = run_peer(database_url, accounts=20, transfers=50, clients=2, seed=7)

    assert result.transfers_ok + result.failed == 50
    assert result.transfers_ok > 0
    assert result.rejected == 0
    assert len(result.account_ids) == 20
    assert result.opening_total == 20 * OPENING_BALANCE
    assert result.elapsed_s > 0
    assert 0 < result.p50_ms <= result.p99_ms

    bank = open_bank(database_url, create_table=False)
    try:
        balances = [bank.get_balance(account_id) for account_id in result.account_ids]
        versions = [bank.get_account(account_id).version for account_id in result.account_ids]
    finally:
        bank.close()
    assert sum(balances) == result.opening_total
    assert any(balance != OPENING_BALANCE for balance in balances)
    # Opened + opening credit, then one event per applied transfer leg.
    assert sum(versions) == 2 * 20 + 2 * result.transfers_ok
