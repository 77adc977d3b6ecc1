"""`HandrailMiddleware` beside LangChain's `ToolCallLimitMiddleware` and `ToolRetryMiddleware`,
in both orders: the order that works is shown working, the other is refused when the agent is
guarded (`HandrailMiddleware.guard`), with a message that says what to list where. Real
``create_agent`` agents on a real SQLite file, real interrupts; only the model is scripted."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import (
    AgentMiddleware,
    ModelCallLimitMiddleware,
    ToolCallLimitMiddleware,
    ToolRetryMiddleware,
)
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from support import CTX, call, config, table_rows, turn
from test_middleware import TWO_PERSON
from test_middleware_inbox import FETCH_POLICY, fetch_failing_once

from handrail import Actor, HandrailGraph, Inbox, Policy, RunContext
from handrail.integrations import HandrailMiddleware
from handrail.integrations.langchain import CompositionError
from handrail.storage.checkpointer import open_checkpointer
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

ALICE = Actor(id="alice", roles=("treasurer",))
BEA = Actor(id="bea", roles=("treasurer",))
OPS = Actor(id="ops-1", roles=("operator",))

Build = Callable[..., tuple[Any, HandrailMiddleware]]


@pytest.fixture
def build(db: Path) -> Iterator[Build]:
    """``build(handrail_at, others, *turns, tools=..., policy=...)``: a ``create_agent`` agent on
    ``db`` with ``others`` and Handrail's middleware inserted at index ``handrail_at``."""
    opened: list[Any] = []

    def make(
        at: int,
        others: list[AgentMiddleware[Any, Any, Any]],
        *turns: AIMessage,
        tools: list[BaseTool] | None = None,
        policy: Policy | None = None,
    ) -> tuple[Any, HandrailMiddleware]:
        saver = open_checkpointer(db)
        assert saver is not None
        conn = getattr(saver, "conn", None)
        if isinstance(conn, sqlite3.Connection):
            opened.append(conn)
        handrail = HandrailMiddleware(policy=policy or Policy.from_file(POLICY_PATH), db=saver)
        opened.append(handrail)
        middleware = list(others)
        middleware.insert(at, handrail)
        agent = create_agent(
            ScriptedChatModel([*turns, AIMessage("done")]),
            banking_tools(db) if tools is None else tools,
            middleware=middleware,
            checkpointer=saver,
            context_schema=RunContext,
        )
        return agent, handrail

    yield make
    for item in opened:
        item.close()


def start(graph: Any, thread: str = "t-1") -> dict[str, Any]:
    result: dict[str, Any] = graph.invoke(
        {"messages": [("user", "go")]}, config(thread), context=CTX
    )
    return result


def answers(result: dict[str, Any]) -> dict[str, str]:
    return {m.tool_call_id: m.text for m in result["messages"] if isinstance(m, ToolMessage)}


TWO_PAYMENTS = turn(
    call("transfer_funds", to="carol", amount=5000),
    call("transfer_funds", to="dave", amount=6000),
)
LIMIT_TEXT = "Tool call limit exceeded. Do not make additional tool calls."


# -- ToolCallLimitMiddleware -----------------------------------------------------------------------


def test_a_call_limit_listed_after_handrail_blocks_before_anyone_is_asked(build, db) -> None:
    agent, handrail = build(0, [ToolCallLimitMiddleware(run_limit=1)], TWO_PAYMENTS)
    guarded = handrail.guard(agent)
    paused = start(guarded)
    info = paused["__interrupt__"][0].value["handrail"]
    assert info["tool_call_ids"] == ["call_0_0"]  # dave's call was blocked: nobody is asked
    assert answers(paused) == {"call_0_1": LIMIT_TEXT}
    inbox = Inbox(db, graph=guarded)
    try:
        assert [i.tool_call_id for i in inbox.pending()] == ["call_0_0"]
        result = inbox.approve("t-1", approver=ALICE)
    finally:
        inbox.close()
    assert transfers(db) == [("carol", 5000.0)]
    assert answers(result)["call_0_0"] == "sent 5000.00 to carol"
    blocked = result["calls"]["call_0_1"]  # closed as not run, and audited
    assert (blocked.status, blocked.result) == ("rejected", LIMIT_TEXT)
    (event,) = table_rows(
        db, "SELECT event, reason FROM handrail_audit WHERE tool_call_id = 'call_0_1'"
    )
    assert event["event"] == "decided"
    assert event["reason"].startswith("answered by another middleware before it ran")


@pytest.mark.parametrize(
    ("other", "says", "fix"),
    [
        (
            ToolCallLimitMiddleware(run_limit=1),
            "could approve a call that the limit then blocks",
            "List it after: middleware=[handrail_middleware, ..., ToolCallLimitMiddleware]",
        ),
        (
            ToolRetryMiddleware(initial_delay=0),
            "where it never retries",
            "list it after handrail_middleware for tools the policy marks idempotent",
        ),
    ],
    ids=["limit", "retry"],
)
def test_a_limit_or_retry_listed_before_handrail_is_refused_with_the_order_that_works(
    build, other: AgentMiddleware[Any, Any, Any], says: str, fix: str
) -> None:
    agent, handrail = build(1, [other], TWO_PAYMENTS)
    with pytest.raises(CompositionError) as refused:
        handrail.guard(agent)
    assert refused.value.middleware == other.name
    assert says in str(refused.value) and fix in str(refused.value)


def test_a_call_limit_does_not_count_a_turn_again_when_a_second_approver_is_asked(
    build, db
) -> None:
    """The second round is asked after a pass of the model's step: the limit (one call per
    thread) does not count the turn's call again, so the call the first approver approved is not
    blocked before the second approves it."""
    pay = turn(call("transfer_funds", to="carol", amount=5000))
    agent, handrail = build(0, [ToolCallLimitMiddleware(thread_limit=1)], pay, policy=TWO_PERSON)
    guarded = handrail.guard(agent)
    start(guarded)
    inbox = Inbox(db, graph=guarded)
    try:
        inbox.approve("t-1", approver=ALICE)
        (item,) = inbox.pending()
        assert item.approvals == ("alice",)
        result = inbox.approve("t-1", approver=BEA)
    finally:
        inbox.close()
    assert transfers(db) == [("carol", 5000.0)]
    assert answers(result) == {"call_0_0": "sent 5000.00 to carol"}
    assert guarded.get_state(config()).values["thread_tool_call_count"] == {"__all__": 1}
    assert not any(m.id and m.id.startswith("handrail-pass-") for m in result["messages"])


def test_a_call_limit_does_not_count_a_turn_again_when_an_escalation_is_asked(build, db) -> None:
    runs: list[str] = []
    limit = ToolCallLimitMiddleware(thread_limit=1)
    fetch = fetch_failing_once(runs)
    agent, handrail = build(
        0, [limit], turn(call("fetch", q="x")), tools=[fetch], policy=FETCH_POLICY
    )
    guarded = handrail.guard(agent)
    paused = start(guarded)
    assert paused["__interrupt__"][0].value["handrail"]["kind"] == "escalation"
    inbox = Inbox(db, graph=guarded)
    try:
        result = inbox.retry("t-1", approver=OPS)
    finally:
        inbox.close()
    assert runs == ["x", "x"]
    assert answers(result) == {"call_0_0": "data for x"}
    assert guarded.get_state(config()).values["thread_tool_call_count"] == {"__all__": 1}


class AnswersOnPasses(AgentMiddleware[Any, Any, Any]):
    """A middleware that answers the turn's open calls when Handrail passes the model's step (as
    a call limit that counted the pass would): listed after Handrail, its hook runs first."""

    def after_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        messages = state["messages"]
        if not (messages[-1].id or "").startswith("handrail-pass-"):
            return None
        turn_ = next(m for m in reversed(messages[:-1]) if isinstance(m, AIMessage))
        answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
        blocked = [c for c in turn_.tool_calls if c["id"] not in answered]
        return {
            "messages": [
                ToolMessage("blocked", tool_call_id=c["id"], name=c["name"], status="error")
                for c in blocked
            ]
        }


def test_a_call_another_middleware_answers_while_it_waits_leaves_the_inbox(build, db) -> None:
    pay = turn(call("transfer_funds", to="carol", amount=5000))
    agent, handrail = build(0, [AnswersOnPasses()], pay, policy=TWO_PERSON)
    guarded = handrail.guard(agent)
    start(guarded)
    inbox = Inbox(db, graph=guarded)
    try:
        result = inbox.approve("t-1", approver=ALICE)
        assert inbox.pending() == []  # the thread no longer waits on it: its row is closed
    finally:
        inbox.close()
    assert transfers(db) == [] and "__interrupt__" not in result
    record = result["calls"]["call_0_0"]
    assert (record.status, record.result) == ("rejected", "blocked")
    (row,) = table_rows(db, "SELECT status, outcome FROM handrail_approvals")
    assert row == {"status": "decided", "outcome": "blocked"}


# -- ToolRetryMiddleware ---------------------------------------------------------------------------


def test_a_retry_middleware_after_handrail_is_refused_for_tools_not_marked_idempotent(
    build,
) -> None:
    agent, handrail = build(0, [ToolRetryMiddleware(initial_delay=0)], TWO_PAYMENTS)
    with pytest.raises(CompositionError, match="does not mark them idempotent") as no:
        handrail.guard(agent)
    assert "['delete_user', 'get_balance', 'transfer_funds']" in str(no.value)
    only_reads = ToolRetryMiddleware(initial_delay=0, tools=["get_balance"])
    data = {
        "rules": [{"id": "reads", "tools": ["get_balance"], "effect": "allow"}],
        "tools": {"get_balance": {"idempotent": True}},
    }
    agent, handrail = build(0, [only_reads], TWO_PAYMENTS, policy=Policy.from_data(data))
    assert isinstance(handrail.guard(agent), HandrailGraph)


def test_a_retry_middleware_after_handrail_retries_an_idempotent_tool_within_one_attempt(
    build, db
) -> None:
    runs: list[str] = []

    @tool
    def lookup(q: str) -> str:
        """Look something up (fails twice, then answers)."""
        runs.append(q)
        if len(runs) < 3:
            raise ValueError("flaky")
        return f"found {q}"

    policy = Policy.from_data(
        {
            "rules": [{"id": "reads", "tools": ["lookup"], "effect": "allow"}],
            "tools": {"lookup": {"idempotent": True}},
        }
    )
    retry = ToolRetryMiddleware(max_retries=2, initial_delay=0, jitter=False)
    agent, handrail = build(0, [retry], turn(call("lookup", q="x")), tools=[lookup], policy=policy)
    result = start(handrail.guard(agent))
    assert runs == ["x", "x", "x"]
    assert answers(result) == {"call_0_0": "found x"}
    record = result["calls"]["call_0_0"]
    assert (record.status, record.retry_count) == ("succeeded", 0)  # one attempt of Handrail's
    events = table_rows(db, "SELECT event FROM handrail_audit ORDER BY seq")
    assert [e["event"] for e in events] == ["decided", "started", "succeeded"]


def test_guard_checks_an_agent_with_only_handrail_and_learns_its_tools(build) -> None:
    agent, handrail = build(0, [], TWO_PAYMENTS)
    guarded = handrail.guard(agent)
    assert set(guarded.handrail_gate.tools) == {"get_balance", "transfer_funds", "delete_user"}


@pytest.mark.parametrize(
    ("other", "says"),
    [
        (ModelCallLimitMiddleware(thread_limit=5), "counts the passes of the model's step"),
        (ModelCallLimitMiddleware(run_limit=3), "counts the passes of the model's step"),
        (ToolCallLimitMiddleware(run_limit=2, exit_behavior="end"), "exit_behavior='continue'"),
    ],
    ids=["model-thread-limit", "model-run-limit", "tool-limit-end"],
)
@pytest.mark.parametrize("at", [0, 1], ids=["handrail-first", "handrail-last"])
def test_a_limit_that_would_strand_a_waiting_call_is_refused_in_any_order(
    build, other: AgentMiddleware[Any, Any, Any], says: str, at: int
) -> None:
    """A model-call limit ends the run at the pass through which Handrail asks a second approver
    or an operator; a tool-call limit that ends the run skips Handrail's after_model hook."""
    agent, handrail = build(at, [other], TWO_PAYMENTS)
    with pytest.raises(CompositionError) as refused:
        handrail.guard(agent)
    assert refused.value.middleware == other.name and says in str(refused.value)
