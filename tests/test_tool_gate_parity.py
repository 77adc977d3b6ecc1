"""`build_tool_gate` keeps ToolNode's contract: injection, Commands, ``messages_key``, ``Send``
payloads, ``handle_tool_errors``, the stream writer; on the one-node allowed path and after an
approval (the gate's subgraph) alike."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import InjectedState, InjectedStore, ToolRuntime
from langgraph.prebuilt.tool_node import ToolCallWithContext
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, Send
from pydantic import AfterValidator
from support import CTX, GateState, approve, config, edit, tool_turn
from typing_extensions import TypedDict

from handrail import Policy, ToolCallRecord, build_tool_gate
from handrail.graph import open_checkpointer
from handrail.state import merge_calls
from handrail.tools.errors import RateLimited, ServerError

POLICY = Policy.from_yaml(
    """
version: 1
default: deny
rules:
  - {id: small, effect: allow, tools: [probe, steer, fail, note], roles: [ai-agent]}
  - id: big
    effect: ask
    tools: [probe, steer]
    roles: [ai-agent]
    when: "args.x > 100"
    approvers: [treasurer]
escalate_to: [operator]
"""
)
OPS = {"id": "olga", "roles": ["operator"]}


def _graph(db: Path, tools: list[Any], ai: AIMessage, **gate: Any) -> Any:
    """START → model (one scripted turn) → tools (the gate) → END, on a real SQLite file."""
    saver = open_checkpointer(db)
    builder = StateGraph(GateState)
    builder.add_node("model", lambda s: {"messages": [ai]})
    builder.add_node("tools", build_tool_gate(tools, POLICY, db=saver, **gate))
    builder.add_node("after", lambda s: {"log": ["after"]})
    builder.add_edge(START, "model")
    builder.add_edge("model", "tools")
    builder.add_edge("tools", END)
    return builder.compile(checkpointer=saver, store=InMemoryStore())


seen: dict[str, Any] = {}


@tool
def probe(
    x: int,
    state: Annotated[dict[str, Any], InjectedState],
    customer: Annotated[str, InjectedState("customer")],
    store: Annotated[BaseStore, InjectedStore()],
    runtime: ToolRuntime,
    tool_call_id: Annotated[str, InjectedToolCallId],
) -> str:
    """Report what was injected."""
    seen.update(
        x=x,
        customer=customer,
        keys=sorted(state),
        store=store is runtime.store,
        call=tool_call_id,
        actor=runtime.context.actor.id,
    )
    get_stream_writer()({"probe": x})
    return f"probed {x}"


@pytest.mark.parametrize("x", [5, 500], ids=["allowed", "approved"])
def test_injected_arguments_are_filled_and_never_decided(tmp_path: Path, x: int) -> None:
    seen.clear()
    graph = _graph(tmp_path / "g.db", [probe], tool_turn(("probe", {"x": x})))
    start = {"messages": [("user", "go")], "customer": "carol"}
    out = graph.invoke(start, config(), context=CTX)
    if x > 100:
        (request,) = [i.value for i in out["__interrupt__"]]
        assert request["action_requests"][0]["args"] == {"x": x}  # nothing injected shown
        out = graph.invoke(Command(resume=approve()), config(), context=CTX)
    assert seen == {
        "x": x,
        "customer": "carol",
        "keys": ["calls", "customer", "log", "messages"],
        "store": True,
        "call": "c0",
        "actor": "agent-123",
    }
    record = out["calls"]["c0"]
    assert (record.status, record.args) == ("succeeded", {"x": x})
    assert out["messages"][-1].content == f"probed {x}"


@pytest.mark.parametrize("x", [5, 500], ids=["allowed", "approved"])
def test_stream_writer_events_reach_the_users_stream(tmp_path: Path, x: int) -> None:
    graph = _graph(tmp_path / "g.db", [probe], tool_turn(("probe", {"x": x})))
    start = {"messages": [("user", "go")], "customer": "carol"}
    chunks = list(graph.stream(start, config(), context=CTX, stream_mode="custom"))
    if x > 100:
        assert chunks == []
        resume = Command(resume=approve())
        chunks = list(graph.stream(resume, config(), context=CTX, stream_mode="custom"))
    assert chunks == [{"probe": x}]


@tool
def steer(x: int, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
    """Answer, set the customer, and go on to ``after``."""
    message = ToolMessage(f"steered {x}", tool_call_id=tool_call_id)
    return Command(update={"customer": f"c{x}", "messages": [message]}, goto="after")


@pytest.mark.parametrize("x", [5, 500], ids=["allowed", "approved"])
def test_a_command_a_tool_returns_is_applied(tmp_path: Path, x: int) -> None:
    graph = _graph(tmp_path / "g.db", [steer], tool_turn(("steer", {"x": x})))
    out = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    if x > 100:
        out = graph.invoke(Command(resume=approve()), config(), context=CTX)
    assert out["customer"] == f"c{x}"
    assert out["log"] == ["after"]  # the goto
    answers = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert [(m.content, m.name) for m in answers] == [(f"steered {x}", "steer")]
    assert out["calls"]["c0"].result == f"steered {x}"


calls_made: list[str] = []


@tool
def note(text: str) -> str:
    """Note ``text``."""
    calls_made.append(text)
    return f"noted {text}"


def test_messages_key(tmp_path: Path) -> None:
    class Chat(TypedDict, total=False):
        chat: Annotated[list[AnyMessage], add_messages]
        calls: Annotated[dict[str, ToolCallRecord], merge_calls]

    saver = open_checkpointer(tmp_path / "g.db")
    builder = StateGraph(Chat)
    builder.add_node("model", lambda s: {"chat": [tool_turn(("note", {"text": "hi"}))]})
    builder.add_node("tools", build_tool_gate([note], POLICY, db=saver, messages_key="chat"))
    builder.add_edge(START, "model")
    builder.add_edge("model", "tools")
    out = builder.compile(checkpointer=saver).invoke(
        {"chat": [("user", "go")]}, config(), context=CTX
    )
    assert [m.content for m in out["chat"] if isinstance(m, ToolMessage)] == ["noted hi"]
    assert out["calls"]["c0"].status == "succeeded"


@pytest.mark.parametrize("payload", ["with_context", "call_list"])
def test_send_payloads_answer_each_call_once(tmp_path: Path, payload: str) -> None:
    calls_made.clear()
    ai = tool_turn(("note", {"text": "a"}), ("note", {"text": "b"}))

    def fan_out(state: GateState) -> list[Send]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        if payload == "call_list":
            return [Send("tools", [c]) for c in last.tool_calls]
        return [
            Send(
                "tools",
                ToolCallWithContext(__type="tool_call_with_context", tool_call=c, state=state),
            )
            for c in last.tool_calls
        ]

    saver = open_checkpointer(tmp_path / "g.db")
    builder = StateGraph(GateState)
    builder.add_node("model", lambda s: {"messages": [ai]})
    builder.add_node("tools", build_tool_gate([note], POLICY, db=saver))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", fan_out, ["tools"])
    out = builder.compile(checkpointer=saver).invoke(
        {"messages": [("user", "go")]}, config(), context=CTX
    )
    assert sorted(calls_made) == ["a", "b"]
    answers = sorted(m.content for m in out["messages"] if isinstance(m, ToolMessage))
    assert answers == ["noted a", "noted b"]
    assert {r.status for r in out["calls"].values()} == {"succeeded"}
    assert len(out["calls"]) == 2


attempts: list[str] = []


@tool
def fail(kind: str) -> str:
    """Fail as ``kind`` says, the first time."""
    attempts.append(kind)
    if kind == "value":
        raise ValueError("boom")
    if kind == "type":
        raise TypeError("bad type")
    if kind == "429" and attempts.count("429") == 1:
        raise RateLimited("slow down", retry_after=0.01)
    if kind == "500" and attempts.count("500") == 1:
        raise ServerError("upstream failed")
    return f"ok {kind}"


DEFAULT = object()


def _errors(tmp_path: Path, kind: str, handle: Any) -> dict[str, Any]:
    attempts.clear()
    graph = _graph(
        tmp_path / "g.db", [fail], tool_turn(("fail", {"kind": kind})), handle_tool_errors=handle
    )
    out: dict[str, Any] = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    return out


def _escalated(out: dict[str, Any]) -> list[str]:
    """The calls the run's pause asks a person about, as an escalation."""
    (request,) = [i.value for i in out["__interrupt__"]]
    assert request["handrail"]["kind"] == "escalation"
    return list(request["handrail"]["tool_call_ids"])


def handle_value(e: ValueError) -> str:
    return f"handled: {e}"


@pytest.mark.parametrize(
    ("handle", "content"),
    [
        (True, "Error: ValueError('boom')\n Please fix your mistakes."),
        ("try something else", "try something else"),
        (handle_value, "handled: boom"),
        ((ValueError,), "Error: ValueError('boom')\n Please fix your mistakes."),
    ],
    ids=["true", "str", "callable", "types"],
)
def test_handled_errors_go_to_the_model_as_toolnode_says(
    tmp_path: Path, handle: Any, content: str
) -> None:
    out = _errors(tmp_path, "value", handle)
    answer = out["messages"][-1]
    assert isinstance(answer, ToolMessage)
    assert (answer.content, answer.status) == (content, "error")
    record = out["calls"]["c0"]
    assert (record.status, record.error.kind if record.error else None) == ("failed", "tool_error")
    assert "__interrupt__" not in out


def test_an_error_the_setting_leaves_is_escalated_not_raised(tmp_path: Path) -> None:
    """ToolNode would raise out of the graph; Handrail asks a person (a deliberate difference)."""
    out = _errors(tmp_path, "type", handle_value)  # handles ValueError only
    assert _escalated(out) == ["c0"]


def test_default_handling_escalates_an_unknown_error(tmp_path: Path) -> None:
    out = _errors(tmp_path, "value", DEFAULT)  # ToolNode's default handles only invalid arguments
    assert _escalated(out) == ["c0"]


@pytest.mark.parametrize("kind", ["429", "500"])
def test_failures_handrail_knows_are_not_handed_to_the_setting(tmp_path: Path, kind: str) -> None:
    out = _errors(tmp_path, kind, True)
    if kind == "429":  # retried, then it worked
        assert out["messages"][-1].content == "ok 429" and attempts == ["429", "429"]
    else:  # escalated to a person, not shown to the model as an error
        assert _escalated(out) == ["c0"] and attempts == ["500"]


def test_a_failure_after_the_allowed_path_runs_nothing_twice(tmp_path: Path) -> None:
    """Two allowed calls run in the gate's step; one fails with a 500 and is escalated in the
    subgraph; the retry runs only the failed call."""
    calls_made.clear()
    attempts.clear()
    db = tmp_path / "g.db"
    graph = _graph(db, [note, fail], tool_turn(("note", {"text": "a"}), ("fail", {"kind": "500"})))
    out = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    assert _escalated(out) == ["c1"] and calls_made == ["a"]
    retry = {"decisions": [{"type": "retry"}], "approver": OPS}
    done = _graph(db, [note, fail], AIMessage("unused")).invoke(
        Command(resume=retry), config(), context=CTX
    )
    assert calls_made == ["a"] and attempts == ["500", "500"]
    answers = [m.content for m in done["messages"] if isinstance(m, ToolMessage)]
    assert answers == ["noted a", "ok 500"]
    assert {r.status for r in done["calls"].values()} == {"succeeded"}


def test_an_unknown_tool_is_answered_as_toolnode_answers_it(tmp_path: Path) -> None:
    graph = _graph(tmp_path / "g.db", [note], tool_turn(("nope", {})))
    out = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    answer = out["messages"][-1]
    assert isinstance(answer, ToolMessage) and answer.status == "error"
    assert "unknown tool 'nope'" in answer.text and "note" in answer.text


Wrapped = Annotated[str, AfterValidator(lambda v: f"<{v}>")]


@tool
def greet(name: Wrapped) -> str:
    """Greet ``name`` (its validator wraps it)."""
    calls_made.append(name)
    return f"hello {name}"


@pytest.mark.parametrize("x", ["allowed", "approved", "edited"])
def test_a_validator_that_changes_its_input_runs_once(tmp_path: Path, x: str) -> None:
    """The policy decides the validated arguments (``<alice>``); the tool is called with the
    arguments as given and validates them itself, once, as under ToolNode."""
    calls_made.clear()
    policy = Policy.from_yaml(
        """
version: 1
default: deny
rules:
  - {id: open, effect: allow, tools: [greet], roles: [ai-agent], when: "args.name == '<alice>'"}
  - id: check
    effect: ask
    tools: [greet]
    roles: [ai-agent]
    when: "args.name != '<alice>'"
    approvers: [treasurer]
"""
    )
    who = "alice" if x == "allowed" else "bob"
    saver = open_checkpointer(tmp_path / "g.db")
    builder = StateGraph(GateState)
    builder.add_node("model", lambda s: {"messages": [tool_turn(("greet", {"name": who}))]})
    builder.add_node("tools", build_tool_gate([greet], policy, db=saver))
    builder.add_edge(START, "model")
    builder.add_edge("model", "tools")
    graph = builder.compile(checkpointer=saver)
    out = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    if x != "allowed":
        (request,) = [i.value for i in out["__interrupt__"]]
        assert request["action_requests"][0]["args"] == {"name": "<bob>"}
        resume = approve() if x == "approved" else edit("greet", {"name": "carol"})
        out = graph.invoke(Command(resume=resume), config(), context=CTX)
    expected = {"allowed": "<alice>", "approved": "<bob>", "edited": "<carol>"}[x]
    assert calls_made == [expected]
    assert out["calls"]["c0"].args == {"name": expected}
    assert out["messages"][-1].text.endswith(f"hello {expected}")
