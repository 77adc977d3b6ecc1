"""The ``classify_error`` node: decide what each failed call of the turn does next.

=================  ===========================================================================
kind               route
=================  ===========================================================================
rate_limited       wait for Retry-After (capped by ``max_wait``), retry; retries spent: escalate
transient          back off (``backoff`` doubling per retry, jittered, capped), retry; spent:
                   escalate
server_error       log and escalate to a human (the outcome of a 500 may be unknown)
outcome_unknown    escalate (the ledger saw an attempt start and never finish)
unknown            escalate
bad_request        back to the model as a ToolMessage it can act on
tool_error         back to the model: the error message the tool (or ``handle_tool_errors``)
                   answered with, as it is
forbidden          back to the model; retrying the same credentials will not help
circuit_open       back to the model; the tool is failing and is not called for a while
=================  ===========================================================================

Retry counts live in the call's record (``max_retries`` per tool from the policy), so they survive
checkpoints and resumes and a retry loop always ends. Escalated calls wait in the ``approval``
node for a human's ``retry``, ``skip`` or ``abort``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph._internal._runnable import RunnableCallable
from langgraph.runtime import Runtime
from langgraph.types import Command

from handrail.context import RunContext
from handrail.events import Batch
from handrail.nodes._effects import Script, Sleep, node
from handrail.nodes._gate import Gate, call_id, turn_calls
from handrail.policies import ToolSettings
from handrail.review.records import attempts_made, escalation_reason, tool_message
from handrail.state import ErrorKind, ToolCallRecord

__all__ = [
    "ESCALATED",
    "RETRIED",
    "TO_MODEL",
    "handle_failure",
    "make_classify_error_node",
    "retry_wait",
]

RETRIED: frozenset[ErrorKind] = frozenset({"rate_limited", "transient"})
"""Kinds retried automatically while retries are left."""
ESCALATED: frozenset[ErrorKind] = frozenset({"server_error", "outcome_unknown", "unknown"})
"""Kinds that go straight to a human."""
TO_MODEL: frozenset[ErrorKind] = frozenset(
    {"bad_request", "tool_error", "forbidden", "circuit_open"}
)
"""Kinds reported to the model, which may change its arguments or its plan."""

DEFAULT_RETRY_AFTER = 1.0
"""Seconds to wait on a 429 that did not say how long."""

_jitter = random.Random()


def retry_wait(record: ToolCallRecord, settings: ToolSettings) -> float:
    """Seconds to wait before retrying ``record``'s failure, never more than ``max_wait``.

    A Retry-After the API sent is honoured as it is. Without one, a 429 waits
    `DEFAULT_RETRY_AFTER`, and a transient failure backs off: ``backoff * 2**retry_count``
    scaled by a random factor in [0.5, 1] (so clients that failed together spread out).
    """
    error = record.error
    cap = settings.max_wait.total_seconds()
    if error is not None and error.retry_after is not None:
        return min(max(error.retry_after, 0.0), cap)
    if error is not None and error.kind == "rate_limited":
        return min(DEFAULT_RETRY_AFTER, cap)
    base = settings.backoff.total_seconds() * 2.0 ** min(record.retry_count, 32)
    return min(base, cap) * _jitter.uniform(0.5, 1.0)


def make_classify_error_node(gate: Gate) -> RunnableCallable:
    """Route each unhandled failure of the turn: retry it, report it to the model, or escalate.

    Retries and escalations are events (``retried``, ``escalated``); an escalation is logged at
    WARNING on the ``handrail`` logger. The wait before a retry blocks a sync graph's thread and
    is awaited in an async graph (`node`)."""

    def classify_error(
        state: Mapping[str, Any], config: RunnableConfig, runtime: Runtime[RunContext]
    ) -> Script[Command[str]]:
        known = gate.records(state)
        events = gate.events.batch(config, gate.requester(runtime, config).id)
        records: dict[str, ToolCallRecord] = {}
        messages = []
        wait = 0.0
        for call in turn_calls(state["messages"]):
            record = known.get(call_id(call))
            if record is None or record.status != "failed" or record.last_action is not None:
                continue
            route, handled, pause = handle_failure(
                events, record, gate.policy.settings(record.name)
            )
            records[record.id] = handled
            if route == "retry":
                wait = max(wait, pause)
            elif route == "model":
                messages.append(tool_message(handled))
        events.publish()
        goto = gate.route({**known, **records}, state["messages"])
        if goto == "execute" and wait > 0:
            yield Sleep(wait)
        update: dict[str, Any] = {gate.key: records, "messages": messages}
        return Command(update=update, goto=goto)

    return node(classify_error, "classify_error")


Route = Literal["retry", "model", "human"]
"""Where a failed call goes: run again, back to the model, or to a human."""


def handle_failure(
    events: Batch, record: ToolCallRecord, settings: ToolSettings
) -> tuple[Route, ToolCallRecord, float]:
    """Decide what a failed call does next, with its event: the route, the record after it,
    and the seconds to wait before a retry.

    A retry is a ``retried`` event and the call ready to run again; a failure the model can act
    on gets its answer in ``result``; anything else is ``escalated`` (logged at WARNING).
    """
    kind: ErrorKind = record.error.kind if record.error else "unknown"
    if kind in RETRIED and record.retry_count < settings.max_retries:
        pause = retry_wait(record, settings)
        retried = record.update(
            status="approved" if record.approver else "checked",
            retry_count=record.retry_count + 1,
            last_action="retry",
            last_wait=pause,
        )
        reason = f"{kind}: retry {retried.retry_count} of {settings.max_retries} after {pause:.3f}s"
        return (
            "retry",
            events.add("retried", retried, duration_ms=pause * 1000, reason=reason),
            pause,
        )
    if kind in TO_MODEL:
        return "model", record.update(last_action="failure", result=failure_report(record, kind)), 0
    # a server error, an unknown outcome or error, or retries spent
    escalated = record.update(status="escalated", asked_at=datetime.now(UTC))
    reason = escalation_reason(escalated, settings.redact)
    return "human", events.add("escalated", escalated, reason=reason), 0


def failure_report(record: ToolCallRecord, kind: ErrorKind) -> str:
    detail = record.error.message if record.error else "no detail"
    if kind == "tool_error":  # the tool's own words for the model, as ToolNode gives them
        return detail
    tries = attempts_made(record)
    if kind == "circuit_open":
        return f"The tool {record.name!r} was not called: {detail}. Try again later."
    if kind == "forbidden":
        return (
            f"The tool {record.name!r} was refused access ({detail}) after {tries}; "
            "retrying will not help."
        )
    return f"The tool {record.name!r} failed ({kind}) after {tries}: {detail}"
