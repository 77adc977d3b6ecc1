"""Look-ups of the audit rows a run from a checkpoint (`AuditLog.verify`) or a stored rollup
(`AuditLog.stats`) does not read: one row by seq, or one call's rows by (thread, call), through
the primary key and the ``handrail_audit_call`` index."""

from __future__ import annotations

from handrail.storage import Store

__all__ = ["approved_before", "history", "row_hash"]


def _same_call(thread: str | None, call: str) -> tuple[str, tuple[str, ...]]:
    """The condition and parameters for one call's rows (a NULL thread is one thread)."""
    if thread is None:
        return "thread_id IS NULL AND tool_call_id = ?", (call,)
    return "thread_id = ? AND tool_call_id = ?", (thread, call)


def row_hash(store: Store, seq: int) -> str | None:
    """The hash of row ``seq`` (None when there is no such row)."""
    with store.read() as sql:
        found = sql.execute("SELECT hash FROM handrail_audit WHERE seq = ?", (seq,)).fetchone()
    return None if found is None else str(found[0])


def approved_before(store: Store, thread: str | None, call: str, args_hash: str, seq: int) -> bool:
    """Whether a row at or before ``seq`` is an ``approval_decided`` approve or edit of the
    call's ``args_hash``."""
    where, params = _same_call(thread, call)
    with store.read() as sql:
        found = sql.execute(
            f"SELECT 1 FROM handrail_audit WHERE {where} AND seq <= ? "
            "AND event = 'approval_decided' AND decision IN ('approve', 'edit') "
            "AND args_hash = ? LIMIT 1",
            (*params, seq, args_hash),
        ).fetchone()
    return found is not None


def history(store: Store, thread: str | None, call: str, seq: int) -> tuple[frozenset[str], bool]:
    """The tools of the call's rows at or before ``seq``, and whether one was ``decided``."""
    where, params = _same_call(thread, call)
    with store.read() as sql:
        found = sql.execute(
            f"SELECT DISTINCT tool, event FROM handrail_audit WHERE {where} AND seq <= ?",
            (*params, seq),
        ).fetchall()
    return frozenset(str(t) for t, _ in found), any(e == "decided" for _, e in found)
