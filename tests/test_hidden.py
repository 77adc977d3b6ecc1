"""Secrets hidden by value, bounded arguments, and a failed decision's claim freed at once."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.types import Command
from support import AGENT, CTX, approve, call, config, table_rows, turn

from handrail import Actor, Inbox, Policy, RunContext, build_agent
from handrail.auth import Directory
from handrail.cli import main as cli
from handrail.errors import ResumeError
from handrail.redaction import hidden_values, scrub
from handrail.storage import SqliteStore
from handrail.storage.approvals import ApprovalTable
from handrail.testing import ScriptedChatModel
from handrail.tools import ServerError

ACCOUNT = "DE89-3704-0044-0532-0130-00"

POLICY = Policy.from_yaml(
    """
rules:
  - {id: pay, tools: [pay], effect: allow, when: "args.amount <= 1000.0"}
  - {id: big, tools: [pay], effect: ask, approvers: [treasurer], when: "args.amount > 1000.0"}
  - {id: echo, tools: [echo], effect: allow}
escalate_to: [operator]
tools:
  pay: {redact: [args.account_number], max_retries: 0}
"""
)


def tools(paid: list[Any]) -> list[Any]:
    @tool
    def pay(to: str, amount: float, account_number: str) -> str:
        """Pay someone."""
        if account_number.startswith("DE"):
            raise ServerError(f"bank refused account {account_number} for {to}")
        paid.append((to, amount))
        return "ok"

    @tool
    def echo(value: Any) -> str:
        """Echo a value back."""
        return "echoed"

    return [pay, echo]


def agent(db: Any, paid: list[Any], *turns: AIMessage, policy: Policy = POLICY) -> Any:
    model = ScriptedChatModel([*turns, AIMessage("done")])
    return build_agent(model, tools(paid), policy, checkpointer=db)


@pytest.mark.backends("sqlite", "postgresql")
def test_an_error_echoing_a_hidden_argument_never_shows_it(
    db: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="handrail")
    graph = agent(db, [], turn(call("pay", to="bob", amount=50, account_number=ACCOUNT)))
    result = graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    request = result["__interrupt__"][0].value
    assert request["handrail"]["kind"] == "escalation"
    (row,) = Inbox(db).show("t-1")
    assert row.error is not None and "[redacted]" in row.error.message
    shown = [json.dumps(request, default=str), repr(row.error), caplog.text]
    for command in (["show", "t-1", "--json"], ["pending", "--json"]):
        assert cli([*command, "--db", str(db)]) == 0
        shown.append(capsys.readouterr().out)
    shown.extend(json.dumps(r, default=str) for r in table_rows(db, "SELECT * FROM handrail_audit"))
    shown.extend(
        json.dumps(r, default=str) for r in table_rows(db, "SELECT * FROM handrail_approvals")
    )
    shown.extend(
        json.dumps(r, default=str) for r in table_rows(db, "SELECT error FROM handrail_ledger")
    )
    leaks = [text for text in shown if ACCOUNT in text]
    assert leaks == []
    assert any("bank refused account [redacted] for bob" in text for text in shown)


def test_an_oversized_argument_is_a_bad_request_and_is_not_stored(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    huge = "x" * (20 * 1024 * 1024)
    graph = agent(db, [], turn(call("echo", value=huge)))
    result = graph.invoke({"messages": [("user", "echo")]}, config(), context=CTX)
    answer = next(m for m in result["messages"] if isinstance(m, ToolMessage))
    assert answer.status == "error" and "too large" in answer.text
    (record,) = result["calls"].values()
    assert record.status == "failed" and record.error is not None
    assert record.error.kind == "bad_request" and record.args == {}
    rows = table_rows(db, "SELECT payload FROM handrail_audit")
    assert rows and max(len(r["payload"]) for r in rows) < 1000


def test_a_deeply_nested_argument_is_refused_on_every_path(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    deep: Any = "bottom"
    for _ in range(5000):
        deep = {"d": deep}
    graph = agent(db, [], turn(call("echo", value=deep)))
    result = graph.invoke({"messages": [("user", "echo")]}, config(), context=CTX)
    (record,) = result["calls"].values()
    assert record.error is not None and "nested more than 32 levels" in record.error.message
    assert record.args == {}


def test_a_deep_resume_payload_is_refused_and_the_thread_still_waits(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    paid: list[Any] = []
    graph = agent(db, paid, turn(call("pay", to="bob", amount=5000, account_number="GB-1")))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    bad = {**approve(), "decisions": [{"type": "respond", "message": "x", "deep": deep}]}
    with pytest.raises(ResumeError, match="too large"):
        graph.invoke(Command(resume=bad), config(), context=CTX)
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    assert paid == [("bob", 5000.0)]


def test_a_decision_that_fails_midway_frees_its_claim_at_once(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    lookups: list[str] = []

    def ldap(person: str) -> list[str] | None:
        lookups.append(person)
        if len(lookups) == 2:  # the directory times out once, inside the decision's run
            raise ConnectionError("directory unreachable")
        return {"alice": ["treasurer"], "agent-123": ["ai-agent"]}.get(person)

    paid: list[Any] = []
    model = ScriptedChatModel(
        [turn(call("pay", to="bob", amount=5000, account_number="GB-1")), AIMessage("done")]
    )
    graph = build_agent(model, tools(paid), POLICY, checkpointer=db, directory=Directory(ldap))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=RunContext(actor=AGENT))
    inbox = Inbox(db, graph=graph)
    alice = Actor(id="alice")
    with pytest.raises(ConnectionError):
        inbox.approve("t-1", approver=alice)
    assert paid == [] and not inbox.pending()[0].deciding
    inbox.approve("t-1", approver=alice)  # at once: no claim left to wait out
    assert paid == [("bob", 5000.0)]
    inbox.close()


def test_a_claim_whose_release_fails_is_released_when_the_file_frees(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    paid: list[Any] = []
    graph = agent(db, paid, turn(call("pay", to="bob", amount=5000, account_number="GB-1")))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (row,) = Inbox(db).pending()
    mine = ApprovalTable(SqliteStore(db, busy_timeout=0.05))
    token = mine.claim("t-1", [row.tool_call_id], datetime.now(UTC))
    assert token is not None
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another program holds the file's write lock
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        mine.release(token)
    mine.abandon(token, reopen=True)
    holder.execute("ROLLBACK")
    holder.close()
    other = ApprovalTable(db)  # another process's view: the claim is gone within moments
    deadline = time.monotonic() + 5
    while other.waiting(thread_id="t-1")[0].deciding:
        assert time.monotonic() < deadline, "the abandoned claim was never released"
        time.sleep(0.05)
    assert other.claim("t-1", [row.tool_call_id], datetime.now(UTC)) is not None
    for table in (mine, other):
        table.close()


def test_a_hidden_value_is_scrubbed_in_any_spelling() -> None:
    values = hidden_values(
        {"iban": "DE89-3704-0044", "cards": [{"pan": "4111 1111"}], "pin": "123"},
        ["args.iban", "args.cards.pan", "args.pin"],
    )
    said = (
        "iban de89 3704 0044, DE8937040044 or 'DE89-3704-0044'; card 4111-1111; "
        "pin 123; amount 5000"
    )
    assert scrub(said, values) == (
        "iban [redacted], [redacted] or '[redacted]'; card [redacted]; pin 123; amount 5000"
    )
