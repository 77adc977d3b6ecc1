"""`HandrailMiddleware` keeps the approvals table as the graph does: its waiting calls are listed
and decided by thread ID through `Inbox` and the CLI, on SQLite and PostgreSQL, with real
``create_agent`` agents, real checkpoints and real interrupts (only the chat model is scripted)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from crash_child import Forks
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.types import Command
from support import CTX, approval_rows, approve, call, config, turn
from test_crash import (
    test_a_request_whose_step_was_lost_leaves_the_inbox_when_asked_again as lost_step,
)
from test_middleware import CAROL_AND_DAVE, MIXED, TWO_PERSON

from handrail import Actor, HandrailGraph, Inbox, Policy, RunContext
from handrail.cli import main
from handrail.errors import AlreadyDecided, ApproverNotAuthorized, HandrailError
from handrail.integrations import HandrailMiddleware
from handrail.review import Approve, Reject
from handrail.storage.approvals import ApprovalTable
from handrail.storage.checkpointer import open_checkpointer
from handrail.testing import ScriptedChatModel
from handrail.tools import ServerError
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

pytestmark = pytest.mark.backends("sqlite", "postgresql")

ALICE = Actor(id="alice", roles=("treasurer",))
OPS = Actor(id="ops-1", roles=("operator",))
PAY = turn(call("transfer_funds", to="carol", amount=5000))


@dataclass
class App:
    """A ``create_agent`` agent with Handrail's middleware on the test's database."""

    agent: Any
    handrail: HandrailMiddleware
    guarded: HandrailGraph

    def start(self, thread: str = "t-1") -> dict[str, Any]:
        result: dict[str, Any] = self.agent.invoke(
            {"messages": [("user", "go")]}, config(thread), context=CTX
        )
        return result


@pytest.fixture
def build(db: Any) -> Iterator[Callable[..., App]]:
    """``build(*turns, tools=..., policy=...)``: an agent whose model plays ``turns`` then says
    "done", checkpointed in ``db`` (a `SqliteSaver` or a `PostgresSaver`), the middleware's
    tables on the same saver; every connection it opens is closed after the test."""
    opened: list[Any] = []

    def make(
        *turns: AIMessage, tools: list[BaseTool] | None = None, policy: Policy | None = None
    ) -> App:
        tools = banking_tools(db) if tools is None else tools
        saver = open_checkpointer(db)
        handrail = HandrailMiddleware(policy=policy or Policy.from_file(POLICY_PATH), db=saver)
        opened.append(handrail)
        if isinstance(getattr(saver, "conn", None), sqlite3.Connection):
            opened.append(saver.conn)  # type: ignore[union-attr]
        agent = create_agent(
            ScriptedChatModel([*turns, AIMessage("done")]),
            tools,
            middleware=[handrail],
            checkpointer=saver,
            context_schema=RunContext,
        )
        return App(agent, handrail, handrail.guard(agent))

    yield make
    for item in opened:
        item.close()


@pytest.fixture
def inbox(db: Any) -> Iterator[Inbox]:
    box = Inbox(db)
    yield box
    box.close()


def fetch_failing_once(runs: list[str]) -> BaseTool:
    @tool
    def fetch(q: str) -> str:
        """Fetch a resource."""
        runs.append(q)
        if len(runs) == 1:
            raise ServerError("upstream said 500")
        return f"data for {q}"

    return fetch


FETCH_POLICY = Policy.from_data(
    {
        "rules": [{"id": "reads", "tools": ["fetch"], "effect": "allow"}],
        "tools": {"fetch": {"escalate_to": ["operator"]}},
    }
)


def rows(db: Any) -> dict[str, tuple[str, str | None, str | None]]:
    """Each approvals row of thread t-1: (status, outcome, decided_by), by call id."""
    return {
        r["tool_call_id"]: (r["status"], r["outcome"], r["decided_by"])
        for r in approval_rows(db)
        if r["thread_id"] == "t-1"
    }


def requested(db: Any) -> dict[str, Any]:
    """When each row of thread t-1 was asked for."""
    return {r["tool_call_id"]: r["requested_at"] for r in approval_rows(db)}


def test_a_paused_middleware_thread_is_listed_and_an_approval_runs_the_call_once(
    build, db, inbox
) -> None:
    app = build(PAY)
    assert "__interrupt__" in app.start()
    (item,) = inbox.pending()
    assert (item.thread_id, item.tool_call_id, item.kind) == ("t-1", "call_0_0", "approval")
    assert (item.graph, item.rule_id, item.approvers) == (
        "handrail_middleware",
        "big-transfers",
        ("treasurer",),
    )
    assert item.actor.id == CTX.actor.id and not item.deciding
    assert [i.tool_call_id for i in inbox.show("t-1")] == ["call_0_0"]
    assert rows(db) == {"call_0_0": ("open", None, None)}

    result = inbox.approve("t-1", approver=ALICE, graph=app.guarded)
    assert transfers(db) == [("carol", 5000.0)]
    assert result["messages"][-1].text == "done"
    assert inbox.pending() == []
    assert rows(db) == {"call_0_0": ("decided", "approve", "alice")}
    with pytest.raises(AlreadyDecided, match="approve by alice"):
        inbox.approve("t-1", approver=ALICE, graph=app.guarded)
    assert transfers(db) == [("carol", 5000.0)]


def test_a_reject_answers_the_model_and_closes_the_row(build, db, inbox) -> None:
    app = build(PAY)
    app.start()
    result = inbox.reject("t-1", "not this month", approver=ALICE, graph=app.guarded)
    (message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert message.text == "Rejected by alice: not this month. The tool was not run."
    assert transfers(db) == [] and inbox.pending() == []
    assert rows(db) == {"call_0_0": ("decided", "reject", "alice")}


def test_an_escalation_is_listed_and_a_retry_runs_the_call_once_more(build, db, inbox) -> None:
    runs: list[str] = []
    app = build(turn(call("fetch", q="x")), tools=[fetch_failing_once(runs)], policy=FETCH_POLICY)
    app.start()
    (item,) = inbox.pending()
    assert (item.kind, item.tool, item.approvers, item.attempts) == (
        "escalation",
        "fetch",
        ("operator",),
        1,
    )
    assert item.error is not None and item.error.kind == "server_error"
    with pytest.raises(ApproverNotAuthorized):
        inbox.retry("t-1", approver=ALICE, graph=app.guarded)
    assert runs == ["x"] and len(inbox.pending()) == 1
    result = inbox.retry("t-1", approver=OPS, graph=app.guarded)
    assert runs == ["x", "x"]
    assert [m.text for m in result["messages"] if isinstance(m, ToolMessage)] == ["data for x"]
    assert inbox.pending() == []
    assert rows(db) == {"call_0_0": ("decided", "retry", "ops-1")}


def test_an_escalation_skipped_from_the_inbox_tells_the_model(build, db, inbox) -> None:
    runs: list[str] = []
    app = build(turn(call("fetch", q="x")), tools=[fetch_failing_once(runs)], policy=FETCH_POLICY)
    app.start()
    result = inbox.skip("t-1", "checked by hand", approver=OPS, graph=app.guarded)
    assert runs == ["x"]
    assert "Skipped by ops-1: checked by hand" in result["messages"][-2].text
    assert rows(db) == {"call_0_0": ("decided", "skip", "ops-1")}


def test_a_refused_decision_changes_nothing_and_the_next_valid_one_works(build, db, inbox) -> None:
    app = build(PAY)
    app.start()
    before = approval_rows(db)
    teller = Actor(id="bob", roles=("teller",))
    with pytest.raises(ApproverNotAuthorized):
        inbox.approve("t-1", approver=teller, graph=app.guarded)
    with pytest.raises(ApproverNotAuthorized):  # the guarded agent checks direct resumes too
        app.guarded.invoke(
            Command(resume=approve(approver={"id": "bob", "roles": ["teller"]})),
            config(),
            context=CTX,
        )
    assert approval_rows(db) == before and transfers(db) == []
    assert app.guarded.pending_request(config()) is not None
    inbox.approve("t-1", approver=ALICE, graph=app.guarded)
    assert transfers(db) == [("carol", 5000.0)]


def test_one_decision_wins_a_live_claim_turns_the_second_away(build, db, inbox) -> None:
    app = build(PAY)
    app.start()
    table = ApprovalTable(db)
    try:
        token = table.claim("t-1", ["call_0_0"], datetime.now(UTC))
        assert token is not None and inbox.pending()[0].deciding
        with pytest.raises(AlreadyDecided, match="being applied by process"):
            inbox.approve("t-1", approver=ALICE, graph=app.guarded)
        assert transfers(db) == []
        table.release(token)
    finally:
        table.close()
    inbox.approve("t-1", approver=ALICE, graph=app.guarded)
    assert transfers(db) == [("carol", 5000.0)]


def test_a_two_person_rule_stays_listed_until_the_second_approval(build, db, inbox) -> None:
    app = build(PAY, policy=TWO_PERSON)
    app.start()
    inbox.approve("t-1", approver=ALICE, graph=app.guarded)
    (item,) = inbox.pending()
    assert item.approvals == ("alice",) and transfers(db) == []
    assert rows(db) == {"call_0_0": ("open", None, None)}
    inbox.approve("t-1", approver=Actor(id="bea", roles=("treasurer",)), graph=app.guarded)
    assert transfers(db) == [("carol", 5000.0)] and inbox.pending() == []
    assert rows(db) == {"call_0_0": ("decided", "approve", "bea")}


def test_a_round_that_decided_some_calls_is_replayed_without_reopening_their_rows(
    build, db, inbox
) -> None:
    app = build(CAROL_AND_DAVE, policy=MIXED)
    app.start()
    first = {"call_0_0": Approve(), "call_0_1": Reject(message="not dave")}
    inbox.decide("t-1", first, approver=ALICE, graph=app.guarded)
    assert [i.tool_call_id for i in inbox.pending()] == ["call_0_0"]
    assert rows(db)["call_0_1"] == ("decided", "reject", "alice")
    asked_at = requested(db)
    # the resume replays the first round (decided dave) before the second: dave's row is not
    # opened again (which would list it, and make it a new request)
    inbox.approve("t-1", approver=Actor(id="bea", roles=("treasurer",)), graph=app.guarded)
    assert requested(db) == asked_at
    assert transfers(db) == [("carol", 5000.0)]
    assert rows(db) == {
        "call_0_0": ("decided", "approve", "bea"),
        "call_0_1": ("decided", "reject", "alice"),
    }


def test_a_direct_resume_of_the_agent_closes_the_row_too(build, db, inbox) -> None:
    app = build(PAY)
    app.start()
    app.agent.invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)] and inbox.pending() == []
    assert rows(db) == {"call_0_0": ("decided", "approve", "alice")}


def test_the_inbox_finds_a_middleware_agent_by_its_name(build, db, inbox) -> None:
    app = build(PAY)
    app.start()
    inbox.register("handrail_middleware", lambda _db: app.guarded)
    inbox.approve("t-1", approver=ALICE)
    assert transfers(db) == [("carol", 5000.0)]


def test_guard_refuses_an_agent_built_without_the_middleware(build, db) -> None:
    app = build(PAY)
    other = HandrailMiddleware(policy=Policy.from_file(POLICY_PATH))
    with pytest.raises(HandrailError, match="not built with this HandrailMiddleware"):
        other.guard(app.agent)


FACTORY = """
from langchain.agents import create_agent
from langchain_core.messages import AIMessage

from handrail import Policy, RunContext
from handrail.integrations import HandrailMiddleware
from handrail.storage.checkpointer import open_checkpointer
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools


def make(db):
    saver = open_checkpointer(db)
    handrail = HandrailMiddleware(policy=Policy.from_file(POLICY_PATH), db=saver)
    pay = {"name": "transfer_funds", "args": {"to": "carol", "amount": 5000}, "id": None}
    model = ScriptedChatModel([AIMessage("", tool_calls=[pay]), AIMessage("done")])
    agent = create_agent(model, banking_tools(db), middleware=[handrail], checkpointer=saver,
                         context_schema=RunContext)
    return handrail.guard(agent)
"""


def test_the_cli_lists_and_approves_middleware_threads(
    build, db, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build(PAY)
    app.start("m-1")
    assert main(["pending", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "m-1" in out and "transfer_funds" in out and "1 call(s) waiting" in out
    assert main(["show", "m-1", "--db", str(db)]) == 0
    assert "big-transfers" in capsys.readouterr().out
    (tmp_path / "mw_app.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    approve_ = ["approve", "m-1", "--db", str(db), "--graph", "mw_app:make"]
    assert main([*approve_, "--as", "alice", "--role", "treasurer"]) == 0
    assert "the run went on and ended: done" in capsys.readouterr().out
    assert transfers(db) == [("carol", 5000.0)]
    assert main(["pending", "--db", str(db)]) == 0
    assert "no approvals or escalations waiting" in capsys.readouterr().out


@pytest.fixture(scope="module")
def forks() -> Iterator[Forks]:
    server = Forks()
    yield server
    server.close()


def test_a_request_whose_model_step_was_lost_is_superseded_when_asked_again(
    forks: Forks, db: Any, tmp_path: Path
) -> None:
    """The crash suite's case (`tests/test_crash.py`, real processes killed while the model's
    step is saved) for the middleware: the lost step's row is closed as ``superseded`` when the
    thread asks again, so the inbox lists the one request a resume can decide."""
    lost_step(forks, db, tmp_path, "middleware")
