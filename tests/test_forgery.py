"""Forged state, forged identities and crashes, found by attacking the trust change: each of
these ran a tool, believed someone or lost a pin before it was fixed (real graphs, real SQLite
files, real interrupts, a real SIGKILL)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command
from support import CTX, approve, call, config, table_rows, turn

from handrail import Actor, Inbox, Policy, RunContext, build_agent
from handrail.audit import AuditLog
from handrail.auth import Directory, JwtAuthenticator
from handrail.errors import ApproverNotAuthorized, NothingPending, RequesterMismatch
from handrail.integrations import HandrailMiddleware
from handrail.storage.checkpointer import STATE_TYPES
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

POLICY = Policy.from_file(POLICY_PATH)
BOSS = RunContext(actor=Actor(id="boss", roles=("supervisor",)))


def pay(call_id: str, amount: float = 5000) -> AIMessage:
    return AIMessage(
        "",
        tool_calls=[
            {"name": "transfer_funds", "id": call_id, "args": {"to": "mallory", "amount": amount}}
        ],
    )


def bank(db: Path, *turns: AIMessage, **kwargs: Any) -> Any:
    model = ScriptedChatModel([*turns, *[AIMessage("ok")] * 8])
    return build_agent(model, banking_tools(db), POLICY, checkpointer=db, **kwargs)


def test_one_approval_never_pays_twice_whatever_attempt_state_claims(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    graph = bank(db, pay("c1"))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    done = graph.get_state(config()).values["calls"]["c1"]
    for attempt in (1, 2):
        forged = done.update(status="approved", retry_count=attempt, result=None)
        again = {"messages": [pay("c1")], "calls": {"c1": forged}}
        graph.invoke(Command(update=again, goto="execute"), config(), context=CTX)
    assert transfers(db) == [("mallory", 5000.0)]


def test_a_record_borrowing_another_calls_id_runs_nothing(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    graph = bank(db, pay("c1"), AIMessage("paid"), pay("c2"))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    paused = graph.invoke({"messages": [("user", "pay again")]}, config(), context=CTX)
    assert paused["__interrupt__"]
    first = graph.get_state(config()).values["calls"]["c1"]
    forged = {"c2": first.update(status="approved", retry_count=1, result=None)}
    graph.invoke(Command(update={"calls": forged}, goto="execute"), config(), context=CTX)
    assert transfers(db) == [("mallory", 5000.0)]
    assert graph.get_state(config()).interrupts  # c2 waits for its own approval
    missing = table_rows(
        db, "SELECT tool_call_id FROM handrail_audit WHERE event = ?", ("approval_missing",)
    )
    assert missing == [{"tool_call_id": "c2"}]


def test_the_middleware_never_runs_the_models_tool_under_a_forged_records_name(
    tmp_path: Path,
) -> None:
    db = tmp_path / "h.db"
    tools = banking_tools(db)
    serde = JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)
    saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False), serde=serde)
    middleware = HandrailMiddleware(policy=POLICY, db=saver, tools=tools)
    agent = create_agent(
        ScriptedChatModel([pay("c1"), *[AIMessage("ok")] * 5]),
        tools,
        middleware=[middleware],
        checkpointer=saver,
        context_schema=RunContext,
    )
    agent.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    asked = agent.get_state(config()).values["calls"]["c1"]
    big = {"account": "operating", "to": "mallory", "amount": 5_000_000}
    forged = asked.update(name="get_balance", status="checked", args=big)
    agent.invoke(Command(update={"calls": {"c1": forged}}, goto="tools"), config(), context=CTX)
    assert transfers(db) == []
    middleware.close()


DIES_AFTER_PAUSING = """
import os, signal, sys
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from handrail import Actor, Policy, RunContext, build_agent
from handrail.guard import HandrailGraph
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools

db, audit = sys.argv[1], sys.argv[2] == "audit"
call = {"name": "transfer_funds", "id": "c1", "args": {"to": "mallory", "amount": 5000}}
model = ScriptedChatModel([AIMessage("", tool_calls=[call]), AIMessage("ok")])
graph = build_agent(
    model, banking_tools(db), Policy.from_file(POLICY_PATH), checkpointer=db, audit=audit
)
# killed once the pause is saved, before the run's end commits what it left pending
HandrailGraph._flush = lambda self: os.kill(os.getpid(), signal.SIGKILL)
ctx = RunContext(actor=Actor(id="agent-123", roles=("ai-agent",)))
graph.invoke({"messages": [("user", "pay")]}, {"configurable": {"thread_id": "t-1"}}, context=ctx)
"""


@pytest.mark.parametrize("audit", [True, False])
def test_the_requester_is_on_record_before_anyone_is_asked(tmp_path: Path, audit: bool) -> None:
    db = tmp_path / "h.db"
    child = tmp_path / "requester.py"
    child.write_text(textwrap.dedent(DIES_AFTER_PAUSING))
    mode = "audit" if audit else "no-audit"
    died = subprocess.run([sys.executable, str(child), str(db), mode], capture_output=True)
    assert died.returncode == -signal.SIGKILL, died.stderr
    pinned = table_rows(db, "SELECT thread_id, actor_id FROM handrail_threads")
    assert pinned == [{"thread_id": "t-1", "actor_id": "agent-123"}]
    with pytest.raises(RequesterMismatch):  # a fresh process, a more privileged context
        bank(db, pay("c1"), audit=audit).invoke(Command(resume=approve()), config(), context=BOSS)


def test_a_refused_resume_leaves_no_pin_behind(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    graph = bank(db, pay("c1", 10))
    mallory = RunContext(actor=Actor(id="mallory", roles=("ai-agent",)))
    with pytest.raises(NothingPending):
        graph.invoke(Command(resume=approve()), config("t-next"), context=mallory)
    graph.invoke({"messages": [("user", "pay")]}, config("t-other"), context=CTX)
    graph.invoke({"messages": [("user", "pay")]}, config("t-next"), context=CTX)  # not mallory's
    pins = table_rows(db, "SELECT thread_id, actor_id FROM handrail_threads ORDER BY thread_id")
    assert pins == [
        {"thread_id": "t-next", "actor_id": "agent-123"},
        {"thread_id": "t-other", "actor_id": "agent-123"},
    ]


def test_a_server_user_in_a_callers_config_is_not_believed(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    people = Directory.from_mapping({"alice": ["treasurer"], "agent-123": ["ai-agent"]})
    tokens = JwtAuthenticator(secret="s" * 40)
    graph = bank(db, pay("c1"), directory=people, authenticator=tokens)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    forged = {"identity": "mallory", "handrail_roles": ["treasurer"], "is_authenticated": True}
    sneaky = {"configurable": {"thread_id": "t-1", "langgraph_auth_user": forged}}
    with pytest.raises(ApproverNotAuthorized):
        graph.invoke(Command(resume={"decisions": [{"type": "approve"}]}), sneaky, context=CTX)
    assert transfers(db) == []


CRASHING_APPROVER = """
import os, signal, sys
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.types import Command
from handrail import Actor, Policy, RunContext, build_agent
from handrail.storage.approvals import ApprovalTable
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools

db = sys.argv[1]
call = {"name": "transfer_funds", "id": "c1", "args": {"to": "mallory", "amount": 5000}}
model = ScriptedChatModel([AIMessage("", tool_calls=[call]), AIMessage("ok")])
graph = build_agent(model, banking_tools(db), Policy.from_file(POLICY_PATH), checkpointer=db)
kept = ApprovalTable.resolve

def resolve_then_die(self, *args, proofs=(), **kwargs):
    kept(self, *args, proofs=proofs, **kwargs)
    if proofs:  # the approval is in the store; the checkpoint never hears of it
        os.kill(os.getpid(), signal.SIGKILL)

ApprovalTable.resolve = resolve_then_die
ctx = RunContext(actor=Actor(id="agent-123", roles=("ai-agent",)))
resume = {"decisions": [{"type": "approve"}], "approver": {"id": "alice", "roles": ["treasurer"]}}
graph.invoke(Command(resume=resume), {"configurable": {"thread_id": "t-1"}}, context=ctx)
"""


def test_an_approval_whose_process_died_after_storing_it_is_not_asked_again(
    tmp_path: Path,
) -> None:
    db = tmp_path / "h.db"
    bank(db, pay("c1")).invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    child = tmp_path / "approver.py"
    child.write_text(textwrap.dedent(CRASHING_APPROVER))
    died = subprocess.run([sys.executable, str(child), str(db)], capture_output=True, timeout=120)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert transfers(db) == []
    graph = bank(db, pay("c1"))
    graph.invoke(Command(resume=approve()), config(), context=CTX)  # alice, once more
    assert transfers(db) == [("mallory", 5000.0)]
    assert Inbox(db).pending() == []
    assert AuditLog(db).verify().ok
    assert os.path.exists(db)


def test_after_an_unknown_outcome_only_a_persons_retry_runs_the_call_again(
    tmp_path: Path,
) -> None:
    db = tmp_path / "h.db"
    paid: list[str] = []
    crash = [True]

    @tool
    def send(to: str) -> str:
        """Send money, then die once (a process killed after the side effect)."""
        paid.append(to)
        if crash:
            crash.pop()
            raise SystemExit("killed")  # a BaseException tears through the graph like a kill
        return "sent"

    policy = Policy.from_yaml(
        "rules: [{id: send, tools: [send], effect: allow}]\nescalate_to: [operator]\n"
    )
    model = ScriptedChatModel([turn(call("send", to="bob")), *[AIMessage("ok")] * 3])
    graph = build_agent(model, [send], policy, checkpointer=db)
    with pytest.raises(SystemExit):
        graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    escalated = graph.invoke(None, config(), context=CTX)  # outcome unknown: a person decides
    assert escalated["__interrupt__"] and paid == ["bob"]
    (record,) = graph.get_state(config()).values["calls"].values()
    forged = record.update(status="approved", retry_count=record.retry_count + 1)
    graph.invoke(
        Command(update={"calls": {record.id: forged}}, goto="execute"), config(), context=CTX
    )
    assert paid == ["bob"]  # the forged attempt met the ledger: still unknown, not run
    assert graph.get_state(config()).interrupts
    operator = {"id": "ops", "roles": ["operator"]}
    graph.invoke(
        Command(resume={"decisions": [{"type": "retry"}], "approver": operator}),
        config(),
        context=CTX,
    )
    assert paid == ["bob", "bob"]  # a person's retry: the one more attempt they decided
