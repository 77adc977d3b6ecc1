"""`build_tool_gate` inside a user's own graph: nodes before and after it, their keys untouched."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command
from support import AGENT, CTX, TREASURER, approve, call, example, turn

from handrail import Actor, Inbox, Policy, RunContext, ToolGateState, build_tool_gate
from handrail.audit import AuditLog
from handrail.errors import ApprovalError, HandrailError
from handrail.graph import open_checkpointer
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import transfers

embed = example("embed_tool_gate")
ALICE = Actor(id="alice", roles=("treasurer",))
THREAD = {"configurable": {"thread_id": "support-1"}}
START_INPUT = {"messages": [("user", "pay carol 5000")], "customer": "carol"}


def test_approve_round_trip_keeps_the_users_keys(db: Path) -> None:
    graph, _ = embed.build(db)
    paused = graph.invoke(START_INPUT, THREAD, context=CTX)
    request = paused["__interrupt__"][0].value
    assert [a["name"] for a in request["action_requests"]] == ["transfer_funds"]
    assert paused["notes"] == ["serving carol"]  # the node before ran once, the one after not yet
    assert transfers(db) == []

    graph, _ = embed.build(db)  # another process: a fresh graph on the same file
    done = graph.invoke(Command(resume=approve()), THREAD, context=CTX)

    assert transfers(db) == [("carol", 5000.0)]
    assert done["customer"] == "carol"
    assert done["notes"] == ["serving carol", "tools run: get_balance, transfer_funds"]
    assert {r.name: r.status for r in done["calls"].values()} == {
        "get_balance": "succeeded",
        "transfer_funds": "succeeded",
    }
    tool_messages = [m for m in done["messages"] if isinstance(m, ToolMessage)]
    assert [m.name for m in tool_messages] == ["get_balance", "transfer_funds"]
    assert done["messages"][-1].content == "Carol has been paid."
    assert AuditLog(db).verify().ok


def test_reject_round_trip_answers_the_model_and_runs_nothing(db: Path) -> None:
    graph, _ = embed.build(db)
    graph.invoke(START_INPUT, THREAD, context=CTX)
    reject = {"decisions": [{"type": "reject", "message": "not this week"}], "approver": TREASURER}
    done = embed.build(db)[0].invoke(Command(resume=reject), THREAD, context=CTX)

    assert transfers(db) == []
    refusal = [m for m in done["messages"] if isinstance(m, ToolMessage)][-1]
    assert refusal.status == "error" and "not this week" in refusal.text
    assert done["notes"] == ["serving carol", "tools run: get_balance"]
    assert done["calls"][refusal.tool_call_id].status == "rejected"


def test_a_refused_resume_leaves_the_users_graph_waiting(db: Path) -> None:
    graph, gate = embed.build(db)
    graph.invoke(START_INPUT, THREAD, context=CTX)
    guarded = gate.guard(graph)
    self_approval = {
        "decisions": [{"type": "approve"}],
        "approver": {"id": AGENT.id, "roles": ["treasurer"]},
    }
    with pytest.raises(ApprovalError):
        guarded.invoke(Command(resume=self_approval), THREAD, context=CTX)
    assert transfers(db) == []
    assert guarded.get_state(THREAD).interrupts  # still waiting

    done = guarded.invoke(Command(resume=approve()), THREAD, context=CTX)
    assert transfers(db) == [("carol", 5000.0)]
    assert done["notes"][-1] == "tools run: get_balance, transfer_funds"


def test_the_inbox_resumes_a_users_graph_by_thread_id(db: Path) -> None:
    graph, gate = embed.build(db)
    graph.invoke(START_INPUT, THREAD, context=CTX)
    inbox = Inbox(db, graph=gate.guard(graph))
    [row] = inbox.pending()
    assert (row.thread_id, row.tool, row.graph) == ("support-1", "transfer_funds", "tool_gate")

    inbox.approve("support-1", approver=Actor(id="alice", roles=("treasurer",)))
    assert transfers(db) == [("carol", 5000.0)]
    assert inbox.pending() == []


def test_an_unguarded_bad_resume_is_asked_again_not_stored(db: Path) -> None:
    """Without ``guard`` a bad value reaches the approval node, which asks again with the reason
    instead of raising (a raise would keep the bad value in the checkpoint)."""
    graph, _ = embed.build(db)
    graph.invoke(START_INPUT, THREAD, context=CTX)
    again = graph.invoke(Command(resume={"decisions": []}), THREAD, context=CTX)
    assert again["__interrupt__"][0].value["handrail"]["error"]
    assert transfers(db) == []
    graph.invoke(Command(resume=approve()), THREAD, context=CTX)
    assert transfers(db) == [("carol", 5000.0)]


POLICY = Policy.from_yaml(
    """
version: 1
default: deny
rules:
  - {id: reads, tools: [lookup], effect: allow}
  - {id: no-wipes, tools: [wipe], effect: deny}
"""
)


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


@tool
def wipe() -> str:
    """Wipe everything."""
    raise AssertionError("a denied tool must never run")


class KeyedState(MessagesState):
    handrail: Annotated[dict[str, Any], operator.or_]
    trail: Annotated[list[str], operator.add]


def _keyed_graph(db: Path, key: str = "handrail") -> Any:
    saver = open_checkpointer(db)
    model = ScriptedChatModel([turn(call("lookup", key="a"), call("wipe")), AIMessage("done")])
    builder = StateGraph(KeyedState, context_schema=RunContext)
    builder.add_node(
        "agent", lambda s: {"messages": [model.invoke(s["messages"])], "trail": ["agent"]}
    )
    builder.add_node("tools", build_tool_gate([lookup, wipe], POLICY, db=saver, key=key))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=saver)


def test_records_go_under_the_key_the_user_chose_and_denials_answer_the_model(db: Path) -> None:
    out = _keyed_graph(db).invoke({"messages": [("user", "go")]}, THREAD, context=CTX)
    assert "calls" not in out
    assert {r.name: r.status for r in out["handrail"].values()} == {
        "lookup": "succeeded",
        "wipe": "rejected",
    }
    answers = {m.name: m for m in out["messages"] if isinstance(m, ToolMessage)}
    assert answers["lookup"].text == "value of a"
    assert "no-wipes" in answers["wipe"].text
    assert out["trail"] == ["agent", "agent"]


@pytest.mark.parametrize("key", ["messages", "not a key"])
def test_a_bad_key_is_refused(db: Path, key: str) -> None:
    with pytest.raises(HandrailError, match="key must be"):
        build_tool_gate([lookup], POLICY, key=key)


REDACTING = Policy.from_yaml(
    """
version: 1
default: deny
rules:
  - {id: small, tools: [transfer], when: "args.amount <= 1000.0", effect: allow}
  - {id: big, tools: [transfer], when: "args.amount > 1000.0", effect: ask, approvers: [treasurer]}
tools:
  transfer: {redact: [args.account_number]}
"""
)


def _transfer_graph(db: Path, sent: list[tuple[str, float, int]]) -> tuple[Any, Any]:
    @tool
    def transfer(to: str, amount: float, account_number: int) -> str:
        """Send money."""
        sent.append((to, amount, account_number))
        return f"sent {amount} to {to}"

    saver = open_checkpointer(db)
    model = ScriptedChatModel(
        [turn(call("transfer", to="bob", amount=5000, account_number=12345678)), AIMessage("ok")]
    )
    gate = build_tool_gate([transfer], REDACTING, db=saver)
    builder = StateGraph(ToolGateState, context_schema=RunContext)
    builder.add_node("agent", lambda s: {"messages": [model.invoke(s["messages"])]})
    builder.add_node("tools", gate)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=saver), gate


def test_an_inbox_edit_keeps_a_redacted_argument_of_a_paused_gate(db: Path) -> None:
    """The paused turn's records live in the gate's subgraph state, not yet in the parent's:
    the resume check finds them there, so a hidden value left as shown keeps its real one."""
    sent: list[tuple[str, float, int]] = []
    graph, gate = _transfer_graph(db, sent)
    graph.invoke({"messages": [("user", "pay")]}, THREAD, context=CTX)
    inbox = Inbox(db, graph=gate.guard(graph))
    [row] = inbox.pending()
    assert row.args["account_number"] == "[redacted]"

    inbox.edit("support-1", row.tool_call_id, {**row.args, "amount": 900}, approver=ALICE)
    assert sent == [("bob", 900.0, 12345678)]


def test_guard_accepts_a_graph_already_guarded_and_a_thread_bound_by_with_config(
    db: Path,
) -> None:
    sent: list[tuple[str, float, int]] = []
    graph, gate = _transfer_graph(db, sent)
    bound = gate.guard(gate.guard(graph)).with_config(configurable={"thread_id": "bound"})
    bound.invoke({"messages": [("user", "pay")]}, context=CTX)
    with pytest.raises(ApprovalError):  # checked against the bound thread, before it is stored
        bound.invoke(Command(resume={**approve(), "approver": AGENT.as_dict()}), context=CTX)
    bound.invoke(Command(resume=approve()), context=CTX)
    assert sent == [("bob", 5000.0, 12345678)]
