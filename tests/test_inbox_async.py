"""The inbox's async twins (``aapprove``, ``areject``, ...) resume graphs that run only
asynchronously: async-only tools on an ``AsyncSqliteSaver`` (or ``AsyncPostgresSaver``), paused
with ``ainvoke``; the sync methods refuse them with a typed error that names the twin. Real
graphs, real databases, real interrupts; only the model is scripted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from support import CTX, approval_rows, call, config, turn

from handrail import Actor, HandrailGraph, Inbox, Policy, build_agent
from handrail.errors import ApproverNotAuthorized
from handrail.inbox import AsyncOnlyGraph
from handrail.review import Approve, Reject
from handrail.storage import is_postgres_url
from handrail.storage.checkpointer import STATE_TYPES
from handrail.testing import ScriptedChatModel
from handrail.tools import ServerError
from handrail.tools.demo import banking_tools, transfers

pytestmark = pytest.mark.backends("sqlite", "postgresql")

T = TypeVar("T")
ALICE = Actor(id="alice", roles=("treasurer",))
OPS = Actor(id="ops-1", roles=("operator",))
POLICY = Policy.from_yaml(
    """
rules:
  - {id: payments, tools: [pay], effect: ask, approvers: [treasurer], expires_in: 24h}
  - {id: quick, tools: [pay_now], effect: ask, approvers: [treasurer], expires_in: 1s}
  - {id: reads, tools: [fetch], effect: allow}
tools:
  fetch: {escalate_to: [operator]}
"""
)
SERDE = JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)


class Payments:
    """Async-only tools (a coroutine, no function) that record what they did."""

    def __init__(self) -> None:
        self.paid: list[tuple[str, float]] = []
        self.fetched = 0

        @tool
        async def pay(to: str, amount: float) -> str:
            """Pay ``amount`` to ``to``."""
            await asyncio.sleep(0)
            self.paid.append((to, amount))
            return f"paid {amount:.2f} to {to}"

        @tool
        async def pay_now(to: str, amount: float) -> str:
            """Pay at once (the request lapses in a second)."""
            self.paid.append((to, amount))
            return "paid"

        @tool
        async def fetch(q: str) -> str:
            """Fetch a resource; the first call fails with a 500."""
            self.fetched += 1
            if self.fetched == 1:
                raise ServerError("upstream said 500")
            return f"data for {q}"

        self.tools: list[BaseTool] = [pay, pay_now, fetch]


@asynccontextmanager
async def async_saver(db: Any) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """An async saver on the test's database (opened on the running event loop)."""
    if is_postgres_url(db):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with AsyncPostgresSaver.from_conn_string(str(db), serde=SERDE) as saver:
            yield saver
        return
    async with aiosqlite.connect(db) as conn:
        yield AsyncSqliteSaver(conn, serde=SERDE)


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(test())


Scenario = Callable[[HandrailGraph, Inbox], Awaitable[T]]


def paused(db: Any, bank: Payments, *turns: AIMessage, scenario: Scenario[T]) -> T:
    """Build the async-only agent on ``db``, pause thread t-1 on its first turn with
    ``ainvoke``, then run ``scenario(graph, inbox)`` on the same event loop."""

    async def main() -> T:
        async with async_saver(db) as saver:
            graph = build_agent(
                ScriptedChatModel([*turns, AIMessage("done")]),
                bank.tools,
                POLICY,
                checkpointer=saver,
                db=db,
            )
            first = await graph.ainvoke({"messages": [("user", "go")]}, config(), context=CTX)
            assert "__interrupt__" in first
            inbox = Inbox(db, graph=graph)
            try:
                return await scenario(graph, inbox)
            finally:
                inbox.close()

    return run(main)


def answers(result: dict[str, Any]) -> list[str]:
    return [m.text for m in result["messages"] if isinstance(m, ToolMessage)]


PAY = turn(call("pay", to="carol", amount=5000))


def test_aapprove_resumes_an_async_only_graph_and_runs_the_tool_once(db) -> None:
    bank = Payments()

    async def scenario(graph: HandrailGraph, inbox: Inbox) -> dict[str, Any]:
        (item,) = inbox.pending()
        assert (item.thread_id, item.tool) == ("t-1", "pay")
        return await inbox.aapprove("t-1", approver=ALICE)

    result = paused(db, bank, PAY, scenario=scenario)
    assert bank.paid == [("carol", 5000.0)]
    assert answers(result) == ["paid 5000.00 to carol"]
    assert result["messages"][-1].text == "done"
    ((row),) = approval_rows(db)
    assert (row["status"], row["outcome"], row["decided_by"]) == ("decided", "approve", "alice")


def test_the_sync_method_refuses_an_async_only_graph_and_names_its_twin(db) -> None:
    bank = Payments()

    async def scenario(graph: HandrailGraph, inbox: Inbox) -> HandrailGraph:
        before = approval_rows(db)
        with pytest.raises(AsyncOnlyGraph, match=r"await inbox\.aapprove") as refused:
            inbox.approve("t-1", approver=ALICE)  # inside the loop: refused, not deadlocked
        assert (refused.value.use, refused.value.thread_id) == ("aapprove", "t-1")
        assert refused.value.because.startswith("its checkpointer is an Async")
        with pytest.raises(AsyncOnlyGraph, match=r"await inbox\.areject"):
            inbox.reject("t-1", "no", approver=ALICE)
        assert approval_rows(db) == before and bank.paid == []
        await inbox.aapprove("t-1", approver=ALICE)  # the thread is still resumable
        return graph

    paused(db, bank, PAY, scenario=scenario)
    assert bank.paid == [("carol", 5000.0)]


def test_the_sync_method_refuses_outside_the_event_loop_too(db) -> None:
    """Called from plain sync code, an async saver would wait for its loop for ever: the inbox
    refuses before touching it."""
    bank = Payments()

    async def scenario(graph: HandrailGraph, inbox: Inbox) -> HandrailGraph:
        return graph

    graph = paused(db, bank, PAY, scenario=scenario)
    before = approval_rows(db)
    inbox = Inbox(db, graph=graph)
    try:
        with pytest.raises(AsyncOnlyGraph, match=r"await inbox\.adecide"):
            inbox.decide("t-1", {"call_0_0": Approve()}, approver=ALICE)
    finally:
        inbox.close()
    assert approval_rows(db) == before and bank.paid == []


def test_an_async_only_tool_alone_makes_the_sync_method_refuse(db, tmp_path: Path) -> None:
    """With a synchronous saver, the async-only tool is what the sync resume could not run."""
    bank = Payments()
    graph = build_agent(
        ScriptedChatModel([PAY, AIMessage("done")]), bank.tools, POLICY, checkpointer=db
    )
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    inbox = Inbox(db, graph=graph)
    try:
        with pytest.raises(AsyncOnlyGraph, match="tool 'pay' has only an async implementation"):
            inbox.approve("t-1", approver=ALICE)
        assert bank.paid == []
    finally:
        inbox.close()


def test_areject_and_adecide_decide_async_threads(db) -> None:
    bank = Payments()
    three = turn(
        call("pay", to="carol", amount=5000),
        call("pay", to="dave", amount=700),
        call("pay", to="erin", amount=900),
    )

    async def scenario(graph: HandrailGraph, inbox: Inbox) -> dict[str, Any]:
        with pytest.raises(ApproverNotAuthorized):  # a refusal is the same typed error
            await inbox.areject("t-1", "no", approver=OPS)
        return await inbox.adecide(
            "t-1",
            {
                "call_0_0": Reject(message="not carol"),
                "call_0_1": Approve(),
                "call_0_2": Approve(),
            },
            approver=ALICE,
        )

    result = paused(db, bank, three, scenario=scenario)
    assert sorted(bank.paid) == [("dave", 700.0), ("erin", 900.0)]
    assert "Rejected by alice: not carol" in answers(result)[0]


def test_aedit_runs_the_edited_arguments(db) -> None:
    bank = Payments()

    async def scenario(graph: HandrailGraph, inbox: Inbox) -> dict[str, Any]:
        return await inbox.aedit("t-1", "call_0_0", {"to": "carol", "amount": 50}, approver=ALICE)

    result = paused(db, bank, PAY, scenario=scenario)
    assert bank.paid == [("carol", 50.0)]
    assert answers(result)[0].endswith("paid 50.00 to carol")  # after any edit notice


def test_arespond_answers_the_model_without_running_the_tool(db) -> None:
    bank = Payments()

    async def scenario(graph: HandrailGraph, inbox: Inbox) -> dict[str, Any]:
        return await inbox.arespond("t-1", "paid by cheque", approver=ALICE)

    result = paused(db, bank, PAY, scenario=scenario)
    assert bank.paid == [] and "paid by cheque" in answers(result)[0]


@pytest.mark.parametrize(
    ("decide", "fetched", "last"),
    [("aretry", 2, "data for x"), ("askip", 1, "Skipped by ops-1"), ("aabort", 1, "Aborted")],
)
def test_aretry_askip_and_aabort_settle_async_escalations(
    db, decide: str, fetched: int, last: str
) -> None:
    bank = Payments()

    async def scenario(graph: HandrailGraph, inbox: Inbox) -> Any:
        (item,) = inbox.pending()
        assert item.kind == "escalation"
        result = await getattr(inbox, decide)("t-1", approver=OPS)
        assert inbox.pending() == []
        return result

    result = paused(db, bank, turn(call("fetch", q="x")), scenario=scenario)
    assert bank.fetched == fetched
    assert answers(result)[-1].startswith(last), answers(result)


def test_aexpire_resolves_lapsed_async_requests(db) -> None:
    bank = Payments()

    async def scenario(graph: HandrailGraph, inbox: Inbox) -> list[Any]:
        assert await inbox.aexpire() == []
        await asyncio.sleep(1.05)
        return await inbox.aexpire()

    (expired,) = paused(db, bank, turn(call("pay_now", to="carol", amount=5)), scenario=scenario)
    assert (expired.thread_id, expired.tool) == ("t-1", "pay_now") and bank.paid == []
    ((row),) = approval_rows(db)
    assert row["status"] == "expired"


def test_the_async_twin_resumes_a_sync_graph_in_a_worker_thread(db) -> None:
    """A graph on a synchronous saver (no async methods) is resumed by ``aapprove`` too,
    without blocking the event loop."""
    graph = build_agent(
        ScriptedChatModel([turn(call("transfer_funds", to="carol", amount=5000)), AIMessage("ok")]),
        banking_tools(db),
        Policy.from_yaml(
            "rules: [{id: big, tools: [transfer_funds], effect: ask, approvers: [treasurer]}]"
        ),
        checkpointer=db,
    )
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)

    async def main() -> int:
        inbox = Inbox(db, graph=graph)
        try:
            deciding = asyncio.create_task(inbox.aapprove("t-1", approver=ALICE))
            turns = 0  # the loop goes on while the sync graph runs in a worker thread
            while not deciding.done():
                turns += 1
                await asyncio.sleep(0.001)
            await deciding
        finally:
            inbox.close()
        return turns

    assert run(main) >= 1
    assert transfers(db) == [("carol", 5000.0)]
