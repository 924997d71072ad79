"""What a caller asks the coordinator to run: TCC transactions and sagas (wire models).

The same models validate ``POST /v1/tcc`` and ``POST /v1/sagas`` bodies and rebuild the
spec stored in ``TransactionStarted`` at recovery. Ids are restricted to
``[A-Za-z0-9_.:-]`` so they can be used in stream ids, URLs and log lines without quoting.

Saga order rule (from Garcia-Molina's sagas as practised by Seata and Temporal users):
compensable steps first, then at most one pivot (the point of no return: it cannot be
compensated), then retriable steps (retried until they succeed, never compensated).
Only compensable steps have a ``compensate_url``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = [
    "BRANCHES_MAX",
    "ID_PATTERN",
    "BranchSpec",
    "SagaSpec",
    "StepSpec",
    "TccSpec",
    "redact_headers",
]

ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]+$"
BRANCHES_MAX: Final = 64
URL_LENGTH_MAX: Final = 2048
HEADERS_MAX: Final = 16

Id = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)]
Gid = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
Url = Annotated[
    str, StringConstraints(min_length=8, max_length=URL_LENGTH_MAX, pattern=r"^https?://")
]
Headers = Annotated[dict[str, str], Field(max_length=HEADERS_MAX)]
_STRICT = ConfigDict(extra="forbid", frozen=True)


class BranchSpec(BaseModel):
    """One TCC branch: the three participant URLs, an optional payload (sent with try,
    or in every envelope) and headers to send (e.g. ``Authorization``). With a
    ``batch_url``, every call of the branch goes there instead, batched with other
    transactions' calls to the same participant (``ledger.sagas.batching``)."""

    model_config = _STRICT
    branch_id: Id
    try_url: Url
    confirm_url: Url
    cancel_url: Url
    batch_url: Url | None = None
    payload: Any = None
    headers: Headers = Field(default_factory=dict)


class TccSpec(BaseModel):
    """A TCC transaction: branches tried in parallel, then all confirmed or all cancelled.
    ``timeout_s`` (default: the coordinator's) cancels it if the tries have not all
    succeeded by then."""

    model_config = _STRICT
    gid: Gid | None = None
    branches: list[BranchSpec] = Field(min_length=1, max_length=BRANCHES_MAX)
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)

    @model_validator(mode="after")
    def _unique_branches(self) -> TccSpec:
        _unique([b.branch_id for b in self.branches], "branches", "branch_id")
        return self


class StepSpec(BaseModel):
    """One saga step: its kind, its action URL and (compensable steps) compensation URL."""

    model_config = _STRICT
    step_id: Id
    kind: Literal["compensable", "pivot", "retriable"]
    action_url: Url
    compensate_url: Url | None = None
    payload: Any = None
    headers: Headers = Field(default_factory=dict)


_RANK: Final = {"compensable": 0, "pivot": 1, "retriable": 2}


class SagaSpec(BaseModel):
    """A saga: steps run in order; when a compensable step or the pivot fails, the
    compensable steps that ran are compensated in reverse order. ``timeout_s`` (optional)
    stops retrying compensable steps and compensates, as long as the pivot has not
    started."""

    model_config = _STRICT
    gid: Gid | None = None
    steps: list[StepSpec] = Field(min_length=1, max_length=BRANCHES_MAX)
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)

    @model_validator(mode="after")
    def _ordered(self) -> SagaSpec:
        _unique([s.step_id for s in self.steps], "steps", "step_id")
        previous = "compensable"
        for i, step in enumerate(self.steps):
            if _RANK[step.kind] < _RANK[previous] or (step.kind == "pivot" and previous == "pivot"):
                raise ValueError(
                    f"steps[{i}] ({step.step_id}) is {step.kind} after a {previous} step: "
                    "order must be compensable steps, then at most one pivot, then "
                    "retriable steps"
                )
            if step.kind == "compensable" and step.compensate_url is None:
                raise ValueError(
                    f"steps[{i}] ({step.step_id}) is compensable but has no compensate_url"
                )
            if step.kind != "compensable" and step.compensate_url is not None:
                raise ValueError(
                    f"steps[{i}] ({step.step_id}) is {step.kind}: only compensable steps "
                    "have a compensate_url"
                )
            previous = step.kind
        return self


def _unique(ids: list[str], where: str, name: str) -> None:
    seen: set[str] = set()
    for i, value in enumerate(ids):
        if value in seen:
            raise ValueError(f"{where}[{i}].{name} {value!r} is used twice")
        seen.add(value)


def redact_headers(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored spec with header values hidden (for views and logs)."""
    out = dict(spec)
    for key in ("branches", "steps"):
        if key in out:
            out[key] = [
                {**item, "headers": {h: "***" for h in item.get("headers", {})}}
                for item in out[key]
            ]
    return out
