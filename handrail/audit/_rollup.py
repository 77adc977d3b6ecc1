"""`AuditLog.stats` from a stored rollup: the figures over the rows up to a seq, kept in
``handrail_audit_rollups``, and the rows after it folded in on each call.

Folding a row needs to know two things about its call that the rows before it hold: whether
the call already had a row of this tool (it is then not a new call), and whether it was already
decided (a ``decided`` row after an edit is not a new decision). The rows folded in one pass
answer for themselves; for those under the rollup, `handrail.audit._calls.history` asks the
index on (thread, call), once per call. So a call costs what the rows after the rollup cost,
not what the log holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from handrail.audit._chain import within
from handrail.audit._stats import APPROVAL_WAITS, Tally, ToolStats
from handrail.storage import Store
from handrail.storage._schema_audit import ROLLUPS

__all__ = ["COLUMNS", "Rollup", "StatsFold", "load_rollup", "store_rollup"]

NAME = "stats"
"""The rollup's row in ``handrail_audit_rollups``."""

COLUMNS = "at, event, tool, thread_id, tool_call_id, decision, duration_ms, response, hash"
"""What a fold reads of each row (then ``seq``, added by the scan)."""

Call = tuple[str | None, str]
History = Callable[[str | None, str, int], tuple[frozenset[str], bool]]
"""For a call (thread, call) and a seq: the tools of its rows at or before the seq, and
whether one of them was a ``decided``."""


@dataclass(frozen=True, slots=True)
class Rollup:
    """A stored rollup: the figures over the rows up to ``seq`` (whose hash was ``hash``)."""

    seq: int
    hash: str
    tallies: dict[str, Tally]


class StatsFold:
    """The rows after ``after`` (in seq order, `COLUMNS` then seq), folded into ``tallies``.

    ``since`` counts only the events at or after it (calls are still decided by their first
    ``decided`` event, wherever it is); a fold with ``since`` starts from the first row.
    """

    def __init__(
        self,
        tallies: dict[str, Tally],
        *,
        after: int,
        history: History,
        since: datetime | None = None,
    ) -> None:
        self.tallies = tallies
        """The figures so far, by tool."""
        self.last: tuple[int, str] | None = None
        """The seq and hash of the last row folded (None: none were)."""
        self._after, self._history, self._since = after, history, since
        self._known: dict[Call, tuple[set[str], bool]] = {}
        """Per call met in this fold: the tools it has rows of (counted), and whether it was
        decided."""

    def add(self, record: Sequence[Any]) -> None:
        """Fold in the next row."""
        at, event, tool, thread, call, decision, duration, response, digest, seq = record
        self.last = (seq, digest)
        tools, decided = self._call((thread, call))
        first = event == "decided" and not decided
        if first:
            self._known[(thread, call)] = (tools, True)
        if not within(at, self._since, None):
            return
        tally = self.tallies.setdefault(tool, Tally())
        if tool not in tools:  # the call's first row of this tool in the window
            tools.add(tool)
            tally.calls += 1
        if first:
            tally.decisions[decision] += 1
        elif (event == "approval_decided" and decision in APPROVAL_WAITS) or event == "expired":
            if duration is not None:
                tally.waits.add(duration)
        elif event == "retried":
            tally.retries += 1
        elif event == "failed":
            status = json.loads(response).get("status") if response else None
            tally.failures[status or "unknown"] += 1
        elif event == "escalated":
            tally.escalations += 1

    def results(self) -> list[ToolStats]:
        """The figures per tool, sorted by name."""
        return [self.tallies[tool].result(tool) for tool in sorted(self.tallies)]

    def _call(self, call: Call) -> tuple[set[str], bool]:
        known = self._known.get(call)
        if known is None:
            tools, decided = (
                (frozenset(), False) if not self._after else self._history(*call, self._after)
            )
            known = self._known[call] = (set(tools), decided)
        return known


def load_rollup(store: Store) -> Rollup | None:
    """The stored rollup, if its row is still in the log with the hash it had (else None: the
    log was cut or rewritten under it, and the figures are counted again from the start)."""
    with store.read() as sql:
        row = sql.execute(f"SELECT seq, hash, state FROM {ROLLUPS} WHERE name = ?", (NAME,))
        kept = row.fetchone()
        if kept is None:
            return None
        seq, digest, state = int(kept[0]), str(kept[1]), str(kept[2])
        found = sql.execute("SELECT hash FROM handrail_audit WHERE seq = ?", (seq,)).fetchone()
    if found is None or found[0] != digest:
        return None
    tallies = {tool: Tally.load(data) for tool, data in json.loads(state).items()}
    return Rollup(seq=seq, hash=digest, tallies=tallies)


def store_rollup(store: Store, rollup: Rollup) -> None:
    """Keep ``rollup`` unless a later one that still holds is kept already (two processes may
    fold at once)."""
    state = json.dumps({tool: tally.dump() for tool, tally in rollup.tallies.items()})
    with store.transaction() as sql:
        sql.execute(
            f"INSERT INTO {ROLLUPS} (name, seq, hash, state) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
            f"state = excluded.state WHERE {ROLLUPS}.seq < excluded.seq OR NOT EXISTS ("
            f"SELECT 1 FROM handrail_audit WHERE seq = {ROLLUPS}.seq AND hash = {ROLLUPS}.hash)",
            (NAME, rollup.seq, rollup.hash, state),
        )
