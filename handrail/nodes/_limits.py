"""A gate's cumulative limits: each call's uses reserved when it is decided, released when it
ends without running.

`Gate.decide` asks `GateLimits.totals` for the ``usage`` a rule's condition reads, decides by the
rules, then `GateLimits.apply` reserves the call's use of every limit covering it
(`handrail.storage.limits`) and lets a limit past its maximum ask or deny
(`handrail.policies.limits.apply_limits`). `GateLimits.hear` is a listener on the gate's
events: a call that starts running has its uses marked started (never given back); a call
denied, rejected, answered instead of run, expired, or refused by its circuit breaker gives its
uses back. A call that ran and failed keeps them: what it did before failing is not known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from handrail.context import Actor
from handrail.events import ToolEvent
from handrail.policies import Decision, Policy
from handrail.policies.limits import apply_limits, unmeasurable
from handrail.storage.limits import Claim, MemoryUses, Uses, UseTaken

__all__ = ["GateLimits"]

_RELEASED_BY = {
    "decided": frozenset({"deny", "invalid"}),
    "approval_decided": frozenset({"reject", "respond"}),
}
"""Events whose ``decision`` ends a call without running it (an escalation's ``skip`` or
``abort`` comes after the call ran: it keeps its use)."""
_FAILED_BEFORE_ACTING = frozenset({"circuit_open"})
"""Failure kinds (``response.status``) of a call that provably did not run: the circuit breaker
refused it. A tool that raised may have acted first."""


class GateLimits:
    """The uses of a policy's limits, for one gate (and the gates `Gate.with_tools` makes)."""

    __slots__ = ("policy", "uses")

    def __init__(self, policy: Policy, uses: Uses | None = None) -> None:
        self.policy = policy
        """The policy whose limits these are."""
        self.uses: Uses = uses or MemoryUses()
        """Where the uses are reserved: Handrail's store, or this process's memory."""

    def totals(
        self, tool: str, actor: Actor, thread: str | None, now: datetime
    ) -> dict[str, int | float] | None:
        """What ``usage`` holds for a call of ``tool`` whose rules read it: every limit's total
        in the call's scope; None when no rule for ``tool`` reads it (nothing is read)."""
        policy = self.policy
        if not policy.limits or not policy.reads_usage(tool):
            return None
        scopes = [(lim, lim.scope(actor.id, thread)) for lim in policy.limits]
        return self.uses.totals(scopes, now)

    def apply(
        self,
        decision: Decision,
        call: tuple[str, str, Mapping[str, Any]],
        actor: Actor,
        thread: str | None,
        now: datetime,
    ) -> Decision:
        """``decision`` on ``call`` (id, tool, arguments) with the limits covering it: their
        uses reserved (a denied call gives back any it held), a limit past its maximum asking or
        denying; a call a limit cannot measure (its ``sum`` is no non-negative number), or made
        in a run without a thread id (no checkpointer), is denied."""
        cid, tool, args = call
        limits = self.policy.limits_for(tool)
        if not limits:
            return decision
        if decision.effect == "deny":
            if thread is not None:
                self.uses.release(thread, cid)
            return decision
        if thread is None:  # without a thread id, a call cannot be told from the next one's
            why = (
                "the run has no thread id (a checkpointer and a thread_id), so it cannot be counted"
            )
            return unmeasurable(decision, limits[0], why)
        claims: list[Claim] = []
        for limit in limits:
            measure = limit.measure(args)
            if measure.error is not None:
                self.uses.release(thread, cid)
                return unmeasurable(decision, limit, measure.error)
            claims.append(Claim(limit, limit.scope(actor.id, thread), measure.amount))
        try:
            uses = self.uses.reserve(thread, cid, claims, now)
        except UseTaken as taken:  # a reused id, or state claiming other arguments for it
            limit = next(lim for lim in limits if lim.id == taken.limit_id)
            return unmeasurable(decision, limit, f"{taken}; a new call needs a new id")
        return apply_limits(decision, uses, now)

    def release(self, thread: str | None, call_id: str) -> None:
        """Give back the uses of a call that ended without running (not those of one that
        started), on ``thread``."""
        if thread is not None and self.policy.limits:
            self.uses.release(thread, call_id)

    def hear(self, events: Sequence[ToolEvent]) -> None:
        """Mark the uses of calls that start running as started; release the uses of the calls
        these events end without running them."""
        for event in events:
            if event.event == "started" and event.thread_id is not None:
                if self.policy.limits_for(event.tool):
                    self.uses.start(event.thread_id, event.tool_call_id)
                continue
            ends = (
                event.decision in _RELEASED_BY.get(event.event, ())
                or event.event == "expired"
                or (
                    event.event == "failed"
                    and event.response is not None
                    and event.response["status"] in _FAILED_BEFORE_ACTING
                )
            )
            if ends and event.thread_id is not None and self.policy.limits_for(event.tool):
                self.uses.release(event.thread_id, event.tool_call_id)
