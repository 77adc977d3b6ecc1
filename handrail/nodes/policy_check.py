"""The ``policy_check`` node and the routing that keeps the allowed path short.

After the model's turn, `make_route_from_agent` checks every tool call inside the model's step:
when all are allowed the graph goes straight to ``execute`` (as short as plain LangGraph's
model → ToolNode path); otherwise ``policy_check`` writes the records, answers denied and invalid
calls with a ToolMessage, and sends asked calls to ``approval``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END
from langgraph.runtime import Runtime

from handrail.context import RunContext, thread_id_of
from handrail.nodes._gate import Gate, call_id, turn_calls
from handrail.nodes._provenance import SOURCES_KEY
from handrail.review.records import decided, tool_message
from handrail.state import ToolCallRecord


def make_route_from_agent(
    gate: Gate, *, entered: bool = False
) -> Callable[[Mapping[str, Any], RunnableConfig, Runtime[RunContext]], str]:
    """Route after the model (or a workflow's step, or into the tool gate's subgraph): END, the
    fast path to ``execute``, or ``policy_check`` (also for a turn some of whose calls have
    records: the tool gate ran them before it entered its subgraph). ``entered``: the graph is
    the tool gate's subgraph, whose turn is the last AIMessage, whatever follows it; elsewhere
    the turn is the model's (or step's) last message, and a message without calls ends."""

    def route_from_agent(
        state: Mapping[str, Any], config: RunnableConfig, runtime: Runtime[RunContext]
    ) -> str:
        actor = gate.requester(runtime, config)  # a new thread's requester is pinned here
        calls = turn_calls(state["messages"] if entered else state["messages"][-1:])
        if not calls:
            return END
        known = gate.records(state)
        if any(call_id(c) in known for c in calls):  # the tool gate's turn, part done
            return "policy_check"
        thread = thread_id_of(config)
        seen = gate.seen(state, thread)
        for call in calls:
            if gate.check_ahead(call, actor, thread, seen).status != "checked":
                return "policy_check"
        return "execute"

    return route_from_agent


def make_policy_check_node(
    gate: Gate,
) -> Callable[[Mapping[str, Any], RunnableConfig, Runtime[RunContext]], dict[str, Any]]:
    """Record the decision for each call of the turn that has none yet; answer refusals."""

    def policy_check(
        state: Mapping[str, Any], config: RunnableConfig, runtime: Runtime[RunContext]
    ) -> dict[str, Any]:
        actor = gate.requester(runtime, config)
        known = gate.records(state)
        events = gate.events.batch(config, actor.id)
        records: dict[str, ToolCallRecord] = {}
        messages = []
        seen = gate.seen(state, events.thread_id)
        for call in turn_calls(state["messages"]):
            if call_id(call) in known:
                continue
            record = decided(events, gate.check(call, actor, events.thread_id, seen))
            records[record.id] = record
            if record.result is not None:  # denied or invalid: the model hears why now
                messages.append(tool_message(record))
        events.publish()
        update: dict[str, Any] = {gate.key: records, "messages": messages}
        if gate.sources.keep and seen is not None:
            update[SOURCES_KEY] = seen.index
        return update

    return policy_check


def make_route_turn(gate: Gate) -> Callable[[Mapping[str, Any]], str]:
    """Where a turn goes after ``policy_check``: a human first, then the tools, then the model
    (the gate's `~Gate.done` node)."""

    def route_turn(state: Mapping[str, Any]) -> str:
        return gate.route(gate.records(state), state["messages"])

    return route_turn
