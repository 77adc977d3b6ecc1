"""Every builder under ``ainvoke``/``astream`` on an ``AsyncSqliteSaver``, with async tools.

The sync and async graphs run the same node code (`handrail.nodes._effects`); these tests show
the async drivers await tools and models, wait for retries without blocking the event loop, and
keep approvals, the ledger and the audit in the saver's file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.base import CheckpointTuple
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import START, StateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command
from support import CTX, approve, call, turn

from handrail import (
    Policy,
    RunContext,
    Step,
    ToolGateState,
    build_agent,
    build_tool_gate,
    build_workflow,
)
from handrail.audit import AuditLog
from handrail.errors import HandrailError, SelfApproval
from handrail.storage.checkpointer import STATE_TYPES
from handrail.testing import ScriptedChatModel
from handrail.tools.errors import RateLimited

T = TypeVar("T")
THREAD = {"configurable": {"thread_id": "async-1"}}

POLICY = Policy.from_yaml(
    """
version: 1
default: deny
rules:
  - {id: reads, tools: [look, flaky], effect: allow}
  - {id: payments, tools: [pay], effect: ask, approvers: [treasurer]}
tools:
  pay: {idempotent: false}
  flaky: {max_retries: 2}
"""
)


class Bank:
    """Async tools that record what they did."""

    def __init__(self) -> None:
        self.paid: list[int] = []
        self.flaky_calls = 0

        @tool
        async def look() -> str:
            """Read the balance."""
            await asyncio.sleep(0)
            return "balance 100"

        @tool
        async def pay(amount: int) -> str:
            """Pay ``amount``."""
            await asyncio.sleep(0)
            self.paid.append(amount)
            return f"paid {amount}"

        @tool
        async def flaky() -> str:
            """Rate limited on the first call."""
            self.flaky_calls += 1
            if self.flaky_calls == 1:
                raise RateLimited("slow down", retry_after=0.3)
            return "ok at last"

        self.tools = [look, pay, flaky]


@asynccontextmanager
async def saver_on(db: Path) -> AsyncIterator[AsyncSqliteSaver]:
    async with aiosqlite.connect(db) as conn:
        yield AsyncSqliteSaver(conn, serde=JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES))


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(test())


def test_agent_pauses_and_resumes_with_async_tools(db: Path) -> None:
    bank = Bank()
    script = [turn(call("look")), turn(call("pay", amount=70)), AIMessage("paid")]

    async def main() -> dict[str, Any]:
        async with saver_on(db) as saver:
            graph = build_agent(
                ScriptedChatModel(script), bank.tools, POLICY, checkpointer=saver, db=db
            )
            paused = await graph.ainvoke({"messages": [("user", "pay")]}, THREAD, context=CTX)
            assert paused["__interrupt__"][0].value["action_requests"][0]["name"] == "pay"
            assert bank.paid == []
        async with saver_on(db) as saver:  # a new connection, as another process would open
            graph = build_agent(
                ScriptedChatModel(script), bank.tools, POLICY, checkpointer=saver, db=db
            )
            nodes = [
                node
                async for chunk in graph.astream(
                    Command(resume=approve()), THREAD, context=CTX, stream_mode="updates"
                )
                for node in chunk
            ]
            assert nodes == ["approval", "execute", "agent"]
            state = await graph.aget_state(THREAD)
            return dict(state.values)

    final = run(main)
    assert bank.paid == [70]
    assert final["messages"][-1].content == "paid"
    assert {r.name: r.status for r in final["calls"].values()} == {
        "look": "succeeded",
        "pay": "succeeded",
    }
    trail = AuditLog(db)
    assert trail.verify().ok
    assert sum(1 for r in trail.export() if r["event"] == "succeeded") == 2


def test_a_retry_wait_does_not_block_the_event_loop(db: Path) -> None:
    bank = Bank()
    graph_turns = [turn(call("flaky")), AIMessage("done")]

    async def main() -> tuple[dict[str, Any], int]:
        async with saver_on(db) as saver:
            graph = build_agent(
                ScriptedChatModel(graph_turns), bank.tools, POLICY, checkpointer=saver, db=db
            )
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            began = time.perf_counter()
            out = await graph.ainvoke({"messages": [("user", "go")]}, THREAD, context=CTX)
            assert time.perf_counter() - began >= 0.3  # the Retry-After was honoured
            task.cancel()
            return out, ticks

    out, ticks = run(main)
    [record] = out["calls"].values()
    assert (record.status, record.retry_count, bank.flaky_calls) == ("succeeded", 1, 2)
    assert ticks >= 10  # the loop kept running other tasks during the 0.3 s wait


def test_an_async_saver_without_its_file_is_refused() -> None:
    async def main() -> None:
        async with aiosqlite.connect(":memory:") as conn:
            saver = AsyncSqliteSaver(conn)
            with pytest.raises(HandrailError, match="pass db="):
                build_agent(ScriptedChatModel([]), Bank().tools, POLICY, checkpointer=saver)

    run(main)


def test_tool_gate_in_an_async_user_graph(db: Path) -> None:
    bank = Bank()
    model = ScriptedChatModel([turn(call("pay", amount=5)), AIMessage("done")])

    async def agent(state: ToolGateState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    async def main() -> dict[str, Any]:
        async with saver_on(db) as saver:
            builder = StateGraph(ToolGateState, context_schema=RunContext)
            builder.add_node("agent", agent)
            builder.add_node("tools", build_tool_gate(bank.tools, POLICY, db=db))
            builder.add_edge(START, "agent")
            builder.add_conditional_edges("agent", tools_condition)
            builder.add_edge("tools", "agent")
            graph = builder.compile(checkpointer=saver)
            paused = await graph.ainvoke({"messages": [("user", "pay")]}, THREAD, context=CTX)
            assert paused["__interrupt__"]
            assert bank.paid == []
            out: dict[str, Any] = await graph.ainvoke(
                Command(resume=approve()), THREAD, context=CTX
            )
            return out

    out = run(main)
    assert bank.paid == [5]
    assert [m.text for m in out["messages"] if isinstance(m, ToolMessage)] == ["paid 5"]


def test_workflow_under_ainvoke(db: Path) -> None:
    bank = Bank()
    steps = [Step(bank.tools[0]), Step(bank.tools[1], args={"amount": 9})]

    async def main() -> dict[str, Any]:
        async with saver_on(db) as saver:
            graph = build_workflow(steps, POLICY, checkpointer=saver, db=db)
            paused = await graph.ainvoke({"inputs": {}}, THREAD, context=CTX)
            assert paused["results"] == {"look": "balance 100"}
            assert bank.paid == []
            out: dict[str, Any] = await graph.ainvoke(
                Command(resume=approve()), THREAD, context=CTX
            )
            return out

    out = run(main)
    assert (out["status"], bank.paid) == ("completed", [9])
    assert out["results"]["pay"] == "paid 9"


def test_a_refused_resume_is_checked_before_it_is_stored_under_astream(db: Path) -> None:
    bank = Bank()
    script = [turn(call("pay", amount=3)), AIMessage("ok")]
    self_approval = {
        "decisions": [{"type": "approve"}],
        "approver": {"id": CTX.actor.id, "roles": ["treasurer"]},
    }

    async def main() -> None:
        async with saver_on(db) as saver:
            graph = build_agent(
                ScriptedChatModel(script), bank.tools, POLICY, checkpointer=saver, db=db
            )
            await graph.ainvoke({"messages": [("user", "pay")]}, THREAD, context=CTX)
            with pytest.raises(SelfApproval):
                await graph.ainvoke(Command(resume=self_approval), THREAD, context=CTX)
            assert (await graph.aget_state(THREAD)).interrupts  # still waiting
            await graph.ainvoke(Command(resume=approve()), THREAD, context=CTX)

    run(main)
    assert bank.paid == [3]


class AsyncOnlySaver(InMemorySaver):
    """A saver with only the async interface, as `BaseCheckpointSaver` leaves the sync one."""

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        raise NotImplementedError("this saver is async only")

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return InMemorySaver.get_tuple(self, config)


def test_astream_checks_a_resume_with_the_savers_async_interface() -> None:
    bank = Bank()
    script = [turn(call("pay", amount=4)), AIMessage("ok")]
    graph = build_agent(
        ScriptedChatModel(script), bank.tools, POLICY, checkpointer=AsyncOnlySaver()
    )

    async def main() -> None:
        await graph.ainvoke({"messages": [("user", "pay")]}, THREAD, context=CTX)
        with pytest.raises(SelfApproval):
            await graph.ainvoke(
                Command(resume={**approve(), "approver": CTX.actor.as_dict()}), THREAD, context=CTX
            )
        await graph.ainvoke(Command(resume=approve()), THREAD, context=CTX)

    run(main)
    assert bank.paid == [4]


def test_building_a_graph_does_not_wait_for_a_writer_once_the_file_is_set_up(db: Path) -> None:
    """An async saver may hold the file's write lock across an ``await``; a graph built on the
    event loop meanwhile must not wait for it (which would block the loop the writer needs)."""
    build_agent(ScriptedChatModel([]), Bank().tools, POLICY, checkpointer=db)  # sets the file up
    with closing(sqlite3.connect(db, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
        began = time.perf_counter()
        build_agent(ScriptedChatModel([]), Bank().tools, POLICY, checkpointer=db)
        assert time.perf_counter() - began < 5
        writer.execute("ROLLBACK")
