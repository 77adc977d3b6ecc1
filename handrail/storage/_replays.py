"""How the execution ledger recognises a lost call asked for again under a new id.

A provider's model gives a call a fresh id on every generation. When a crash lost the model's
step as well (its checkpoint not saved: ``async`` durability saves it in the background while
the tool already runs, ``exit`` saves nothing of a killed run), LangGraph asks the model again,
and the same call comes back under a new id. A row of the same thread with the same tool and
arguments (args hash), whose call the run's state does not hold, made in a step whose checkpoint
the thread never saved (at a level of nested graphs this run shares: the root graph, or the
same subgraph task run again; not a sibling of a fan-out), is that call's lost run: the new call
takes it over (`take_over`), once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol

from handrail.state import ToolCallRecord
from handrail.storage._base import Sql

__all__ = [
    "COLUMNS",
    "NO_LINEAGE",
    "Lineage",
    "Outcome",
    "Row",
    "candidates",
    "checkpoints_json",
    "lost",
    "rows_of",
    "take_over",
]


class Lineage(Protocol):
    """What a run knows of its thread, to tell a replayed call from a new one."""

    @property
    def checkpoints(self) -> Mapping[str, str]:
        """The checkpoints the step running the call started from: one per graph level, by
        namespace (``""`` the root graph, then each subgraph's); empty when unknown."""
        ...

    def knows(self, call_id: str) -> bool:
        """Whether the run's state holds the call (its model turn or its record)."""
        ...

    def lost(self, checkpoints: Mapping[str, str]) -> bool:
        """Whether a step made under ``checkpoints`` is one the thread lost (never saved), at a
        graph level this run shares."""
        ...


class _Unknown:
    """No lineage: every call counts as one the run knows, so none is taken for a lost one."""

    checkpoints: Mapping[str, str] = {}

    def knows(self, call_id: str) -> bool:
        return True

    def lost(self, checkpoints: Mapping[str, str]) -> bool:
        return False


NO_LINEAGE: Lineage = _Unknown()
"""`handrail.storage.ledger.Ledger.begin` without a lineage: a call is only ever its own id's."""


Outcome = Literal["succeeded", "failed"]
"""How an attempt ended, as the ledger records it (no outcome: unknown)."""


class Row(NamedTuple):
    """The columns of a ledger row `handrail.storage.ledger.Ledger.begin` reads."""

    tool_call_id: str
    attempt: int
    started_at: str
    outcome: Outcome | None
    result: str | None
    error: str | None
    pid: int
    host: str
    record: str | None
    checkpoints: str | None
    """JSON: the checkpoints (by namespace) the attempt's step started from."""
    replayed_by: str | None
    """The call that took this row over (its own row holds the attempt from then on)."""
    replay_of: str | None
    """The lost call this row's call replays (kept across its later attempts)."""
    taken: int
    """1 while the row's attempt is the one taken over from ``replay_of``, not its own."""


COLUMNS = ", ".join(Row._fields)


def candidates(rows: Sequence[Row], lineage: Lineage) -> list[Row]:
    """The rows of ``rows`` (same thread and args hash, so the same tool; oldest first) a new
    call may be replaying: not taken over yet, their call unknown to the run's state. A row
    written before checkpoints were kept is never one."""
    return [
        r
        for r in rows
        if r.replayed_by is None and r.checkpoints is not None and not lineage.knows(r.tool_call_id)
    ]


def lost(row: Row, lineage: Lineage) -> bool:
    """Whether the step that made ``row``'s attempt was never saved."""
    checkpoints: dict[str, str] = json.loads(row.checkpoints or "{}")
    return lineage.lost(checkpoints)


def take_over(sql: Sql, thread_id: str, record: ToolCallRecord, row: Row) -> Row:
    """``record``'s call takes over the attempt of the lost call in ``row``: that row is marked
    replayed, and a row for ``record`` holds the same attempt, outcome and checkpoints (so a
    person's retry, or an automatic one after a recorded failure, goes on from there, and a
    second process sending the same request finds this row lost too). Returns the new row."""
    origin = row.replay_of or row.tool_call_id
    taken = record.update(retry_count=row.attempt, replay_of=origin).model_dump_json()
    key = (thread_id, row.tool_call_id, record.args_hash)
    sql.execute(
        "UPDATE handrail_ledger SET replayed_by = ? "
        "WHERE thread_id = ? AND tool_call_id = ? AND args_hash = ?",
        (record.id, *key),
    )
    sql.execute(
        """
        INSERT INTO handrail_ledger (thread_id, tool_call_id, args_hash, tool, args, record,
            attempt, started_at, pid, host, outcome, result, error, finished_at, checkpoints,
            replay_of, taken)
        SELECT thread_id, ?, args_hash, tool, args, ?, attempt, started_at, pid, host,
            outcome, result, error, finished_at, checkpoints, ?, 1
        FROM handrail_ledger WHERE thread_id = ? AND tool_call_id = ? AND args_hash = ?
        """,
        (record.id, taken, origin, *key),
    )
    return row._replace(
        tool_call_id=record.id, record=taken, replayed_by=None, replay_of=origin, taken=1
    )


def checkpoints_json(lineage: Lineage) -> str | None:
    """The lineage's checkpoints as the ledger keeps them (None when unknown)."""
    return json.dumps(dict(lineage.checkpoints), sort_keys=True) if lineage.checkpoints else None


def rows_of(fetched: Sequence[tuple[Any, ...]]) -> list[Row]:
    """Driver rows (selected as `COLUMNS`) as `Row` tuples."""
    return [Row(*r) for r in fetched]
