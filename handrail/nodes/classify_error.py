"""The ``classify_error`` node: decide what a failed call does next.

A rate-limited call (429) with retries left waits for its Retry-After (capped) and runs again;
every other failure goes back to the model as an error ToolMessage it can act on. Retry counts
live in the call's record, so they survive checkpoints and resumes and can never loop forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from langgraph.types import Command

from handrail.nodes._gate import Gate, call_id, tool_message, turn_calls
from handrail.state import AgentState, ToolCallRecord

AfterClassify = Literal["execute", "agent"]

DEFAULT_RETRY_AFTER = 1.0
"""Seconds to wait on a 429 that did not say how long."""


def make_classify_error_node(
    gate: Gate, *, max_wait: float = 30.0, sleep: Callable[[float], None] = time.sleep
) -> Callable[[AgentState], Command[AfterClassify]]:
    """Route each unhandled failure of the turn: retry it, or report it to the model."""

    def classify_error(state: AgentState) -> Command[AfterClassify]:
        known = state.get("calls") or {}
        records: dict[str, ToolCallRecord] = {}
        messages = []
        wait = 0.0
        retrying = False
        for call in turn_calls(state["messages"]):
            record = known.get(call_id(call))
            if record is None or record.status != "failed" or record.last_action is not None:
                continue
            error = record.error
            limit = gate.policy.settings(record.name).max_retries
            if error is not None and error.kind == "rate_limited" and record.retry_count < limit:
                retry_after = (
                    DEFAULT_RETRY_AFTER if error.retry_after is None else error.retry_after
                )
                wait = max(wait, min(retry_after, max_wait))
                retrying = True
                records[record.id] = record.update(
                    status="approved" if record.approver else "checked",
                    retry_count=record.retry_count + 1,
                    last_action="retry",
                )
                continue
            kind = error.kind if error else "unknown"
            detail = error.message if error else "no detail"
            attempts = record.retry_count + 1
            failed = record.update(
                last_action="failure",
                result=f"The tool {record.name!r} failed ({kind}) after {attempts} attempt"
                f"{'s' if attempts > 1 else ''}: {detail}",
            )
            records[record.id] = failed
            messages.append(tool_message(failed))
        if wait > 0:
            sleep(wait)
        update: dict[str, Any] = {"calls": records, "messages": messages}
        return Command(update=update, goto="execute" if retrying else "agent")

    return classify_error
