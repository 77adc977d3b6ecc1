"""Reading the audit chain in ``seq`` order, a page at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from handrail.storage import Store

__all__ = ["PAGE", "scan"]

PAGE = 512
"""Rows read per query by the streaming readers (the lock is released between pages)."""


def scan(
    store: Store, columns: str, where: str = "", params: Sequence[Any] = ()
) -> Iterator[tuple[Any, ...]]:
    """``SELECT columns FROM handrail_audit WHERE where`` in ``seq`` order, a page at a time (no
    lock held between pages, so a consumer may append meanwhile)."""
    select = f"SELECT {columns}, seq FROM handrail_audit WHERE {where or 'TRUE'}"
    first = f"{select} ORDER BY seq LIMIT {PAGE}"
    rest = f"{select} AND seq > ? ORDER BY seq LIMIT {PAGE}"
    last: int | None = None
    while True:
        with store.read() as sql:
            if last is None:
                page = sql.execute(first, params).fetchall()
            else:
                page = sql.execute(rest, (*params, last)).fetchall()
        for record in page:
            yield record[:-1]
        if len(page) < PAGE:
            return
        last = page[-1][-1]
