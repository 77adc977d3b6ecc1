"""A tool-call event's shape: its kinds, fields and JSON Schema (`handrail.events` has them)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from typing_extensions import TypedDict

EventKind = Literal[
    "decided",
    "approval_requested",
    "approval_decided",
    "started",
    "succeeded",
    "failed",
    "retried",
    "escalated",
    "expired",
    "approval_missing",
    "replayed",
]
"""The steps of a tool call that leave an event. ``approval_missing``: an asked call reached
``execute`` without a proof of approval in Handrail's store (forged state); it was not run.
``replayed``: the call is a lost call asked for again under a new id (its model step was lost in
a crash); it was not run, the lost call's recorded outcome (its ``response``) stands for it."""

EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)
"""Every event kind, in the order a call's steps usually happen."""


class Response(TypedDict):
    """What a tool run returned: ``status`` is ``success`` or the failure's kind
    (``rate_limited``, ``server_error``, ...); ``body`` is the result or the error message,
    redacted and truncated to the policy's ``body_limit``."""

    status: str
    body: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolEvent:
    """One step of one tool call, as logged and audited."""

    timestamp: str
    """When the step happened: ISO-8601, UTC, milliseconds."""
    event: EventKind
    graph: str
    """The name of the graph that took the step."""
    agent_id: str | None
    """The id of the actor the call was made for (the requester)."""
    thread_id: str | None
    tool_call_id: str
    tool: str
    call_seq: int
    """The event's position in the call's history (0 for its first event)."""
    payload: dict[str, Any]
    """The call's arguments, with the policy's ``redact`` paths hidden."""
    response: Response | None = None
    """For ``succeeded`` and ``failed``: what the tool run returned."""
    retry_count: int = 0
    decision: str | None = None
    """``decided``: allow, ask, deny or invalid. ``approval_decided``: approve, edit, reject,
    respond, retry, skip or abort. Other events: the policy's effect the call runs under."""
    rule_id: str | None = None
    approver: str | None = None
    duration_ms: float | None = None
    """``succeeded``/``failed``: the tool run; ``approval_decided``/``expired``: since the call
    was asked about; ``retried``: the wait before the new attempt."""
    reason: str | None = None
    """Why, in words: the policy's reason, an approver's message, an escalation's cause."""
    args_hash: str | None = None
    """The hash of the call's arguments (`ToolCallRecord.args_hash`): an approval's is the
    hash of what it approved, a ``started``'s the hash of what ran."""
    identified_by: str | None = None
    """``approval_decided``/``expired``: how the approver was identified: ``directory``,
    ``token iss=... sub=...``, ``server`` or ``claimed`` (taken as given, unverified)."""
    policy_digest: str | None = None
    """The digest (`Policy.digest`) of the policy the graph ran under when the step was taken:
    which version of the policy decided, asked, or let the call run."""

    def as_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict, fields in a fixed order."""
        return {name: getattr(self, name) for name in FIELDS}

    def step(self) -> str | None:
        """What makes the event the same step when a replay produces it again (None without a
        thread: such a run is never replayed).

        The call, its place in the call's history, the kind, and what was decided and by whom:
        a replay of the same step has the same; a different decision taken after a crash lost
        the first one (a rejection lost, an approval given) is a different step, and is kept.
        """
        if self.thread_id is None:
            return None
        status = self.response["status"] if self.response else None
        identity = [
            self.thread_id,
            self.tool_call_id,
            self.call_seq,
            self.event,
            self.decision,
            self.approver,
            self.rule_id,
            self.retry_count,
            status,
            self.payload,
        ]
        text = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


FIELDS: tuple[str, ...] = tuple(ToolEvent.__dataclass_fields__)
"""The event's field names, in order (also the audit table's event columns)."""


_TEXT = {"type": "string"}
_MAYBE_TEXT = {"type": ["string", "null"]}


def _schema(fields: Sequence[str], kinds: Sequence[str]) -> dict[str, Any]:
    """The JSON Schema (2020-12) of an event with ``fields``, its ``event`` one of ``kinds``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Handrail tool-call event",
        "type": "object",
        "additionalProperties": False,
        "required": list(fields),
        "properties": {
            "timestamp": {"type": "string", "format": "date-time"},
            "event": {"enum": list(kinds)},
            "graph": _TEXT,
            "agent_id": _MAYBE_TEXT,
            "thread_id": _MAYBE_TEXT,
            "tool_call_id": _TEXT,
            "tool": _TEXT,
            "call_seq": {"type": "integer", "minimum": 0},
            "payload": {"type": "object"},
            "response": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["status", "body"],
                        "properties": {"status": _TEXT, "body": _MAYBE_TEXT},
                    },
                ]
            },
            "retry_count": {"type": "integer", "minimum": 0},
            "decision": _MAYBE_TEXT,
            "rule_id": _MAYBE_TEXT,
            "approver": _MAYBE_TEXT,
            "duration_ms": {"type": ["number", "null"], "minimum": 0},
            "reason": _MAYBE_TEXT,
            "args_hash": _MAYBE_TEXT,
            "identified_by": _MAYBE_TEXT,
            "policy_digest": _MAYBE_TEXT,
        },
    }


EVENT_SCHEMA: dict[str, Any] = _schema(FIELDS, EVENT_KINDS)
"""The JSON Schema (2020-12) of an event as logged: for log pipelines and tests."""
