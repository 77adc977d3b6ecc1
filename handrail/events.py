"""Tool-call events: one JSON object per step of a call, on the ``handrail`` logger and audited.

A call's steps are ``decided``, ``approval_requested``, ``approval_decided``, ``started``,
``succeeded``, ``failed``, ``retried``, ``escalated`` and ``expired``. Each event carries the call's
position in its own history (``call_seq``, counted in the call's `ToolCallRecord`, and kept by the
execution ledger when a call begins), which makes it identifiable (`ToolEvent.step`): when
LangGraph replays a node after a resume or a crash, the replay produces the same step again, and
the audit table records it once and the logger hears of it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from typing_extensions import TypedDict

from handrail.context import thread_id_of
from handrail.redaction import hidden_values, redact, redact_body, scrub
from handrail.tracing import trace_events

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

    from handrail.policies import Policy
    from handrail.state import ToolCallRecord
    from handrail.storage._base import Sql

__all__ = [
    "EVENT_KINDS",
    "EVENT_SCHEMA",
    "FIELDS",
    "Batch",
    "EventKind",
    "EventSink",
    "Recorder",
    "Response",
    "ToolEvent",
]

log = logging.getLogger("handrail")

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

EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Handrail tool-call event",
    "type": "object",
    "additionalProperties": False,
    "required": list(FIELDS),
    "properties": {
        "timestamp": {"type": "string", "format": "date-time"},
        "event": {"enum": list(EVENT_KINDS)},
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
"""The JSON Schema (2020-12) of an event as logged: for log pipelines and tests."""


class EventSink(Protocol):
    """Where events are kept (the audit table): it records each event once."""

    def append(self, events: Sequence[ToolEvent]) -> list[ToolEvent]:
        """Record ``events``; return those not recorded before, in order."""
        ...

    def append_in(self, sql: Sql, events: Sequence[ToolEvent]) -> list[ToolEvent]:
        """`append` inside the caller's transaction ``sql`` on the sink's store."""
        ...

    def holds_in(self, sql: Sql, events: Sequence[ToolEvent]) -> bool:
        """Whether every one of ``events`` is kept already, read inside ``sql``."""
        ...

    def next_call_seq(self, thread_id: str, tool_call_id: str) -> int:
        """The ``call_seq`` the call's next event takes (one past its last one kept)."""
        ...


_WARNING_EVENTS = frozenset({"failed", "escalated", "expired"})
_SEEN_LIMIT = 100_000
_SAME: Any = object()


class Recorder:
    """Turns the steps of a graph's tool calls into events and publishes each one once.

    Publishing writes the events to the ``audit`` sink (which skips the ones it already holds)
    and logs the new ones on the ``handrail`` logger: INFO, WARNING for ``failed``,
    ``escalated`` and ``expired``. Without a sink, events already published by this process are
    skipped by their key. ``trace`` (set by the graph) hears of the new events too.
    """

    def __init__(self, policy: Policy, graph: str, audit: EventSink | None = None) -> None:
        self.policy = policy
        self.graph = graph
        """The graph's name, in every event."""
        self.audit = audit
        """The audit table, if the graph keeps one."""
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.listeners: list[Callable[[Sequence[ToolEvent]], None]] = []
        """Called with the events just recorded, after their transaction committed (the
        gate's limits release the uses of calls that ended without running)."""

    def batch(self, config: RunnableConfig, agent_id: str | None) -> Batch:
        """A batch for one node run: events are added as steps happen, then published."""
        return Batch(self, thread_id_of(config), agent_id, config)

    def publish(self, events: Sequence[ToolEvent], config: RunnableConfig) -> list[ToolEvent]:
        """Record, log and trace the events not published before; returns them."""
        new = self.audit.append(events) if self.audit is not None else self._unseen(events)
        self.announce(new, config)
        return new

    def record_in(self, sql: Sql, events: Sequence[ToolEvent]) -> list[ToolEvent]:
        """Record the events not published before inside the caller's transaction ``sql``;
        returns them, to `announce` once it has committed."""
        return self.audit.append_in(sql, events) if self.audit is not None else self._unseen(events)

    def recorded_in(self, sql: Sql, events: Sequence[ToolEvent]) -> bool:
        """Whether ``events`` were all recorded before: in the audit (read inside ``sql``), or,
        with no audit, published by this process."""
        if self.audit is not None:
            return self.audit.holds_in(sql, events)
        with self._lock:
            return all(e.step() is not None and e.step() in self._seen for e in events)

    def announce(self, new: Sequence[ToolEvent], config: RunnableConfig) -> None:
        """Log and trace events just recorded."""
        for event in new:
            level = logging.WARNING if event.event in _WARNING_EVENTS else logging.INFO
            if log.isEnabledFor(level):
                data = event.as_dict()
                text = json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))
                log.log(level, text, extra={"handrail_event": data})
        if new:
            trace_events(new, config)
            for hear in self.listeners:
                hear(new)

    def next_seq(self, thread_id: str | None, record: ToolCallRecord) -> ToolCallRecord:
        """``record`` counting every event its call has had, as the audit knows them (a record
        from state may lag: a step's events are published before the step is saved)."""
        if self.audit is None or thread_id is None:
            return record
        kept = self.audit.next_call_seq(thread_id, record.id)
        return record if kept <= record.events else record.update(events=kept)

    def _unseen(self, events: Sequence[ToolEvent]) -> list[ToolEvent]:
        new = []
        with self._lock:
            for event in events:
                key = event.step()
                if key is not None:
                    if key in self._seen:
                        continue
                    self._seen[key] = None
                    if len(self._seen) > _SEEN_LIMIT:
                        self._seen.popitem(last=False)
                new.append(event)
        return new


class Batch:
    """The events of one node run, in the order the steps happened."""

    __slots__ = ("_events", "agent_id", "config", "recorder", "thread_id")

    def __init__(
        self,
        recorder: Recorder,
        thread_id: str | None,
        agent_id: str | None,
        config: RunnableConfig,
    ) -> None:
        self.recorder = recorder
        self.thread_id = thread_id
        self.agent_id = agent_id
        self.config = config
        self._events: list[ToolEvent] = []

    def add(
        self,
        kind: EventKind,
        record: ToolCallRecord,
        *,
        decision: str | None = _SAME,
        approver: str | None = _SAME,
        response: tuple[str, str | None] | None = None,
        duration_ms: float | None = None,
        reason: str | None = None,
        at: datetime | None = None,
        identified_by: str | None = None,
    ) -> ToolCallRecord:
        """Add the event of ``record``'s step ``kind``; returns the record counting it.

        ``decision`` defaults to the policy's effect on the call, ``approver`` to the record's
        approver; ``response`` is the tool run's
        (status, body), redacted and cut to the policy's ``body_limit`` here.
        """
        policy = self.recorder.policy
        paths = policy.settings(record.name).redact
        hidden = hidden_values(record.args, paths) if paths else ()
        if hidden and reason is not None:
            reason = scrub(reason, hidden)
        self._events.append(
            ToolEvent(
                timestamp=(at or datetime.now(UTC)).isoformat(timespec="milliseconds"),
                event=kind,
                graph=self.recorder.graph,
                agent_id=self.agent_id,
                thread_id=self.thread_id,
                tool_call_id=record.id,
                tool=record.name,
                call_seq=record.events,
                payload=redact(record.args, paths, "args") if paths else dict(record.args),
                response=None
                if response is None
                else _response(response[0], response[1], paths, policy.body_limit, hidden),
                retry_count=record.retry_count,
                decision=record.decision if decision is _SAME else decision,
                rule_id=record.rule_id,
                approver=record.approver if approver is _SAME else approver,
                duration_ms=None if duration_ms is None else round(duration_ms, 3),
                reason=reason,
                args_hash=record.args_hash,
                identified_by=identified_by,
                policy_digest=policy.digest,
            )
        )
        return record.update(events=record.events + 1)

    def publish(self) -> list[ToolEvent]:
        """Publish the events added so far (`Recorder.publish`); returns the new ones."""
        events, self._events = self._events, []
        if not events:
            return []
        return self.recorder.publish(events, self.config)

    def recorded_in(self, sql: Sql) -> bool:
        """Whether the events added so far were all recorded before (`Recorder.recorded_in`):
        the step ran before, as it runs again after a resume."""
        return self.recorder.recorded_in(sql, self._events)

    def drop(self) -> None:
        """Forget the events added so far: recorded before (`recorded_in`)."""
        self._events = []

    def publish_in(self, sql: Sql) -> list[ToolEvent]:
        """Record the events added so far inside the caller's transaction ``sql``; returns the
        new ones, to `announce` once that transaction has committed."""
        events, self._events = self._events, []
        return self.recorder.record_in(sql, events)

    def announce(self, new: Sequence[ToolEvent]) -> None:
        """Log and trace events `publish_in` recorded (after their transaction committed)."""
        self.recorder.announce(new, self.config)


def _response(
    status: str, body: str | None, paths: Sequence[str], limit: int, hidden: Sequence[str]
) -> Response:
    if body is not None:
        body = scrub(redact_body(body, paths), hidden)
        if len(body) > limit:
            body = f"{body[:limit]}… [{len(body) - limit} more characters]"
    return {"status": status, "body": body}


def since_ms(moment: datetime | None, now: datetime) -> float | None:
    """Milliseconds from ``moment`` to ``now`` (None without a moment)."""
    return None if moment is None else (now - moment).total_seconds() * 1000
