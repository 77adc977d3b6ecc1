"""The notification outbox: events about approval requests, and their deliveries per channel.

An event is written in the transaction that changes its request (`ApprovalTable.open` writes
``opened`` and ``escalated``, `ApprovalTable.resolve` writes ``expired``), so a request never
opens without its event and an event never names a request that was rolled back; a graph only
inserts a row and never waits on a receiver. The worker writes ``reminder`` events and delivers
everything (`handrail.notify`, `handrail.worker`).

Each event has a stable id (`event_id`): the same event written again (the approval node runs
again on every resume) is the same row. The worker *fans out* each event into one delivery per
channel it knows, then takes deliveries one at a time under a lease: a conditional update of an
unleased (or lapsed) row, so two workers never send the same delivery while a lease holds. A
delivery ends ``delivered``, or ``failed`` after its last attempt; every attempt is kept in its
``history``.

The one window: a worker that sends and dies before it marks the delivery leaves it to be sent
again after its lease lapses. Receivers de-duplicate by the event id, which every attempt
carries (the webhook's ``Idempotency-Key``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from handrail.storage import Table
from handrail.storage._approval_rows import Listing, iso
from handrail.storage._base import Sql

__all__ = [
    "Delivery",
    "DeliveryRecord",
    "DeliveryStatus",
    "EventType",
    "OutboxEvent",
    "OutboxTable",
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
_WAITING = "status IN ('open', 'deciding') AND outcome IS NULL"


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
    history: tuple[dict[str, Any], ...]


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
        f"WHERE thread_id = ? AND {_WAITING}",
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


_EVENT_COLUMNS = "o.event_id, o.event, o.thread_id, o.tool_call_id, o.requested_at, o.occurred_at"


class OutboxTable(Table):
    """The outbox at ``db`` (a SQLite file, a PostgreSQL URL or a `Store`): reminders to write,
    events to fan out, deliveries to lease and record."""

    def remind(self, before: timedelta, now: datetime, *, limit: int = 500) -> int:
        """Write a ``reminder`` event for each waiting request whose deadline is within
        ``before`` of ``now`` (and not past), once per request; a request asked less than
        ``before`` ahead of its deadline gets none. Returns how many were written."""
        with self.store.transaction("handrail_outbox") as sql:
            rows = sql.execute(
                f"SELECT a.thread_id, a.tool_call_id, a.requested_at, a.expires_at, a.item "
                f"FROM handrail_approvals a WHERE {_WAITING} AND a.expires_at IS NOT NULL "
                f"AND a.expires_at > ? AND a.expires_at <= ? AND NOT EXISTS ("
                f"SELECT 1 FROM handrail_outbox o WHERE o.thread_id = a.thread_id "
                f"AND o.tool_call_id = a.tool_call_id AND o.event = 'reminder' "
                f"AND o.requested_at = a.requested_at) ORDER BY a.expires_at LIMIT ?",
                (iso(now), iso(now + before), limit),
            ).fetchall()
            due = [
                OutboxEvent.of("reminder", t, c, at, now, json.loads(item))
                for t, c, at, expires, item in rows
                if datetime.fromisoformat(expires) - before > datetime.fromisoformat(at)
            ]
            add_in(sql, due)
        return len(due)

    def fan_out(self, channels: Sequence[str], now: datetime, *, limit: int = 500) -> int:
        """Make one pending delivery per channel for each event not fanned out yet; returns
        how many events were. The channels are those of the worker that does it."""
        with self.store.transaction("handrail_outbox") as sql:
            ids = [
                r[0]
                for r in sql.execute(
                    "SELECT event_id FROM handrail_outbox WHERE fanned_out_at IS NULL "
                    "ORDER BY occurred_at LIMIT ?",
                    (limit,),
                ).fetchall()
            ]
            sql.executemany(
                "INSERT INTO handrail_deliveries (event_id, channel, next_attempt_at) "
                "VALUES (?, ?, ?) ON CONFLICT (event_id, channel) DO NOTHING",
                [(e, c, iso(now)) for e in ids for c in channels],
            )
            sql.executemany(
                "UPDATE handrail_outbox SET fanned_out_at = ? WHERE event_id = ?",
                [(iso(now), e) for e in ids],
            )
        return len(ids)

    def lease(self, channels: Sequence[str], now: datetime, hold: timedelta) -> Delivery | None:
        """Lease the next due delivery to one of ``channels`` for ``hold``, or None. A delivery
        leased by another worker is taken only once its lease has lapsed."""
        if not channels:
            return None
        token = uuid.uuid4().hex
        marks = ", ".join("?" * len(channels))
        free = "status = 'pending' AND (leased_until IS NULL OR leased_until <= ?)"
        with self.store.transaction("handrail_outbox") as sql:
            row = sql.execute(
                f"SELECT {_EVENT_COLUMNS}, o.payload, d.channel, d.attempts, d.history "
                f"FROM handrail_deliveries d JOIN handrail_outbox o ON o.event_id = d.event_id "
                f"WHERE {free} AND next_attempt_at <= ? AND channel IN ({marks}) "
                f"ORDER BY next_attempt_at LIMIT 1",
                (iso(now), iso(now), *channels),
            ).fetchone()
            if row is None:
                return None
            *event, payload, channel, attempts, history = row
            taken = sql.execute(
                f"UPDATE handrail_deliveries SET lease = ?, leased_until = ? "
                f"WHERE event_id = ? AND channel = ? AND {free}",
                (token, iso(now + hold), event[0], channel, iso(now)),
            )
            if taken.rowcount != 1:
                return None
        return Delivery(
            event=_event(event, payload),
            channel=channel,
            attempts=int(attempts),
            lease=token,
            history=tuple(json.loads(history)),
        )

    def delivered(self, delivery: Delivery, now: datetime) -> None:
        """Record that ``delivery`` reached its receiver."""
        attempt = _attempt(delivery, now, None)
        with self.store.transaction() as sql:
            sql.execute(
                "UPDATE handrail_deliveries SET status = 'delivered', attempts = ?, "
                "delivered_at = ?, last_error = NULL, lease = NULL, leased_until = NULL, "
                "history = ? WHERE event_id = ? AND channel = ? AND status = 'pending'",
                (
                    delivery.attempts + 1,
                    iso(now),
                    json.dumps([*delivery.history, attempt]),
                    delivery.event.event_id,
                    delivery.channel,
                ),
            )

    def failed(
        self, delivery: Delivery, error: str, now: datetime, retry_at: datetime | None
    ) -> None:
        """Record a failed attempt: tried again at ``retry_at``, or (None) never again."""
        attempt = _attempt(delivery, now, error)
        with self.store.transaction() as sql:
            sql.execute(
                "UPDATE handrail_deliveries SET status = ?, attempts = ?, last_error = ?, "
                "next_attempt_at = ?, lease = NULL, leased_until = NULL, history = ? "
                "WHERE event_id = ? AND channel = ? AND lease = ?",
                (
                    "pending" if retry_at is not None else "failed",
                    delivery.attempts + 1,
                    error,
                    iso(retry_at or now),
                    json.dumps([*delivery.history, attempt]),
                    delivery.event.event_id,
                    delivery.channel,
                    delivery.lease,
                ),
            )

    # -- read ------------------------------------------------------------------------------------

    def events(self, thread_id: str | None = None) -> list[OutboxEvent]:
        """The events written, oldest first (one thread's, if named)."""
        where, params = ("WHERE o.thread_id = ?", (thread_id,)) if thread_id else ("", ())
        with self.store.read() as sql:
            rows = sql.execute(
                f"SELECT {_EVENT_COLUMNS}, o.payload FROM handrail_outbox o {where} "
                f"ORDER BY o.occurred_at, o.event_id",
                params,
            ).fetchall()
        return [_event(r[:-1], r[-1]) for r in rows]

    def deliveries(self, status: DeliveryStatus | None = None) -> list[DeliveryRecord]:
        """Every delivery (of one status, if named), oldest event first."""
        where, params = ("WHERE d.status = ?", (status,)) if status else ("", ())
        with self.store.read() as sql:
            rows = sql.execute(
                f"SELECT o.event_id, o.event, o.thread_id, o.tool_call_id, d.channel, d.status, "
                f"d.attempts, d.next_attempt_at, d.last_error, d.delivered_at, d.history "
                f"FROM handrail_deliveries d JOIN handrail_outbox o ON o.event_id = d.event_id "
                f"{where} ORDER BY o.occurred_at, o.event_id, d.channel",
                params,
            ).fetchall()
        return [
            DeliveryRecord(
                event_id=r[0],
                event=r[1],
                thread_id=r[2],
                tool_call_id=r[3],
                channel=r[4],
                status=r[5],
                attempts=int(r[6]),
                next_attempt_at=r[7],
                last_error=r[8],
                delivered_at=r[9],
                history=tuple(json.loads(r[10])),
            )
            for r in rows
        ]


def _event(columns: Sequence[Any], payload: str) -> OutboxEvent:
    event_id_, event, thread_id, tool_call_id, requested_at, occurred_at = columns
    return OutboxEvent(
        event_id=event_id_,
        event=event,
        thread_id=thread_id,
        tool_call_id=tool_call_id,
        requested_at=requested_at,
        occurred_at=occurred_at,
        request=json.loads(payload),
    )


def _attempt(delivery: Delivery, now: datetime, error: str | None) -> dict[str, Any]:
    return {"attempt": delivery.attempts + 1, "at": iso(now), "ok": error is None, "error": error}
