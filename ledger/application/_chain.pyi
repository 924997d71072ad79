from collections.abc import Callable, Mapping, Sequence
from typing import Any
from uuid import UUID, SafeUUID

from ledger.application.records import EventRecord

def chain_events(
    items: list[tuple[str, int, str, int, Mapping[str, Any]]],
    raw_ids: bytes,
    recorded_at_us: int,
    first_position: int,
    prev_hash: bytes,
    dumps: Callable[..., bytes],
    option: int,
    record_type: type[EventRecord],
    uuid_type: type[UUID],
    uuid_safe: SafeUUID,
    /,
) -> list[EventRecord] | None: ...
def copy_rows(records: Sequence[EventRecord], book: bytes, /) -> bytes | None: ...
