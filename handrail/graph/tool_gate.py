"""`build_tool_gate`: Handrail's gate as the node that replaces ``ToolNode`` in your graph."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langchain_core.tools import BaseTool
from langchain_core.tools import tool as create_tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt.tool_node import _default_handle_tool_errors
from langgraph.types import Command
from typing_extensions import TypedDict

from handrail.auth import Directory, JwtAuthenticator, Trust
from handrail.context import RunContext
from handrail.errors import HandrailError
from handrail.graph._wiring import add_gate, gate_parts
from handrail.nodes._tools import ErrorHandling, ToolRunner
from handrail.nodes.tool_gate import COMMANDS, ToolGate
from handrail.policies import Policy
from handrail.policies.lint import LintMode
from handrail.state import AgentState, ToolCallRecord, merge_calls
from handrail.storage import store_for
from handrail.tools.breaker import CircuitBreaker

__all__ = ["ToolGate", "ToolGateState", "build_tool_gate"]

ToolGateState = AgentState
"""The keys the tool gate reads and writes in your state: ``messages`` (with ``add_messages``)
and ``calls`` (each call's `ToolCallRecord`). Subclass it, or declare the same two keys."""


def build_tool_gate(
    tools: Sequence[BaseTool | Callable[..., Any]],
    policy: Policy,
    *,
    db: BaseCheckpointSaver[Any] | str | Path | None = None,
    key: str = "calls",
    name: str = "tool_gate",
    messages_key: str = "messages",
    handle_tool_errors: ErrorHandling = _default_handle_tool_errors,
    circuit_breaker: CircuitBreaker | None = None,
    audit: bool = True,
    directory: Directory | None = None,
    authenticator: JwtAuthenticator | None = None,
    lint: LintMode = "warn",
) -> ToolGate:
    """Handrail's gate as one node to put in your own `StateGraph` where
    `langgraph.prebuilt.ToolNode` would go::

        gate = build_tool_gate(tools, policy, db=saver)
        builder.add_node("tools", gate)
        builder.add_conditional_edges("agent", tools_condition)
        builder.add_edge("tools", "agent")
        graph = gate.guard(builder.compile(checkpointer=saver))

    It keeps ``ToolNode``'s contract: ``tools`` are tools or plain functions (made tools with
    ``@tool``, as ``ToolNode`` makes them); it reads the tool calls of the last AIMessage under
    ``messages_key`` (or takes a ``Send`` of a ``ToolCallWithContext`` or of a list of tool
    calls), answers each with a ToolMessage, fills ``InjectedState``, ``InjectedStore``,
    ``ToolRuntime`` and ``InjectedToolCallId`` (never seen by the policy or the args hash),
    applies the ``Command`` a tool returns as ``ToolNode`` does, and ``handle_tool_errors`` has
    ``ToolNode``'s meaning and default for the failures Handrail does not classify (a 429, a
    timeout or a 5xx is still retried or escalated). Each call's `ToolCallRecord` is kept in
    your state under ``key`` (declare it with the `merge_calls` reducer, as `ToolGateState`
    does); Handrail writes no other key.

    When every call of a turn is allowed the gate runs them in its own step, as ``ToolNode``
    does; a turn with an asked, denied or invalid call, or a failure, goes through the gate's
    subgraph (policy check, approval, execute, classify). Asked calls pause your graph with one
    ``interrupt()`` per turn; resume it with ``Command(resume={"decisions": [...], "approver":
    {...}})`` as for `build_agent`. ``db`` (your graph's checkpointer, or its SQLite file or
    PostgreSQL URL) is where the approvals, the execution ledger and the audit are kept; without
    it the gate still decides, asks and retries, but keeps no ledger, inbox rows or audit.
    ``directory`` and ``authenticator`` say who is who, and ``lint`` checks the policy against
    ``tools``, as for `build_agent`. Run your graph
    with ``context=RunContext(actor=...)`` (its ``context_schema``).

    An ``abort`` of an escalated call ends the gate's turn, not your graph: the calls' records
    and ToolMessages say so, and your routing decides what comes next. The README lists every
    deliberate difference from ``ToolNode``.
    """
    made = [t if isinstance(t, BaseTool) else create_tool(t) for t in tools]  # as ToolNode
    if key in (COMMANDS, messages_key):
        raise HandrailError(
            f"key must be a state key of its own for the calls' records, not {key!r} (the "
            f"messages_key, or the gate's own {COMMANDS!r})"
        )
    saver = db if isinstance(db, BaseCheckpointSaver) else None
    path = None if isinstance(db, BaseCheckpointSaver) else db
    parts = gate_parts(
        store_for(saver, path),
        made,
        policy,
        name=name,
        circuit_breaker=circuit_breaker,
        audit=audit,
        trust=Trust(directory=directory, authenticator=authenticator),
        lint=lint,
        key=key,
        done=END,  # a finished turn leaves the gate: your graph decides what comes next
        runner=ToolRunner(made, handle_tool_errors=handle_tool_errors, messages_key=messages_key),
    )
    builder = StateGraph(_state_schema(key), context_schema=RunContext)
    add_gate(builder, parts, name, after=START, carry=COMMANDS)
    return ToolGate(
        gate=parts.gate,
        ledger=parts.ledger,
        runner=parts.runner,
        subgraph=builder.compile(name=name),
        table=parts.table,
        name=name,
    )


def _state_schema(key: str) -> type[Any]:
    """The subgraph's state: ``messages``, the records under ``key``, and the Commands tools
    returned (for the gate to hand your graph)."""
    if not key.isidentifier() or key == "messages":
        raise HandrailError(f"key must be a state key other than 'messages', not {key!r}")
    fields = {
        "messages": Annotated[list[AnyMessage], add_messages],
        key: Annotated[dict[str, ToolCallRecord], merge_calls],
        COMMANDS: Annotated[list[Command[Any]], operator.add],
    }
    schema: type[Any] = TypedDict("ToolGateState", fields)  # type: ignore[misc]
    return schema
