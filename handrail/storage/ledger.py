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

**A replay under a new call id.** A provider's model gives a call a fresh id on every
generation. When the model's step was lost too (its checkpoint not saved before the crash: the
default ``async`` durability saves it in the background while the tool runs), LangGraph asks the
model again, and the same call comes back under a new id. The ledger recognises it (`Lineage`):
a row of the same thread with the same tool and arguments (args hash), whose call the run's
state does not know of, made under a checkpoint that is not in the thread's saved history, is
that call's lost first run. The new call *replays* it (each row is replayed at most once): its
recorded outcome is used, or it is an outcome-unknown escalation, never a second run.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from handrail.state import CallError, ToolCallRecord
from handrail.storage import Table, Target
from handrail.storage._base import columns

__all__ = ["Ledger", "LedgerEntry", "Lineage", "Started", "idempotency_key"]

Outcome = Literal["succeeded", "failed"]


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


class Lineage(Protocol):
    """What a run knows of its thread, to tell a replayed call from a new one."""

    @property
    def checkpoint_id(self) -> str | None:
        """The thread's checkpoint the step running the call started from (None: unknown)."""
        ...

    def knows(self, call_id: str) -> bool:
        """Whether the run's state holds the call (its model turn or its record)."""
        ...

    def saved(self, checkpoint_id: str) -> bool:
        """Whether the checkpoint is in the thread's saved history."""
        ...


class _Unknown:
    """No lineage: every call counts as one the run knows, so none is taken for a lost one."""

    checkpoint_id: str | None = None

    def knows(self, call_id: str) -> bool:
        return True

    def saved(self, checkpoint_id: str) -> bool:
        return True


NO_LINEAGE: Lineage = _Unknown()
"""`Ledger.begin` without a lineage: a call is only ever its own id's."""

_COLUMNS = (
    "tool_call_id, attempt, started_at, outcome, result, error, pid, host, record, "
    "checkpoint_id, replayed_by, replay_of"
)


@dataclass(frozen=True, slots=True)
class Started:
    """A call the ledger saw begin: the arguments it ran with, and its latest attempt."""

    args: dict[str, Any]
    args_hash: str
    attempt: int
    record: ToolCallRecord | None = None
    """The call's record as it began (see `LedgerEntry.record`)."""


def idempotency_key(thread_id: str, record: ToolCallRecord) -> str:
    """The key a tool passes on to its API: the same for every attempt of one decided call.

    An API that deduplicates by it (as payment APIs do) turns a human's ``retry`` of an
    outcome-unknown call into a safe no-op when the first attempt did go through. A call that
    replays a lost one (``replay_of``) has the lost call's key.
    """
    seed = "\x1f".join((thread_id, record.replay_of or record.id, record.args_hash))
    return "hr-" + hashlib.sha256(seed.encode()).hexdigest()[:32]


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
    ) -> LedgerEntry | None:
        """Write the intent to run ``record``'s current attempt, unless that attempt is known.

        Returns None when the caller should run the tool (the intent is committed). Returns the
        entry when this attempt (or a later one, from a thread rewound to an older checkpoint)
        already started, or when the call already succeeded with these arguments (a record that
        claims a later attempt proves nothing), or when the last attempt's outcome is unknown
        and ``retried`` (a person's retry of this attempt, in Handrail's store) says no one
        decided to run it again: its outcome if recorded, else an outcome-unknown entry.

        With the run's ``lineage``, a call the ledger has never seen may be the replay of a call
        whose model step was lost (see the module's docstring): then the entry is that call's latest
        attempt, taken over by this call, and its record says ``replay_of``.
        """
        now = datetime.now(UTC).isoformat()
        lost: dict[str, bool] = {}  # a candidate's call id: its checkpoint was never saved
        while True:
            # The lock makes the read and the write one step: of two processes beginning the
            # same attempt (or replaying the same lost call), one writes and the other finds it.
            with self.store.transaction(f"handrail_ledger {thread_id} {record.args_hash}") as sql:
                rows = sql.execute(
                    f"SELECT {_COLUMNS} FROM handrail_ledger "
                    "WHERE thread_id = ? AND args_hash = ? ORDER BY started_at",
                    (thread_id, record.args_hash),
                ).fetchall()
                row = next((r for r in rows if r[0] == record.id), None)
                candidates = _candidates(rows, lineage) if row is None else []
                unchecked = [r for r in candidates if r[0] not in lost]
                if not unchecked:
                    taken = next((r for r in candidates if lost[r[0]]), None)
                    if taken is not None:
                        return _replay(sql, thread_id, record, taken)
                    return self._begin(sql, thread_id, record, row, retried, lineage, now)
            # The checkpointer is asked outside the transaction: it may share its connection
            for candidate in unchecked:
                lost[candidate[0]] = not lineage.saved(candidate[9])

    def _begin(
        self,
        sql: Any,
        thread_id: str,
        record: ToolCallRecord,
        row: tuple[Any, ...] | None,
        retried: bool,
        lineage: Lineage,
        now: str,
    ) -> LedgerEntry | None:
        """`begin` for a call that replays no lost one: ``row`` is its own, if any."""
        if row is not None and (
            row[1] >= record.retry_count
            or row[3] == "succeeded"  # never again, whatever attempt a record claims
            or (row[3] is None and not retried)  # unknown: only a person's retry
        ):
            return _entry(row)
        sql.execute(
            """
            INSERT INTO handrail_ledger (thread_id, tool_call_id, args_hash, tool, args,
                record, attempt, started_at, pid, host, checkpoint_id)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (thread_id, tool_call_id, args_hash) DO UPDATE SET
                record = excluded.record, attempt = excluded.attempt,
                started_at = excluded.started_at, pid = excluded.pid, host = excluded.host,
                checkpoint_id = excluded.checkpoint_id, replay_of = NULL,
                outcome = NULL, result = NULL, error = NULL, finished_at = NULL
            """,
            (
                thread_id,
                record.id,
                record.args_hash,
                record.name,
                json.dumps(record.args, sort_keys=True),
                record.model_dump_json(),
                record.retry_count,
                now,
                os.getpid(),
                socket.gethostname(),
                lineage.checkpoint_id,
            ),
        )
        return None

    def finish(
        self,
        thread_id: str,
        record: ToolCallRecord,
        *,
        result: str | None = None,
        error: CallError | None = None,
    ) -> None:
        """Record the outcome of the attempt `begin` started: a result, or the error."""
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


def _candidates(rows: Sequence[tuple[Any, ...]], lineage: Lineage) -> list[tuple[Any, ...]]:
    """The rows of ``rows`` (same thread and args hash, so the same tool; oldest first) a new
    call may be replaying: not replayed yet, their call unknown to the run's state. A row
    written before checkpoints were kept is never one."""
    return [r for r in rows if r[10] is None and r[9] is not None and not lineage.knows(r[0])]


def _replay(sql: Any, thread_id: str, record: ToolCallRecord, lost: tuple[Any, ...]) -> LedgerEntry:
    """``record`` takes over the attempt of the lost call in row ``lost``: the row is marked
    replayed, and a row for ``record`` holds the same attempt and outcome (so a person's retry,
    or an automatic one after a recorded failure, goes on from there)."""
    first = _record(lost[8])
    origin = (first.replay_of if first is not None else None) or lost[0]
    taken = record.update(retry_count=lost[1], replay_of=origin)
    sql.execute(
        "UPDATE handrail_ledger SET replayed_by = ? "
        "WHERE thread_id = ? AND tool_call_id = ? AND args_hash = ?",
        (record.id, thread_id, lost[0], record.args_hash),
    )
    sql.execute(
        """
        INSERT INTO handrail_ledger (thread_id, tool_call_id, args_hash, tool, args, record,
            attempt, started_at, pid, host, outcome, result, error, finished_at, checkpoint_id,
            replay_of)
        SELECT thread_id, ?, args_hash, tool, args, ?, attempt, started_at, pid, host,
            outcome, result, error, finished_at, checkpoint_id, ?
        FROM handrail_ledger WHERE thread_id = ? AND tool_call_id = ? AND args_hash = ?
        """,
        (record.id, taken.model_dump_json(), origin, thread_id, lost[0], record.args_hash),
    )
    return _entry((record.id, *lost[1:8], taken.model_dump_json(), lost[9], None, origin))


def _entry(row: tuple[Any, ...]) -> LedgerEntry:
    _, attempt, started_at, outcome, result, error, pid, host, record = row[:9]
    return LedgerEntry(
        replay_of=row[11],
        attempt=attempt,
        started_at=datetime.fromisoformat(started_at),
        outcome=outcome,
        result=result,
        error=CallError.model_validate(json.loads(error)) if error else None,
        started_by=f"{pid}@{host}",
        record=_record(record),
    )
