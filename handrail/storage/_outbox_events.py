"""The outbox's events, written inside the transactions that change requests
(`handrail.storage.outbox`): their ids, their rows, and the writes that join a transaction."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from handrail.storage._approval_rows import WAITING, Listing, iso
from handrail.storage._base import Sql

__all__ = [
    "Delivery",
    "DeliveryRecord",
    "DeliveryStatus",
    "EventType",
    "OutboxEvent",
    "add_in",
    "event_id",
    "expired_in",
    "opened_in",
]

EventType = Literal["opened", "escalated", "reminder", "expired"]
"""What happened to a request: it opened (an approval), opened as an escalation, nears its
deadline, or expired."""

DeliveryStatus = Literal["pending", "delivered", "failed"]
"""A delivery waits (or is being sent), was delivered, or failed its last attempt."""

_NAMESPACE = uuid.UUID("6f7c1d2e-8a4b-5c3d-9e0f-1a2b3c4d5e6f")


def event_id(event: EventType, thread_id: str, tool_call_id: str, requested_at: str) -> str:
    """The stable id of ``event`` for one request (a call, asked at ``requested_at``)."""
    return str(uuid.uuid5(_NAMESPACE, json.dumps([event, thread_id, tool_call_id, requested_at])))


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxEvent:
    """One event about one request, as the outbox keeps it."""

    event_id: str
    """Stable across retries: receivers de-duplicate by it."""
    event: EventType
    thread_id: str
    tool_call_id: str
    requested_at: str
    """When the request was asked (ISO-8601, UTC): one request of a call, among its re-asks."""
    occurred_at: str
    """When the event happened (ISO-8601, UTC)."""
    request: dict[str, Any] = field(default_factory=dict)
    """The waiting call (`handrail.review.WaitingCall` as JSON, arguments redacted)."""

    @classmethod
    def of(
        cls,
        event: EventType,
        thread_id: str,
        tool_call_id: str,
        requested_at: str,
        now: datetime,
        request: dict[str, Any],
    ) -> OutboxEvent:
        """The event, with its stable id."""
        return cls(
            event_id=event_id(event, thread_id, tool_call_id, requested_at),
            event=event,
            thread_id=thread_id,
            tool_call_id=tool_call_id,
            requested_at=requested_at,
            occurred_at=iso(now),
            request=request,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Delivery:
    """A delivery leased to this worker: the event, the channel, and the lease's token."""

    event: OutboxEvent
    channel: str
    attempts: int
    """Attempts made before this one."""
    lease: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryRecord:
    """A delivery as the table records it (`OutboxTable.deliveries`)."""

    event_id: str
    event: EventType
    thread_id: str
    tool_call_id: str
    channel: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: str
    last_error: str | None
    delivered_at: str | None
    history: tuple[dict[str, Any], ...]
    """Every attempt: ``{"attempt", "at", "ok", "error"}``."""


def add_in(sql: Sql, events: Iterable[OutboxEvent]) -> None:
    """Insert ``events`` inside the transaction ``sql``; an event already there is left as is."""
    sql.executemany(
        "INSERT INTO handrail_outbox (event_id, event, thread_id, tool_call_id, requested_at, "
        "occurred_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
        [
            (
                e.event_id,
                e.event,
                e.thread_id,
                e.tool_call_id,
                e.requested_at,
                e.occurred_at,
                json.dumps(e.request),
            )
            for e in events
        ],
    )


def opened_in(sql: Sql, thread_id: str, calls: Sequence[Listing], now: datetime) -> None:
    """Inside the transaction that upserts ``calls`` (before the upsert): an ``opened`` (or
    ``escalated``) event for each call that was not already waiting with the same kind and
    arguments. A call that waits still (the node running again on resume) gets none."""
    rows = sql.execute(
        f"SELECT tool_call_id, kind, args_hash FROM handrail_approvals "
        f"WHERE thread_id = ? AND {WAITING}",
        (thread_id,),
    ).fetchall()
    waiting = {(c, k, h) for c, k, h in rows}
    add_in(
        sql,
        (
            OutboxEvent.of(
                "escalated" if c.kind == "escalation" else "opened",
                thread_id,
                c.tool_call_id,
                iso(now),
                now,
                json.loads(c.model_dump_json(exclude={"requested_at"})),
            )
            for c in calls
            if (c.tool_call_id, c.kind, c.args_hash) not in waiting
        ),
    )


def expired_in(sql: Sql, thread_id: str, tool_call_ids: Sequence[str], now: datetime) -> None:
    """Inside the transaction that records the expiry of ``tool_call_ids``: an ``expired`` event
    for each (once per request, however often the expiry is recorded)."""
    if not tool_call_ids:
        return
    marks = ", ".join("?" * len(tool_call_ids))
    rows = sql.execute(
        f"SELECT tool_call_id, requested_at, item FROM handrail_approvals "
        f"WHERE thread_id = ? AND tool_call_id IN ({marks})",
        (thread_id, *tool_call_ids),
    ).fetchall()
    events = [OutboxEvent.of("expired", thread_id, c, at, now, json.loads(i)) for c, at, i in rows]
    add_in(sql, events)
