"""The ``execute`` node: run the calls of the turn that are allowed or approved.

Each call runs with exactly the arguments that were decided (and approved). A call that reaches
``execute`` without a record comes from the fast path and is checked again here; if the policy no
longer allows it (a new policy after a restart, say), nothing runs and the turn goes to
``policy_check``. Interrupts raised inside a tool are re-raised, never caught as failures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphBubbleUp
from langgraph.runtime import Runtime
from langgraph.types import Command

from handrail.context import RunContext
from handrail.nodes._gate import RUNNABLE, Gate, actor_of, call_id, turn_calls
from handrail.state import AgentState, ToolCallRecord
from handrail.tools.errors import classify

AfterExecute = Literal["agent", "classify_error", "policy_check"]


def make_execute_node(
    gate: Gate,
) -> Callable[[AgentState, RunnableConfig, Runtime[RunContext]], Command[AfterExecute]]:
    """Run the turn's runnable calls; failures go to ``classify_error``, results to the model."""

    def execute(
        state: AgentState, config: RunnableConfig, runtime: Runtime[RunContext]
    ) -> Command[AfterExecute]:
        known = state.get("calls") or {}
        todo: list[ToolCallRecord] = []
        for call in turn_calls(state["messages"]):
            record = known.get(call_id(call))
            if record is None:
                record = gate.check(call, actor_of(runtime))
                if record.status != "checked":
                    return Command(goto="policy_check")
            if record.status in RUNNABLE:
                todo.append(record)

        records: dict[str, ToolCallRecord] = {}
        messages: list[ToolMessage] = []
        for record in todo:
            tool = gate.tools[record.name]
            call = {"type": "tool_call", "id": record.id, "name": record.name, "args": record.args}
            try:
                output = tool.invoke(call, config)
            except GraphBubbleUp:
                raise
            except Exception as exc:
                records[record.id] = record.update(
                    status="failed", last_action=None, error=classify(exc)
                )
                continue
            message = (
                output
                if isinstance(output, ToolMessage)
                else ToolMessage(content=str(output), tool_call_id=record.id, name=record.name)
            )
            messages.append(message)
            records[record.id] = record.update(
                status="succeeded", last_action="success", error=None, result=message.text
            )
        failed = any(r.status == "failed" for r in records.values())
        return Command(
            update={"calls": records, "messages": messages},
            goto="classify_error" if failed else "agent",
        )

    return execute
