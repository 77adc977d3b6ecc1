"""The notification outbox: events about approval requests, and their deliveries per channel.

An event is written in the transaction that changes its request (`ApprovalTable.open` writes
``opened`` and ``escalated``, `ApprovalTable.resolve` writes ``expired``), so a request never
opens without its event and an event never names a request that was rolled back; a graph only
inserts a row and never waits on a receiver. The worker writes ``reminder`` events and delivers
everything (`handrail.notify`, `handrail.worker`).

Each event has a stable id (`event_id`): the same event written again (the approval node runs
again on every resume) is the same row. The worker *fans out* each event into one delivery per
channel it knows, then takes deliveries one at a time under a lease: a conditional update of an
unleased (or lapsed) row, so two workers never send the same delivery while a lease holds.
Leases go by the database's clock (`OutboxTable.now`), which every worker shares whatever its
host's clock says. A delivery ends ``delivered`` (once reached, never recorded as failed), or
``failed`` after its last attempt; every attempt, by whichever worker, is kept in its
``history``.

The one window: a worker that sends and dies before it marks the delivery (or is slower than
its lease) leaves it to be sent again. Receivers de-duplicate by the event id, which every
attempt carries (the webhook's ``Idempotency-Key``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from handrail.storage import Table
from handrail.storage._approval_rows import WAITING, iso
from handrail.storage._base import Sql
from handrail.storage._outbox_events import (
    Delivery,
    DeliveryRecord,
    DeliveryStatus,
    EventType,
    OutboxEvent,
    add_in,
    event_id,
    expired_in,
    opened_in,
)

__all__ = [
    "Delivery",
    "DeliveryRecord",
    "DeliveryStatus",
    "EventType",
    "OutboxEvent",
    "OutboxTable",
    "add_in",
    "event_id",
    "expired_in",
    "opened_in",
]

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
                f"FROM handrail_approvals a WHERE {WAITING} AND a.expires_at IS NOT NULL "
                f"AND a.expires_at > ? AND a.expires_at <= ? AND NOT EXISTS ("
                f"SELECT 1 FROM handrail_outbox o WHERE o.thread_id = a.thread_id "
                f"AND o.tool_call_id = a.tool_call_id AND o.event = 'reminder' "
                f"AND o.requested_at = a.requested_at) ORDER BY a.expires_at",
                (iso(now), iso(now + before)),
            ).fetchall()
            # Filtered before the limit: requests too short for a reminder never get one, and
            # must not fill the page of those that are due one.
            due = [
                OutboxEvent.of("reminder", t, c, at, now, json.loads(item))
                for t, c, at, expires, item in rows
                if datetime.fromisoformat(expires) - before > datetime.fromisoformat(at)
            ][:limit]
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
                f"SELECT {_EVENT_COLUMNS}, o.payload, d.channel, d.attempts "
                f"FROM handrail_deliveries d JOIN handrail_outbox o ON o.event_id = d.event_id "
                f"WHERE {free} AND next_attempt_at <= ? AND channel IN ({marks}) "
                f"ORDER BY next_attempt_at LIMIT 1",
                (iso(now), iso(now), *channels),
            ).fetchone()
            if row is None:
                return None
            *event, payload, channel, attempts = row
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
        )

    def delivered(self, delivery: Delivery, now: datetime) -> bool:
        """Record that ``delivery`` reached its receiver, whoever holds its lease now: a worker
        whose lease lapsed mid-send still sent it. Every attempt is kept in the history; returns
        whether this attempt was the first to deliver it (another worker's may have been)."""
        with self.store.transaction("handrail_outbox") as sql:
            row = _current(sql, delivery)
            if row is None:
                return False
            status, attempts, history, _ = row
            sql.execute(
                "UPDATE handrail_deliveries SET status = 'delivered', attempts = ?, "
                "delivered_at = COALESCE(delivered_at, ?), lease = NULL, leased_until = NULL, "
                "last_error = CASE WHEN status = 'delivered' THEN last_error END, history = ? "
                "WHERE event_id = ? AND channel = ?",
                (
                    attempts + 1,
                    iso(now),
                    _appended(history, attempts, now, None),
                    delivery.event.event_id,
                    delivery.channel,
                ),
            )
        return status != "delivered"

    def failed(
        self, delivery: Delivery, error: str, now: datetime, retry_at: datetime | None
    ) -> None:
        """Record a failed attempt: tried again at ``retry_at``, or (None) never again. The
        attempt is kept in the history in any case; the delivery's state changes only while
        this worker's lease holds it (else another worker took it over, or delivered it)."""
        with self.store.transaction("handrail_outbox") as sql:
            row = _current(sql, delivery)
            if row is None:
                return
            status, attempts, history, lease = row
            sql.execute(
                "UPDATE handrail_deliveries SET attempts = ?, history = ? "
                "WHERE event_id = ? AND channel = ?",
                (
                    attempts + 1,
                    _appended(history, attempts, now, error),
                    delivery.event.event_id,
                    delivery.channel,
                ),
            )
            if status != "pending" or lease != delivery.lease:
                return
            sql.execute(
                "UPDATE handrail_deliveries SET status = ?, last_error = ?, next_attempt_at = ?, "
                "lease = NULL, leased_until = NULL WHERE event_id = ? AND channel = ?",
                (
                    "pending" if retry_at is not None else "failed",
                    error,
                    iso(retry_at or now),
                    delivery.event.event_id,
                    delivery.channel,
                ),
            )

    def now(self) -> datetime:
        """The database's clock (UTC): the one time every worker on the database agrees on,
        however the clocks of their hosts drift, so a lease lapses for all of them at once."""
        postgres = self.store.dialect == "postgresql"
        query = "SELECT clock_timestamp()" if postgres else "SELECT strftime('%Y-%m-%d %H:%M:%f')"
        with self.store.read() as sql:
            (value,) = sql.execute(query).fetchone()
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

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


def _current(sql: Sql, delivery: Delivery) -> tuple[str, int, str, str | None] | None:
    """The delivery's status, attempts, history and lease as the table holds them now."""
    row = sql.execute(
        "SELECT status, attempts, history, lease FROM handrail_deliveries "
        "WHERE event_id = ? AND channel = ?",
        (delivery.event.event_id, delivery.channel),
    ).fetchone()
    return None if row is None else (row[0], int(row[1]), row[2], row[3])


def _appended(history: str, attempts: int, now: datetime, error: str | None) -> str:
    """``history`` (JSON) with one more attempt, numbered after the ``attempts`` made."""
    attempt = {"attempt": attempts + 1, "at": iso(now), "ok": error is None, "error": error}
    return json.dumps([*json.loads(history), attempt])
