"""langgraph-prebuilt's ``test_tool_node.py``, ported to `handrail.build_tool_gate`.

Upstream: langchain-ai/langgraph, ``libs/prebuilt/tests/test_tool_node.py`` at langgraph-prebuilt
1.1.3 (the installed version). The stored langgraph snapshot has no ``prebuilt==1.1.3`` tag (its
newest is ``prebuilt==1.1.0``), so the file was read from the release's own sdist on PyPI,
``langgraph_prebuilt-1.1.3.tar.gz`` (``tests/test_tool_node.py``, sha256 5d470e6ac315e498…), which
is the tagged file as released.

Every upstream test function is a scenario; each is ported for its meaning (what a user of
``ToolNode`` observes: the ToolMessages, the state, the interrupts, the errors), with the gate as
the ``tools`` node of a real `StateGraph` on a real SQLite checkpointer (`upstream_support`).
Upstream calls of ``ToolNode.invoke`` on a raw state become a graph run; a raw list of tool
calls becomes a ``Send`` of that list (how a graph hands tool calls to a node). A few upstream
tests exercise private helpers; they map to the closest user-visible scenario (marked *mapped*).

Status: **passes**, or **deliberate** (a documented Handrail difference: the test asserts
Handrail's behaviour, its docstring says how it differs). The table of every upstream scenario,
its ported test(s) and its status is in tests/upstream/README.md.

Deliberate differences that recur:

- **An unhandled tool error goes to a person.** Where ToolNode raises an exception that
  ``handle_tool_errors`` leaves (its default handles only invalid arguments), the gate classifies
  it (``unknown``) and pauses for an operator (an escalation: retry or skip), so a call whose
  side effects are unknown is never dropped or silently retried.
- **Arguments are validated before the policy.** A call whose arguments the tool's schema
  refuses, or of a tool the gate does not have, is answered by Handrail's bad request ("... the
  tool was not run: ..."), whatever ``handle_tool_errors`` says; nothing raises.
- **The gate writes its records.** Beside ``messages``, the gate's update carries ``calls``
  (each call's `ToolCallRecord`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import operator
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn

import pytest
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ToolCallRequest
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    HumanMessage,
    RemoveMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.tools import BaseTool, InjectedToolArg, InjectedToolCallId, ToolException
from langchain_core.tools import tool as as_tool
from langgraph.config import get_stream_writer
from langgraph.graph import START, StateGraph
from langgraph.graph.message import REMOVE_ALL_MESSAGES, add_messages
from langgraph.prebuilt import InjectedState, InjectedStore, ToolRuntime, tools_condition
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, Send, interrupt
from pydantic import BaseModel, ValidationError
from pydantic.v1 import BaseModel as BaseModelV1
from support import AGENT
from typing_extensions import TypedDict
from upstream_support import (
    ALLOW_ALL,
    Graph,
    ai,
    arun,
    async_saver,
    config,
    gate_builder,
    gate_graph,
    hitl_agent,
    only_interrupt,
    run,
    run_async,
    start,
    tc,
    tool_messages,
)

from handrail import RunContext, ToolGateState, build_tool_gate
from handrail.graph import open_checkpointer
from handrail.state import ToolCallRecord
from handrail.testing import ScriptedChatModel

# -- upstream's tools -------------------------------------------------------------------------


def tool1(some_val: int, some_other_val: str) -> str:
    """Tool 1 docstring."""
    if some_val == 0:
        msg = "Test error"
        raise ValueError(msg)
    return f"{some_val} - {some_other_val}"


async def tool2(some_val: int, some_other_val: str) -> str:
    """Tool 2 docstring."""
    if some_val == 0:
        msg = "Test error"
        raise ToolException(msg)
    return f"tool2: {some_val} - {some_other_val}"


async def tool3(some_val: int, some_other_val: str) -> Any:
    """Tool 3 docstring."""
    return [
        {"key_1": some_val, "key_2": "foo"},
        {"key_1": some_other_val, "key_2": "baz"},
    ]


async def tool4(some_val: int, some_other_val: str) -> Any:
    """Tool 4 docstring."""
    return [
        {"type": "image_url", "image_url": {"url": "abdc"}},
    ]


@as_tool
def tool5(some_val: int) -> NoReturn:
    """Tool 5 docstring."""
    msg = "Test error"
    raise ToolException(msg)


tool5.handle_tool_error = "foo"

TOOL1, TOOL2, TOOL3, TOOL4 = (as_tool(f) for f in (tool1, tool2, tool3, tool4))


def last_message(result: dict[str, Any], key: str = "messages") -> ToolMessage:
    message = result[key][-1]
    assert isinstance(message, ToolMessage), result[key]
    return message


def escalation(result: dict[str, Any]) -> dict[str, Any]:
    """The escalation request the run paused on (an unknown failure goes to a human)."""
    request: dict[str, Any] = only_interrupt(result)
    assert request["handrail"]["kind"] == "escalation"
    return request


# -- results -----------------------------------------------------------------------------------


def test_tool_node(db: Path) -> None:
    """Sync and async tools answer with their result; a list of dicts becomes JSON text; content
    blocks stay blocks. (Upstream passes plain functions: see the next test.)"""
    result = run(
        gate_graph(db, [TOOL1], ai(tc("tool1", "some 0", some_val=1, some_other_val="foo")))
    )
    message = last_message(result)
    assert (message.type, message.content, message.tool_call_id) == ("tool", "1 - foo", "some 0")

    async def main() -> list[ToolMessage]:
        answers = []
        async with async_saver(db) as saver:
            for i, (tool, id_) in enumerate(
                ((TOOL2, "some 1"), (TOOL3, "some 2"), (TOOL4, "some 3"))
            ):
                turn = ai(tc(tool.name, id_, some_val=2, some_other_val="bar"))
                graph = gate_builder(saver, [tool], turn, db=db).compile(checkpointer=saver)
                answers.append(last_message(await arun(graph, thread=f"async-{i}")))
        return answers

    two, three, four = asyncio.run(main())
    assert two.content == "tool2: 2 - bar"
    assert three.content == '[{"key_1": 2, "key_2": "foo"}, {"key_1": "bar", "key_2": "baz"}]'
    assert three.tool_call_id == "some 2"
    assert four.content == [{"type": "image_url", "image_url": {"url": "abdc"}}]
    assert four.tool_call_id == "some 3"


def test_tool_node_plain_functions(db: Path) -> None:
    """Upstream's ``ToolNode([tool1])``: a plain function is a tool."""
    result = run(
        gate_graph(db, [tool1], ai(tc("tool1", "some 0", some_val=1, some_other_val="foo")))
    )
    assert last_message(result).content == "1 - foo"


@pytest.mark.parametrize(
    "payload",
    [
        "tool_calls",
        "tool_call_with_context",
    ],
)
def test_tool_node_tool_call_input(db: Path, payload: str) -> None:
    """Tool calls handed to the node directly (upstream: ``ToolNode.invoke([tool_call, ...])``;
    in a graph: ``Send("tools", [tool_call, ...])``, or create_agent's ``ToolCallWithContext``).
    Upstream's unknown-tool call reuses the first call's id (a copy); here it has its own."""
    calls = [
        tc("tool1", "some 0", some_val=1, some_other_val="foo"),
        tc("tool1", "some 1", some_val=2, some_other_val="bar"),
        tc("tool2", "some 2", some_val=1, some_other_val="foo"),
    ]

    def sends(turn: AIMessage) -> list[Send]:
        if payload == "tool_calls":
            return [Send("tools", list(turn.tool_calls))]
        return [
            Send("tools", {"__type": "tool_call_with_context", "tool_call": c, "state": {}})
            for c in turn.tool_calls
        ]

    result = run(gate_graph(db, [TOOL1], ai(*calls), sends=sends))
    answers = {m.tool_call_id: m for m in tool_messages(result)}
    assert answers["some 0"].content == "1 - foo"
    assert answers["some 1"].content == "2 - bar"
    assert answers["some 2"].status == "error"
    assert "tool2" in answers["some 2"].text and "tool1" in answers["some 2"].text


# -- errors ------------------------------------------------------------------------------------


def test_tool_node_error_handling_default_invocation(db: Path) -> None:
    """Arguments the tool's schema refuses answer the model with an error and run nothing.

    Deliberate difference: Handrail validates (and coerces) the arguments before the policy
    sees them, so the refusal is Handrail's bad request ("Bad request, the tool was not run:
    invalid arguments for 'tool1': some_val: Field required; ..."), not ToolNode's "Error
    invoking tool 'tool1' with kwargs {...} with error: ...".
    """
    result = run(gate_graph(db, [TOOL1], ai(tc("tool1", "some id", invalid=0, args="foo"))))
    messages = tool_messages(result)
    assert all(m.status == "error" for m in messages) and len(messages) == 1
    assert "not run" in messages[0].text
    assert "some_val" in messages[0].text and "some_other_val" in messages[0].text
    assert result["calls"]["some id"].error.kind == "bad_request"


def test_tool_node_error_handling_default_exception(db: Path) -> None:
    """A ``ValueError`` that ``handle_tool_errors``' default does not handle.

    Deliberate difference: ToolNode raises it out of the run; Handrail classifies it (``unknown``)
    and asks an operator (an escalation interrupt: retry, skip or abort), so a failed call whose
    side effects are unknown is never silently dropped or retried.
    """
    result = run(
        gate_graph(db, [TOOL1], ai(tc("tool1", "some id", some_val=0, some_other_val="foo")))
    )
    request = escalation(result)
    call = request["handrail"]["calls"]["some id"]
    assert call["error"]["kind"] == "unknown"
    assert "ValueError" in call["error"]["message"] and "Test error" in call["error"]["message"]


def _handle_all(e: ValueError | ToolException) -> str:
    return f"Error: {e!r}\n Please fix your mistakes."


# ToolNode reads the handler's annotation object (this module's annotations are strings).
_handle_all.__annotations__ = {"e": ValueError | ToolException, "return": str}


@pytest.mark.parametrize(
    "handle_tool_errors",
    [True, (ValueError, ToolException), _handle_all],
    ids=["true", "tuple", "callable"],
)
def test_tool_node_error_handling(db: Path, handle_tool_errors: Any) -> None:
    """Handled failures answer the model with ToolNode's error text; a validation error (tool3
    without ``some_other_val``) names the field."""
    turn = ai(
        tc("tool1", "some id", some_val=0, some_other_val="foo"),
        tc("tool2", "some other id", some_val=0, some_other_val="bar"),
        tc("tool3", "another id", some_val=0),
    )
    result = run_async(db, [TOOL1, TOOL2, TOOL3], turn, handle_tool_errors=handle_tool_errors)
    answers = {m.tool_call_id: m for m in tool_messages(result)}
    assert all(m.status == "error" for m in answers.values())
    assert (
        answers["some id"].content
        == f"Error: {ValueError('Test error')!r}\n Please fix your mistakes."
    )
    assert answers["some other id"].content == (
        f"Error: {ToolException('Test error')!r}\n Please fix your mistakes."
    )
    assert "some_other_val" in answers["another id"].text


def _value_error(e: ValueError) -> str:
    return "Value error"


@pytest.mark.parametrize(
    "handle_tool_errors", ["Value error", _value_error], ids=["string", "callable"]
)
def test_tool_node_error_handling_callable(db: Path, handle_tool_errors: Any) -> None:
    """A string, or a callable typed for ``ValueError``, answers a ``ValueError``."""
    turn = ai(tc("tool1", "some id", some_val=0, some_other_val="foo"))
    result = run(gate_graph(db, [TOOL1], turn, handle_tool_errors=handle_tool_errors))
    message = last_message(result)
    assert (message.status, message.content) == ("error", "Value error")


def _tool_exception(e: ToolException) -> str:
    return "Tool exception"


@pytest.mark.parametrize(
    ("handle_tool_errors", "unhandled"),
    [
        ((ValueError,), "ToolException"),
        (_value_error, "ToolException"),
        ((ToolException,), "ValueError"),
        (_tool_exception, "ValueError"),
    ],
    ids=["tuple-value", "callable-value", "tuple-tool", "callable-tool"],
)
def test_tool_node_error_handling_callable_unhandled_escalates(
    db: Path, handle_tool_errors: Any, unhandled: str
) -> None:
    """Upstream's second half: an exception the setting does not cover.

    Deliberate difference: ToolNode raises it; Handrail escalates it to an operator (``unknown``),
    while the covered one answers the model.
    """
    turn = ai(
        tc("tool1", "some id", some_val=0, some_other_val="foo"),
        tc("tool2", "some other id", some_val=0, some_other_val="bar"),
    )
    request = escalation(run_async(db, [TOOL1, TOOL2], turn, handle_tool_errors=handle_tool_errors))
    (call,) = request["handrail"]["calls"].values()
    assert unhandled in call["error"]["message"]


def test_tool_node_handle_tool_errors_false(db: Path) -> None:
    """``handle_tool_errors=False``: nothing is turned into a message by ToolNode.

    Deliberate differences: where ToolNode raises the ``ValueError``/``ToolException``, Handrail
    escalates it (``unknown``); where it raises ``ToolInvocationError`` for arguments the schema
    refuses, Handrail has already answered the model with a bad request (its own validation
    runs before the policy), so nothing raises.
    """
    turn = ai(tc("tool1", "some id", some_val=0, some_other_val="foo"))
    graph = gate_graph(db, [TOOL1], turn, handle_tool_errors=False)
    (call,) = escalation(run(graph, thread="sync"))["handrail"]["calls"].values()
    assert "ValueError" in call["error"]["message"]
    turn = ai(tc("tool2", "some id", some_val=0, some_other_val="bar"))
    result = run_async(db, [TOOL2], turn, thread="async", handle_tool_errors=False)
    (call,) = escalation(result)["handrail"]["calls"].values()
    assert "ToolException" in call["error"]["message"]
    graph = gate_graph(
        db, [TOOL1], ai(tc("tool1", "some id", some_val=0)), handle_tool_errors=False
    )
    message = last_message(run(graph, thread="t-invalid"))
    assert message.status == "error" and message.text.startswith("Bad request")


@pytest.mark.parametrize(
    "node_setting",
    [None, "bar"],
    ids=["default", "bar"],
)
def test_tool_node_individual_tool_error_handling(db: Path, node_setting: str | None) -> None:
    """A tool's own ``handle_tool_error`` answers its failure (and wins over the node's)."""
    options = {} if node_setting is None else {"handle_tool_errors": node_setting}
    result = run(gate_graph(db, [tool5], ai(tc("tool5", "some 0", some_val=0)), **options))
    message = last_message(result)
    assert (message.type, message.status, message.content) == ("tool", "error", "foo")
    assert message.tool_call_id == "some 0"


def test_tool_node_incorrect_tool_name(db: Path) -> None:
    """A call of a tool the node does not have answers the model with an error naming the tools.

    Deliberate difference (wording): Handrail's bad request ("... unknown tool 'tool3'; known
    tools: tool1, tool2"), not ToolNode's "Error: tool3 is not a valid tool, try one of [tool1,
    tool2]."
    """
    turn = ai(tc("tool3", "some 0", some_val=1, some_other_val="foo"))
    message = last_message(run(gate_graph(db, [TOOL1, TOOL2], turn)))
    assert (message.type, message.status, message.tool_call_id) == ("tool", "error", "some 0")
    assert "unknown tool 'tool3'" in message.text
    assert "tool1" in message.text and "tool2" in message.text


def _handled(e: Exception) -> str:
    return "handled"


@pytest.mark.parametrize(
    "handle_tool_errors",
    [
        None,
        True,
        (Exception,),
        "handled",
        _handled,
        False,
    ],
    ids=["default", "true", "tuple", "string", "callable", "false"],
)
def test_tool_node_node_interrupt(db: Path, handle_tool_errors: Any) -> None:
    """An interrupt raised in a tool is never handled as a tool error, whatever the setting
    (upstream raises a bare ``GraphBubbleUp``; in a graph that is the tool's ``interrupt()``)."""

    @as_tool
    def tool_interrupt(some_val: int) -> str:
        """Tool docstring."""
        return str(interrupt("foo"))

    options = {} if handle_tool_errors is None else {"handle_tool_errors": handle_tool_errors}
    graph = gate_graph(
        db, [tool_interrupt], ai(tc("tool_interrupt", "some 0", some_val=0)), **options
    )
    assert only_interrupt(run(graph)) == "foo"


# -- an interrupt inside a tool, answered badly -------------------------------------------------


class _Approval(BaseModel):
    approved: bool


class _AskState(TypedDict, total=False):
    answer: str


def _approval_graph() -> Graph:
    """A graph that asks a human for approval with a typed interrupt."""

    def ask(state: _AskState) -> _AskState:
        approval = interrupt("Approve?", response_schema=_Approval)
        return {"answer": f"approved={approval.approved}"}

    graph: Graph = StateGraph(_AskState).add_node("ask", ask).add_edge(START, "ask").compile()
    return graph


def _handle_any(e):  # type: ignore[no-untyped-def]  # no annotation: handles every error
    return "handled"


_ERRORS = pytest.mark.parametrize(
    "handle_tool_errors",
    [
        None,
        True,
        (ValueError,),
        _handle_any,
    ],
    ids=["default", "handle_true", "handle_value_error", "untyped"],
)
_SHAPE = pytest.mark.parametrize("nested", [True, False], ids=["nested", "direct"])


@_ERRORS
@_SHAPE
def test_tool_node_reraises_invalid_resume(db: Path, nested: bool, handle_tool_errors: Any) -> None:
    """A bad answer to a tool's typed interrupt fails the run without saving it, whatever
    ``handle_tool_errors`` is, so the same interrupt can be answered again. (Upstream's
    ``wrapped`` dimension, a ToolNode ``wrap_tool_call``, has no gate counterpart.)"""
    asker = _approval_graph()

    @as_tool
    def ask_human() -> str:
        """Ask a human for approval."""
        if nested:
            return str(asker.invoke({})["answer"])
        approval = interrupt("Approve?", response_schema=_Approval)
        return f"approved={approval.approved}"

    options = {} if handle_tool_errors is None else {"handle_tool_errors": handle_tool_errors}
    graph = gate_graph(db, [ask_human], ai(tc("ask_human", "call_1")), **options)
    [pending_] = run(graph)["__interrupt__"]

    with pytest.raises(ValidationError, match="approved"):
        graph.invoke(Command(resume={pending_.id: {"approved": "maybe"}}), config(), context=_ctx())
    assert [i.id for i in graph.get_state(config()).interrupts] == [pending_.id]

    result = graph.invoke(
        Command(resume={pending_.id: {"approved": True}}), config(), context=_ctx()
    )
    assert result["messages"][-1].content == "approved=True"


def _ctx() -> RunContext:
    return RunContext(actor=AGENT)


@_ERRORS
@_SHAPE
def test_tool_node_reraises_invalid_resume_async(
    db: Path, nested: bool, handle_tool_errors: Any
) -> None:
    """`test_tool_node_reraises_invalid_resume` under ``ainvoke``, with an async tool."""
    asker = _approval_graph()

    @as_tool
    async def ask_human() -> str:
        """Ask a human for approval."""
        if nested:
            return str((await asker.ainvoke({}))["answer"])
        approval = interrupt("Approve?", response_schema=_Approval)
        return f"approved={approval.approved}"

    options = {} if handle_tool_errors is None else {"handle_tool_errors": handle_tool_errors}

    async def main() -> None:
        async with async_saver(db) as saver:
            builder = gate_builder(
                saver, [ask_human], ai(tc("ask_human", "call_1")), db=db, **options
            )
            graph = builder.compile(checkpointer=saver)
            [pending_] = (await arun(graph))["__interrupt__"]
            with pytest.raises(ValidationError, match="approved"):
                await graph.ainvoke(
                    Command(resume={pending_.id: {"approved": "maybe"}}), config(), context=_ctx()
                )
            state = await graph.aget_state(config())
            assert [i.id for i in state.interrupts] == [pending_.id]
            result = await graph.ainvoke(
                Command(resume={pending_.id: {"approved": True}}), config(), context=_ctx()
            )
            assert result["messages"][-1].content == "approved=True"

    asyncio.run(main())


# -- tools that return Commands -----------------------------------------------------------------


class _State(ToolGateState):
    visited: Annotated[list[str], operator.add]
    foo: str


def _subagent_in(
    db: Path, tools: list[Any], turn: AIMessage, *nodes: str, sends: Any = None, **options: Any
) -> Graph:
    """The gate inside a subagent (model → tools), itself a node of an outer graph that has
    ``nodes`` (each records its visit): where a tool's ``Command(graph=PARENT)`` goes, as with
    a ToolNode inside a subagent."""
    saver = open_checkpointer(db)
    inner = gate_builder(saver, tools, turn, state=_State, sends=sends, **options).compile()
    outer = StateGraph(_State, context_schema=RunContext)
    outer.add_node("subagent", inner, destinations=nodes)
    for name in nodes:
        outer.add_node(name, partial(_visit, name))
    outer.add_edge(START, "subagent")
    graph: Graph = outer.compile(checkpointer=saver)
    return graph


def _visit(name: str, state: Any) -> dict[str, Any]:
    return {"visited": [name]}


def _add(a: int, b: int) -> int:
    """Add two numbers"""
    return a + b


@as_tool
def transfer_to_bob(tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
    """Transfer to Bob"""
    return Command(
        update={"messages": [ToolMessage(content="Transferred to Bob", tool_call_id=tool_call_id)]},
        goto="bob",
        graph=Command.PARENT,
    )


@as_tool
async def async_transfer_to_bob(tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
    """Transfer to Bob"""
    return Command(
        update={"messages": [ToolMessage(content="Transferred to Bob", tool_call_id=tool_call_id)]},
        goto="bob",
        graph=Command.PARENT,
    )


class _CustomToolSchema(BaseModel):
    tool_call_id: Annotated[str, InjectedToolCallId]


class _MyCustomTool(BaseTool):
    def _run(self, *args: Any, **kwargs: Any) -> Command[Any]:
        return Command(
            update={
                "messages": [
                    ToolMessage(content="Transferred to Bob", tool_call_id=kwargs["tool_call_id"])
                ]
            },
            goto="bob",
            graph=Command.PARENT,
        )

    async def _arun(self, *args: Any, **kwargs: Any) -> Command[Any]:
        return self._run(**kwargs)


custom_tool = _MyCustomTool(
    name="custom_transfer_to_bob", description="Transfer to bob", args_schema=_CustomToolSchema
)


def _transferred(result: dict[str, Any], ids: dict[str, str]) -> None:
    """The outer graph went to bob, with each transfer's ToolMessage (call id → tool name)."""
    assert "bob" in result["visited"]
    got = {m.tool_call_id: (m.name, m.content) for m in tool_messages(result)}
    for cid, name in ids.items():
        assert got[cid] == (name, "Transferred to Bob")


@pytest.mark.parametrize(
    "input_type",
    ["dict", "tool_calls"],
)
def test_tool_node_command(db: Path, input_type: str) -> None:
    """Tools returning ``Command(update=..., goto="bob", graph=PARENT)`` (alone, mixed with a
    plain tool, sync, async, a custom BaseTool, several at once) send the outer graph to bob
    with their ToolMessages; a Command for the parent needs no ToolMessage. (Upstream also
    checks ToolNode's refusals of malformed Commands: `test_tool_node_command_malformed`.)"""
    sends = (lambda t: [Send("tools", list(t.tool_calls))]) if input_type == "tool_calls" else None
    add = as_tool("add")(_add)
    mixed = ai(tc("add", "1", a=1, b=2), tc("transfer_to_bob", "2"))
    _transferred(
        run(_subagent_in(db, [add, transfer_to_bob], mixed, "bob", sends=sends)),
        {"2": "transfer_to_bob"},
    )
    for i, tool in enumerate([transfer_to_bob, custom_tool]):
        graph = _subagent_in(db, [tool], ai(tc(tool.name, "1")), "bob", sends=sends)
        _transferred(run(graph, thread=f"sync-{i}"), {"1": tool.name})

    async def main() -> None:
        async with async_saver(db) as saver:
            for i, tool in enumerate([async_transfer_to_bob, custom_tool]):
                inner = gate_builder(
                    saver, [tool], ai(tc(tool.name, "1")), state=_State, db=db, sends=sends
                )
                outer = StateGraph(_State, context_schema=RunContext)
                outer.add_node("subagent", inner.compile(), destinations=("bob",))
                outer.add_node("bob", partial(_visit, "bob"))
                outer.add_edge(START, "subagent")
                graph = outer.compile(checkpointer=saver)
                _transferred(await arun(graph, thread=f"async-{i}"), {"1": tool.name})

    asyncio.run(main())
    both = ai(tc("transfer_to_bob", "1"), tc("custom_transfer_to_bob", "2"))
    graph = _subagent_in(db, [transfer_to_bob, custom_tool], both, "bob", sends=sends)
    # Two Commands for the parent from one turn: in a graph, ToolNode's first one is applied.
    _transferred(run(graph, thread="both"), {"1": "transfer_to_bob"})

    @as_tool
    def node_update_parent_tool() -> Command[Any]:
        """No update"""
        return Command(update={"messages": []}, graph=Command.PARENT)

    graph = _subagent_in(
        db, [node_update_parent_tool], ai(tc("node_update_parent_tool", "1")), sends=sends
    )
    assert run(graph, thread="no-update")["messages"] == []


@as_tool
def list_update_tool(tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
    """My tool"""
    return Command(update=[ToolMessage(content="foo", tool_call_id=tool_call_id)])


@as_tool
def no_update_tool() -> Command[Any]:
    """My tool"""
    return Command(update={"messages": []})


@as_tool
def mismatching_tool_call_id_tool() -> Command[Any]:
    """My tool"""
    return Command(update={"messages": [ToolMessage(content="foo", tool_call_id="2")]})


@pytest.mark.parametrize(
    "tool", [list_update_tool, no_update_tool, mismatching_tool_call_id_tool], ids=lambda t: t.name
)
def test_tool_node_command_malformed(db: Path, tool: BaseTool) -> None:
    """Upstream's `test_tool_node_command`, second half: ToolNode refuses a Command whose update
    does not fit the state, or that answers no call or another call (``ValueError``).

    Deliberate difference: the gate does not raise out of the run; the failure is Handrail's
    ``unknown`` and an operator decides (an escalation naming ToolNode's error).
    """
    (call,) = escalation(run(gate_graph(db, [tool], ai(tc(tool.name, "1")))))["handrail"][
        "calls"
    ].values()
    assert call["error"]["kind"] == "unknown" and "ValueError" in call["error"]["message"]


Messages = Annotated[list[AnyMessage], add_messages]


@as_tool("transfer_to_bob")
def list_transfer_to_bob(tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
    """Transfer to Bob"""
    message = ToolMessage(content="Transferred to Bob", tool_call_id=tool_call_id)
    return Command(update=[message], goto="bob", graph=Command.PARENT)


def _list_state_graph(db: Path, tools: list[BaseTool], turn: AIMessage) -> Graph:
    """A subagent (model → gate) and an outer graph with a ``bob`` node, both with a bare list
    of messages as their state."""
    saver = open_checkpointer(db)
    inner = StateGraph(Messages, context_schema=RunContext)  # type: ignore[arg-type]
    inner.add_node("model", lambda _: [turn])
    inner.add_node("tools", build_tool_gate(tools, ALLOW_ALL, db=saver))
    inner.add_edge(START, "model")
    inner.add_edge("model", "tools")
    outer = StateGraph(Messages, context_schema=RunContext)  # type: ignore[arg-type]
    outer.add_node("subagent", inner.compile(), destinations=("bob",))
    outer.add_node("bob", lambda _: [AIMessage("bob here")])
    outer.add_edge(START, "subagent")
    graph: Graph = outer.compile(checkpointer=saver)
    return graph


@pytest.mark.parametrize(
    "tools",
    [
        "plain",
        "command",
    ],
)
def test_tool_node_command_list_input(db: Path, tools: str) -> None:
    """A graph whose state is a bare list of messages (upstream's list input): plain tools are
    answered, and a tool's ``Command(update=[ToolMessage], goto="bob", graph=PARENT)`` sends
    the outer graph to bob with that message (as ToolNode does in the same graphs)."""
    add = as_tool("add")(_add)
    if tools == "plain":
        graph = _list_state_graph(db, [add], ai(tc("add", "1", a=1, b=2)))
        result = graph.invoke([], config(), context=_ctx())
        kinds = [(type(m).__name__, m.content) for m in result]
        assert kinds == [("AIMessage", "hi?"), ("ToolMessage", "3")]
        return
    mixed = ai(tc("add", "1", a=1, b=2), tc("transfer_to_bob", "2"))
    graph = _list_state_graph(db, [add, list_transfer_to_bob], mixed)
    result = graph.invoke([], config(), context=_ctx())
    assert [(type(m).__name__, m.content) for m in result] == [
        ("ToolMessage", "Transferred to Bob"),
        ("AIMessage", "bob here"),
    ]


def test_tool_node_parent_command_with_send(db: Path) -> None:
    """Two tools each returning ``Command(graph=PARENT, goto=[Send(...)])``: the outer graph runs
    both targets, each with its own payload."""
    seen: list[tuple[str, list[str]]] = []

    @as_tool
    def transfer_to_alice(tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
        """Transfer to Alice"""
        message = ToolMessage(
            content="Transferred to Alice", name="transfer_to_alice", tool_call_id=tool_call_id
        )
        return Command(goto=[Send("alice", {"messages": [message]})], graph=Command.PARENT)

    @as_tool
    def transfer_to_bob_(tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
        """Transfer to Bob"""
        message = ToolMessage(
            content="Transferred to Bob", name="transfer_to_bob", tool_call_id=tool_call_id
        )
        return Command(goto=[Send("bob", {"messages": [message]})], graph=Command.PARENT)

    def target(name: str, state: Any) -> dict[str, Any]:
        seen.append((name, [m.content for m in state["messages"]]))
        return {"visited": [name]}

    saver = open_checkpointer(db)
    turn = ai(tc("transfer_to_alice", "1"), tc("transfer_to_bob_", "2"))
    inner = gate_builder(saver, [transfer_to_alice, transfer_to_bob_], turn, state=_State).compile()
    outer = StateGraph(_State, context_schema=RunContext)
    outer.add_node("subagent", inner, destinations=("alice", "bob"))
    outer.add_node("alice", partial(target, "alice"))
    outer.add_node("bob", partial(target, "bob"))
    outer.add_edge(START, "subagent")
    result = run(outer.compile(checkpointer=saver))
    assert sorted(seen) == [("alice", ["Transferred to Alice"]), ("bob", ["Transferred to Bob"])]
    assert sorted(result["visited"]) == ["alice", "bob"]


def test_tool_node_command_remove_all_messages(db: Path) -> None:
    """A tool's ``Command(update={"messages": [RemoveMessage(REMOVE_ALL_MESSAGES)]})`` empties the
    graph's messages."""

    @as_tool
    def remove_all_messages_tool(tool_call_id: Annotated[str, InjectedToolCallId]) -> Command[Any]:
        """A tool that removes all messages."""
        return Command(update={"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES)]})

    turn = ai(tc("remove_all_messages_tool", "tool_call_123"))
    assert run(gate_graph(db, [remove_all_messages_tool], turn))["messages"] == []


# -- injected state and store -------------------------------------------------------------------


class _InjectStateSchema(TypedDict):
    messages: list[AnyMessage]
    foo: str


class _InjectedStatePydanticV2Schema(BaseModel):
    messages: list[AnyMessage]
    foo: str


@dataclasses.dataclass
class _InjectedStateDataclassSchema:
    messages: list[AnyMessage]
    foo: str


class _InjectedStatePydanticSchema(BaseModelV1):
    messages: list  # type: ignore[type-arg]
    foo: str


_INJECTED_STATE_SCHEMAS = pytest.mark.parametrize(
    "schema_",
    [
        _InjectStateSchema,
        _InjectedStatePydanticV2Schema,
        _InjectedStateDataclassSchema,
        _InjectedStatePydanticSchema,
    ],
    ids=["typeddict", "pydantic", "dataclass", "pydantic_v1"],
)


def _injecting_tools() -> list[BaseTool]:
    def field(state: Any, name: str) -> Any:
        return state[name] if isinstance(state, dict) else getattr(state, name)

    @as_tool
    def tool1(some_val: int, state: Annotated[Any, InjectedState]) -> str:
        """Tool 1 docstring."""
        return str(field(state, "foo"))

    @as_tool
    def tool2(some_val: int, state: Annotated[Any, InjectedState()]) -> str:
        """Tool 2 docstring."""
        return str(field(state, "foo"))

    @as_tool
    def tool3(
        some_val: int,
        foo: Annotated[str, InjectedState("foo")],
        msgs: Annotated[list[AnyMessage], InjectedState("messages")],
    ) -> str:
        """Tool 1 docstring."""
        return foo

    @as_tool
    def tool4(some_val: int, msgs: Annotated[list[AnyMessage], InjectedState("messages")]) -> str:
        """Tool 1 docstring."""
        return str(msgs[0].content)

    return [tool1, tool2, tool3, tool4]


@_INJECTED_STATE_SCHEMAS
def test_tool_node_inject_state(db: Path, schema_: type[Any]) -> None:
    """``InjectedState`` (the whole state, a field, the messages) in a graph of each state
    schema kind. (Upstream's missing-key cases: `test_tool_node_inject_state_missing_key`;
    its list inputs are the Send scenarios.)"""
    tools = _injecting_tools()
    for name in ("tool1", "tool2", "tool3"):
        graph = gate_graph(db, tools, ai(tc(name, "some 0", some_val=1)), state=schema_)
        assert last_message(run(graph, thread=name, foo="bar")).content == "bar", name
    graph = gate_graph(db, tools, ai(tc("tool4", "some 0", some_val=1)), state=schema_)
    assert last_message(run(graph, thread="tool4", foo="")).content == "hi?"


def test_tool_node_inject_state_missing_key(db: Path) -> None:
    """Upstream's failure inputs (TypedDict state without ``foo``), with
    ``handle_tool_errors=True``: injecting the whole state, the tool's ``KeyError`` answers the
    model; injecting the missing field, ToolNode raises ``KeyError``.

    Deliberate difference for the second: Handrail escalates it to an operator (``unknown``).
    """
    tools = _injecting_tools()
    graph = gate_graph(
        db,
        tools,
        ai(tc("tool1", "some 0", some_val=1)),
        state=_InjectStateSchema,
        handle_tool_errors=True,
    )
    assert "KeyError" in last_message(run(graph, thread="whole")).text
    graph = gate_graph(
        db,
        tools,
        ai(tc("tool3", "some 0", some_val=1)),
        state=_InjectStateSchema,
        handle_tool_errors=True,
    )
    (call,) = escalation(run(graph, thread="field"))["handrail"]["calls"].values()
    assert "KeyError" in call["error"]["message"]


@_INJECTED_STATE_SCHEMAS
def test_tool_node_send_tool_call_gets_same_state_as_edge(db: Path, schema_: type[Any]) -> None:
    """A tool gets the same state (``runtime.state``, ``InjectedState``) whether its call came
    by ``Send("tools", [call])`` or by an edge."""
    seen: list[tuple[type, type]] = []

    @as_tool
    def record(runtime: ToolRuntime, state: Annotated[Any, InjectedState]) -> str:
        """Record the state types the tool gets."""
        seen.append((type(runtime.state), type(state)))
        return "ok"

    turn = ai(tc("record", "call_1"))

    def state_types(sends: Any, thread: str) -> tuple[type, type]:
        seen.clear()
        result = run(
            gate_graph(db, [record], turn, state=schema_, sends=sends), thread=thread, foo="bar"
        )
        assert last_message(result).content == "ok"
        return seen[0]

    by_send = state_types(lambda t: [Send("tools", list(t.tool_calls))], "send")
    by_edge = state_types(None, "edge")
    assert by_send == by_edge


def test_tool_node_in_graph_run_by_send_gets_that_graphs_state(db: Path) -> None:
    """A tool run in a graph that a ``Send`` started sees that graph's state, not the caller's.
    (Upstream calls ``ToolNode.invoke`` inside the inner graph's node; here the gate is the
    inner graph's node.)"""
    seen: list[Any] = []

    @as_tool
    def record(runtime: ToolRuntime) -> str:
        """Record the state the tool gets."""
        seen.append(runtime.state)
        return "ok"

    class State(ToolGateState):
        value: str

    saver = open_checkpointer(db)
    inner = gate_builder(saver, [record], ai(tc("record", "call_1")), state=State).compile()
    outer = StateGraph(State, context_schema=RunContext)
    outer.add_node("inner", inner)
    outer.add_conditional_edges(
        START, lambda _: [Send("inner", {"value": "inner", "messages": []})], ["inner"]
    )
    run(outer.compile(checkpointer=saver), value="outer")
    [state] = seen
    assert state["value"] == "inner"


def test_tool_node_inject_store(db: Path) -> None:
    """``InjectedStore`` gets the graph's store (with ``InjectedState`` beside it).

    Deliberate difference: in a graph compiled without a store, ToolNode's ``ValueError``
    ("please compile your graph with a store") fails the run; under the gate it is an
    ``unknown`` failure that an operator decides (an escalation naming that error).
    """
    store = InMemoryStore()
    namespace = ("test",)
    store.put(namespace, "test_key", {"foo": "bar"})

    @as_tool
    def tool1(some_val: int, store: Annotated[BaseStore, InjectedStore()]) -> str:
        """Tool 1 docstring."""
        store_val = store.get(namespace, "test_key").value["foo"]  # type: ignore[union-attr]
        return f"Some val: {some_val}, store val: {store_val}"

    @as_tool
    def tool2(some_val: int, store: Annotated[BaseStore, InjectedStore()]) -> str:
        """Tool 2 docstring."""
        store_val = store.get(namespace, "test_key").value["foo"]  # type: ignore[union-attr]
        return f"Some val: {some_val}, store val: {store_val}"

    @as_tool
    def tool3(
        some_val: int,
        bar: Annotated[str, InjectedState("bar")],
        store: Annotated[BaseStore, InjectedStore()],
    ) -> str:
        """Tool 3 docstring."""
        store_val = store.get(namespace, "test_key").value["foo"]  # type: ignore[union-attr]
        return f"Some val: {some_val}, store val: {store_val}, state val: {bar}"

    class State(ToolGateState):
        bar: str

    tools = [tool1, tool2, tool3]
    for name in ("tool1", "tool2"):
        graph = gate_graph(db, tools, ai(tc(name, "some 0", some_val=1)), state=State, store=store)
        assert last_message(run(graph, thread=name)).content == "Some val: 1, store val: bar"
    turn = ai(tc("tool3", "some 0", some_val=1))
    graph = gate_graph(db, tools, turn, state=State, store=store)
    assert last_message(run(graph, thread="tool3", bar="baz")).content == (
        "Some val: 1, store val: bar, state val: baz"
    )
    result = run(gate_graph(db, tools, turn, state=State), thread="no-store", bar="baz")
    (call,) = escalation(result)["handrail"]["calls"].values()
    assert "ValueError" in call["error"]["message"] and "store" in call["error"]["message"]


def test_tool_node_ensure_utf8(db: Path) -> None:
    """A list result is JSON text with its non-ASCII characters kept."""

    @as_tool
    def get_day_list(days: list[str]) -> list[str]:
        """choose days"""
        return days

    data = ["星期一", "水曜日", "목요일", "Friday"]
    result = run(gate_graph(db, [get_day_list], ai(tc("get_day_list", "test_id", days=data))))
    assert last_message(result).content == json.dumps(data, ensure_ascii=False)


def test_tool_node_messages_key(db: Path) -> None:
    """The gate reads and answers the calls under another messages key, in a model ⇄ tools
    loop routed by ``tools_condition(messages_key=...)``."""

    @as_tool
    def add(a: int, b: int) -> int:
        """Adds a and b."""
        return a + b

    class State(TypedDict):
        subgraph_messages: Annotated[list[AnyMessage], add_messages]
        calls: Annotated[dict[str, ToolCallRecord], operator.or_]

    model = ScriptedChatModel(
        [AIMessage("hi", tool_calls=[tc("add", "test_id", a=1, b=2)]), AIMessage("hi-hi-3")]
    )
    saver = open_checkpointer(db)
    builder = StateGraph(State, context_schema=RunContext)
    builder.add_node(
        "agent", lambda s: {"subgraph_messages": [model.invoke(s["subgraph_messages"])]}
    )
    builder.add_node(
        "tools", build_tool_gate([add], ALLOW_ALL, db=saver, messages_key="subgraph_messages")
    )
    builder.add_conditional_edges(
        "agent", partial(tools_condition, messages_key="subgraph_messages")
    )
    builder.add_edge(START, "agent")
    builder.add_edge("tools", "agent")
    graph = builder.compile(checkpointer=saver)
    result = graph.invoke({"subgraph_messages": [HumanMessage("hi")]}, config(), context=_ctx())
    contents = [(type(m).__name__, m.content) for m in result["subgraph_messages"]]
    assert contents == [
        ("HumanMessage", "hi"),
        ("AIMessage", "hi"),
        ("ToolMessage", "3"),
        ("AIMessage", "hi-hi-3"),
    ]


def test_tool_node_stream_writer(db: Path) -> None:
    """A tool's stream writer events come out of ``stream_mode="custom"``, then the node's
    update with its ToolMessage. (The gate's update also carries ``calls``, its records: a
    deliberate addition.)"""

    @as_tool
    def streaming_tool(x: int) -> str:
        """Do something with writer."""
        my_writer = get_stream_writer()
        for value in ["foo", "bar", "baz"]:
            my_writer({"custom_tool_value": value})
        return str(x)

    graph = gate_graph(db, [streaming_tool], ai(tc("streaming_tool", "1", x=1)))
    inputs = {"messages": []}
    custom = list(graph.stream(inputs, config("custom"), context=_ctx(), stream_mode="custom"))
    assert custom == [{"custom_tool_value": v} for v in ("foo", "bar", "baz")]
    both = list(
        graph.stream(inputs, config("both"), context=_ctx(), stream_mode=["custom", "updates"])
    )
    assert [c for mode, c in both if mode == "custom"] == custom
    [update] = [u["tools"] for mode, u in both if mode == "updates" and "tools" in u]
    assert [(m.name, m.content, m.tool_call_id) for m in update["messages"]] == [
        ("streaming_tool", "1", "1")
    ]


def test_tool_call_request_setattr_deprecation_warning(db: Path) -> None:
    """*Mapped*: upstream checks ``ToolCallRequest``'s private setattr deprecation (middleware
    must use ``request.override``). User-visible: calls that HandrailMiddleware runs inside
    create_agent's tool node (and wraps, beside another wrapping middleware) warn nothing."""

    class Passthrough(AgentMiddleware[Any, Any, Any]):
        def wrap_tool_call(
            self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Any]
        ) -> Any:
            return handler(request.override(tool_call={**request.tool_call}))

    agent = hitl_agent(
        db,
        [TOOL1],
        [ai(tc("tool1", "c1", some_val=1, some_other_val="x"))],
        ALLOW_ALL,
        before=[Passthrough()],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = start(agent)
    assert [m.content for m in tool_messages(result)] == ["1 - x"]
    assert not [w for w in caught if "override" in str(w.message)]


# -- every injection at once, async -------------------------------------------------------------


class _TestState(ToolGateState):
    foo: str
    bar: int


async def comprehensive_async_tool(
    x: int,
    whole_state: Annotated[_TestState, InjectedState],
    foo_field: Annotated[str, InjectedState("foo")],
    store: Annotated[BaseStore, InjectedStore()],
    runtime: ToolRuntime,
) -> str:
    """Async tool that uses all injection types."""
    store_val = store.get(("test",), "test_key").value["store_data"]  # type: ignore[union-attr]
    return (
        f"x={x}, bar_from_whole={whole_state['bar']}, foo_field={foo_field}, store={store_val}, "
        f"foo_from_runtime={runtime.state['foo']}, tool_call_id={runtime.tool_call_id}"
    )


class _ComprehensiveToolSchema(BaseModel):
    model_config = {"arbitrary_types_allowed": True}
    x: int
    whole_state: Annotated[_TestState, InjectedState]
    foo_field: Annotated[str, InjectedState("foo")]
    store: Annotated[BaseStore, InjectedStore()]
    runtime: ToolRuntime


def _all_injections(db: Path, tool: Any, call_id: str) -> None:
    store = InMemoryStore()
    store.put(("test",), "test_key", {"store_data": "from_store"})
    turn = ai(tc("comprehensive_async_tool", call_id, x=42))

    async def main() -> dict[str, Any]:
        async with async_saver(db) as saver:
            graph = gate_builder(saver, [tool], turn, state=_TestState, db=db).compile(
                checkpointer=saver, store=store
            )
            return await arun(graph, foo="foo_value", bar=99)

    assert last_message(asyncio.run(main())).content == (
        f"x=42, bar_from_whole=99, foo_field=foo_value, store=from_store, "
        f"foo_from_runtime=foo_value, tool_call_id={call_id}"
    )


def test_tool_node_inject_async_all_types_signature_only(db: Path) -> None:
    """Every injection (whole state, a field, the store, ToolRuntime) in a plain async function."""
    _all_injections(db, comprehensive_async_tool, "test_call_123")


def test_tool_node_inject_async_all_types_with_decorator(db: Path) -> None:
    """Every injection in an ``@tool`` async function."""
    _all_injections(db, as_tool(comprehensive_async_tool), "test_call_456")


def test_tool_node_inject_async_all_types_with_schema(db: Path) -> None:
    """Every injection, declared in the tool's explicit ``args_schema``."""
    tool = as_tool(args_schema=_ComprehensiveToolSchema)(comprehensive_async_tool)
    _all_injections(db, tool, "test_call_789")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MyContext(RunContext):
    some_info: str


def test_tool_node_tool_runtime_generic(db: Path) -> None:
    """``ToolRuntime[MyContext]`` gets the run's context. Handrail's graphs run with a
    `RunContext` (who acts); a subclass carries the user's own fields."""

    @as_tool
    def get_info(rt: ToolRuntime[_MyContext]) -> str:
        """This tool returns info from context."""
        return rt.context.some_info

    graph = gate_graph(db, [get_info], ai(tc("get_info", "call_1"), content="call tool"))
    result = graph.invoke(
        {"messages": []}, config(), context=_MyContext(actor=AGENT, some_info="test_info")
    )
    message = last_message(result)
    assert (message.type, message.content, message.tool_call_id) == ("tool", "test_info", "call_1")


# -- tools the node was not given (create_agent's dynamic tools) --------------------------------


@as_tool
def static_tool(x: int) -> str:
    """A static tool registered at init."""
    return f"static: {x}"


@as_tool
def dynamic_tool_with_runtime(x: int, runtime: ToolRuntime) -> str:
    """A dynamic tool that needs ToolRuntime injection."""
    return f"dynamic: x={x}, tool_call_id={runtime.tool_call_id}"


@as_tool("dynamic_tool_with_runtime")
async def async_dynamic_tool_with_runtime(x: int, runtime: ToolRuntime) -> str:
    """A dynamic async tool that needs ToolRuntime injection."""
    return f"dynamic: x={x}, tool_call_id={runtime.tool_call_id}"


class _DynamicTool(AgentMiddleware[Any, Any, Any]):
    """Offers the model a tool create_agent was not given, and runs it (upstream's
    ``wrap_tool_call`` that swaps in an unregistered tool)."""

    def __init__(self, tool: BaseTool) -> None:
        super().__init__()
        self.tool = tool

    def wrap_model_call(self, request: ModelRequest[Any], handler: Callable[..., Any]) -> Any:
        return handler(request.override(tools=[*request.tools, self.tool]))

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[..., Any]
    ) -> Any:
        return await handler(request.override(tools=[*request.tools, self.tool]))

    def wrap_tool_call(self, request: ToolCallRequest, handler: Callable[..., Any]) -> Any:
        if request.tool_call["name"] == self.tool.name:
            return handler(request.override(tool=self.tool))
        return handler(request)

    async def awrap_tool_call(self, request: ToolCallRequest, handler: Callable[..., Any]) -> Any:
        if request.tool_call["name"] == self.tool.name:
            return await handler(request.override(tool=self.tool))
        return await handler(request)


def test_tool_node_inject_runtime_dynamic_tool_via_wrap_tool_call(db: Path) -> None:
    """*Mapped*: the gate has no ``wrap_tool_call``; the same scenario is create_agent with a
    middleware that adds a tool at run time, and HandrailMiddleware deciding and running it:
    the dynamic tool gets its ``ToolRuntime``."""
    turn = ai(tc("dynamic_tool_with_runtime", "call_dynamic_1", x=42))
    agent = hitl_agent(
        db, [static_tool], [turn], ALLOW_ALL, before=[_DynamicTool(dynamic_tool_with_runtime)]
    )
    message = tool_messages(start(agent))[-1]
    assert message.content == "dynamic: x=42, tool_call_id=call_dynamic_1"
    assert message.tool_call_id == "call_dynamic_1"


def test_tool_node_inject_runtime_dynamic_tool_via_wrap_tool_call_async(db: Path) -> None:
    """The same under ``ainvoke``, with an async dynamic tool."""
    turn = ai(tc("dynamic_tool_with_runtime", "call_dynamic_2", x=42))

    async def main() -> dict[str, Any]:
        async with async_saver(db) as saver:
            agent = hitl_agent(
                db,
                [static_tool],
                [turn],
                ALLOW_ALL,
                saver=saver,
                before=[_DynamicTool(async_dynamic_tool_with_runtime)],
            )
            result: dict[str, Any] = await agent.ainvoke(
                {"messages": [("user", "go")]}, config(), context=_ctx()
            )
            return result

    message = tool_messages(asyncio.run(main()))[-1]
    assert message.content == "dynamic: x=42, tool_call_id=call_dynamic_2"


# -- ToolRuntime's run information --------------------------------------------------------------


def test_tool_runtime_defaults_tools_to_empty_list(db: Path) -> None:
    """*Mapped*: upstream checks ``ToolRuntime``'s constructor default (``tools == []``). In a
    gate-run tool, ``runtime.tools`` is always a list: the gate's tools."""
    captured: dict[str, Any] = {}

    @as_tool
    def info_tool(x: int, runtime: ToolRuntime) -> str:
        """Tool that captures runtime info."""
        captured["tools"] = runtime.tools
        return "ok"

    run(gate_graph(db, [info_tool], ai(tc("info_tool", "call-1", x=1))))
    assert isinstance(captured["tools"], list)
    assert [t.name for t in captured["tools"]] == ["info_tool"]


def _runtime_info(db: Path, *, use_async: bool) -> None:
    captured: dict[str, Any] = {}

    def info(x: int, runtime: ToolRuntime) -> str:
        """Tool that captures runtime info."""
        captured.update(
            execution_info=runtime.execution_info,
            server_info=runtime.server_info,
            tools=runtime.tools,
        )
        return "ok"

    async def ainfo(x: int, runtime: ToolRuntime) -> str:
        """Async tool that captures runtime info."""
        return info(x, runtime)

    info_tool = as_tool("info_tool")(ainfo if use_async else info)

    @as_tool
    def other_tool(y: int) -> str:
        """Another tool available to the runtime."""
        return str(y)

    turn = ai(tc("info_tool", "call-1", x=1))
    if use_async:

        async def main() -> dict[str, Any]:
            async with async_saver(db) as saver:
                graph = gate_builder(saver, [info_tool, other_tool], turn, db=db).compile(
                    checkpointer=saver
                )
                return await arun(graph)

        result = asyncio.run(main())
    else:
        result = run(gate_graph(db, [info_tool, other_tool], turn))
    assert last_message(result).content == "ok"
    assert captured["execution_info"].thread_id == "t-1"
    assert captured["execution_info"].task_id
    assert captured["server_info"] is None  # not on a LangGraph server
    assert [t.name for t in captured["tools"]] == ["info_tool", "other_tool"]


def test_tool_runtime_forwards_execution_info_server_info_and_tools(db: Path) -> None:
    """A gate-run tool's ``ToolRuntime`` carries the run's execution info (thread, task), its
    server info (None off a server) and the node's tools. (Upstream mocks the Runtime; here it is
    a real run's.)"""
    _runtime_info(db, use_async=False)


def test_tool_runtime_forwards_execution_info_server_info_and_tools_async(db: Path) -> None:
    """The same under ``ainvoke``."""
    _runtime_info(db, use_async=True)


# -- injected arguments the model tries to supply ----------------------------------------------


class _InjectedAuth(InjectedToolArg):
    pass


@as_tool
def read_secret(query: str, auth: Annotated[dict[str, Any], InjectedToolArg()]) -> str:
    """Return secret data based on auth role."""
    return "ADMIN_SECRET" if auth.get("role") == "admin" else "PUBLIC_DATA"


@as_tool("read_secret")
def read_secret_custom(query: str, auth: Annotated[dict[str, Any], _InjectedAuth()]) -> str:
    """Return secret data based on auth role."""
    return "ADMIN_SECRET" if auth.get("role") == "admin" else "PUBLIC_DATA"


def _strip_case(db: Path, tool: BaseTool) -> None:
    turn = ai(tc("read_secret", "call-1", query="hello", auth={"role": "admin"}))
    result = run(gate_graph(db, [tool], turn))
    assert result["messages"][-1].type == "tool"
    assert "ADMIN_SECRET" not in str(result["messages"][-1].content)
    assert result["calls"]["call-1"].args == {"query": "hello"}  # nor did the policy see it


def test_tool_node_strips_plain_injected_tool_arg(db: Path) -> None:
    """A value the model supplies for an ``InjectedToolArg`` is dropped (and never reaches the
    policy or the args hash). Upstream sets ``handle_tool_errors=True``; the default already
    answers the tool's missing-argument error."""
    _strip_case(db, read_secret)


def test_tool_node_strips_custom_injected_tool_arg_subclass(db: Path) -> None:
    """The same for a subclass of ``InjectedToolArg``."""
    _strip_case(db, read_secret_custom)


def test_tool_node_injected_state_overwrites_llm_value(db: Path) -> None:
    """``InjectedState`` comes from the graph's state, never from the model's arguments."""

    @as_tool
    def read_secret(query: str, auth: Annotated[dict[str, Any], InjectedState("auth")]) -> str:
        """Return secret data based on auth from graph state."""
        return "ADMIN_SECRET" if auth.get("role") == "admin" else "PUBLIC_DATA"

    class State(ToolGateState):
        auth: dict[str, Any]

    turn = ai(tc("read_secret", "call-1", query="hello", auth={"role": "admin"}))
    result = run(gate_graph(db, [read_secret], turn, state=State), auth={"role": "viewer"})
    assert last_message(result).content == "PUBLIC_DATA"
    assert result["calls"]["call-1"].args == {"query": "hello"}


# -- tools returning a list of Commands and ToolMessages ----------------------------------------


class _ReturningTool(BaseTool):
    """A tool that returns a configured value verbatim."""

    name: str = "list_tool"
    description: str = "Returns a configured value"
    return_value: Any = None

    def _run(self, **kwargs: Any) -> Any:
        return self.return_value

    async def _arun(self, **kwargs: Any) -> Any:
        return self.return_value


def _returning(
    db: Path, value: Any, *others: BaseTool, calls: list[ToolCall] | None = None, **options: Any
) -> dict[str, Any]:
    turn = ai(*(calls or [tc("list_tool", "call-1")]))
    return run(
        gate_graph(db, [_ReturningTool(return_value=value), *others], turn, state=_State, **options)
    )


def test_tool_node_list_return_command_and_tool_message(db: Path) -> None:
    """``[Command(update={"foo": "bar"}), ToolMessage(...)]``: the update is applied and the
    ToolMessage answers the call."""
    result = _returning(
        db, [Command(update={"foo": "bar"}), ToolMessage(content="done", tool_call_id="call-1")]
    )
    assert result["foo"] == "bar"
    message = last_message(result)
    assert (message.content, message.tool_call_id) == ("done", "call-1")


def test_tool_node_list_return_nested_terminator(db: Path) -> None:
    """The answering ToolMessage may sit inside a Command's ``messages`` update."""
    value = [
        Command(update={"foo": "bar"}),
        Command(update={"messages": [ToolMessage(content="done", tool_call_id="call-1")]}),
    ]
    result = _returning(db, value)
    assert result["foo"] == "bar"
    assert [(m.content, m.tool_call_id) for m in tool_messages(result)] == [("done", "call-1")]


def test_tool_node_list_return_parent_goto_with_terminator(db: Path) -> None:
    """``[Command(graph=PARENT, goto=[Send("child", {})]), ToolMessage(...)]``: the parent
    graph runs ``child``."""
    value = [
        Command(graph=Command.PARENT, goto=[Send("child", {})]),
        ToolMessage(content="ok", tool_call_id="call-1"),
    ]
    graph = _subagent_in(
        db, [_ReturningTool(return_value=value)], ai(tc("list_tool", "call-1")), "child"
    )
    assert run(graph)["visited"] == ["child"]


def test_tool_node_list_return_no_terminator_raises(db: Path) -> None:
    """A list with no ToolMessage answering the call, ``handle_tool_errors=False``: ToolNode
    raises "0 messages bound to tool_call_id".

    Deliberate difference: Handrail escalates the failure to an operator (``unknown``).
    """
    result = _returning(db, [Command(update={"foo": "bar"})], handle_tool_errors=False)
    (call,) = escalation(result)["handrail"]["calls"].values()
    assert "0 messages bound to tool_call_id" in call["error"]["message"]


def test_tool_node_list_return_multiple_terminators_raises(db: Path) -> None:
    """Two ToolMessages answering the call, ``handle_tool_errors=False``: "2 messages bound".

    Deliberate difference: Handrail escalates it (``unknown``).
    """
    value = [
        ToolMessage(content="a", tool_call_id="call-1"),
        ToolMessage(content="b", tool_call_id="call-1"),
    ]
    (call,) = escalation(_returning(db, value, handle_tool_errors=False))["handrail"][
        "calls"
    ].values()
    assert "2 messages bound to tool_call_id" in call["error"]["message"]


def test_tool_node_list_return_validation_error_handled(db: Path) -> None:
    """``handle_tool_errors=True`` turns that error into an error ToolMessage."""
    message = last_message(
        _returning(db, [Command(update={"foo": "bar"})], handle_tool_errors=True)
    )
    assert message.status == "error"
    assert "0 messages bound to tool_call_id" in message.text


def test_tool_node_list_return_async_smoke(db: Path) -> None:
    """The list return under ``ainvoke``."""
    tool = _ReturningTool(
        return_value=[
            Command(update={"foo": "bar"}),
            ToolMessage(content="done", tool_call_id="call-1"),
        ]
    )

    async def main() -> dict[str, Any]:
        async with async_saver(db) as saver:
            graph = gate_builder(
                saver, [tool], ai(tc("list_tool", "call-1")), state=_State, db=db
            ).compile(checkpointer=saver)
            return await arun(graph)

    result = asyncio.run(main())
    assert result["foo"] == "bar"
    assert last_message(result).content == "done"


def test_tool_node_list_return_mixed_with_regular_tool(db: Path) -> None:
    """A list-returning tool and a plain tool in one turn: both calls answered, the update
    applied."""

    @as_tool
    def regular_tool(x: int) -> str:
        """A normal tool."""
        return f"regular: {x}"

    value = [
        Command(update={"foo": "bar"}),
        ToolMessage(content="list done", tool_call_id="call-list"),
    ]
    calls = [tc("list_tool", "call-list"), tc("regular_tool", "call-regular", x=7)]
    result = _returning(db, value, regular_tool, calls=calls)
    assert result["foo"] == "bar"
    answers = {m.tool_call_id: m.content for m in tool_messages(result)}
    assert answers == {"call-list": "list done", "call-regular": "regular: 7"}
