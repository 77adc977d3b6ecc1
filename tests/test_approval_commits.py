"""The approval path's writes: a request's row and its ``approval_requested`` audit row share one
commit, a resume does not open the request again, and a decision's proofs, its audit rows and
the request's outcome share one commit; an inbox decision reads the waiting calls once.
Statements are seen through SQLite's trace callback on every connection opened while the test
runs."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.types import Command
from support import CTX, TREASURER, approve, call, config, table_rows, turn

from handrail import Actor, Inbox, Policy, build_agent
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools

Trace = list[tuple[int, str]]


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trace]:
    """(connection, statement) of every statement run from here on, in order."""
    seen: Trace = []
    opened = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = opened(*args, **kwargs)
        key = id(conn)
        conn.set_trace_callback(lambda text: seen.append((key, " ".join(text.split()))))
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield seen


def transactions(trace: Trace) -> list[list[str]]:
    """The statements of each transaction, per connection, in the order they committed."""
    open_: dict[int, list[str]] = {}
    done: list[list[str]] = []
    for conn, text in trace:
        if text.startswith("BEGIN"):
            open_[conn] = []
        elif text == "COMMIT" and conn in open_:
            done.append(open_.pop(conn))
        elif conn in open_:
            open_[conn].append(text)
    return done


def writes(trace: Trace, table: str) -> list[str]:
    return [t for _, t in trace if t.startswith(("INSERT", "UPDATE")) and f" {table} " in t]


def graph(db: Path) -> Any:
    model = ScriptedChatModel(
        [turn(call("transfer_funds", to="carol", amount=5000)), AIMessage("done")]
    )
    return build_agent(model, banking_tools(db), Policy.from_file(POLICY_PATH), checkpointer=db)


def test_a_request_row_and_its_audit_row_share_one_commit(tmp_path: Path, trace: Trace) -> None:
    db = tmp_path / "h.db"
    result = graph(db).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    assert "__interrupt__" in result
    (opening,) = [
        t
        for t in transactions(trace)
        if any(s.startswith("INSERT INTO handrail_approvals") for s in t)
    ]
    assert any(s.startswith("INSERT INTO handrail_audit") for s in opening)
    (requested,) = table_rows(db, "SELECT * FROM handrail_audit WHERE event = 'approval_requested'")
    assert requested["tool"] == "transfer_funds"


def test_a_resume_opens_no_request_again_and_records_each_event_once(
    tmp_path: Path, trace: Trace
) -> None:
    db = tmp_path / "h.db"
    graph(db).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    trace.clear()
    graph(db).invoke(Command(resume=approve()), config(), context=CTX)  # as from a new process
    assert not [w for w in writes(trace, "handrail_approvals") if w.startswith("INSERT")]
    appended = writes(trace, "handrail_audit")
    events = [r["event"] for r in table_rows(db, "SELECT event FROM handrail_audit ORDER BY seq")]
    assert events == [
        "decided",
        "approval_requested",
        "approval_decided",
        "started",
        "succeeded",
    ]
    assert len(appended) == 3  # the resume's own events, none tried again
    (deciding,) = [
        t
        for t in transactions(trace)
        if any(s.startswith("INSERT INTO handrail_proofs") for s in t)
    ]
    assert any(s.startswith("INSERT INTO handrail_audit") for s in deciding)
    assert any(s.startswith("UPDATE handrail_approvals SET outcome") for s in deciding)
    approvals = table_rows(db, "SELECT outcome, decided_by FROM handrail_approvals")
    assert approvals == [{"outcome": "approve", "decided_by": TREASURER["id"]}]


def test_an_inbox_decision_reads_the_waiting_calls_once(tmp_path: Path, trace: Trace) -> None:
    db = tmp_path / "h.db"
    graph(db).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    inbox = Inbox(db, graph=graph(db))
    treasurer = Actor(id=TREASURER["id"], roles=tuple(TREASURER["roles"]))
    trace.clear()
    result = inbox.approve("t-1", approver=treasurer)
    assert result["messages"][-1].content == "done"
    reads = [t for _, t in trace if t.startswith("SELECT") and "FROM handrail_approvals" in t]
    listing = reads[0]  # the inbox reads the thread's waiting calls before anything else
    assert reads.count(listing) == 1, reads
