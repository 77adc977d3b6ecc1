"""The audit trail: every tool-call event, once, in a hash chain that shows tampering.

`AuditLog` keeps the ``handrail_audit`` table beside the checkpoints (`handrail.storage`). One row
per `ToolEvent`: ``seq`` (1, 2, 3, … without gaps), ``at`` (the event's timestamp), one column per
other event field (``payload`` and ``response`` as canonical JSON text), then ``prev_hash`` and
``hash``::

    hash = sha256(prev_hash + canonical_json(row))   # UTF-8 in, hex out; first prev_hash GENESIS

where ``row`` holds every stored column but the two hashes (so ``seq`` and ``at`` are covered)
and canonical JSON is ``json.dumps(sort_keys=True, separators=(",", ":"))`` (ASCII, so any
string, even a lone surrogate, encodes).
Anyone can recompute the chain from the table alone, in any language.

Guarantees:

- **Once per step.** A replayed node (after a resume or a crash) emits the same step again (the
  ``step`` column, `ToolEvent.step`: the call, ``call_seq``, the event, and what was decided by
  whom); `AuditLog.append` skips it, and the skipped event takes no ``seq``. A different decision
  at the same place (taken after a crash lost the first) is a new row. Events without a thread
  (``step`` NULL) are never deduplicated: UNIQUE treats NULLs as distinct (in both backends), and
  a run without a checkpointer is never replayed.
- **One chain, whatever the writers.** An append holds the store's ``handrail_audit`` lock (the
  file's write lock on SQLite, an advisory lock on PostgreSQL) from reading the last row to its
  commit, so two processes never chain rows off the same predecessor.
- **Append-only against mistakes.** Triggers abort every UPDATE and DELETE (and TRUNCATE, on
  PostgreSQL). They stop a mistaken statement, not someone who can write the database (a trigger
  can be dropped, and SQLite's ``INSERT OR REPLACE`` deletes without firing it); that is what the
  chain is for.
- **Tampering shows.** `AuditLog.verify` finds an edited, removed, inserted or reordered row and
  names the first one. The chain is unkeyed, so someone who rewrites every row from the edit on
  can make it verify again, and so can removing the last rows; a head (`AuditLog.head`) kept
  somewhere the database's writers cannot reach, checked with ``verify(head=...)``, catches both.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from handrail.errors import HandrailError
from handrail.events import FIELDS, ToolEvent
from handrail.storage import Table, Target

__all__ = ["GENESIS", "AuditLog", "ToolStats", "Verification"]

GENESIS = "0" * 64
"""The ``prev_hash`` of the first row."""

_HASHED = ("seq", "at", *(name for name in FIELDS if name != "timestamp"), "step")
"""The columns a row's hash covers, in table order."""
_COLUMNS = (*_HASHED, "prev_hash", "hash")
_SELECT = ", ".join(_COLUMNS)
_INSERT = (
    f"INSERT INTO handrail_audit ({_SELECT}) VALUES ({', '.join(':' + c for c in _COLUMNS)}) "
    "ON CONFLICT DO NOTHING"
)
_PAGE = 512
"""Rows read per query by the streaming readers (the lock is released between pages)."""

_APPROVAL_WAITS = frozenset({"approve", "edit", "reject", "respond"})
"""``approval_decided`` decisions that end an approval wait (the others answer escalations)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Verification:
    """What `AuditLog.verify` found."""

    ok: bool
    """True when every row follows the one before it (and the given head, if any, is in the log)."""
    rows: int
    """The rows that verified: all of them when ``ok``, those before the bad one otherwise."""
    head: str | None
    """The hash of the last row that verified (None for an empty log)."""
    bad_row: int | None = None
    """The ``seq`` of the first bad row; None when the log is fine, or when only the given head
    is missing (no single row is to blame)."""
    problem: str | None = None
    """What is wrong, in one line."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolStats:
    """One tool's figures over the audited events (`AuditLog.stats`)."""

    tool: str
    calls: int
    """Distinct calls (thread_id, tool_call_id) with an event in the window."""
    allowed: int
    """Calls whose first ``decided`` event says allow (likewise ``asked``, ``denied``,
    ``invalid``)."""
    asked: int
    denied: int
    invalid: int
    approval_p50_ms: float | None
    """The median wait for a human (nearest rank), over approvals decided (approve, edit, reject,
    respond) and requests that expired; None when there were none."""
    approval_p95_ms: float | None
    retries: int
    """``retried`` events: automatic or human retries of a failed call."""
    failures: dict[str, int]
    """``failed`` events by the response's status, e.g. ``{"rate_limited": 2}``."""
    escalations: int
    """``escalated`` events."""


class AuditLog(Table):
    """The ``handrail_audit`` table at ``db``: a SQLite file, a PostgreSQL URL or a `Store`.

    ``readonly=True`` opens the database for reading only: nothing is created, a database
    without the table reads as an empty log, and `append` refuses.
    """

    def __init__(self, db: Target, *, readonly: bool = False) -> None:
        super().__init__(db, readonly=readonly)
        self.readonly = readonly
        """Opened for reading only."""
        self._empty = readonly and not self.store.table_exists("handrail_audit")

    def append(self, events: Sequence[ToolEvent]) -> list[ToolEvent]:
        """Record ``events`` in order, in one transaction; returns those actually recorded.

        An event already in the log (same thread_id, tool_call_id, call_seq and event) is
        skipped: a replay of a step that was recorded. It takes no ``seq`` and no place in the
        chain.
        """
        if not events:
            return []
        if self.readonly:
            raise HandrailError(f"{self.store}: the audit log was opened read-only")
        recorded: list[ToolEvent] = []
        # One writer at a time, in every process: two appends never chain off the same row.
        with self.store.transaction("handrail_audit") as sql:
            last = sql.execute(
                "SELECT seq, hash FROM handrail_audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev = last if last is not None else (0, GENESIS)
            for event in events:
                row = _row(seq + 1, event)
                digest = _chain(prev, row)
                if sql.execute(_INSERT, {**row, "prev_hash": prev, "hash": digest}).rowcount:
                    seq, prev = seq + 1, digest
                    recorded.append(event)
        return recorded

    def head(self) -> str | None:
        """The last row's hash (None for an empty log). Keep it elsewhere to check against later."""
        if self._empty:
            return None
        with self.store.read() as sql:
            row = sql.execute(
                "SELECT hash FROM handrail_audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return None if row is None else str(row[0])

    def count(self) -> int:
        """The number of rows."""
        if self._empty:
            return 0
        with self.store.read() as sql:
            return int(sql.execute("SELECT count(*) FROM handrail_audit").fetchone()[0])

    def verify(self, head: str | None = None) -> Verification:
        """Recompute the chain in ``seq`` order (streaming) and report the first bad row.

        Proves: each row's contents hash to its ``hash``, each ``prev_hash`` is the previous
        row's hash, and ``seq`` runs 1, 2, 3, … So an edit, a removed row, an inserted row or a
        reordering is found at the first row it touches, unless whoever did it also rewrote
        every row after it.

        Cannot prove, alone: that nothing was rewritten or cut off at the end. The chain has no
        key, so anyone who can write the file can recompute every hash from an edit onwards, or
        drop the last rows, and it verifies. Pass ``head``, a hash taken earlier with `head` and
        kept outside the database: it must be the hash of a row of the intact chain, else the
        result is not ok, with ``bad_row`` None (the missing rows cannot be named).
        """
        rows, expected_prev, last_seq = 0, GENESIS, 0
        seen_head = head is None
        for record in self._scan(_SELECT):
            values, stored_prev, stored_hash = record[:-2], record[-2], record[-1]
            seq = values[0]
            problem = None
            if seq != last_seq + 1:
                problem = (
                    f"seq jumps from {last_seq} (rows removed)"
                    if last_seq
                    else f"the log starts at seq {seq}, not 1 (rows removed or inserted)"
                )
            elif stored_prev != expected_prev:
                after = f"row {last_seq}" if last_seq else "the start of the log"
                problem = (
                    f"prev_hash does not follow {after} "
                    "(a row was removed, inserted or reordered before it)"
                )
            elif stored_hash != _chain(stored_prev, dict(zip(_HASHED, values, strict=True))):
                problem = "its hash does not match its contents (edited)"
            if problem is not None:
                last = expected_prev if rows else None
                return Verification(
                    ok=False, rows=rows, head=last, bad_row=seq, problem=f"row {seq}: {problem}"
                )
            rows, expected_prev, last_seq = rows + 1, stored_hash, seq
            seen_head = seen_head or stored_hash == head
        last_hash = expected_prev if rows else None
        if not seen_head:
            return Verification(
                ok=False,
                rows=rows,
                head=last_hash,
                problem=f"head {head} is not in the log: it was truncated or rewritten "
                "after that head was taken",
            )
        return Verification(ok=True, rows=rows, head=last_hash)

    def export(
        self,
        *,
        thread_id: str | None = None,
        tool: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The rows in ``seq`` order as dicts (payload and response parsed back), streaming.

        Filters: one thread, one tool, and the window ``since <= at < until`` (compared as
        instants; a naive datetime is taken as UTC).
        """
        clauses, params = [], []
        if thread_id is not None:
            clauses.append("thread_id = ?")
            params.append(thread_id)
        if tool is not None:
            clauses.append("tool = ?")
            params.append(tool)
        since, until = _utc(since), _utc(until)
        for record in self._scan(_SELECT, " AND ".join(clauses), params):
            if not _within(record[1], since, until):
                continue
            row = dict(zip(_COLUMNS, record, strict=True))
            row["payload"] = json.loads(row["payload"])
            if row["response"] is not None:
                row["response"] = json.loads(row["response"])
            yield row

    def stats(self, *, since: datetime | None = None) -> list[ToolStats]:
        """Per tool (sorted by name): calls, first decisions, approval waits, retries, failures
        and escalations, over the events at or after ``since`` (a naive datetime is UTC).

        A call's decision is its first ``decided`` event (a later one, after an edit, is not a
        new call), counted when that event is in the window.
        """
        tallies: dict[str, _Tally] = {}
        decided: set[tuple[str | None, str]] = set()
        columns = "at, event, tool, thread_id, tool_call_id, decision, duration_ms, response"
        since = _utc(since)
        for at, event, tool, thread, call, decision, duration, response in self._scan(columns):
            first = event == "decided" and (thread, call) not in decided
            if first:
                decided.add((thread, call))
            if not _within(at, since, None):
                continue
            tally = tallies.setdefault(tool, _Tally())
            tally.calls.add((thread, call))
            if first:
                tally.decisions[decision] += 1
            elif (event == "approval_decided" and decision in _APPROVAL_WAITS) or (
                event == "expired"
            ):
                if duration is not None:
                    tally.waits.append(duration)
            elif event == "retried":
                tally.retries += 1
            elif event == "failed":
                status = json.loads(response).get("status") if response else None
                tally.failures[status or "unknown"] += 1
            elif event == "escalated":
                tally.escalations += 1
        return [tallies[tool].result(tool) for tool in sorted(tallies)]

    def _scan(
        self, columns: str, where: str = "", params: Sequence[Any] = ()
    ) -> Iterator[tuple[Any, ...]]:
        """``SELECT columns … WHERE where`` in ``seq`` order, a page at a time (no lock held
        between pages, so a consumer may append meanwhile)."""
        if self._empty:
            return
        select = f"SELECT {columns}, seq FROM handrail_audit WHERE {where or 'TRUE'}"
        first = f"{select} ORDER BY seq LIMIT {_PAGE}"
        rest = f"{select} AND seq > ? ORDER BY seq LIMIT {_PAGE}"
        last: int | None = None
        while True:
            with self.store.read() as sql:
                if last is None:
                    page = sql.execute(first, params).fetchall()
                else:
                    page = sql.execute(rest, (*params, last)).fetchall()
            for record in page:
                yield record[:-1]
            if len(page) < _PAGE:
                return
            last = page[-1][-1]


@dataclass(slots=True)
class _Tally:
    calls: set[tuple[str | None, str]] = field(default_factory=set)
    decisions: Counter[str] = field(default_factory=Counter)
    waits: list[float] = field(default_factory=list)
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    escalations: int = 0

    def result(self, tool: str) -> ToolStats:
        waits = sorted(self.waits)
        return ToolStats(
            tool=tool,
            calls=len(self.calls),
            allowed=self.decisions["allow"],
            asked=self.decisions["ask"],
            denied=self.decisions["deny"],
            invalid=self.decisions["invalid"],
            approval_p50_ms=_nearest_rank(waits, 50),
            approval_p95_ms=_nearest_rank(waits, 95),
            retries=self.retries,
            failures=dict(sorted(self.failures.items())),
            escalations=self.escalations,
        )


def _nearest_rank(ordered: list[float], percent: int) -> float | None:
    if not ordered:
        return None
    rank = -(-percent * len(ordered) // 100)  # ceil without float error
    return ordered[max(rank, 1) - 1]


def _row(seq: int, event: ToolEvent) -> dict[str, Any]:
    """The stored values of ``event`` at ``seq``, typed as the database gives them back (the hash is
    computed at insert and at verify from the same values)."""
    duration = event.duration_ms
    return {
        "seq": seq,
        "at": str(event.timestamp),
        "event": _text(event.event),
        "graph": _text(event.graph),
        "agent_id": _text(event.agent_id),
        "thread_id": _text(event.thread_id),
        "tool_call_id": _text(event.tool_call_id),
        "tool": _text(event.tool),
        "call_seq": int(event.call_seq),
        "payload": _canonical(event.payload),
        "response": None if event.response is None else _canonical(event.response),
        "retry_count": int(event.retry_count),
        "decision": _text(event.decision),
        "rule_id": _text(event.rule_id),
        "approver": _text(event.approver),
        # SQLite stores NaN as NULL and -0.0 as 0.0; hash what is stored, or it would not verify
        # (and store the same in PostgreSQL).
        "duration_ms": None if duration is None or math.isnan(duration) else float(duration) + 0.0,
        "reason": _text(event.reason),
        "step": event.step(),
    }


def _text(value: object) -> str | None:
    """Text as stored on both backends: NUL escaped (PostgreSQL's text cannot hold it)."""
    return None if value is None else str(value).replace("\x00", "\\u0000")


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
"""Canonical JSON; ``default=str`` only matters for a value JSON has no type for."""


def _canonical(value: object) -> str:
    return _ENCODER.encode(value)


def _chain(prev_hash: str, row: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + _canonical(row)).encode()).hexdigest()


def _within(at: str, since: datetime | None, until: datetime | None) -> bool:
    """``since <= at < until``, as instants (``since``/``until`` already through `_utc`)."""
    if since is None and until is None:
        return True
    when = datetime.fromisoformat(at)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (since is None or when >= since) and (until is None or when < until)


def _utc(when: datetime | None) -> datetime | None:
    """A naive datetime taken as UTC."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when
