"""What the ports of the upstream suites share (``from upstream_support import ...``).

The ToolNode scenarios run the tool gate as the ``tools`` node of a real `StateGraph`: a
``model`` node appends the scenario's AIMessage (its tool calls) and the gate answers it, on a
real SQLite checkpointer (``db=`` the saver). The HITL scenarios run ``create_agent`` with
`HandrailMiddleware` on a real SQLite saver, resumed with Handrail's payload.

Upstream configuration maps onto a Handrail policy: a tool ToolNode simply runs is allowed
(`ALLOW_ALL`); a tool ``interrupt_on`` gates is asked, decided by a treasurer (`asking`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import AIMessage, AnyMessage, ToolCall, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Command, Send
from support import CTX, TREASURER

from handrail import Policy, RunContext, ToolGateState, build_tool_gate
from handrail.graph import open_checkpointer
from handrail.integrations import HandrailMiddleware
from handrail.storage.checkpointer import STATE_TYPES
from handrail.testing import ScriptedChatModel

Graph = CompiledStateGraph[Any, Any, Any, Any]
THREAD = "t-1"

SERDE = JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)
"""Checkpoints that hold Handrail's records (without it LangGraph warns once per type)."""

_ALLOW = {"id": "allow-all", "tools": ["*"], "effect": "allow"}

ALLOW_ALL = Policy.from_data({"version": 1, "default": "deny", "rules": [_ALLOW]})
"""Every tool allowed: the gate in place of a ToolNode that runs whatever the model calls."""


def asking(*tools: str, **rule: Any) -> Policy:
    """Every tool allowed, ``tools`` asked (a treasurer decides); ``rule``: more fields of the
    ask rule (``when``, and the fields issue 17 adds: ``allowed_decisions``, ...)."""
    rules: list[dict[str, Any]] = [_ALLOW]
    if tools:
        rules.append(
            {"id": "review", "tools": list(tools), "effect": "ask", "approvers": ["treasurer"]}
            | rule
        )
    return Policy.from_data({"version": 1, "default": "deny", "rules": rules})


def config(thread: str = THREAD) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


def tc(name: str, id: str | None = "call-1", **args: Any) -> ToolCall:
    """A tool call as upstream writes them (explicit ids)."""
    return ToolCall(name=name, args=args, id=id, type="tool_call")


def ai(*calls: ToolCall, content: str = "hi?") -> AIMessage:
    """The model's message making ``calls``."""
    return AIMessage(content, tool_calls=list(calls))


def tool_messages(result: Mapping[str, Any], key: str = "messages") -> list[ToolMessage]:
    return [m for m in result[key] if isinstance(m, ToolMessage)]


def only_interrupt(result: Mapping[str, Any]) -> Any:
    """The value of the one interrupt the run paused on."""
    (pending,) = result["__interrupt__"]
    return pending.value


# -- the tool gate in a user's graph ---------------------------------------------------------


def gate_builder(
    saver: Any,
    tools: Sequence[Any],
    turn: AIMessage,
    *,
    state: type[Any] = ToolGateState,
    policy: Policy = ALLOW_ALL,
    db: Any = None,
    sends: Callable[[AIMessage], list[Send]] | None = None,
    **gate_options: Any,
) -> StateGraph[Any, Any, Any, Any]:
    """START → ``model`` (appends ``turn``) → ``tools`` (the gate) → END, not compiled.

    ``sends``: route the model's calls to the gate with ``Send`` payloads instead of an edge.
    ``db``: where the gate keeps its tables (default: the saver)."""
    builder = StateGraph(state, context_schema=RunContext)
    builder.add_node("model", lambda _: {"messages": [turn]})
    builder.add_node(
        "tools", build_tool_gate(tools, policy, db=saver if db is None else db, **gate_options)
    )
    builder.add_edge(START, "model")
    if sends is None:
        builder.add_edge("model", "tools")
    else:
        route = sends
        builder.add_conditional_edges("model", lambda s: route(turn), ["tools"])
    builder.add_edge("tools", END)
    return builder


def gate_graph(
    db: Path,
    tools: Sequence[Any],
    turn: AIMessage,
    *,
    store: BaseStore | None = None,
    **options: Any,
) -> Graph:
    """`gate_builder` compiled on a `SqliteSaver` on ``db`` (``store``: the graph's store)."""
    saver = open_checkpointer(db)
    return gate_builder(saver, tools, turn, **options).compile(checkpointer=saver, store=store)


def run(graph: Graph, thread: str = THREAD, **state: Any) -> dict[str, Any]:
    """One run of ``graph`` from a state of ``state`` (default: no messages yet)."""
    result: dict[str, Any] = graph.invoke({"messages": [], **state}, config(thread), context=CTX)
    return result


@asynccontextmanager
async def async_saver(db: Path) -> AsyncIterator[AsyncSqliteSaver]:
    """An `AsyncSqliteSaver` on ``db`` (the gate keeps its tables in the same file)."""
    async with aiosqlite.connect(db) as conn:
        yield AsyncSqliteSaver(conn, serde=SERDE)


async def arun(graph: Graph, thread: str = THREAD, **state: Any) -> dict[str, Any]:
    result: dict[str, Any] = await graph.ainvoke(
        {"messages": [], **state}, config(thread), context=CTX
    )
    return result


# -- create_agent with HandrailMiddleware ----------------------------------------------------


def sqlite_saver(db: Path) -> SqliteSaver:
    return SqliteSaver(sqlite3.connect(db, check_same_thread=False), serde=SERDE)


def hitl_agent(
    db: Path,
    tools: Sequence[BaseTool],
    turns: Sequence[AIMessage],
    policy: Policy,
    *,
    before: Sequence[AgentMiddleware[Any, Any, Any]] = (),
    after: Sequence[AgentMiddleware[Any, Any, Any]] = (),
    saver: Any = None,
    model: Any = None,
    **handrail_options: Any,
) -> Graph:
    """``create_agent`` over ``tools`` whose model plays ``turns`` then says "done", with
    `HandrailMiddleware` (between the middleware ``before`` and ``after`` it) on a SQLite saver
    on ``db`` (or ``saver``, an async one, with the tables on the ``db`` path)."""
    if saver is None:
        saver = sqlite_saver(db)
        tables: Any = saver
    else:
        tables = db
    handrail = HandrailMiddleware(policy=policy, db=tables, **handrail_options)
    agent: Graph = create_agent(
        model if model is not None else ScriptedChatModel([*turns, AIMessage("done")]),
        list(tools),
        middleware=[*before, handrail, *after],
        checkpointer=saver,
        context_schema=RunContext,
    )
    return agent


def start(agent: Graph, thread: str = THREAD) -> dict[str, Any]:
    result: dict[str, Any] = agent.invoke(
        {"messages": [("user", "go")]}, config(thread), context=CTX
    )
    return result


def resume(agent: Graph, *decisions: Mapping[str, Any], thread: str = THREAD) -> dict[str, Any]:
    """Resume with Handrail's payload: ``decisions`` in order, decided by a treasurer."""
    result: dict[str, Any] = agent.invoke(
        Command(resume=decisions_payload(*decisions)), config(thread), context=CTX
    )
    return result


def decisions_payload(*decisions: Mapping[str, Any]) -> dict[str, Any]:
    return {"decisions": [dict(d) for d in decisions], "approver": TREASURER}


def edit(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "edit", "edited_action": {"name": name, "args": args}}


def assert_paired(messages: Sequence[AnyMessage]) -> None:
    """Every ToolMessage answers a call of the AIMessage before it (upstream's
    ``_assert_tool_messages_are_paired``): providers refuse a history where one does not."""
    pending: set[str] = set()
    for message in messages:
        if isinstance(message, AIMessage):
            pending = {c["id"] for c in message.tool_calls if c["id"] is not None}
        elif isinstance(message, ToolMessage):
            assert message.tool_call_id in pending, f"{message.tool_call_id!r} answers no call"
            pending.discard(message.tool_call_id)


def assert_edit_notice(content: Any, result: str, *shown: str) -> None:
    """An edited call's result, as langchain 1.5 gives it: the tool's own result, after a
    notice that a reviewer replaced the call, naming what ran (``shown``: the tool and the
    values of the arguments that ran). The notice's wording is Handrail's to choose."""
    text = content if isinstance(content, str) else str(content)
    assert text.endswith(result), text
    notice = text[: -len(result)] if result else text
    assert notice.strip(), f"no edit notice before the result: {text!r}"
    for value in shown:
        assert value in notice, f"the notice does not name {value!r}: {notice!r}"


def run_async(
    db: Path,
    tools: Sequence[Any],
    turn: AIMessage,
    *,
    thread: str = THREAD,
    store: BaseStore | None = None,
    values: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """`gate_graph` and `run` under ``ainvoke``, on an `AsyncSqliteSaver` (upstream's
    ``ToolNode.ainvoke``: the way to run async-only tools)."""

    async def main() -> dict[str, Any]:
        async with async_saver(db) as saver:
            builder = gate_builder(saver, tools, turn, db=db, **options)
            graph = builder.compile(checkpointer=saver, store=store)
            return await arun(graph, thread, **(values or {}))

    return asyncio.run(main())
