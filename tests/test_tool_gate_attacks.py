"""The tool gate under what a review found: tools that run graphs of their own, sub-agents, forged
records, error answers that command, states without message ids, bad input."""

from __future__ import annotations

import operator
import time
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import InjectedState, ToolRuntime
from langgraph.types import Command, Send
from support import CTX, TREASURER, GateState, approve, config, tool_turn
from typing_extensions import TypedDict

from handrail import Actor, Inbox, Policy, RunContext, ToolCallRecord, build_agent, build_tool_gate
from handrail.errors import HandrailError
from handrail.graph import open_checkpointer
from handrail.state import merge_calls
from handrail.testing import ScriptedChatModel
from handrail.tools.errors import ServerError

POLICY_TEXT = """
version: 1
default: deny
rules:
  - {id: small, effect: allow, tools: [pay, fail, subrun, refuse, note], roles: [ai-agent]}
  - id: big
    effect: ask
    tools: [pay, note]
    roles: [ai-agent]
    when: "args.x > 100"
    approvers: [treasurer]
escalate_to: [operator]
"""
POLICY = Policy.from_yaml(POLICY_TEXT)
RETRY = {"decisions": [{"type": "retry"}], "approver": {"id": "olga", "roles": ["operator"]}}


def _graph(
    db: Path | None, tools: list[Any], ai: AIMessage, state: type[Any] = GateState, **compile: Any
) -> Any:
    saver = open_checkpointer(db) if db is not None else None
    builder = StateGraph(state)
    builder.add_node("model", lambda s: {"messages": [ai]})
    builder.add_node("tools", build_tool_gate(tools, POLICY, db=saver))
    builder.add_node("after", lambda s: {"log": ["after"]})
    builder.add_edge(START, "model")
    builder.add_edge("model", "tools")
    builder.add_edge("tools", END)
    return builder.compile(checkpointer=saver, **compile)


class Inner(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]


_inner = StateGraph(Inner)
_inner.add_node("think", lambda s: {"messages": [AIMessage("inner thought")]})
_inner.add_edge(START, "think")
_inner.add_edge("think", END)
INNER = _inner.compile()  # inherits the checkpointer of the node that runs it
paid: list[int] = []
failures: list[str] = []


@tool
def subrun(task: str) -> str:
    """Run a graph of its own (an agent as a tool)."""
    out = INNER.invoke({"messages": [HumanMessage(task)]})
    return str(out["messages"][-1].content)


@tool
def fail(kind: str) -> str:
    """Fail with a 500 the first time."""
    failures.append(kind)
    if len(failures) == 1:
        raise ServerError("upstream failed")
    return "ok"


@tool
def pay(x: int, to: str = "bob") -> str:
    """Pay ``x`` to ``to`` (a side effect)."""
    paid.append(x)
    return f"paid {x} to {to}"


@pytest.mark.parametrize("with_db", [True, False], ids=["db", "no-db"])
def test_a_tool_running_its_own_graph_does_not_take_the_gates_place(
    tmp_path: Path, with_db: bool
) -> None:
    """On the allowed path a tool runs a graph of its own, in the gate's node; another call of
    the turn fails with a 500. The escalation's resume goes on in the gate's subgraph, not in
    the tool's graph, and nothing runs twice, with or without the execution ledger."""
    failures.clear()
    paid.clear()
    turn = tool_turn(("subrun", {"task": "t"}), ("pay", {"x": 5}), ("fail", {"kind": "500"}))
    db = tmp_path / "g.db" if with_db else None
    if db is None:  # no Handrail tables, but a checkpointer for the pause
        from langgraph.checkpoint.memory import InMemorySaver

        saver: Any = InMemorySaver()
        builder = StateGraph(GateState)
        builder.add_node("model", lambda s: {"messages": [turn]})
        builder.add_node("tools", build_tool_gate([subrun, pay, fail], POLICY))
        builder.add_edge(START, "model")
        builder.add_edge("model", "tools")
        graph = builder.compile(checkpointer=saver)
    else:
        graph = _graph(db, [subrun, pay, fail], turn)
    out = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    (request,) = [i.value for i in out["__interrupt__"]]
    assert request["handrail"]["kind"] == "escalation"

    done = graph.invoke(Command(resume=RETRY), config(), context=CTX)
    answers = [m.content for m in done["messages"] if isinstance(m, ToolMessage)]
    assert answers == ["inner thought", "paid 5 to bob", "ok"]
    assert {r.status for r in done["calls"].values()} == {"succeeded"}
    assert (paid, failures) == ([5], ["500", "500"])


def test_a_sub_agent_run_by_a_tool_sees_its_own_state_and_actor(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    @tool
    def inner_probe(
        q: str, state: Annotated[dict[str, Any], InjectedState], runtime: ToolRuntime
    ) -> str:
        """Look at what was injected."""
        seen.update(customer=state.get("customer"), actor=runtime.context.actor.id)
        return "probed"

    sub_actor = Actor(id="sub-agent-7", roles=("ai-agent",))

    @tool
    def subrun(task: str) -> str:
        """Run a sub-agent."""
        model = ScriptedChatModel(
            [
                AIMessage(
                    "", tool_calls=[{"name": "inner_probe", "args": {"q": task}, "id": None}]
                ),
                AIMessage("sub done"),
            ]
        )
        sub = build_agent(model, [inner_probe], Policy.from_yaml("version: 1\ndefault: allow\n"))
        out = sub.invoke({"messages": [("user", task)]}, context=RunContext(actor=sub_actor))
        return str(out["messages"][-1].content)

    graph = _graph(tmp_path / "g.db", [subrun], tool_turn(("subrun", {"task": "t"})))
    start = {"messages": [("user", "go")], "customer": "OUTER"}
    out = graph.invoke(start, config(), context=CTX)
    assert out["messages"][-1].content == "sub done"
    assert seen == {"customer": None, "actor": "sub-agent-7"}


@tool
def refuse(x: int, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
    """Refuse with an error message, and still set the customer and go on to ``after``."""
    message = ToolMessage("x must be even", tool_call_id=tool_call_id, status="error")
    return Command(update={"customer": "needs-fix", "messages": [message]}, goto="after")


def test_a_command_whose_message_is_an_error_is_still_applied(tmp_path: Path) -> None:
    graph = _graph(tmp_path / "g.db", [refuse], tool_turn(("refuse", {"x": 3})))
    out = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    assert (out["customer"], out["log"]) == ("needs-fix", ["after"])
    (answer,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert (answer.content, answer.status) == ("x must be even", "error")
    assert out["calls"]["c0"].error.kind == "tool_error"


class Plain(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], operator.add]  # keeps no ids, as ToolNode allows
    calls: Annotated[dict[str, ToolCallRecord], merge_calls]


@tool
def note(x: int) -> str:
    """Note ``x``."""
    return f"noted {x}"


@pytest.mark.parametrize("x", [5, 500], ids=["allowed", "approved"])
def test_a_state_whose_messages_have_no_ids_gets_each_answer_once(tmp_path: Path, x: int) -> None:
    graph = _graph(tmp_path / "g.db", [note], tool_turn(("note", {"x": x})), state=Plain)
    out = graph.invoke({"messages": [HumanMessage("go")]}, config(), context=CTX)
    if x > 100:
        out = graph.invoke(Command(resume=approve()), config(), context=CTX)
    kinds = [type(m).__name__ for m in out["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage"]
    assert out["messages"][-1].content == f"noted {x}"


def test_a_forged_record_with_allowed_arguments_runs_the_models_call_decided(
    tmp_path: Path,
) -> None:
    """The model asks ``pay(500, bob)`` (asked by the policy); a record written into the state
    claims it is ``pay(5, eve)``, checked, approved by alice. Nothing runs: the model's own call
    is decided and asked, and the audit says the record was refused."""
    paid.clear()
    graph = _graph(
        tmp_path / "g.db",
        [pay],
        tool_turn(("pay", {"x": 500, "to": "bob"})),
        interrupt_before=["tools"],
    )
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    forged = ToolCallRecord(
        id="c0",
        name="pay",
        args={"x": 5, "to": "eve"},
        args_hash="0" * 64,
        decision="allow",
        rule_id="big",
        status="checked",
        approver=TREASURER["id"],
    )
    graph.update_state(config(), {"calls": {"c0": forged}})
    out = graph.invoke(None, config(), context=CTX)
    assert paid == []
    (request,) = [i.value for i in out["__interrupt__"]]
    assert request["action_requests"][0]["args"] == {"x": 500, "to": "bob"}
    done = graph.invoke(Command(resume=approve()), config(), context=CTX)
    assert paid == [500] and done["messages"][-1].content == "paid 500 to bob"


def test_a_state_with_no_messages_is_refused(tmp_path: Path) -> None:
    saver = open_checkpointer(tmp_path / "g.db")
    builder = StateGraph(GateState)
    builder.add_node("tools", build_tool_gate([note], POLICY, db=saver))
    builder.add_edge(START, "tools")
    with pytest.raises(HandrailError, match="no messages under 'messages'"):
        builder.compile(checkpointer=saver).invoke({"customer": "x"}, config(), context=CTX)


@pytest.mark.parametrize("key", ["handrail_commands", "chat"])
def test_a_records_key_that_is_taken_is_refused(key: str) -> None:
    with pytest.raises(HandrailError, match="key must be"):
        build_tool_gate([note], POLICY, key=key, messages_key="chat")


def test_a_thread_that_cannot_be_expired_does_not_stop_the_sweep(tmp_path: Path) -> None:
    """A fan-out (a Send per asked call) waits on two interrupts, which one decision cannot
    answer; expiring it fails, and is logged, and the other thread still expires."""
    paid.clear()
    policy = Policy.from_yaml(
        POLICY_TEXT.replace("approvers: [treasurer]", "approvers: [treasurer]\n    expires_in: 1s")
    )
    db = tmp_path / "g.db"
    saver = open_checkpointer(db)
    gate = build_tool_gate([pay], policy, db=saver)

    def graph(turn: AIMessage, fan_out: bool) -> Any:
        builder = StateGraph(GateState)
        builder.add_node("model", lambda s: {"messages": [turn]})
        builder.add_node("tools", gate)
        builder.add_edge(START, "model")
        if fan_out:
            sends = lambda s: [Send("tools", [c]) for c in s["messages"][-1].tool_calls]  # noqa: E731
            builder.add_conditional_edges("model", sends, ["tools"])
        else:
            builder.add_edge("model", "tools")
        return gate.guard(builder.compile(checkpointer=saver))

    fan = graph(tool_turn(("pay", {"x": 500}), ("pay", {"x": 700})), fan_out=True)
    assert (
        len(fan.invoke({"messages": [("user", "go")]}, config("a"), context=CTX)["__interrupt__"])
        == 2
    )
    plain = graph(tool_turn(("pay", {"x": 900})), fan_out=False)
    plain.invoke({"messages": [("user", "go")]}, config("b"), context=CTX)
    time.sleep(1.2)

    expired = Inbox(db, graph=plain).expire()
    assert [p.thread_id for p in expired] == ["b"]
    assert {p.thread_id for p in Inbox(db).pending()} == {"a"}
    assert paid == []
