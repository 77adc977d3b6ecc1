"""PostgreSQL's audit appends: stored unlinked, without the chain's lock, then linked.

An append on PostgreSQL does not take the chain's lock: its rows go into
``handrail_audit_unlinked`` in the writer's own transaction, beside the write they record, so
writers on every process and host commit side by side instead of queueing on one lock until each
commit is flushed. Each row's step goes into ``handrail_audit_steps`` by the same statement, which
is how a replayed step is skipped, whether its first row is linked yet or not.

Once that transaction has committed, the writer links (`link`): it moves every unlinked row, in
the order they were appended (their identity ``id``), into ``handrail_audit``, each after the
chain's last row, if it gets the ``handrail_audit`` lock at once. If another linker holds the
lock, that one links them (a linker looks again once it has let go), so no writer waits for the
chain. Every reader of the chain links first, waiting for the lock. ``handrail_audit`` itself is
unchanged: rows are only ever inserted into it, in ``seq`` order, hashed as on SQLite, so
`AuditLog.verify` checks the same thing on both. A row appended is stored at once, so nothing
recorded is lost if its process dies before linking it: the next link takes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from handrail.audit._chain import COLUMNS, GENESIS, HASHED, SELECT, Sealable, chain
from handrail.events import ToolEvent
from handrail.storage import Sql, Store
from handrail.storage._schema_audit import STEPS, UNLINKED

__all__ = ["append_unlinked", "link", "unlinked_call_seq", "unlinked_steps"]

LOCK = "handrail_audit"
"""The store lock (an advisory lock on PostgreSQL) that one linker holds at a time."""

_BATCH = 500
"""Rows linked per round (a link goes on until none is left)."""

_STORED = [name for name in HASHED if name != "seq"]
"""The columns of an unlinked row (``id`` aside)."""
_VALUES = ", ".join(f":{name}" for name in _STORED)
_APPEND = f"INSERT INTO {UNLINKED} ({', '.join(_STORED)}) VALUES ({_VALUES})"
_REGISTER = (
    f"INSERT INTO {STEPS} (step) SELECT s FROM unnest(?::text[]) AS s ORDER BY s "
    f"ON CONFLICT DO NOTHING RETURNING step"
)
"""Register the steps of an append, in sorted order (two appends of the same steps in another
order would otherwise each wait for the other's uncommitted step: a deadlock); returns the new
ones."""
_IN_CHAIN = "SELECT step FROM handrail_audit WHERE step = ANY(?)"
"""Steps in the chain that the registry lacked (written there by a Handrail of the schema
before): recorded too."""
_LINK = f"INSERT INTO handrail_audit ({SELECT}) VALUES ({', '.join(':' + c for c in COLUMNS)})"
_OLDEST = (
    f"SELECT id, EXISTS (SELECT 1 FROM handrail_audit a WHERE a.step = u.step), "
    f"{', '.join('u.' + name for name in _STORED)} FROM {UNLINKED} u ORDER BY id LIMIT {_BATCH}"
)
"""The oldest unlinked rows, each saying whether its step reached the chain meanwhile (written
there by a process of the schema before, which takes the same lock): that one is dropped."""
_LAST = "SELECT seq, hash FROM handrail_audit ORDER BY seq DESC LIMIT 1"


def append_unlinked(sql: Sql, ready: Sequence[Sealable]) -> list[ToolEvent]:
    """Store the rows unlinked inside ``sql``; the events not recorded before (by step)."""
    steps = sorted({item.row["step"] for item in ready if item.row["step"] is not None})
    fresh: set[str] = set()
    if steps:
        fresh = {row[0] for row in sql.execute(_REGISTER, (steps,)).fetchall()}
        if fresh:
            fresh -= {row[0] for row in sql.execute(_IN_CHAIN, (sorted(fresh),)).fetchall()}
    recorded, rows = [], []
    for item in ready:
        step = item.row["step"]
        if step is not None:
            if step not in fresh:
                continue
            fresh.discard(step)  # a step twice in one append: the first
        rows.append({name: item.row[name] for name in _STORED})
        recorded.append(item.event)
    sql.executemany(_APPEND, rows)
    return recorded


def link(store: Store, *, wait: bool) -> int:
    """Link every unlinked row into the chain, oldest append first; returns how many rows it
    took from the unlinked table.

    ``wait=False`` (a writer, after its commit): if another linker holds the lock, return at
    once (that one links these rows too: every linker looks again once it has let go), and
    commit without waiting for the disk: a link lost in a crash is lost with every commit after
    it (the next durable commit flushes it), so the same rows are linked again the same way.
    ``wait=True`` (a reader, before it reads the chain): when rows wait, wait for the lock."""
    if wait and not _waiting(store):
        return 0
    linked = 0
    while True:
        with store.transaction() as sql:
            if wait:
                sql.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(?, 0)) "
                    "FROM set_config('handrail.linking', 'on', true)",
                    (LOCK,),
                )
            else:
                (held,) = sql.execute(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended(?, 0)) "
                    "FROM set_config('synchronous_commit', 'off', true) AS s, "
                    "set_config('handrail.linking', 'on', true) AS l",
                    (LOCK,),
                ).fetchone()
                if not held:
                    return linked
            batch = _link_oldest(sql)
        linked += batch
        if batch == _BATCH:
            continue
        # a writer whose try-lock failed while this held the lock left its rows to it: look
        # again (without queueing: if the lock is taken, its holder looks again in turn)
        if not _waiting(store):
            return linked
        wait = False


def unlinked_steps(sql: Sql, steps: Sequence[str]) -> int:
    """How many of ``steps`` are recorded, linked or not (in the registry or the chain)."""
    marks = ", ".join("?" * len(steps))
    query = (
        f"SELECT count(*) FROM (SELECT step FROM {STEPS} WHERE step IN ({marks}) "
        f"UNION SELECT step FROM handrail_audit WHERE step IN ({marks})) AS known"
    )
    (found,) = sql.execute(query, [*steps, *steps]).fetchone()
    return int(found)


def unlinked_call_seq(sql: Sql, thread_id: str, tool_call_id: str) -> int | None:
    """The last ``call_seq`` among the call's unlinked rows."""
    (last,) = sql.execute(
        f"SELECT max(call_seq) FROM {UNLINKED} WHERE thread_id = ? AND tool_call_id = ?",
        (thread_id, tool_call_id),
    ).fetchone()
    return None if last is None else int(last)


def _waiting(store: Store) -> bool:
    """Whether a committed row waits to be linked."""
    with store.read() as sql:
        return sql.execute(f"SELECT 1 FROM {UNLINKED} LIMIT 1").fetchone() is not None


def _link_oldest(sql: Sql) -> int:
    """Move the oldest unlinked rows into the chain after its last row, inside the lock."""
    last = sql.execute(_LAST).fetchone()
    seq, prev = (0, GENESIS) if last is None else (int(last[0]), str(last[1]))
    rows: list[dict[str, Any]] = []
    ids = []
    steps: set[str] = set()
    for row_id, recorded, *values in sql.execute(_OLDEST).fetchall():
        ids.append(row_id)
        row = dict(zip(_STORED, values, strict=True))
        if recorded or row["step"] in steps:  # in the chain already (see `_OLDEST`)
            continue
        if row["step"] is not None:
            steps.add(row["step"])
        seq += 1
        row["seq"] = seq
        digest = chain(prev, row)
        rows.append({**row, "prev_hash": prev, "hash": digest})
        prev = digest
    sql.executemany(_LINK, rows)
    if ids:
        sql.execute(f"DELETE FROM {UNLINKED} WHERE id = ANY(?)", (ids,))
    return len(ids)
