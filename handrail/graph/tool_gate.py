"""`build_tool_gate`: Handrail's gate as a subgraph that replaces ``ToolNode`` in your graph."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from handrail.auth import Directory, JwtAuthenticator, Trust
from handrail.context import RunContext
from handrail.errors import HandrailError
from handrail.graph._wiring import add_gate, gate_parts
from handrail.guard import HandrailGraph
from handrail.policies import Policy
from handrail.state import AgentState, ToolCallRecord, merge_calls
from handrail.tools.breaker import CircuitBreaker

__all__ = ["ToolGateState", "build_tool_gate"]

ToolGateState = AgentState
"""The keys the tool gate reads and writes in your state: ``messages`` (with ``add_messages``)
and ``calls`` (each call's `ToolCallRecord`). Subclass it, or declare the same two keys."""


def build_tool_gate(
    tools: Sequence[BaseTool],
    policy: Policy,
    *,
    db: BaseCheckpointSaver[Any] | str | Path | None = None,
    key: str = "calls",
    name: str = "tool_gate",
    circuit_breaker: CircuitBreaker | None = None,
    audit: bool = True,
    directory: Directory | None = None,
    authenticator: JwtAuthenticator | None = None,
) -> HandrailGraph:
    """Handrail's policy → approval → execute → classify path as a compiled subgraph, to put in
    your own `StateGraph` where `langgraph.prebuilt.ToolNode` would go::

        gate = build_tool_gate(tools, policy, db=saver)
        builder.add_node("tools", gate)
        builder.add_conditional_edges("agent", tools_condition)
        builder.add_edge("tools", "agent")
        graph = builder.compile(checkpointer=saver)

    Like ``ToolNode`` it reads the tool calls of the last AIMessage in ``messages`` and answers
    each with a ToolMessage; your state needs ``messages`` with the ``add_messages`` reducer.
    Each call's `ToolCallRecord` is kept in your state under ``key`` (declare it with the
    `merge_calls` reducer, as `ToolGateState` does); Handrail writes no other key.

    Asked calls pause your graph with one ``interrupt()`` per turn; resume it with
    ``Command(resume={"decisions": [...], "approver": {...}})`` as for `build_agent`. The
    subgraph uses your graph's checkpointer; ``db`` (that saver, or its SQLite file) is where
    the approvals, the execution ledger and the audit are kept. Without it the gate still
    decides, asks and retries, but keeps no ledger, inbox rows or audit. ``directory`` and
    ``authenticator`` say who is who, as for `build_agent`. Run your graph with
    ``context=RunContext(actor=...)`` (its ``context_schema``).

    Where it differs from ``ToolNode``: tools run with the arguments that were decided, so a
    tool's ``InjectedState``/``ToolRuntime`` arguments are not filled, and a tool's answer is
    its text (a ``Command`` a tool returns is not applied). An ``abort`` of an escalated call
    ends the gate's turn, not your graph: the calls' records and ToolMessages say so, and your
    routing decides what comes next.
    """
    saver = db if isinstance(db, BaseCheckpointSaver) else None
    path = None if isinstance(db, BaseCheckpointSaver) else db
    parts = gate_parts(
        tools,
        policy,
        saver,
        db=path,
        name=name,
        circuit_breaker=circuit_breaker,
        audit=audit,
        trust=Trust(directory=directory, authenticator=authenticator),
        key=key,
        done=END,  # a finished turn leaves the subgraph: your graph decides what comes next
    )
    builder = StateGraph(_state_schema(key), context_schema=RunContext)
    add_gate(builder, parts, name, after=START)
    return HandrailGraph.around(builder.compile(name=name), parts.gate, parts.table)


def _state_schema(key: str) -> type[Any]:
    """The subgraph's state: ``messages`` and the records under ``key``."""
    if key == "calls":
        return AgentState
    if not key.isidentifier() or key == "messages":
        raise HandrailError(f"key must be a state key other than 'messages', not {key!r}")
    fields = {
        "messages": Annotated[list[AnyMessage], add_messages],
        key: Annotated[dict[str, ToolCallRecord], merge_calls],
    }
    schema: type[Any] = TypedDict("ToolGateState", fields)  # type: ignore[misc]
    return schema
