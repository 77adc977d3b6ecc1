"""Cumulative limits: what a policy allows over time, not call by call.

A `Limit` counts the calls of some tools, or sums a numeric argument of them, per actor, per
thread or across the deployment, over a sliding window (``1h``, ``24h``); past its ``max`` a call
is asked about (``then: ask``, with an ask rule's fields) or denied (``then: deny``)::

    limits:
      - id: daily-spend
        tools: [transfer_funds]
        per: actor
        window: 24h
        sum: args.amount        # omit for a count of calls
        max: 10000
        then: ask
        approvers: [treasurer]

The totals live in Handrail's store (`handrail.storage.limits`), where each call's use is
reserved when the call is decided; this module is the pure part: which limits cover a call, what
the call measures, and how a limit past its maximum changes the rules' decision (deny overrides
ask overrides allow, as among rules).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import cel
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from handrail.errors import PolicyError
from handrail.policies.decision import APPROVER_DECISIONS, Decision, LimitTrace
from handrail.policies.rules import WILDCARD, _check_fields, _Verdict, compile_cel
from handrail.policies.settings import parse_duration

__all__ = ["Limit", "LimitUse", "Measure", "apply_limits", "explain_limits", "unmeasurable"]

Scope = Literal["actor", "thread", "global"]
"""Whose calls a limit adds up: the requester's, the thread's, or everyone's."""


class Limit(_Verdict):
    """One cumulative limit: which tools, whose calls, over what window, up to what maximum,
    and what a call past it gets (``then``: ``ask`` with approvers, or ``deny``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", serialize_by_alias=True)

    id: str = Field(min_length=1)
    """A unique name (not shared with a rule): decisions, requests and ``usage[...]`` cite it."""
    tools: tuple[str, ...] = Field(min_length=1)
    """Tool names whose calls count; ``"*"`` counts every tool."""
    per: Scope
    """``actor`` (each requester has a total), ``thread`` (each thread) or ``global`` (one)."""
    window: timedelta
    """How far back calls count (``1h``, ``24h``, ``7d``): a sliding window."""
    sum: str | None = None
    """A CEL expression over ``args`` whose (non-negative number) value each call adds, such as
    ``args.amount``; absent, each call adds 1 (a count)."""
    max: int | float = Field(ge=0)
    """The largest total a call may bring the window to without ``then`` applying."""
    effect: Literal["ask", "deny"] = Field(alias="then")
    """What a call that would bring the total past ``max`` gets: ``ask`` or ``deny``."""

    _program: cel.Program | None = PrivateAttr(default=None)

    _window = field_validator("window", mode="before")(parse_duration)

    @field_validator("max", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"max must be a number, not {value!r}")
        return value

    def model_post_init(self, context: Any, /) -> None:
        _check_fields(self, self.id, "")
        if self.window <= timedelta(0):
            raise PolicyError(
                "a limit's window must be longer than 0", rule_id=self.id, field="window"
            )
        if self.sum is not None:
            self._program = compile_cel(self.sum, self.id, "sum", "expression")

    def covers(self, tool: str) -> bool:
        """Whether calls of ``tool`` count towards this limit."""
        return tool in self.tools or WILDCARD in self.tools

    def scope(self, actor_id: str, thread_id: str | None) -> str:
        """The key of the total a call adds to: the actor's id, the thread's id, or ``*``."""
        if self.per == "actor":
            return f"actor:{actor_id}"
        if self.per == "thread":
            return f"thread:{thread_id or ''}"
        return "*"

    def measure(self, args: Mapping[str, Any]) -> Measure:
        """What a call with ``args`` adds: 1, or the ``sum`` expression's value; a value that
        is not a non-negative number (or fails to evaluate) is named in ``error``."""
        if self._program is None:
            return Measure(amount=1)
        try:
            value = self._program.execute(cel.Context({"args": dict(args)}))
        except Exception as exc:
            return Measure(amount=0, error=f"`{self.sum}` failed: {type(exc).__name__}: {exc}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Measure(amount=0, error=f"`{self.sum}` is {value!r}, not a number")
        try:
            amount = float(value)  # totals are doubles: an int past 2**63 too
        except OverflowError:
            amount = math.inf
        if not math.isfinite(amount) or amount < 0:
            return Measure(amount=0, error=f"`{self.sum}` is {value!r}, not 0 or more (and finite)")
        return Measure(amount=amount)

    def describe(self, total: float, amount: float) -> str:
        """The state a call brings the limit to, in words."""
        what = "calls" if self.sum is None else f"{self.sum}"
        return (
            f"limit {self.id!r}: brings the {_span(self.window)} total of {what} to "
            f"{_number(total + amount)} of {_number(self.max)}"
        )


@dataclass(frozen=True, slots=True)
class Measure:
    """What one call adds to a limit, or why it cannot be measured (then the call is denied)."""

    amount: int | float
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitUse:
    """One limit's state for one call, as reserved in Handrail's store."""

    limit: Limit
    total: int | float
    """The window's total before this call (other calls' reserved uses)."""
    amount: int | float
    """What this call adds."""
    over: bool
    """Whether the call brings the total past the limit's ``max``."""

    def __str__(self) -> str:
        return self.limit.describe(self.total, self.amount)


def apply_limits(decision: Decision, uses: list[LimitUse], now: datetime) -> Decision:
    """The rules' ``decision`` with the limits' verdicts: a limit past its maximum denies or
    asks (deny beats ask beats allow; every ask is a requirement the approver must meet), and
    an asked call's reviewer reads each limit's state. ``now``: when an ask's ``expires_in``
    counts from."""
    if decision.effect == "deny" or not uses:
        return decision
    over = [u for u in uses if u.over]
    state = "\n".join(str(u) for u in uses)
    denying = next((u for u in over if u.limit.effect == "deny"), None)
    if denying is not None:
        return _denied(
            decision, denying.limit.id, f"{denying}: past its maximum, so the call is denied"
        )
    asking = [u.limit for u in over]
    if not asking:
        if decision.effect == "ask":
            described = "\n".join(filter(None, (decision.description, state)))
            return replace(decision, description=described)
        return decision
    why = "; ".join(f"{u}: past its maximum" for u in over)
    if decision.effect == "allow":
        first = asking[0]
        base = replace(
            decision,
            effect="ask",
            rule_id=first.id,
            reason=why,
            approvers=tuple(sorted(first.approvers)),
            min_approvals=first.min_approvals,
            allowed_decisions=first.allowed_decisions or APPROVER_DECISIONS,
            description=first.description,
            description_prefix=first.description_prefix or decision.description_prefix,
            expires_at=None if first.expires_in is None else now + first.expires_in,
        )
        asking = asking[1:]
    else:
        base = replace(decision, reason=f"{decision.reason}; {why}")
    return _meet(base, asking, state, now)


def unmeasurable(decision: Decision, limit: Limit, error: str) -> Decision:
    """``decision`` turned into a deny: ``limit`` cannot measure the call (its ``sum`` is no
    non-negative number), and a limit that cannot count a call never lets it through."""
    return _denied(decision, limit.id, f"limit {limit.id!r} cannot measure the call: {error}")


def _denied(decision: Decision, rule_id: str | None, reason: str) -> Decision:
    """``decision`` as a deny by ``rule_id`` for ``reason`` (an ask's fields cleared)."""
    return replace(
        decision, effect="deny", rule_id=rule_id, reason=reason, approvers=(), expires_at=None
    )


def explain_limits(
    limits: tuple[Limit, ...],
    decision: Decision,
    args: Mapping[str, Any],
    usage: Mapping[str, int | float] | None,
    now: datetime,
) -> tuple[Decision, tuple[LimitTrace, ...]]:
    """The rules' ``decision`` with ``limits`` (those covering the call), for ``explain``: what
    the call adds to each, and, where ``usage`` gives a limit's total, where that brings it."""
    traces: list[LimitTrace] = []
    uses: list[LimitUse] = []
    denied: Decision | None = None
    for limit in limits:
        measure = limit.measure(args)
        total = None if usage is None else usage.get(limit.id)
        over: bool | None = None
        if measure.error is not None:
            denied = denied or unmeasurable(decision, limit, measure.error)
            reason = f"cannot measure the call ({measure.error}), so the call is denied"
        elif total is None:
            reason = f"adds {_number(measure.amount)}; the window's total is not known here"
        else:
            use = LimitUse(
                limit=limit,
                total=total,
                amount=measure.amount,
                over=total + measure.amount > limit.max,
            )
            uses.append(use)
            over = use.over
            reason = f"{use}{', past its maximum' if over else ''}"
        traces.append(
            LimitTrace(
                limit_id=limit.id,
                effect=limit.effect,
                amount=None if measure.error is not None else measure.amount,
                total=total,
                max=limit.max,
                over=over,
                reason=reason,
            )
        )
    if decision.effect != "deny" and denied is not None:
        decision = denied
    return apply_limits(decision, uses, now), tuple(traces)


def _meet(decision: Decision, limits: list[Limit], state: str, now: datetime) -> Decision:
    """An asked ``decision`` that also meets the asks of ``limits``: approvers and decisions
    every one allows, the most approvals any needs; none shared: deny."""
    approvers = set(decision.approvers).intersection(*(lim.approvers for lim in limits))
    allowed = set(decision.allowed_decisions).intersection(
        *(lim.allowed_decisions for lim in limits if lim.allowed_decisions is not None)
    )
    if not approvers or not allowed:
        shared = "approver role" if not approvers else "allowed decision"
        ids = [lim.id for lim in limits]
        reason = f"{decision.reason}; the ask and limits {ids} share no {shared}"
        return _denied(decision, decision.rule_id, reason)
    lapses = [now + lim.expires_in for lim in limits if lim.expires_in is not None]
    if decision.expires_at is not None:
        lapses.append(decision.expires_at)
    described = "\n".join(
        dict.fromkeys(filter(None, (decision.description, *(lim.description for lim in limits))))
    )
    return replace(
        decision,
        approvers=tuple(sorted(approvers)),
        min_approvals=max([decision.min_approvals, *(lim.min_approvals for lim in limits)]),
        allowed_decisions=tuple(d for d in APPROVER_DECISIONS if d in allowed),
        description="\n".join(filter(None, (described, state))),
        expires_at=min(lapses, default=None),
    )


def _span(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and (unit != "d" or seconds > 2 * 86400):
            return f"{seconds // size}{unit}"
    return f"{window.total_seconds():g}s"


def _number(value: float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"
