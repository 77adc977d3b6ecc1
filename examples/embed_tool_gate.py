"""Handrail's tool gate inside your own LangGraph graph, in place of ``ToolNode``.

The graph is yours: a node that loads the customer before the model, the model, the gate where
``ToolNode`` would be, and a node that writes a summary after. The gate adds one key to your
state (``calls``, each call's record) and answers the model's tool calls with ToolMessages, as
``ToolNode`` does; asked calls pause your graph until an approver decides, by thread ID.

Run it: ``python examples/embed_tool_gate.py`` (offline, with a scripted model).
"""

from __future__ import annotations

import operator
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command

from handrail import Actor, Policy, RunContext, ToolGateState, build_tool_gate
from handrail.graph import ToolGate, open_checkpointer
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools

AGENT = Actor(id="agent-123", roles=("ai-agent",))
TREASURER = {"id": "alice", "roles": ["treasurer"]}


class SupportState(ToolGateState):
    """Your state: the gate's two keys (``messages``, ``calls``) and your own."""

    customer: str
    notes: Annotated[list[str], operator.add]


def scripted_model() -> ScriptedChatModel:
    """The model of this example: checks a balance, then pays 5,000 (which the policy asks)."""
    return ScriptedChatModel(
        [
            AIMessage("", tool_calls=[_call("get_balance", account="operating")]),
            AIMessage("", tool_calls=[_call("transfer_funds", to="carol", amount=5000)]),
            AIMessage("Carol has been paid."),
        ]
    )


def _call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": None}


def build(
    db: str | Path, model: BaseChatModel | None = None
) -> tuple[CompiledStateGraph[Any, Any, Any, Any], ToolGate]:
    """Your graph on the SQLite file ``db``, and the tool gate inside it."""
    saver = open_checkpointer(db)
    tools = banking_tools(db)
    bound = (model or scripted_model()).bind_tools(tools)
    gate = build_tool_gate(tools, Policy.from_file(POLICY_PATH), db=saver)

    def load_customer(state: SupportState) -> dict[str, Any]:
        return {"notes": [f"serving {state['customer']}"]}

    def agent(state: SupportState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    def summarize(state: SupportState) -> dict[str, Any]:
        ran = [r.name for r in state.get("calls", {}).values() if r.status == "succeeded"]
        return {"notes": [f"tools run: {', '.join(ran) or 'none'}"]}

    builder = StateGraph(SupportState, context_schema=RunContext)
    builder.add_node("load_customer", load_customer)
    builder.add_node("agent", agent)
    builder.add_node("tools", gate)  # where ToolNode(tools) would be
    builder.add_node("summarize", summarize)
    builder.add_edge(START, "load_customer")
    builder.add_edge("load_customer", "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: "summarize"})
    builder.add_edge("tools", "agent")
    builder.add_edge("summarize", END)
    return builder.compile(checkpointer=saver), gate


def main(db: Path) -> dict[str, Any]:
    """Run to the approval, then approve from a graph built anew (as another process would)."""
    config: RunnableConfig = {"configurable": {"thread_id": "support-1"}}
    ctx = RunContext(actor=AGENT)
    graph, _ = build(db)
    paused = graph.invoke(
        {"messages": [("user", "pay carol 5000")], "customer": "carol"}, config, context=ctx
    )
    request = paused["__interrupt__"][0].value
    print("paused for:", request["action_requests"][0]["description"])
    graph, _ = build(db)
    approve = {"decisions": [{"type": "approve"}], "approver": TREASURER}
    done: dict[str, Any] = graph.invoke(Command(resume=approve), config, context=ctx)
    print("notes:", done["notes"])
    print("answer:", done["messages"][-1].content)
    return done


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp) / "support.db")
