"""Tool-call events: one JSON object per step of a call, on the ``handrail`` logger and audited.

A call's steps are ``decided``, ``approval_requested``, ``approval_decided``, ``started``,
``succeeded``, ``failed``, ``retried``, ``escalated`` and ``expired``. Each event carries the call's
position in its own history (``call_seq``, counted in the call's `ToolCallRecord`, and kept by the
execution ledger when a call begins), which makes it identifiable (`ToolEvent.step`): when
LangGraph replays a node after a resume or a crash, the replay produces the same step again, and
the audit table records it once and the logger hears of it once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from typing_extensions import TypedDict, Unpack

from handrail._event import EVENT_KINDS, EVENT_SCHEMA, FIELDS, EventKind, Response, ToolEvent
from handrail.context import thread_id_of
from handrail.redaction import hidden_values, redact, redact_body, scrub
from handrail.tracing import trace_events

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

    from handrail.audit._chain import Sealable
    from handrail.policies import Policy
    from handrail.state import ToolCallRecord
    from handrail.storage._base import Sql

__all__ = [
    "EVENT_KINDS",
    "EVENT_SCHEMA",
    "FIELDS",
    "Batch",
    "Draft",
    "EventKind",
    "EventSink",
    "Recorder",
    "Response",
    "ToolEvent",
]

log = logging.getLogger("handrail")


class EventSink(Protocol):
    """Where events are kept (the audit table): it records each event once. A sink may also
    have ``sealable(event)``, making an event's row before the transaction that appends it
    (`AuditLog.sealable`): it is then given those rows instead of the events."""

    def append(self, events: Sequence[ToolEvent | Sealable]) -> list[ToolEvent]:
        """Record ``events``; return those not recorded before, in order."""
        ...

    def append_in(self, sql: Sql, events: Sequence[ToolEvent | Sealable]) -> list[ToolEvent]:
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

    def publish(
        self, events: Sequence[ToolEvent], config: RunnableConfig, ready: Sequence[Sealable] = ()
    ) -> list[ToolEvent]:
        """Record, log and trace the events not published before; returns them. ``ready``:
        their audit rows, if made already (`Batch.draft`)."""
        if self.audit is None:
            new = self._unseen(events)
        else:
            new = self.audit.append(_rows(events, ready))
        self.announce(new, config)
        return new

    def record_in(
        self, sql: Sql, events: Sequence[ToolEvent], ready: Sequence[Sealable] = ()
    ) -> list[ToolEvent]:
        """Record the events not published before inside the caller's transaction ``sql``;
        returns them, to `announce` once it has committed."""
        if self.audit is None:
            return self._unseen(events)
        return self.audit.append_in(sql, _rows(events, ready))

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


class Step(TypedDict, total=False):
    """What `Batch.draft` takes besides the kind and the record."""

    decision: str | None
    approver: str | None
    response: tuple[str, str | None] | None
    duration_ms: float | None
    reason: str | None
    at: datetime | None
    identified_by: str | None


@dataclass(frozen=True, slots=True)
class Draft:
    """An event made but not added to its batch yet (`Batch.draft`, then `Batch.keep`)."""

    record: ToolCallRecord
    """The call's record counting the event."""
    event: ToolEvent
    ready: Sealable | None
    """Its audit row, made before the transaction that records it (None without an audit)."""


class Batch:
    """The events of one node run, in the order the steps happened."""

    __slots__ = ("_events", "_ready", "agent_id", "config", "recorder", "thread_id")

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
        self._ready: list[Sealable] = []  # their audit rows, when the recorder keeps an audit

    def add(self, kind: EventKind, record: ToolCallRecord, **step: Unpack[Step]) -> ToolCallRecord:
        """Add the event of ``record``'s step ``kind`` (`draft`, then `keep`); returns the
        record counting it."""
        return self.keep(self.draft(kind, record, **step))

    def keep(self, draft: Draft) -> ToolCallRecord:
        """Add the event ``draft`` made; returns the record counting it."""
        self._events.append(draft.event)
        if draft.ready is not None:
            self._ready.append(draft.ready)
        return draft.record

    def draft(
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
    ) -> Draft:
        """The event of ``record``'s step ``kind``, made but not added (`keep` adds it): a step
        that may not happen (the start of a call a breaker may refuse) is made before a
        transaction, and only kept in it.

        ``decision`` defaults to the policy's effect on the call, ``approver`` to the record's
        approver; ``response`` is the tool run's
        (status, body), redacted and cut to the policy's ``body_limit`` here.
        """
        policy = self.recorder.policy
        paths = policy.settings(record.name).redact
        hidden = hidden_values(record.args, paths) if paths else ()
        if hidden and reason is not None:
            reason = scrub(reason, hidden)
        event = ToolEvent(
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
        # a sink without `sealable` (written before it existed) makes its rows in `append`
        make = getattr(self.recorder.audit, "sealable", None)
        ready: Sealable | None = make(event) if make is not None else None
        return Draft(record.update(events=record.events + 1), event, ready)

    def publish(self) -> list[ToolEvent]:
        """Publish the events added so far (`Recorder.publish`); returns the new ones."""
        events, ready = self._take()
        if not events:
            return []
        return self.recorder.publish(events, self.config, ready)

    def recorded_in(self, sql: Sql) -> bool:
        """Whether the events added so far were all recorded before (`Recorder.recorded_in`):
        the step ran before, as it runs again after a resume."""
        return self.recorder.recorded_in(sql, self._events)

    def drop(self) -> None:
        """Forget the events added so far: recorded before (`recorded_in`)."""
        self._take()

    def publish_in(self, sql: Sql) -> list[ToolEvent]:
        """Record the events added so far inside the caller's transaction ``sql``; returns the
        new ones, to `announce` once that transaction has committed."""
        return self.recorder.record_in(sql, *self._take())

    def _take(self) -> tuple[list[ToolEvent], list[Sealable]]:
        """The events added so far and their audit rows, leaving the batch empty."""
        taken = self._events, self._ready
        self._events, self._ready = [], []
        return taken

    def announce(self, new: Sequence[ToolEvent]) -> None:
        """Log and trace events `publish_in` recorded (after their transaction committed)."""
        self.recorder.announce(new, self.config)


def _rows(
    events: Sequence[ToolEvent], ready: Sequence[Sealable]
) -> Sequence[ToolEvent] | Sequence[Sealable]:
    """What the audit is given: the rows made ahead when every event has one, else the events
    (each row made at append)."""
    return ready if len(ready) == len(events) else events


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
