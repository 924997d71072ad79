"""The fast path's parsing, validation and routing agree with FastAPI's, on random input.

FastAPI parses a JSON body with ``json.loads`` and validates it with the route's body
field; the fast path parses with orjson and validates with its own ``TypeAdapter``. These
properties are what makes its answers the same (``tests/integration/api/test_fast_path``
checks the answers themselves over HTTP):

* orjson refuses a text, or returns what ``json.loads`` returns — types, key order and
  all — except integers beyond 64 bits, which it returns as floats;
* every such float is refused by the hot models, as is every body they see differently;
* the fast path's validators accept exactly what the routes' body fields accept, with
  equal values;
* the fast path claims a path only when FastAPI's router sends it to the same route with
  the same path parameters.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import Match

from ledger.api.app import ApiContext, LedgerApi, create_app
from ledger.api.auth import KeyStore
from ledger.api.idempotency import IdempotencyStore

_URL = "postgresql://nobody@127.0.0.1:1/none"  # engines connect lazily: never here


@pytest.fixture(scope="module")
def app() -> LedgerApi:
    async def no_node() -> Any:
        raise AssertionError("not started")

    ctx = ApiContext(
        open_node=no_node, keys=KeyStore(_URL), idempotency=IdempotencyStore(_URL, "unit")
    )
    return create_app(ctx)


def _same(a: Any, b: Any) -> bool:
    """Equal, with equal types and dict key order (``1 == 1.0`` is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def _big_ints_as_floats(a: Any, b: Any) -> bool:
    """``b`` is ``a`` with integers beyond 64 bits as floats."""
    if isinstance(a, int) and not isinstance(a, bool) and isinstance(b, float):
        return not -(2**63) <= a < 2**64 and float(a) == b
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_big_ints_as_floats(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(
            _big_ints_as_floats(x, y) for x, y in zip(a, b, strict=True)
        )
    return _same(a, b)


_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=6)
_NUMBERS = (
    st.integers()
    | st.integers(min_value=-(2**65), max_value=2**65)
    | st.floats(allow_nan=False, allow_infinity=False)
)
_JSON = st.recursive(
    st.none() | st.booleans() | _NUMBERS | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_NUMBER_TEXTS = st.sampled_from(
    ["-0", "-0.0", "1e400", "-1e400", "1E+2", "0.1e1", "1e-400", "2e308", "123456789" * 3]
)


def _encodings(value: Any, ascii_only: bool, spaces: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=1 if spaces else None)
    return text.encode("utf-8", "surrogatepass")  # unpaired surrogates: not UTF-8


@settings(max_examples=400, deadline=None)
@given(value=_JSON, ascii_only=st.booleans(), spaces=st.booleans())
def test_orjson_refuses_or_agrees_with_the_standard_parser(
    value: Any, ascii_only: bool, spaces: bool
) -> None:
    raw = _encodings(value, ascii_only, spaces)
    _check_parsers(raw)


@settings(max_examples=400, deadline=None)
@given(
    value=_JSON,
    at=st.integers(min_value=0),
    junk=st.binary(min_size=1, max_size=3) | _NUMBER_TEXTS.map(str.encode),
)
def test_orjson_refuses_or_agrees_on_damaged_texts(value: Any, at: int, junk: bytes) -> None:
    raw = _encodings(value, True, False)
    i = at % (len(raw) + 1)
    _check_parsers(raw[:i] + junk + raw[i:])


def _check_parsers(raw: bytes) -> None:
    try:
        fast = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    slow = json.loads(raw)  # must not fail where orjson did not
    assert _same(slow, fast) or _big_ints_as_floats(slow, fast), raw


# -- validation -----------------------------------------------------------------------------

_IDS = st.uuids().map(str) | st.sampled_from(["", "x", str(uuid.UUID(int=0)).upper()])
_INTS = st.integers(min_value=-3, max_value=2**66) | st.sampled_from([0, 1, 65535, 2**63 - 1])
_SCALARS = st.none() | st.booleans() | _INTS | st.floats(allow_nan=False) | st.text(max_size=4)
_LEDGERS = st.sampled_from(["USD", "usd", "", "BTC_SAT", "A" * 13])
_TRANSFER = st.fixed_dictionaries(
    {"id": _IDS},
    optional={
        "debit_account_id": _IDS,
        "credit_account_id": _IDS,
        "amount_minor": _INTS | _SCALARS,
        "ledger": _LEDGERS | _SCALARS,
        "code": _INTS | _SCALARS,
        "flags": st.dictionaries(
            st.sampled_from(["linked", "pending", "void_pending_transfer", "nope"]),
            st.booleans() | _SCALARS,
            max_size=3,
        ),
        "pending_id": _IDS | st.none(),
        "timeout_s": _INTS,
        "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3) | _INTS, max_size=3),
        "type": st.just("CreateTransfer"),
    },
)
_ACCOUNT = st.fixed_dictionaries(
    {"id": _IDS},
    optional={
        "ledger": _LEDGERS | _SCALARS,
        "code": _INTS | _SCALARS,
        "scale": _INTS,
        "linked": st.booleans() | _SCALARS,
        "flags": st.dictionaries(
            st.sampled_from(["debits_must_not_exceed_credits", "credits_must_not_exceed_debits"]),
            st.booleans() | _SCALARS,
            max_size=2,
        ),
        "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    },
)
_HOLD = st.fixed_dictionaries(
    {},
    optional={
        "debit_account_id": _IDS,
        "credit_account_id": _IDS,
        "amount_minor": _INTS | _SCALARS,
        "ledger": _LEDGERS | _SCALARS,
        "code": _INTS | _SCALARS,
        "timeout_s": _INTS | _SCALARS,
        "extra": _SCALARS,
    },
)
_RESOLVE = (
    st.fixed_dictionaries(
        {},
        optional={
            "id": _IDS | st.none(),
            "amount_minor": _INTS | _SCALARS,
            "metadata": st.dictionaries(
                st.text(max_size=3), st.text(max_size=3) | _INTS, max_size=3
            ),
            "extra": _SCALARS,
        },
    )
    | _SCALARS
)
_A_UUID = "0b6f1c3e-54a2-4f7e-9a51-3c7d2e8f9a10"
_BODIES = {
    f"/v1/transfers/{_A_UUID}/post": _RESOLVE,
    f"/v1/transfers/{_A_UUID}/void": _RESOLVE,
    "/v1/transfers": st.fixed_dictionaries({"transfers": st.lists(_TRANSFER, max_size=3)})
    | _SCALARS,
    "/v1/accounts": st.fixed_dictionaries({"accounts": st.lists(_ACCOUNT, max_size=3)}),
    "/v1/tcc/g/b/try": _HOLD,
}


@pytest.mark.parametrize("path", sorted(_BODIES))
def test_validators_accept_what_the_routes_accept(app: LedgerApi, path: str) -> None:
    fast = app.fast
    assert fast is not None
    hit = fast.match({"type": "http", "method": "POST", "path": path, "root_path": ""})
    assert hit is not None and hit[0].body is not None
    adapter = hit[0].body
    [route] = [r for r in app.routes if getattr(r, "path", None) == hit[0].route]
    field = route.body_field  # type: ignore[attr-defined]

    @settings(max_examples=300, deadline=None)
    @given(body=_BODIES[path])
    def agree(body: Any) -> None:
        # through text and back, as a request body arrives
        value = json.loads(json.dumps(body))
        expected, errors = field.validate(value, {}, loc=("body",))
        try:
            got = adapter.validate_python(value, from_attributes=True)
        except ValueError:
            assert errors, f"fast path refuses what the route accepts: {body}"
            return
        assert not errors, f"fast path accepts what the route refuses: {body}"
        assert got == expected
        parsed = orjson.loads(json.dumps(body))
        if not _same(parsed, value):  # integers beyond 64 bits became floats
            with pytest.raises(ValueError):
                adapter.validate_python(parsed, from_attributes=True)

    agree()


# -- routing --------------------------------------------------------------------------------

_SEGMENTS = st.sampled_from(
    ["g", "G-1", "a.b:c_d", "x" * 128, "x" * 129, "", "a b", "a\n", "é", "try", "v1", "tcc"]
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(_SEGMENTS, min_size=0, max_size=4),
    op=st.sampled_from(["try", "confirm", "cancel", "commit", ""]),
)
def test_the_fast_path_claims_a_path_only_for_its_route(
    app: LedgerApi, parts: list[str], op: str
) -> None:
    for path in (
        "/v1/tcc/" + "/".join([*parts, op]),
        "/" + "/".join([*parts, op]),
        "/v1/transfers",
        "/v1/accounts",
        "/v1/transfers/",
    ):
        _check_route(app, path)


def _check_route(app: LedgerApi, path: str) -> None:
    assert app.fast is not None
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    hit = app.fast.match(scope)
    if hit is None:
        return
    for route in app.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            break
    else:
        raise AssertionError(f"the fast path claims {path!r}; FastAPI finds no route")
    assert getattr(route, "path", None) == hit[0].route, path
    params = tuple(child.get("path_params", {}).values())
    assert params == hit[1], path
    # the route's own parameter validation accepts them (gid, branch_id patterns)
    for param, value in zip(route.dependant.path_params, params, strict=True):  # type: ignore[attr-defined]
        _, errors = param.validate(value, {}, loc=("path", param.alias))
        assert not errors, (path, param.alias)


_TRANSFER_IDS = st.sampled_from(
    [
        _A_UUID,
        _A_UUID.upper(),
        _A_UUID.replace("-", ""),
        "{" + _A_UUID + "}",
        "urn:uuid:" + _A_UUID,
        _A_UUID[:-1],
        _A_UUID + "0",
        _A_UUID + "\n",
        " " + _A_UUID,
        "",
        "x",
        "post",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    transfer_id=_TRANSFER_IDS,
    action=st.sampled_from(["post", "void", "Post", "cancel", "", "post/"]),
    extra=st.sampled_from(["", "/", "/x"]),
)
def test_the_fast_path_claims_a_transfer_action_only_for_its_route(
    app: LedgerApi, transfer_id: str, action: str, extra: str
) -> None:
    _check_route(app, f"/v1/transfers/{transfer_id}/{action}{extra}")


def test_the_transfer_actions_are_claimed(app: LedgerApi) -> None:
    assert app.fast is not None
    for action in ("post", "void"):
        for form in (_A_UUID, _A_UUID.upper(), _A_UUID.replace("-", "")):
            scope = {"type": "http", "method": "POST", "root_path": ""}
            hit = app.fast.match({**scope, "path": f"/v1/transfers/{form}/{action}"})
            assert hit is not None and hit[1] == (form,), (form, action)
            assert hit[0].route == f"/v1/transfers/{{transfer_id}}/{action}"
            assert hit[0].optional_body


def test_other_methods_and_mounted_apps_are_left_to_fastapi(app: LedgerApi) -> None:
    assert app.fast is not None
    for scope in (
        {"type": "http", "method": "GET", "path": "/v1/transfers", "root_path": ""},
        {"type": "http", "method": "POST", "path": "/v1/transfers", "root_path": "/api"},
        {"type": "http", "method": "POST", "path": "/v1/transfers/x/post", "root_path": ""},
    ):
        assert app.fast.match(scope) is None


@pytest.mark.parametrize("status", [100, 200, 201, 202, 204, 304, 409, 413, 422, 500, 503])
@pytest.mark.parametrize("content", [{"a": [1, "é"]}, [], None, "text"])
@pytest.mark.parametrize("headers", [None, {"Retry-After": "1", "Location": "/v1/x"}])
def test_json_responses_carry_starlettes_headers(
    status: int, content: Any, headers: dict[str, str] | None
) -> None:
    from starlette.responses import Response

    from ledger.api.problems import JsonResponse

    ours = JsonResponse(content, status_code=status, headers=headers)
    theirs = Response(ours.body, status_code=status, headers=headers, media_type="application/json")
    assert ours.raw_headers == theirs.raw_headers
