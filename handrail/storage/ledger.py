"""The execution ledger: intent before a side-effecting tool runs, the outcome after.

LangGraph re-runs a node from its first line whenever the step that ran it was not saved: after a
crash, a killed worker, or a lost background checkpoint. For a tool that moves money that would be
a second transfer. So before a non-idempotent tool runs, ``execute`` writes an *intent* row keyed by
(thread_id, tool_call_id, args_hash) and commits it; after the tool returns or raises, it writes
the *outcome* on the same row. On any replay of the same attempt:

- an outcome is there: the tool is not run again; its recorded result (or error) is used;
- an intent with no outcome: nobody knows whether the side effect happened. The call is
  **outcome unknown** and goes to a human (an escalation), never silently run again.

A new attempt (an automatic retry, or a human's ``retry``) has a higher ``attempt`` number than
the row, so it writes a new intent and runs. The table lives beside the checkpoints
(`handrail.storage`).

**A replay under a new call id** (`handrail.storage._replays`): when a crash lost the model's
step too, the model asked again gives the same call a new id. ``begin`` recognises the lost
call's row and the new call takes its attempt over (``replay_of``): its recorded outcome is used,
or it is an outcome-unknown escalation, never a second run.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from handrail.state import CallError, ToolCallRecord
from handrail.storage import Table, Target
from handrail.storage._base import Sql, columns
from handrail.storage._replays import (
    COLUMNS,
    NO_LINEAGE,
    Lineage,
    Outcome,
    Row,
    candidates,
    checkpoints_json,
    lost,
    rows_of,
    take_over,
)

__all__ = ["Ledger", "LedgerEntry", "Lineage", "Started", "idempotency_key"]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What the ledger knows of a call's latest attempt."""

    attempt: int
    """The attempt's number: the call's ``retry_count`` when it started."""
    started_at: datetime
    outcome: Outcome | None
    """None: the attempt started and never reported back (outcome unknown)."""
    result: str | None
    """For a success: the content the tool returned."""
    error: CallError | None
    """For a failure: the classified error."""
    started_by: str
    """The process that started the attempt: ``pid@host``."""
    record: ToolCallRecord | None = None
    """The call's record as the attempt began (None in rows written before records were kept):
    what was decided and approved, and how many events the call had had. For a replay under a
    new id: the new call's record, carrying the attempt and ``replay_of``."""
    replay_of: str | None = None
    """The lost call whose attempt this is, when a call that replays it took it over (see
    `Ledger.begin`): the attempt ran under that call's id, not this one's."""


@dataclass(frozen=True, slots=True)
class Started:
    """A call the ledger saw begin: the arguments it ran with, and its latest attempt."""

    args: dict[str, Any]
    args_hash: str
    attempt: int
    record: ToolCallRecord | None = None
    """The call's record as it began (see `LedgerEntry.record`)."""


_RECENT = 32
"""How many of a thread's latest rows with the same arguments `Ledger.begin` looks through for
a lost call (a crash loses the steps of one run, at its end)."""


def idempotency_key(thread_id: str, record: ToolCallRecord, origin: str | None = None) -> str:
    """The key a tool passes on to its API: the same for every attempt of one decided call.

    An API that deduplicates by it (as payment APIs do) turns a human's ``retry`` of an
    outcome-unknown call into a safe no-op when the first attempt did go through. A call that
    replays a lost one has the lost call's key: ``origin``, as `Ledger.origin` says (never the
    record's ``replay_of``: state proves nothing).
    """
    seed = "\x1f".join((thread_id, origin or record.id, record.args_hash))
    return "hr-" + hashlib.sha256(seed.encode()).hexdigest()[:32]


def _intent(thread_id: str, record: ToolCallRecord, lineage: Lineage) -> tuple[Any, ...]:
    """The values of the intent's row (`Ledger.begin`), made before its transaction."""
    return (
        thread_id,
        record.id,
        record.args_hash,
        record.name,
        json.dumps(record.args, sort_keys=True),
        record.model_dump_json(),
        record.retry_count,
        datetime.now(UTC).isoformat(),
        os.getpid(),
        socket.gethostname(),
        checkpoints_json(lineage),
    )


class Ledger(Table):
    """The ``handrail_ledger`` table at ``db``: a SQLite file, a PostgreSQL URL or a `Store`.

    On SQLite, commits are as durable as the checkpoints' (WAL, synchronous=NORMAL): they survive
    a killed process, not a power cut. FULL would fsync each intent: +0.6 ms per call, measured
    with benchmarks/gate_overhead.py, past the 1.15x budget. On PostgreSQL they are as durable as
    the server's settings make every commit.
    """

    def __init__(self, db: Target) -> None:
        super().__init__(db)

    def begin(
        self,
        thread_id: str,
        record: ToolCallRecord,
        *,
        retried: bool = False,
        lineage: Lineage = NO_LINEAGE,
        then: Callable[[Sql], object] | None = None,
    ) -> LedgerEntry | None:
        """Write the intent to run ``record``'s current attempt, unless that attempt is known.

        ``then`` runs inside the transaction that writes the intent, and only then (the audit's
        record that the attempt starts, committed with the intent).

        Returns None when the caller should run the tool (the intent is committed). Returns the
        entry when this attempt (or a later one, from a thread rewound to an older checkpoint)
        already started, or when the call already succeeded with these arguments (a record that
        claims a later attempt proves nothing), or when the last attempt's outcome is unknown
        and ``retried`` (a person's retry of this attempt, in Handrail's store) says no one
        decided to run it again: its outcome if recorded, else an outcome-unknown entry.

        With the run's ``lineage``, a call the ledger has never seen may be the replay of a call
        whose model step was lost (`handrail.storage._replays`): then the entry is that call's
        latest attempt, taken over by this call (``replay_of``).
        """
        intent = _intent(thread_id, record, lineage)  # made before the transaction
        checked: dict[str, bool] = {}  # a candidate's call id: whether its step was lost
        while True:
            # The lock makes the read and the write one step: of two processes beginning the
            # same attempt (or replaying the same lost call), one writes and the other finds it.
            with self.store.transaction(f"handrail_ledger {thread_id} {record.args_hash}") as sql:
                mine = sql.execute(
                    f"SELECT {COLUMNS} FROM handrail_ledger "
                    "WHERE thread_id = ? AND tool_call_id = ? AND args_hash = ?",
                    (thread_id, record.id, record.args_hash),
                ).fetchone()
                row = None if mine is None else Row(*mine)
                # else the latest rows a lost call may have left (a lost step is in the
                # thread's latest stretch): bounded, however often the thread made this call
                recent = (
                    []
                    if row is not None
                    else rows_of(
                        sql.execute(
                            f"SELECT {COLUMNS} FROM handrail_ledger WHERE thread_id = ? "
                            "AND args_hash = ? AND replayed_by IS NULL AND checkpoints IS NOT NULL "
                            "ORDER BY started_at DESC LIMIT ?",
                            (thread_id, record.args_hash, _RECENT),
                        ).fetchall()
                    )
                )
                found = candidates(recent[::-1], lineage)
                unchecked = [r for r in found if r.tool_call_id not in checked]
                if not unchecked:
                    taken = next((r for r in found if checked[r.tool_call_id]), None)
                    if taken is not None:
                        return _entry(take_over(sql, thread_id, record, taken))
                    known = self._begin(sql, record, row, retried, intent)
                    if known is None and then is not None:
                        then(sql)
                    return known
            # The checkpointer is asked outside the transaction: it may share its connection
            for candidate in unchecked:
                checked[candidate.tool_call_id] = lost(candidate, lineage)

    def _begin(
        self,
        sql: Sql,
        record: ToolCallRecord,
        row: Row | None,
        retried: bool,
        intent: tuple[Any, ...],
    ) -> LedgerEntry | None:
        """`begin` for a call that replays no lost one: ``row`` is its own, if any; ``intent``
        the values of the row to write (`_intent`)."""
        if row is not None and (
            row.attempt >= record.retry_count
            or row.outcome == "succeeded"  # never again, whatever attempt a record claims
            or (row.outcome is None and not retried)  # unknown: only a person's retry
        ):
            return _entry(row)
        sql.execute(
            """
            INSERT INTO handrail_ledger (thread_id, tool_call_id, args_hash, tool, args,
                record, attempt, started_at, pid, host, checkpoints)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (thread_id, tool_call_id, args_hash) DO UPDATE SET
                record = excluded.record, attempt = excluded.attempt,
                started_at = excluded.started_at, pid = excluded.pid, host = excluded.host,
                checkpoints = excluded.checkpoints, taken = 0,
                outcome = NULL, result = NULL, error = NULL, finished_at = NULL
            """,
            intent,
        )
        return None

    def origin(self, thread_id: str, record: ToolCallRecord) -> str:
        """The call whose idempotency key ``record``'s attempts get: the lost call it replays,
        as its ledger row says, else its own."""
        with self.store.read() as sql:
            found = sql.execute(
                "SELECT replay_of FROM handrail_ledger "
                "WHERE thread_id = ? AND tool_call_id = ? AND args_hash = ?",
                (thread_id, record.id, record.args_hash),
            ).fetchone()
        return str(found[0]) if found is not None and found[0] is not None else record.id

    def finish(
        self,
        thread_id: str,
        record: ToolCallRecord,
        *,
        result: str | None = None,
        error: CallError | None = None,
        then: Callable[[Sql], object] | None = None,
    ) -> None:
        """Record the outcome of the attempt `begin` started: a result, or the error. ``then``
        runs inside the same transaction (the audit's record of the outcome)."""
        outcome: Outcome = "failed" if error is not None else "succeeded"
        with self.store.transaction() as sql:
            sql.execute(
                "UPDATE handrail_ledger SET outcome = ?, result = ?, error = ?, finished_at = ? "
                "WHERE thread_id = ? AND tool_call_id = ? AND args_hash = ? AND attempt = ?",
                (
                    outcome,
                    result,
                    error.model_dump_json() if error is not None else None,
                    datetime.now(UTC).isoformat(),
                    thread_id,
                    record.id,
                    record.args_hash,
                    record.retry_count,
                ),
            )
            if then is not None:
                then(sql)

    def started(self, thread_id: str, call_ids: Sequence[str]) -> dict[str, Started]:
        """The calls among ``call_ids`` that began running (latest attempt first wins).

        A call that began ran with approved arguments, whatever a checkpoint lost since: the
        approval node uses this to never ask again for a call that may already have run.
        """
        if not call_ids:
            return {}
        marks = ", ".join("?" * len(call_ids))
        with self.store.read() as sql:
            rows = sql.execute(
                f"SELECT tool_call_id, args, args_hash, attempt, record FROM handrail_ledger "
                f"WHERE thread_id = ? AND tool_call_id IN ({marks}) ORDER BY started_at",
                (thread_id, *call_ids),
            ).fetchall()
        return {c: Started(json.loads(a), h, n, _record(r)) for c, a, h, n, r in rows}

    def forget(self, thread_id: str, record: ToolCallRecord) -> None:
        """Drop the intent of an attempt that paused (an interrupt inside the tool) instead of
        finishing: on resume the tool runs again from its start, as LangGraph runs nodes."""
        with self.store.transaction() as sql:
            sql.execute(
                "DELETE FROM handrail_ledger WHERE thread_id = ? AND tool_call_id = ? "
                "AND args_hash = ? AND attempt = ? AND outcome IS NULL",
                (thread_id, record.id, record.args_hash, record.retry_count),
            )

    def entries(self, thread_id: str) -> list[dict[str, Any]]:
        """Every row of a thread, oldest first, as plain dicts (for inspection and tests)."""
        with self.store.read() as sql:
            rows = sql.execute(
                "SELECT * FROM handrail_ledger WHERE thread_id = ? ORDER BY started_at",
                (thread_id,),
            )
            names = list(columns(rows))
            return [dict(zip(names, row, strict=True)) for row in rows.fetchall()]


def _record(text: str | None) -> ToolCallRecord | None:
    return None if text is None else ToolCallRecord.model_validate_json(text)


def _entry(row: Row) -> LedgerEntry:
    return LedgerEntry(
        attempt=row.attempt,
        started_at=datetime.fromisoformat(row.started_at),
        outcome=row.outcome,
        result=row.result,
        error=CallError.model_validate(json.loads(row.error)) if row.error else None,
        started_by=f"{row.pid}@{row.host}",
        record=_record(row.record),
        replay_of=row.replay_of if row.taken else None,
    )
