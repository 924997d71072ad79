"""In-memory fakes of the storage ports, shipped with the package.

They pass the same contract suites (``tests/contract``) as the real adapters, so unit tests
that use them exercise the same behaviour as production code.
"""

from __future__ import annotations

# --- MemoryEventLog (fake of ledger.application.ports.EventLog) ---

# --- MemoryEventStore (fake of ledger.application.ports.EventStore) ---
