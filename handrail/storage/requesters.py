"""The requester of each thread, pinned at its first run (``handrail_threads``).

Every tool call of a thread is decided for one actor: the one its first run named. A later run,
a resume or an edit whose context names another actor (or other roles) is refused, so a more
privileged context cannot re-decide a paused call. Pins are read once per thread per process
(they never change) and kept in a bounded cache.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Protocol

from handrail.context import Actor
from handrail.storage import Table, Target

__all__ = ["MemoryRequesters", "RequesterTable", "Requesters"]

_CACHED = 100_000
"""Pins kept in memory per process; the oldest are read again from the store when needed."""


class Requesters(Protocol):
    """Where threads' requesters are pinned."""

    def pin(self, thread_id: str, actor: Actor, identified_by: str, graph: str) -> Actor:
        """The thread's requester: ``actor`` if the thread had none (now pinned), else the one
        pinned before."""
        ...

    def pinned(self, thread_id: str) -> Actor | None:
        """The thread's requester, if one is pinned (nothing is pinned by asking)."""
        ...

    def flush(self) -> None:
        """Make the pins taken so far durable."""
        ...


class _Cache:
    def __init__(self) -> None:
        self._pins: OrderedDict[str, Actor] = OrderedDict()
        self._absent: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, thread_id: str) -> Actor | None:
        with self._lock:
            return self._pins.get(thread_id)

    def absent(self, thread_id: str) -> None:
        """Remember that the store had no pin for the thread (a new thread's run asks before it
        is admitted, then pins it in its first node)."""
        with self._lock:
            self._absent[thread_id] = None
            if len(self._absent) > _CACHED:
                self._absent.popitem(last=False)

    def was_absent(self, thread_id: str) -> bool:
        """Whether `absent` was said of the thread (and forget it)."""
        with self._lock:
            return self._absent.pop(thread_id, False) is None

    def put(self, thread_id: str, actor: Actor) -> Actor:
        with self._lock:
            self._pins[thread_id] = actor
            if len(self._pins) > _CACHED:
                self._pins.popitem(last=False)
        return actor


class RequesterTable(Table):
    """The ``handrail_threads`` table at ``db`` (a SQLite file, a PostgreSQL URL or a `Store`)."""

    def __init__(self, db: Target) -> None:
        super().__init__(db)
        self._cache = _Cache()

    def pin(self, thread_id: str, actor: Actor, identified_by: str, graph: str) -> Actor:
        """The thread's requester, pinning ``actor`` if it has none (the first pin kept wins).

        A new thread's pin rides along with the run's first write to Handrail's tables (the
        execution ledger, the audit, the approvals table), or is committed when the run ends
        (`Store.flush`), instead of costing a commit of its own on the allowed path.
        """
        known = self._cache.get(thread_id)
        if known is None and not self._cache.was_absent(thread_id):
            known = self._read(thread_id)
        if known is not None:
            return self._cache.put(thread_id, known)
        self.store.defer(
            "INSERT INTO handrail_threads (thread_id, actor_id, actor, identified_by, graph, "
            "pinned_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                thread_id,
                actor.id,
                json.dumps(actor.as_dict()),
                identified_by,
                graph,
                datetime.now(UTC).isoformat(timespec="microseconds"),
            ),
        )
        return self._cache.put(thread_id, actor)

    def pinned(self, thread_id: str) -> Actor | None:
        """The thread's requester, if one is pinned; a thread found without one is remembered,
        so the pin its run then takes does not ask the store again."""
        known = self._cache.get(thread_id)
        if known is not None:
            return known
        found = self._read(thread_id)
        if found is None:
            self._cache.absent(thread_id)
            return None
        return self._cache.put(thread_id, found)

    def flush(self) -> None:
        """Commit the pins not written yet."""
        self.store.flush()

    def _read(self, thread_id: str) -> Actor | None:
        with self.store.read() as sql:
            row = sql.execute(
                "SELECT actor FROM handrail_threads WHERE thread_id = ?", (thread_id,)
            ).fetchone()
        return None if row is None else Actor.model_validate(json.loads(row[0]))


class MemoryRequesters:
    """Pins kept in this process only, for a graph without a database."""

    def __init__(self) -> None:
        self._cache = _Cache()
        self._lock = threading.Lock()

    def pin(self, thread_id: str, actor: Actor, identified_by: str, graph: str) -> Actor:
        """The thread's requester, pinning ``actor`` if it has none."""
        with self._lock:
            return self._cache.get(thread_id) or self._cache.put(thread_id, actor)

    def pinned(self, thread_id: str) -> Actor | None:
        """The thread's requester, if one is pinned."""
        return self._cache.get(thread_id)

    def flush(self) -> None:
        """Nothing to write: pins live in memory."""
