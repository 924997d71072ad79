"""The participant protocol: how the coordinator calls a branch or step, and what it hears.

Every call is an HTTP ``POST``. There are two body conventions, chosen by the URL:

* **Template URL** (contains ``{gid}``, and usually ``{branch_id}``): the placeholders are
  filled in (percent-encoded) and the body is the branch's ``payload`` as given, for
  ``try`` and ``action`` only; ``confirm``, ``cancel`` and ``compensate`` carry no body.
  The ledger's own participant endpoints (``/v1/tcc/{gid}/{branch_id}/try``) work this way.
* **Envelope** (any other URL): the body is always
  ``{"gid": ..., "branch_id": ..., "op": ..., "payload": ...}`` (payload may be null).
  The inventory example and generic participants work this way.

Both conventions also send ``X-Ledger-Gid``, ``X-Ledger-Branch`` and ``X-Ledger-Op``
headers, plus the branch's own headers (e.g. ``Authorization``), so a participant can
always de-duplicate by (gid, branch, op).

The answer is classified into exactly one :class:`CallResult`:

=========== ======================================================== ====================
result      answer                                                   meaning
=========== ======================================================== ====================
success     2xx and JSON ``{"result": "success"}``                   done
failure     409 and JSON ``{"result": "failure"}``                   final "no" (only for
                                                                     try and saga actions)
ongoing     2xx and JSON ``{"result": "ongoing"}``                   poll again later
transient   anything else: other statuses, other bodies, timeouts,   retry with back-off
            refused or reset connections
=========== ======================================================== ====================

Confirm, cancel and compensate (and the actions of retriable saga steps) can never fail:
a ``failure`` answer to them breaks the protocol, so the coordinator records it, raises an
alert at once and keeps retrying it like a transient error; the operator fixes the
participant or force-stops the transaction.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote

import orjson

from ledger.sagas.http import CallFailed, CallTimeout, Poster

__all__ = [
    "DETAIL_LENGTH_MAX",
    "Backoff",
    "CallOutcome",
    "CallResult",
    "Op",
    "build_request",
    "call_participant",
    "classify",
    "classify_parsed",
    "is_template",
    "short",
]

Op = Literal["try", "confirm", "cancel", "action", "compensate"]
DETAIL_LENGTH_MAX: Final = 300
_BODY_OPS: Final = frozenset({"try", "action"})


class CallResult(enum.StrEnum):
    """The four answers a participant can give (see the module docstring)."""

    SUCCESS = "success"
    FAILURE = "failure"
    ONGOING = "ongoing"
    TRANSIENT = "transient"


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What one call produced: the classified result, the HTTP status (None when no
    answer arrived) and a short detail for the history (truncated)."""

    result: CallResult
    status_code: int | None
    detail: str


def is_template(url: str) -> bool:
    """True when ``url`` encodes the gid itself (the template convention)."""
    return "{gid}" in url


def build_request(
    url: str, gid: str, branch_id: str, op: Op, payload: Any
) -> tuple[str, bytes | None]:
    """The URL to call and the JSON body to send (None: no body), per the convention."""
    if is_template(url):
        filled = url.replace("{gid}", _quote(gid)).replace("{branch_id}", _quote(branch_id))
        if op in _BODY_OPS and payload is not None:
            return filled, orjson.dumps(payload)
        return filled, None
    envelope = {"gid": gid, "branch_id": branch_id, "op": op, "payload": payload}
    return url, orjson.dumps(envelope)


_UNRESERVED: Final = re.compile(r"[A-Za-z0-9_.~-]*")


def _quote(text: str) -> str:
    """``quote(text, safe="")``, without its work for text it would leave as it is."""
    return text if _UNRESERVED.fullmatch(text) else quote(text, safe="")


def short(text: str) -> str:
    return text if len(text) <= DETAIL_LENGTH_MAX else text[: DETAIL_LENGTH_MAX - 1] + "…"


def classify(status_code: int, body: bytes) -> CallOutcome:
    """Classify an HTTP answer (see the table in the module docstring)."""
    parsed: object = None
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    return classify_parsed(status_code, parsed, body.decode("utf-8", "replace") if body else "")


def classify_parsed(status_code: int, parsed: object, text: str) -> CallOutcome:
    """:func:`classify` of an answer already parsed (``text``: its body as text)."""
    declared = parsed.get("result") if isinstance(parsed, dict) else None
    detail = short(text)
    if 200 <= status_code < 300:
        if declared == "success":
            return CallOutcome(CallResult.SUCCESS, status_code, detail)
        if declared == "ongoing":
            return CallOutcome(CallResult.ONGOING, status_code, detail)
        why = "a 2xx answer without result success or ongoing"
        return CallOutcome(CallResult.TRANSIENT, status_code, short(f"{why}: {detail}"))
    if status_code == 409 and declared == "failure":
        return CallOutcome(CallResult.FAILURE, status_code, detail)
    return CallOutcome(CallResult.TRANSIENT, status_code, detail)


async def call_participant(
    poster: Poster,
    url: str,
    gid: str,
    branch_id: str,
    op: Op,
    payload: Any,
    headers: Mapping[str, str],
    timeout_s: float,
) -> CallOutcome:
    """POST one operation and classify the answer; never raises for network trouble
    (a timeout, a refused or reset connection is a transient outcome)."""
    target, body = build_request(url, gid, branch_id, op, payload)
    sent = {
        **headers,
        "X-Ledger-Gid": gid,
        "X-Ledger-Branch": branch_id,
        "X-Ledger-Op": op,
    }
    if body is not None:
        sent["Content-Type"] = "application/json"
    try:
        status, content = await poster.post(target, body, sent, timeout_s)
    except CallTimeout as exc:
        return CallOutcome(CallResult.TRANSIENT, None, short(f"timed out: {exc}"))
    except CallFailed as exc:
        return CallOutcome(CallResult.TRANSIENT, None, short(f"no answer: {exc}"))
    return classify(status, content)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off with full jitter, capped: the delay before attempt ``n + 1``
    is uniform in ``[0, min(max_ms, base_ms * 2 ** (n - 1))]`` (AWS's "full jitter", which
    spreads retries of many transactions that failed together)."""

    base_ms: int = 100
    max_ms: int = 30_000

    def ceiling_ms(self, attempt: int) -> float:
        """The upper bound of the delay after ``attempt`` (1-based) attempts."""
        exponent = min(max(attempt - 1, 0), 40)
        return float(min(self.max_ms, self.base_ms * (1 << exponent)))

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        return (rng or _RNG).uniform(0.0, self.ceiling_ms(attempt)) / 1000


_RNG = random.Random()
