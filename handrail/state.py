"""Graph state: the conversation plus one `ToolCallRecord` per tool call, merged by call id."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from pydantic import BaseModel, ConfigDict
from typing_extensions import TypedDict

from handrail.policies import Effect
from handrail.provenance import SourceIndex
from handrail.provenance import merge as merge_sources

__all__ = [
    "AgentState",
    "CallError",
    "CallStatus",
    "ErrorKind",
    "ToolCallRecord",
    "args_hash",
    "merge_calls",
]

CallStatus = Literal[
    "checked",
    "awaiting_approval",
    "approved",
    "rejected",
    "running",
    "succeeded",
    "failed",
    "escalated",
]
"""Where a call is: decided and ready, waiting for a human, approved, refused, running, done."""

ErrorKind = Literal[
    "rate_limited",
    "transient",
    "server_error",
    "bad_request",
    "tool_error",
    "forbidden",
    "circuit_open",
    "outcome_unknown",
    "unknown",
]
"""How a failure is classified; each kind has its own route (retry, back to model, escalate).

``tool_error``: the tool answered with an error message (its own, or ``handle_tool_errors``'),
which the model gets as it is.
``circuit_open``: the tool's circuit breaker refused the call without running it.
``outcome_unknown``: the execution ledger holds an intent with no outcome (a crash mid-call)."""


class CallError(BaseModel):
    """The last error a call raised, classified."""

    model_config = ConfigDict(frozen=True)

    kind: ErrorKind
    message: str
    status_code: int | None = None
    retry_after: float | None = None
    """Seconds to wait: a 429's (or 503's) Retry-After, or what is left of an open circuit."""


class ToolCallRecord(BaseModel):
    """Everything Handrail knows about one tool call; survives checkpoints and resumes."""

    model_config = ConfigDict(frozen=True)

    id: str
    """The model's tool_call_id."""
    name: str
    """The tool's name."""
    args: dict[str, Any]
    """The arguments as validated by the tool's schema: what was decided is what runs."""
    args_hash: str
    """SHA-256 of the canonical JSON of name and args; approvals are bound to it."""
    decision: Effect | None = None
    """The policy's effect; None while edited arguments wait to be checked again."""
    rule_id: str | None = None
    """The rule that decided (None: the policy default)."""
    reason: str = ""
    """Why the policy decided as it did."""
    provenance: dict[str, Any] | None = None
    """Where the arguments came from when the call was decided, if the policy watches it
    (`handrail.provenance`): ``{"args": {NAME: "user" | "tool" | "untrusted" | "model"},
    "untrusted_seen": bool, "origins": {NAME: [{"source_id", "tool", "excerpt"}]}}`` (origins
    of the untrusted arguments: the tool call whose output held the value)."""
    policy_digest: str | None = None
    """The digest (`Policy.digest`) of the policy whose decision the record holds: the one that
    decided the call, or decided it again (an edit, a call checked again before it runs). None:
    no policy decided it (arguments that failed the tool's schema), or a record kept before
    records carried it."""
    approvers: tuple[str, ...] = ()
    """For an ``ask``: the roles allowed to decide."""
    expires_at: datetime | None = None
    """For an ``ask``: when the request lapses."""
    min_approvals: int = 1
    """For an ``ask``: how many distinct approvers must approve."""
    approvals: tuple[str, ...] = ()
    """Ids of the approvers who approved so far (a two-person rule shows the first here)."""
    asked_at: datetime | None = None
    """When a human was last asked about the call (an approval or an escalation)."""
    status: CallStatus = "checked"
    retry_count: int = 0
    """Retries so far (the first attempt is not a retry), automatic or decided by a human."""
    last_wait: float | None = None
    """Seconds waited before the latest retry (a 429's Retry-After or a backoff, capped)."""
    last_action: Literal["success", "retry", "failure"] | None = None
    error: CallError | None = None
    approver: str | None = None
    """The id of the human who approved, edited, rejected or answered the call."""
    result: str | None = None
    """The content returned to the model for this call."""
    events: int = 0
    """How many events the call has had (`handrail.events`): the next one's ``call_seq``."""
    replay_of: str | None = None
    """The id of the call this one replays: the same tool and arguments, asked for by a model
    step that was lost in a crash and asked again (a provider gives the call a new id). That
    call's attempt, kept by the execution ledger, stands for this one's; it is never run twice."""
    given: dict[str, Any] | None = None
    """The arguments as the model (or a reviewer's edit) gave them, when the tool validates its
    own input and its schema makes other ``args`` of them: the tool runs with these and makes
    ``args`` of them itself, so a validator that changes its input runs once. None: the tool
    runs with ``args``."""

    @property
    def runs_with(self) -> dict[str, Any]:
        """The arguments the tool is called with (``given``, else ``args``)."""
        return self.args if self.given is None else self.given

    def update(self, **changes: Any) -> ToolCallRecord:
        """A copy with ``changes`` applied (records are immutable)."""
        return self.model_copy(update=changes)


def merge_calls(
    left: Mapping[str, ToolCallRecord] | None, right: Mapping[str, ToolCallRecord] | None
) -> dict[str, ToolCallRecord]:
    """Reducer for ``AgentState.calls``: records are keyed by call id, the newer one wins."""
    merged = dict(left or {})
    if right:
        merged.update(right)
    return merged


class AgentState(TypedDict):
    """State of a Handrail agent graph."""

    messages: Annotated[list[AnyMessage], add_messages]
    calls: Annotated[dict[str, ToolCallRecord], merge_calls]
    provenance: NotRequired[Annotated[SourceIndex | None, merge_sources]]
    """Where the thread's texts came from, indexed (`handrail.provenance`), when the policy
    watches provenance."""


def args_hash(name: str, args: Mapping[str, Any], key: bytes = b"") -> str:
    """The hash an approval is bound to: over canonical JSON of ``name`` and ``args``.

    With a ``key`` (a graph on a SQLite file keeps one there) it is HMAC-SHA-256, so someone
    who sees the hash next to redacted arguments cannot guess the hidden values by hashing
    candidates; without one, plain SHA-256.
    """
    canonical = json.dumps(
        {"name": name, "args": args}, sort_keys=True, separators=(",", ":"), default=str
    ).encode()
    if key:
        return hmac.new(key, canonical, hashlib.sha256).hexdigest()
    return hashlib.sha256(canonical).hexdigest()
