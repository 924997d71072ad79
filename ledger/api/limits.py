"""Request limits shared by the API's routes."""

from __future__ import annotations

from typing import Final

__all__ = ["BATCH_ITEMS_MAX"]

BATCH_ITEMS_MAX: Final = 8190
"""Items per batch request (accounts, transfers, TCC calls): the node's batch size."""
