"""The uses of cumulative limits (`handrail.policies.limits.Limit`), reserved in Handrail's store.

A call's use of each limit that covers it is reserved when the call is decided, in one
transaction that reads the window's total and writes the use: on SQLite the transaction holds the
file's write lock, on PostgreSQL an advisory lock per limit and scope, so processes racing on one
limit see each other's uses and can never together pass its maximum. A use is keyed by the limit
and the call (thread and tool-call id): deciding the same call again (the router, the policy node
and ``execute`` each decide it, a resume decides it again) finds its use and adds nothing; its
verdict is the window's total before it (kept with it) plus its amount against the limit's
maximum now (a policy may have changed while the call waited). A call past a ``then: ask`` limit
keeps its use while it waits (it may run); a call past a ``then: deny`` limit holds none.

`start` marks a call's uses as started (the call began to run): `release`, called when a call
ends without running, never drops a started use, and a started use is never replaced by other
arguments under the same call id (`UseTaken`), whatever state or a reused id claims.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from handrail.errors import HandrailError
from handrail.policies.limits import Limit, LimitUse
from handrail.storage import Table, Target
from handrail.storage import _limit_totals as totals
from handrail.storage._base import Sql

__all__ = ["Claim", "LimitTable", "MemoryUses", "UseTaken", "Uses"]


@dataclass(frozen=True, slots=True)
class Claim:
    """One call's use of one limit, to reserve: the limit, the total it adds to, the amount."""

    limit: Limit
    scope: str
    """`Limit.scope`: ``actor:ID``, ``thread:ID`` or ``*``."""
    amount: int | float
    """What the call adds: a finite number, 0 or more (`Limit.measure` gives one)."""

    def __post_init__(self) -> None:
        try:
            finite = not isinstance(self.amount, bool) and math.isfinite(self.amount)
        except (TypeError, OverflowError):
            finite = False
        if not finite or self.amount < 0:
            raise ValueError(f"a use's amount must be a finite number >= 0, not {self.amount!r}")


class UseTaken(HandrailError):
    """The call id holds a started use of ``limit_id`` with another amount: the call ran with
    other arguments, and a call under its id cannot take its place."""

    def __init__(self, limit_id: str) -> None:
        super().__init__(f"the call already ran with other arguments under limit {limit_id!r}")
        self.limit_id = limit_id


class Uses(Protocol):
    """Where the uses of limits are kept."""

    def reserve(
        self, thread_id: str, tool_call_id: str, claims: Sequence[Claim], now: datetime
    ) -> list[LimitUse]:
        """Reserve one call's ``claims`` at once; a use the call already holds with the same
        amount stands. Raises `UseTaken` for a started use with another amount."""
        ...

    def totals(self, scopes: Sequence[tuple[Limit, str]], now: datetime) -> dict[str, int | float]:
        """Each limit's total in its window, for the scope given, by limit id."""
        ...

    def start(self, thread_id: str, tool_call_id: str) -> None:
        """Mark the call's uses as started: it began to run, they are never given back."""
        ...

    def release(self, thread_id: str, tool_call_id: str) -> None:
        """Drop every use the call holds that has not started."""
        ...


def past(limit: Limit, total: float, amount: float) -> bool:
    """Whether ``amount`` on top of ``total`` passes the limit's maximum (to 9 decimals, so that
    0.1 + 0.1 + 0.1 reaches 0.3 and does not pass it)."""
    return round(total + amount, 9) > limit.max


def as_total(value: float, limit: Limit) -> int | float:
    """A total as CEL reads it: an int for a count, a double for a sum (CEL adds no int to a
    double: ``usage["spend"] + args.amount`` needs ``amount`` a double, as a ``float`` is)."""
    return int(value) if limit.sum is None else float(value)


def _use(limit: Limit, total: float, amount: float) -> LimitUse:
    return LimitUse(
        limit=limit,
        total=as_total(total, limit),
        amount=as_total(amount, limit),
        over=past(limit, total, amount),
    )


class LimitTable(Table):
    """The ``handrail_limit_uses`` table at ``db`` (a SQLite file, a PostgreSQL URL, a `Store`)."""

    def __init__(self, db: Target) -> None:
        super().__init__(db)

    def reserve(
        self, thread_id: str, tool_call_id: str, claims: Sequence[Claim], now: datetime
    ) -> list[LimitUse]:
        """`Uses.reserve`, atomic across processes (see the module's docstring)."""
        if not claims:
            return []
        key = (thread_id, tool_call_id)
        with self.store.read() as sql:
            held = _settled(claims, self._held(sql, key))
        if held is not None:
            return held
        at = totals.at_text(now)
        uses: list[LimitUse] = []
        with self.store.transaction(*(_lock(c.limit.id, c.scope) for c in claims)) as sql:
            rows = self._held(sql, key)
            for claim in claims:
                limit, row = claim.limit, rows.get(claim.limit.id)
                if row is not None:
                    if _stands(claim, row[:3]):
                        uses.append(_use(limit, row[1], row[0]))
                        continue
                    self._drop(sql, limit.id, key, row[3:])  # reserved afresh
                total = totals.running(sql, limit, claim.scope, now)
                use = _use(limit, total, claim.amount)
                if not use.over or limit.effect == "ask":
                    totals.add(sql, limit.id, claim.scope, claim.amount, at)
                    sql.execute(
                        "INSERT INTO handrail_limit_uses (limit_id, scope, thread_id, "
                        "tool_call_id, amount, total, over_max, at, started) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                        (limit.id, claim.scope, *key, claim.amount, total, int(use.over), at),
                    )
                uses.append(use)
        return uses

    @staticmethod
    def _held(sql: Sql, key: tuple[str, str]) -> dict[str, tuple[float, float, bool, str, str]]:
        """The call's uses by limit: amount, total before it, started, scope, when reserved."""
        return {
            limit_id: (float(amount), float(total), bool(started), scope, at)
            for limit_id, amount, total, started, scope, at in sql.execute(
                "SELECT limit_id, amount, total, started, scope, at FROM handrail_limit_uses "
                "WHERE thread_id = ? AND tool_call_id = ?",
                key,
            ).fetchall()
        }

    def totals(self, scopes: Sequence[tuple[Limit, str]], now: datetime) -> dict[str, int | float]:
        """`Uses.totals`."""
        with self.store.read() as sql:
            return {
                limit.id: as_total(totals.running(sql, limit, scope, now, keep=False), limit)
                for limit, scope in scopes
            }

    def start(self, thread_id: str, tool_call_id: str) -> None:
        """`Uses.start`, riding along with the store's next commit (the ledger's outcome, the
        step's audit rows): a write of its own per call would double the limit's cost."""
        self.store.defer(
            "UPDATE handrail_limit_uses SET started = 1 "
            "WHERE thread_id = ? AND tool_call_id = ? AND started = 0",
            (thread_id, tool_call_id),
        )

    def release(self, thread_id: str, tool_call_id: str) -> None:
        """`Uses.release`."""
        key = (thread_id, tool_call_id)
        with self.store.read() as sql:
            held = [(limit_id, row[3]) for limit_id, row in self._held(sql, key).items()]
        if not held:
            return
        with self.store.transaction(*(_lock(*h) for h in held)) as sql:
            for limit_id, (_, _, started, scope, at) in self._held(sql, key).items():
                if not started:
                    self._drop(sql, limit_id, key, (scope, at))

    @staticmethod
    def _drop(sql: Sql, limit_id: str, key: tuple[str, str], where: tuple[str, str]) -> None:
        """Delete one use, and stop counting it."""
        scope, at = where
        row = sql.execute(
            "DELETE FROM handrail_limit_uses "
            "WHERE limit_id = ? AND thread_id = ? AND tool_call_id = ? RETURNING amount",
            (limit_id, *key),
        ).fetchone()
        if row is not None:
            totals.forget(sql, limit_id, scope, float(row[0]), at)


def _stands(claim: Claim, held: tuple[float, float, bool]) -> bool:
    """Whether the use a call holds (amount, total before it, started) stands for ``claim``;
    False: it is reserved afresh (another amount: an edit; or a limit that now denies it, a
    stricter policy since). A started use always stands with its amount: raises `UseTaken`
    for another."""
    amount, total, started = held
    if amount != claim.amount:
        if started:
            raise UseTaken(claim.limit.id)
        return False
    return started or claim.limit.effect == "ask" or not past(claim.limit, total, amount)


def _settled(
    claims: Sequence[Claim], rows: dict[str, tuple[float, float, bool, str, str]]
) -> list[LimitUse] | None:
    """The uses the call already holds for every claim, when they all stand as they are; else
    None (something to reserve, replace or refuse, under the limits' locks)."""
    uses: list[LimitUse] = []
    for claim in claims:
        row = rows.get(claim.limit.id)
        if row is None or row[0] != claim.amount or not _stands(claim, row[:3]):
            return None  # (with the same amount, `_stands` never raises)
        uses.append(_use(claim.limit, row[1], row[0]))
    return uses


def _lock(limit_id: str, scope: str) -> str:
    return f"handrail_limit:{limit_id}:{scope}"


class MemoryUses:
    """Uses kept in this process only, for a graph without a database (the same rules)."""

    def __init__(self) -> None:
        self._uses: dict[tuple[str, str, str], tuple[float, float, bool, str, datetime]] = {}
        """(limit, thread, call) -> amount, total before it, started, scope, when reserved."""
        self._lock = threading.Lock()

    def reserve(
        self, thread_id: str, tool_call_id: str, claims: Sequence[Claim], now: datetime
    ) -> list[LimitUse]:
        """`Uses.reserve`, under this object's lock."""
        uses: list[LimitUse] = []
        with self._lock:
            for claim in claims:
                limit, key = claim.limit, (claim.limit.id, thread_id, tool_call_id)
                kept = self._uses.get(key)
                if kept is not None:
                    if _stands(claim, kept[:3]):
                        uses.append(_use(limit, kept[1], kept[0]))
                        continue
                    del self._uses[key]
                total = self._sum(limit, claim.scope, now)
                use = _use(limit, total, claim.amount)
                if not use.over or limit.effect == "ask":
                    self._uses[key] = (float(claim.amount), total, False, claim.scope, now)
                uses.append(use)
        return uses

    def _sum(self, limit: Limit, scope: str, now: datetime) -> float:
        since = now - limit.window
        held = (
            amount
            for (limit_id, _, _), (amount, _, _, where, at) in self._uses.items()
            if limit_id == limit.id and where == scope and at > since
        )
        return round(float(sum(held)), 9)

    def totals(self, scopes: Sequence[tuple[Limit, str]], now: datetime) -> dict[str, int | float]:
        """`Uses.totals`."""
        with self._lock:
            return {lim.id: as_total(self._sum(lim, scope, now), lim) for lim, scope in scopes}

    def start(self, thread_id: str, tool_call_id: str) -> None:
        """`Uses.start`."""
        with self._lock:
            for key, (amount, total, _, scope, at) in list(self._uses.items()):
                if key[1:] == (thread_id, tool_call_id):
                    self._uses[key] = (amount, total, True, scope, at)

    def release(self, thread_id: str, tool_call_id: str) -> None:
        """`Uses.release`."""
        with self._lock:
            for key in [
                k for k, v in self._uses.items() if k[1:] == (thread_id, tool_call_id) and not v[2]
            ]:
                del self._uses[key]
