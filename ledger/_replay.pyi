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
    stop_position: int,
    /,
) -> tuple[int, int, int]: ...
def forget() -> None: ...
