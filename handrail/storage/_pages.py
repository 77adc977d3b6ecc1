"""Reading the waiting rows of ``handrail_approvals``: the filters, the listing's order, and
keyset pages through it.

The listing is ordered by its *key*, ``(requested_at, thread_id, seq, tool_call_id)``: when a
call was asked, its thread, its place in its request, and (two requests of one thread asked in
the same microsecond) its id. The key is unique, since ``(thread_id, tool_call_id)`` is the
table's primary key, and the ``handrail_approvals_waiting`` index holds it in that order. A page
ends at a row; its *cursor* is that row's key, and the next page is the rows whose key sorts
after it (``(requested_at, …) > (?, …)``): a seek on the index, so a page costs the same at
any depth of the listing and at any size of the table, and a row decided between two pages moves
no other row from one page to the other (an offset would skip one).

A cursor is opaque to callers: the key as compact JSON in URL-safe base64, safe in a query
string and on a command line. It names a position, not a row, so it stays good when its row is
decided.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

from handrail.errors import PageError
from handrail.storage._approval_rows import WAITING, Listed, iso
from handrail.storage._base import Sql, Store
from handrail.storage._claims import alive

__all__ = ["KEY", "Filters", "PageError", "RowPage", "read_page", "read_waiting"]

KEY = ("requested_at", "thread_id", "seq", "tool_call_id")
"""The listing's order, a total one: the columns of the ``handrail_approvals_waiting`` index."""

_SELECTED = "item, requested_at, status, claim_pid, claim_host, claimed_at, " + ", ".join(KEY)


class Filters(TypedDict, total=False):
    """Which waiting rows a listing keeps (every filter given must hold; None: no filter)."""

    thread_id: str | None
    """The calls of one thread (listed in their request's order: see `read_waiting`)."""
    thread_ids: Collection[str] | None
    """The calls of those threads."""
    kind: str | None
    """``approval`` or ``escalation``."""
    tool: str | None
    """The calls of one tool."""
    approver_role: str | Collection[str] | None
    """The calls that role (or any of those roles) may decide."""
    not_approved_by: str | None
    """The calls that person (a canonical id) has not approved yet."""
    requested_before: datetime | None
    """Requests asked before that moment."""
    expired_at: datetime | None
    """Requests whose deadline is at or before that moment."""


@dataclass(frozen=True, slots=True)
class RowPage:
    """One page of waiting rows, and where the pages beside it start."""

    rows: list[Listed]
    next_cursor: str | None
    """The cursor to pass as ``after`` for the next page; None when no row follows."""
    prev_cursor: str | None = None
    """The cursor to pass as ``before`` for the previous page; None on the first page."""


def read_waiting(
    store: Store, filters: Filters, *, newest_first: bool = False, limit: int | None = None
) -> list[Listed]:
    """The first ``limit`` (None: every) waiting rows that ``filters`` keep, in the listing's
    order (``newest_first``: reversed); one thread's rows (``thread_id``) in their request's
    order."""
    order = ("seq", "tool_call_id") if filters.get("thread_id") is not None else KEY
    return _listed(_select(store, filters, order, newest_first, None, limit, 0))


def read_page(
    store: Store,
    filters: Filters,
    *,
    limit: int | None,
    after: str | None = None,
    before: str | None = None,
    offset: int = 0,
    newest_first: bool = False,
) -> RowPage:
    """Up to ``limit`` waiting rows (None: every one) that ``filters`` keep, in the listing's
    order or, ``newest_first``, in reverse: the first ones, those after the cursor ``after``,
    or those just before the cursor ``before`` (when fewer than ``limit`` rows come before
    it, the first page). ``offset`` skips rows first (a page number's way: it walks the rows
    it skips, where a cursor seeks). Raises `PageError` for a cursor that is not one, both
    cursors, ``before`` without a limit, or a limit below 1."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PageError("limit", limit, "a page holds at least one row: give a whole number >= 1")
    fetch = None if limit is None else limit + 1
    if before is not None:
        if after is not None or limit is None:
            raise PageError("before", before, "give it alone (not with after), with a limit")
        back = _select(store, filters, KEY, not newest_first, _decode(before), fetch, offset)
        if len(back) <= limit:  # nothing before these: the first page, full
            return read_page(store, filters, limit=limit, newest_first=newest_first)
        shown = back[:limit][::-1]
        return RowPage(_listed(shown), _cursor(shown[-1]), _cursor(shown[0]))
    start = _decode(after) if after is not None else None
    rows = _select(store, filters, KEY, newest_first, start, fetch, offset)
    shown = rows[:limit]
    following = _cursor(shown[-1]) if len(rows) > len(shown) else None
    if after is None and offset == 0:
        return RowPage(_listed(shown), following)
    return RowPage(_listed(shown), following, _cursor(shown[0]) if shown else after)


def _select(
    store: Store,
    filters: Filters,
    order: Sequence[str],
    newest_first: bool,
    after: tuple[Any, ...] | None,
    limit: int | None,
    offset: int,
) -> list[Any]:
    where, params = _where(store, filters)
    if after is not None:
        where.append(f"({', '.join(KEY)}) {'<' if newest_first else '>'} (?, ?, ?, ?)")
        params.extend(after)
    direction = " DESC" if newest_first else ""
    sql = (
        f"SELECT {_SELECTED} FROM handrail_approvals WHERE {' AND '.join(where)} "
        f"ORDER BY {', '.join(c + direction for c in order)}"
    )
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params.extend((limit, offset))
    db: Sql
    with store.read() as db:
        return db.execute(sql, params).fetchall()


def _where(store: Store, filters: Filters) -> tuple[list[str], list[Any]]:
    where = [WAITING]
    params: list[Any] = []

    def keep(condition: str, *values: Any) -> None:
        where.append(condition)
        params.extend(values)

    equal = {c: filters.get(c) for c in ("thread_id", "kind", "tool")}
    for column, value in equal.items():
        if value is not None:
            keep(f"{column} = ?", value)
    thread_ids = filters.get("thread_ids")
    if thread_ids is not None:
        wanted = list(thread_ids)
        keep(f"thread_id IN ({', '.join('?' * len(wanted))})" if wanted else "FALSE", *wanted)
    role = filters.get("approver_role")
    if role is not None:
        roles = [role] if isinstance(role, str) else list(role)
        has = [store.json_has("approvers") for _ in roles]
        keep(f"({' OR '.join(has)})" if has else "FALSE", *roles)
    person = filters.get("not_approved_by")
    if person is not None:
        keep(f"NOT {store.json_has('approvals')}", person)
    before = filters.get("requested_before")
    if before is not None:
        keep("requested_at < ?", iso(before))
    lapsed = filters.get("expired_at")
    if lapsed is not None:
        keep("expires_at <= ?", iso(lapsed))
    return where, params


def _listed(rows: list[Any]) -> list[Listed]:
    now = datetime.now(UTC)
    return [
        Listed(item, at, status == "deciding" and alive(pid, host, claimed, now))
        for item, at, status, pid, host, claimed, *_ in rows
    ]


def _cursor(row: Sequence[Any]) -> str:
    """The cursor of a row as `_select` reads it (its key last)."""
    text = json.dumps(list(row[-len(KEY) :]), separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[str, str, int, str]:
    """The key a cursor names; `PageError` when it is not one `read_page` gave out."""
    problem = "not a cursor that a page of this listing gave out (pass next_cursor as it is)"
    if not isinstance(cursor, str) or not cursor:
        raise PageError("after", cursor, problem)
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise PageError("after", cursor, problem) from None
    if not (
        isinstance(key, list)
        and len(key) == len(KEY)
        and all(isinstance(v, str) for v in (key[0], key[1], key[3]))
        and type(key[2]) is int
    ):
        raise PageError("after", cursor, problem)
    try:
        datetime.fromisoformat(key[0])
    except ValueError:
        raise PageError("after", cursor, problem) from None
    return key[0], key[1], key[2], key[3]
