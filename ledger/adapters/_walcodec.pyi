from collections.abc import Sequence
from typing import overload

from typing_extensions import Buffer

from ledger.application.records import EventRecord

SPAN_MORE: int
SPAN_END: int
SPAN_STOPPED_AT_BAD: int
CRC_HARDWARE: int

def crc32c(data: Buffer, crc: int = 0, /) -> int: ...
def crc32c_portable(data: Buffer, crc: int = 0, /) -> int: ...
@overload
def encode_batch(
    records: Sequence[EventRecord], last_position: int, last_hash: bytes, /
) -> tuple[bytes, bytes] | None: ...
@overload
def encode_batch(
    records: Sequence[EventRecord],
    last_position: int,
    last_hash: bytes,
    buffer: bytearray,
    /,
) -> tuple[int, bytes] | None: ...
def verify_span(
    buf: Buffer,
    offset: int,
    size: int,
    position: int,
    prev_hash: bytes,
    records_max: int,
    /,
) -> tuple[int, int, bytes, int, int]: ...
def scan_frames(
    buf: Buffer,
    offset: int,
    base: int,
    expected: int,
    prev_hash: bytes,
    batch_first: int,
    batch_last: int,
    stop_position: int,
    offsets: list[int] | None,
    index: list[tuple[int, int, bytes]] | None,
    index_next: int,
    index_stride: int,
    /,
) -> tuple[int, int, int, bytes, int, int, int, bytes | None, int]: ...
def record_parts(
    buf: Buffer, offsets: list[int], position: int, from_position: int, /
) -> list[tuple[int, bytes, bytes]]: ...
