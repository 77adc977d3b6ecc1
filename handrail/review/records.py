"""A call's record as decisions make it, and how a call is described to people.

`from_decision` makes the record of a call the policy decided; `decided` adds its event;
`escalation_reason` and `attempts_made` word a failed call for the escalation request and the
model; `tool_message` answers a call the tools did not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, cast

from langchain_core.messages import HumanMessage, ToolMessage, add_notification_metadata
from pydantic import ValidationError

from handrail.events import Batch
from handrail.policies import Decision
from handrail.redaction import redact_body
from handrail.review.origins import describe_origins
from handrail.state import CallStatus, ToolCallRecord, args_hash

__all__ = [
    "HITL_SOURCE",
    "attempts_made",
    "decided",
    "escalation_reason",
    "from_decision",
    "schema_errors",
    "tool_message",
]

HITL_SOURCE = "hitl_interrupt_decision"
"""The ``lc_source`` of a ToolMessage that answers with a person's decision (LangChain's)."""

_STATUS: dict[str, CallStatus] = {
    "allow": "checked",
    "ask": "awaiting_approval",
    "deny": "rejected",
}


def from_decision(
    call_id: str,
    name: str,
    args: dict[str, Any],
    decision: Decision,
    *,
    hash_key: bytes = b"",
    **extra: Any,
) -> ToolCallRecord:
    """A record for a call decided by ``decision`` (its args hash keyed with ``hash_key``; the
    digest of the policy that decided, ``decision.policy_digest``, kept with it)."""
    status = _STATUS[decision.effect]
    if decision.effect == "ask":
        extra.setdefault("asked_at", datetime.now(UTC))
    record = ToolCallRecord(
        id=call_id,
        name=name,
        args=args,
        args_hash=args_hash(name, args, hash_key),
        decision=decision.effect,
        rule_id=decision.rule_id,
        reason=decision.reason,
        policy_digest=decision.policy_digest,
        approvers=decision.approvers,
        expires_at=decision.expires_at,
        min_approvals=decision.min_approvals,
        status=status,
        **extra,
    )
    if decision.effect == "deny":
        record = record.update(
            result=f"Denied by policy ({decision.reason}). The tool {name!r} was not run."
        )
    return record


def decided(events: Batch, record: ToolCallRecord) -> ToolCallRecord:
    """Add the ``decided`` event of a freshly checked call (``invalid`` if it failed checks)."""
    if record.decision is None:
        reason = record.error.message if record.error else None
        return events.add("decided", record, decision="invalid", reason=reason)
    origins = describe_origins(record.provenance)
    reason = f"{record.reason}; {origins}" if origins else record.reason
    return events.add("decided", record, reason=reason)


def attempts_made(record: ToolCallRecord) -> str:
    """How many times a call has run so far, in words: ``1 attempt``, ``3 attempts``."""
    attempts = record.retry_count + 1
    return f"{attempts} attempt{'s' if attempts > 1 else ''}"


def escalation_reason(record: ToolCallRecord, redact: Sequence[str] = ()) -> str:
    """Why a failed call needs a human, in one line; the error's message is hidden like a
    response body by the tool's ``redact`` paths (``response.body``)."""
    error = record.error
    tries = attempts_made(record)
    if error is None:
        return f"{record.name!r} failed after {tries}"
    message = redact_body(error.message, redact)
    status = f" (HTTP {error.status_code})" if error.status_code else ""
    if error.kind == "outcome_unknown":
        return f"outcome unknown: {message}"
    if error.kind in ("rate_limited", "transient"):
        return f"{error.kind}{status} after {tries}, retries spent: {message}"
    return f"{error.kind}{status} after {tries}: {message}"


def tool_message(
    record: ToolCallRecord,
    *,
    status: Literal["success", "error"] = "error",
    decided_by_person: str | None = None,
) -> ToolMessage:
    """The message answering a call the tools did not run: a refusal, failure or human answer.

    ``decided_by_person``: the type of the person's decision it answers with (reject, respond,
    skip, abort, or an edit the policy denied); the message is then marked as LangChain's
    ``HumanInTheLoopMiddleware`` marks its answers (``additional_kwargs``: ``lc_source`` is
    ``hitl_interrupt_decision``, ``lc_data`` the decision), which chat models are not sent."""
    message = ToolMessage(
        content=record.result or "", tool_call_id=record.id, name=record.name, status=status
    )
    if decided_by_person is None:
        return message
    marked = add_notification_metadata(
        cast("HumanMessage", message), source=HITL_SOURCE, data={"decision": decided_by_person}
    )
    return cast("ToolMessage", marked)


def schema_errors(exc: ValidationError) -> str:
    """A validation error on one line: ``amount: Field required; to: Input should be ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}" for e in exc.errors()
    )
