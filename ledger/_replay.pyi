from collections.abc import Callable
from typing import Any

from typing_extensions import Buffer

def apply_records(
    buf: Buffer,
    offset: int,
    count: int,
    position: int,
    accounts: dict[str, list[Any]],
    transfers: dict[str, Any],
    forbidden: set[str],
    hashes: list[bytes],
    rows: Any,
    stop_position: int,
    parsed: bytes | None = None,
    first: int = 0,
    /,
) -> tuple[int, int, int]: ...
def parse_records(buf: Buffer, offset: int, count: int, /) -> bytes: ...
def forget() -> None: ...
def set_metadata_bytes(fn: Callable[[bytes], bytes], /) -> None: ...
def transfer_states(transfers: dict[str, Any], /) -> bytes | None: ...
def store_chunk(
    buf: Buffer, last_position: int, last_hash: bytes, /
) -> tuple[int | None, int | None, int | None, int, bytes, int | None]: ...

class EntryHash:
    def update(self, data: Buffer, /) -> None: ...
    def digest(self) -> bytes: ...

def copy_digests(
    buf: Buffer, fields: int, order: int, group: int, specs: tuple[bytes, ...], /
) -> list[tuple[bytes, int, tuple[bytes, ...]]]: ...
def metadata_bytes(raw: Buffer, /) -> bytes | None: ...
