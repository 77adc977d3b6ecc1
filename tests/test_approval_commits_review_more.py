"""The adversarial review of the approval path's merged commits, continued
(`tests/test_approval_commits_review.py` has the kills, two approvers and races): the
middleware, an escalation, a forged state, no audit, a refused resume."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command
from support import CTX, TREASURER, approve, call, config, table_rows, turn
from test_approval_commits_review import BOB, TWO_PERSON, audit, graph, sound, waiting

from handrail import Inbox, Policy, build_agent
from handrail.errors import ApproverNotAuthorized
from handrail.integrations import HandrailMiddleware
from handrail.storage.checkpointer import STATE_TYPES
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers
from handrail.tools.errors import ServerError

# -- the middleware, escalations, a forged state, no audit -------------------------------------


def _middleware_agent(db: Path, policy: Policy) -> tuple[Any, HandrailMiddleware]:
    """create_agent with HandrailMiddleware on ``db``, as a process of its own would build it."""
    tools = banking_tools(db)
    serde = JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)
    saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False), serde=serde)
    middleware = HandrailMiddleware(policy=policy, db=saver, tools=tools)
    pay = {"name": "transfer_funds", "id": "c1", "args": {"to": "carol", "amount": 5000}}
    agent = create_agent(
        ScriptedChatModel([AIMessage("", tool_calls=[pay]), *[AIMessage("ok")] * 4]),
        tools,
        middleware=[middleware],
        checkpointer=saver,
        context_schema=type(CTX),
    )
    return middleware.guard(agent), middleware


@pytest.mark.parametrize("two_person", [False, True])
def test_the_middleware_records_each_request_and_decision_once_across_processes(
    tmp_path: Path, two_person: bool
) -> None:
    """HandrailMiddleware's after_model runs ask_once: its batch holds the turn's ``decided``
    event as well as ``approval_requested``; resumed from new middleware instances (new
    processes) each event is recorded once, with call_seq 0, 1, 2, ..., and the inbox is exact
    after every step (a two-person rule: alice's approval listed while bob is asked)."""
    db = tmp_path / "h.db"
    policy = Policy.from_yaml(TWO_PERSON) if two_person else Policy.from_file(POLICY_PATH)
    agent, mw = _middleware_agent(db, policy)
    assert "__interrupt__" in agent.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    mw.close()
    people = [TREASURER, BOB] if two_person else [TREASURER]
    for i, person in enumerate(people):
        agent, mw = _middleware_agent(db, policy)
        agent.invoke(Command(resume=approve(approver=person)), config(), context=CTX)
        mw.close()
        if i < len(people) - 1:
            assert [p.approvals for p in Inbox(db).pending()] == [("alice",)]
    assert transfers(db) == [("carol", 5000.0)]
    kinds = [e for _, e, _ in audit(db)]
    assert kinds.count("approval_requested") == len(people)
    assert kinds.count("approval_decided") == len(people)
    assert sound(db)
    assert Inbox(db).pending() == []


ESCALATING = """
version: 1
default: deny
rules:
  - {id: send, tools: [send], roles: [ai-agent], effect: allow}
escalate_to: [operator]
"""


@pytest.mark.backends("sqlite", "postgresql")
def test_an_escalation_round_keeps_its_retry_proof_event_and_outcome_in_one_commit(
    db: Any,
) -> None:
    """kind escalation: a call fails with a 500 and waits for an operator; a new graph (process)
    runs the node again and then decides ``retry``: the escalation's row and its
    ``approval_requested`` are written once, the retry's proof, its event and the outcome are
    kept, the call runs its one more attempt, and the inbox is empty."""
    sent: list[str] = []

    @tool
    def send(to: str) -> str:
        """Send money; the first attempt meets a 500."""
        sent.append(to)
        if len(sent) == 1:
            raise ServerError("upstream 500")
        return "sent"

    def build() -> Any:
        model = ScriptedChatModel([turn(call("send", to="bob")), *[AIMessage("ok")] * 3])
        return build_agent(model, [send], Policy.from_yaml(ESCALATING), checkpointer=db)

    assert "__interrupt__" in build().invoke({"messages": [("user", "go")]}, config(), context=CTX)
    assert "__interrupt__" in build().invoke(None, config(), context=CTX)  # the node re-runs
    (row,) = table_rows(db, "SELECT kind, status FROM handrail_approvals")
    assert row == {"kind": "escalation", "status": "open"}
    operator = {"id": "ops", "roles": ["operator"]}
    retry = {"decisions": [{"type": "retry"}], "approver": operator}
    build().invoke(Command(resume=retry), config(), context=CTX)
    assert sent == ["bob", "bob"]
    (proof,) = table_rows(db, "SELECT kind, attempt, approver FROM handrail_proofs")
    assert proof == {"kind": "retry", "attempt": 1, "approver": "ops"}
    kinds = [e for _, e, _ in audit(db)]
    assert kinds.count("approval_requested") == 1 and kinds.count("approval_decided") == 1
    assert sound(db)
    assert Inbox(db).pending() == []


@pytest.mark.backends("sqlite", "postgresql")
def test_a_forged_approval_is_refused_asked_again_and_recorded_once(db: Any) -> None:
    """An asked record edited in state to look approved (test_events case d) reaches execute,
    is refused, and is asked again: the row still stands as written, but the new
    ``approval_requested`` is not in the audit, so the pre-check writes it (not dropped); a real
    approval from a new graph then runs the call once."""
    g = graph(db)
    g.invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    (asked,) = g.get_state(config()).values["calls"].values()
    forged = {"calls": {asked.id: asked.update(status="approved", approvals=("alice",))}}
    g.update_state(config(), forged, as_node="policy_check")
    assert "__interrupt__" in g.invoke(None, config(), context=CTX)
    assert transfers(db) == []
    assert [e for _, e, _ in audit(db)] == [
        "decided",
        "approval_requested",
        "approval_missing",
        "approval_requested",
    ]
    assert [p.approvals for p in Inbox(db).pending()] == [()]
    graph(db).invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]
    assert sound(db) and Inbox(db).pending() == []


def test_without_an_audit_a_resume_in_another_process_keeps_the_inbox_exact(
    tmp_path: Path,
) -> None:
    """audit=False: the pre-check's "recorded" is this process's memory of what it published,
    so a resume in another process (a new graph) finds nothing recorded and writes the rows
    again (an upsert that changes nothing); the call runs once and the inbox is exact. (The
    ``approval_requested`` log line is repeated by that process, as before these commits.)"""
    db = tmp_path / "h.db"

    def build() -> Any:
        pay = {"name": "transfer_funds", "id": "c1", "args": {"to": "carol", "amount": 5000}}
        model = ScriptedChatModel([AIMessage("", tool_calls=[pay]), AIMessage("ok")])
        return build_agent(
            model, banking_tools(db), Policy.from_file(POLICY_PATH), checkpointer=db, audit=False
        )

    build().invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    (before,) = table_rows(db, "SELECT requested_at, status FROM handrail_approvals")
    build().invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]
    (after,) = table_rows(db, "SELECT requested_at, status, outcome FROM handrail_approvals")
    assert after == {**before, "status": "decided", "outcome": "approve"}
    assert table_rows(db, "SELECT count(*) AS n FROM handrail_audit") == [{"n": 0}]
    assert Inbox(db).pending() == []


@pytest.mark.backends("sqlite", "postgresql")
def test_a_refused_resume_leaves_the_request_waiting_and_recorded_once(db: Any) -> None:
    """A resume by someone without the rule's role is refused (typed, nothing stored); the
    next valid one, from another graph, re-runs the node with rows and events standing and
    records nothing twice."""
    graph(db).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    intern = {"id": "ivan", "roles": ["intern"]}
    with pytest.raises(ApproverNotAuthorized):
        graph(db).invoke(Command(resume=approve(approver=intern)), config(), context=CTX)
    assert [r["status"] for r in waiting(db)] == ["open"]
    graph(db).invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]
    assert [e for _, e, _ in audit(db)].count("approval_requested") == 1
    assert sound(db) and Inbox(db).pending() == []
