"""Running totals of limits' windows, so a reservation costs the same with ten uses in the window
as with a million.

``handrail_limit_totals`` keeps, per limit and scope, the sum of the uses reserved after
``counted_from``. Deciding a call moves ``counted_from`` up to the window's start, subtracting the
uses it passes (each use is passed once: the cost is spread over the calls), then reads the
total; the total counts exactly the uses reserved after ``counted_from``, so a use is added, and
taken off when released, only if it is after it. A window whose length changed (a new policy) is
summed afresh from the uses, and so is a window a clock behind the others asks about (read only:
``counted_from`` never moves back). Every write happens under the limit's lock
(`handrail.storage.limits`), so the running total is the sum of the uses it counts.
"""

from __future__ import annotations

from datetime import datetime

from handrail.policies.limits import Limit
from handrail.storage._base import Sql

__all__ = ["add", "at_text", "forget", "running"]

_DIGITS = 9
"""Totals are rounded to this many decimals after each change: sums of decimal amounts stay
what they are (no drift of 1e-13 across a boundary)."""


def at_text(moment: datetime) -> str:
    """A moment as the tables keep it (ISO-8601, UTC, microseconds: ordered as text)."""
    return moment.isoformat(timespec="microseconds")


def running(sql: Sql, limit: Limit, scope: str, now: datetime, *, keep: bool = True) -> float:
    """The window's total for ``scope`` at ``now``, the running total brought up to date;
    ``keep=False`` (what ``usage`` shows) reads it and writes nothing."""
    since = at_text(now - limit.window)
    seconds = limit.window.total_seconds()
    row = sql.execute(
        "SELECT total, counted_from, window_s FROM handrail_limit_totals "
        "WHERE limit_id = ? AND scope = ?",
        (limit.id, scope),
    ).fetchone()
    if row is None or row[2] != seconds:
        total = _sum(sql, limit.id, scope, since, None)
        if keep and row is None:
            sql.execute(
                "INSERT INTO handrail_limit_totals (limit_id, scope, total, counted_from, "
                "window_s) VALUES (?, ?, ?, ?, ?)",
                (limit.id, scope, total, since, seconds),
            )
        elif keep:
            _write(sql, limit.id, scope, total, since, seconds)
        return total
    total, counted_from = float(row[0]), str(row[1])
    if since < counted_from:  # a clock behind the one that moved it: counted here, read only
        return _sum(sql, limit.id, scope, since, None)
    if since > counted_from:
        total = round(total - _sum(sql, limit.id, scope, counted_from, since), _DIGITS)
        if keep:
            _write(sql, limit.id, scope, total, since, seconds)
    return total


def add(sql: Sql, limit_id: str, scope: str, amount: float, at: str) -> None:
    """Count a use just reserved at ``at`` (`running` made the row), if the running total counts
    uses from then (a clock behind may reserve one it has already passed)."""
    sql.execute(
        f"UPDATE handrail_limit_totals SET total = ROUND(CAST(total + ? AS NUMERIC), {_DIGITS}) "
        "WHERE limit_id = ? AND scope = ? AND counted_from < ?",
        (amount, limit_id, scope, at),
    )


def forget(sql: Sql, limit_id: str, scope: str, amount: float, at: str) -> None:
    """Stop counting a use being deleted, if the running total still counts it."""
    sql.execute(
        f"UPDATE handrail_limit_totals SET total = ROUND(CAST(total - ? AS NUMERIC), {_DIGITS}) "
        "WHERE limit_id = ? AND scope = ? AND counted_from < ?",
        (amount, limit_id, scope, at),
    )


def _write(sql: Sql, limit_id: str, scope: str, total: float, since: str, seconds: float) -> None:
    sql.execute(
        "UPDATE handrail_limit_totals SET total = ?, counted_from = ?, window_s = ? "
        "WHERE limit_id = ? AND scope = ?",
        (total, since, seconds, limit_id, scope),
    )


def _sum(sql: Sql, limit_id: str, scope: str, after: str, upto: str | None) -> float:
    """The uses reserved after ``after`` (and up to ``upto``, if given)."""
    query = (
        "SELECT COALESCE(SUM(amount), 0) FROM handrail_limit_uses "
        "WHERE limit_id = ? AND scope = ? AND at > ?"
    )
    params: tuple[str, ...] = (limit_id, scope, after)
    if upto is not None:
        query += " AND at <= ?"
        params += (upto,)
    return round(float(sql.execute(query, params).fetchone()[0]), _DIGITS)
