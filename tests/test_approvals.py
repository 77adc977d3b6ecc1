"""Approvals as an authorization boundary: two-person rules, expiry, edits, and racing resumes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.types import Command
from support import CTX, TREASURER, approval_rows, approve, call, config, edit, per_call, turn

from handrail import Actor, Inbox, Policy, build_agent
from handrail.errors import (
    AlreadyDecided,
    ApprovalExpired,
    DuplicateApprover,
    ResumeError,
    SelfApproval,
)
from handrail.review import EXPIRE
from handrail.storage._sqlite import RetryingSqliteSaver, connect
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

pytestmark = pytest.mark.backends("sqlite", "postgresql")

TWO_PERSON = Policy.from_yaml(
    """
rules:
  - id: wires
    tools: [transfer_funds]
    when: "args.amount > 1000.0"
    effect: ask
    approvers: [treasurer]
    min_approvals: 2
  - id: small
    tools: [transfer_funds]
    when: "args.amount <= 1000.0"
    effect: allow
"""
)
BOB = {"id": "bob", "roles": ["treasurer"]}


def test_a_two_person_rule_stays_paused_after_the_first_approval_and_shows_who(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="carol", amount=5000)), policy=TWO_PERSON)
    first = graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert per_call(first["__interrupt__"][0].value, "min_approvals") == [2]

    after_one = graph.invoke(Command(resume=approve()), config(), context=CTX)
    info = after_one["__interrupt__"][0].value["handrail"]
    assert per_call(info, "approvals") == [["alice"]]
    assert after_one["calls"]["call_0_0"].status == "awaiting_approval"
    assert transfers(db) == []
    (waiting,) = Inbox(db).pending()
    assert waiting.approvals == ("alice",) and waiting.min_approvals == 2

    rows = approval_rows(db)
    with pytest.raises(DuplicateApprover, match="2 distinct"):
        graph.invoke(Command(resume=approve()), config(), context=CTX)
    with pytest.raises(SelfApproval):
        graph.invoke(
            Command(resume=approve(approver={"id": "agent-123", "roles": ["treasurer"]})),
            config(),
            context=CTX,
        )
    assert approval_rows(db) == rows

    done = graph.invoke(Command(resume=approve(approver=BOB)), config(), context=CTX)
    assert "__interrupt__" not in done
    record = done["calls"]["call_0_0"]
    assert record.status == "succeeded" and record.approvals == ("alice", "bob")
    assert transfers(db) == [("carol", 5000.0)]
    assert Inbox(db).pending() == []


def test_a_rejection_ends_a_two_person_request_at_once(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="carol", amount=5000)), policy=TWO_PERSON)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    value = {"decisions": [{"type": "reject", "message": "no"}], "approver": BOB}
    result = graph.invoke(Command(resume=value), config(), context=CTX)
    assert result["calls"]["call_0_0"].status == "rejected"
    assert transfers(db) == []
    assert Inbox(db).pending() == []


def test_an_edit_counts_as_the_editors_approval_and_is_checked_against_the_new_rule(
    bank, db
) -> None:
    graph = bank(turn(call("transfer_funds", to="carol", amount=5000)), policy=TWO_PERSON)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    again = graph.invoke(
        Command(resume=edit("transfer_funds", {"to": "carol", "amount": 4000})),
        config(),
        context=CTX,
    )
    (waiting,) = Inbox(db).pending()
    assert waiting.args["amount"] == 4000.0 and waiting.approvals == ("alice",)
    assert per_call(again["__interrupt__"][0].value, "approvals") == [["alice"]]
    graph.invoke(Command(resume=approve(approver=BOB)), config(), context=CTX)
    assert transfers(db) == [("carol", 4000.0)]


def test_an_edit_down_to_an_allowed_amount_runs_without_a_second_approver(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="carol", amount=5000)), policy=TWO_PERSON)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    graph.invoke(
        Command(resume=edit("transfer_funds", {"to": "carol", "amount": 900})),
        config(),
        context=CTX,
    )
    assert transfers(db) == [("carol", 900.0)]
    (row,) = approval_rows(db)
    assert (row["status"], row["outcome"], row["decided_by"]) == ("decided", "edit", "alice")


EXPIRING = Policy.from_yaml(
    "rules: [{id: r, tools: [transfer_funds], effect: ask, approvers: [treasurer], expires_in: 1s}]"
)


def test_an_expired_request_refuses_decisions_and_resolves_as_rejected(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="carol", amount=5)), policy=EXPIRING)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    inbox = Inbox(db, graph=graph)
    with pytest.raises(ResumeError, match="nothing in this request has expired"):
        graph.invoke(Command(resume=EXPIRE), config(), context=CTX)
    assert inbox.expire() == []
    time.sleep(1.05)

    (waiting,) = inbox.pending()
    assert waiting.expired()
    rows = approval_rows(db)
    with pytest.raises(ApprovalExpired, match="expired"):
        inbox.approve("t-1", approver=Actor(**TREASURER))
    assert approval_rows(db) == rows

    (resolved,) = inbox.expire()
    assert resolved.thread_id == "t-1"
    assert inbox.pending() == []
    state = graph.get_state(config()).values
    assert state["calls"]["call_0_0"].status == "rejected"
    told = [m.text for m in state["messages"] if m.type == "tool"]
    assert "expired" in told[-1] and "not run" in told[-1]
    assert transfers(db) == []
    (row,) = approval_rows(db)
    assert (row["status"], row["outcome"], row["decided_by"]) == ("expired", "expire", None)


def test_a_resume_that_skips_the_check_after_the_deadline_still_cannot_run_the_tool(
    bank, db
) -> None:
    """A raw LangGraph resume reaches the node unchecked; the node resolves it as expired."""
    from langgraph.graph.state import CompiledStateGraph

    graph = bank(turn(call("transfer_funds", to="carol", amount=5)), policy=EXPIRING)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    time.sleep(1.05)
    for _ in CompiledStateGraph.stream(graph, Command(resume=approve()), config(), context=CTX):
        pass
    assert graph.get_state(config()).values["calls"]["call_0_0"].status == "rejected"
    assert transfers(db) == []
    assert Inbox(db).pending() == []


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from langchain_core.messages import AIMessage
    from handrail import Actor, Inbox, Policy, build_agent
    from handrail.errors import ApprovalError
    from handrail.testing import ScriptedChatModel
    from handrail.tools.demo import POLICY_PATH, banking_tools

    db, thread, who, go = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    call = {"name": "transfer_funds", "args": {"to": "carol", "amount": 5000}, "id": None}
    model = ScriptedChatModel([AIMessage("", tool_calls=[call]), AIMessage("done")])
    graph = build_agent(model, banking_tools(db), Policy.from_file(POLICY_PATH), checkpointer=db)
    inbox = Inbox(db, graph=graph)
    inbox.show(thread)  # everything imported and opened before the start line
    while not go.exists():
        time.sleep(0.001)
    try:
        inbox.approve(thread, approver=Actor(id=who, roles=["treasurer"]))
    except ApprovalError as exc:
        print(type(exc).__name__, exc)
        sys.exit(3)
    print("approved")
    """
)


def test_two_processes_resuming_one_thread_at_once_run_the_tool_once(bank, db, tmp_path) -> None:
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    threads = [f"race-{i}" for i in range(4)]
    graph = bank(turn(call("transfer_funds", to="carol", amount=5000)))
    for thread in threads:
        graph.invoke({"messages": [("user", "pay")]}, config(thread), context=CTX)
    del graph
    outcomes: list[tuple[int, str]] = []
    for thread in threads:
        go = tmp_path / f"go-{thread}"
        racers = [
            subprocess.Popen(
                [sys.executable, str(script), str(db), thread, who, str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for who in ("alice", "bob")
        ]
        time.sleep(1.5)  # both are waiting at the start line
        go.touch()
        for racer in racers:
            out, err = racer.communicate(timeout=120)
            outcomes.append((racer.returncode, out + err))
    wins = [o for o in outcomes if o[0] == 0]
    losses = [o for o in outcomes if o[0] == 3]
    assert len(wins) == len(threads) and len(losses) == len(threads), outcomes
    assert all("AlreadyDecided" in text for _, text in losses), losses
    assert transfers(db) == [("carol", 5000.0)] * len(threads)
    assert Inbox(db).pending() == []


def _state_of(graph: Any, thread: str) -> Any:
    return graph.get_state(config(thread)).values["calls"]


def test_a_second_resume_after_the_first_is_refused_as_already_decided(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="carol", amount=5000)))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    rows = approval_rows(db)
    with pytest.raises(AlreadyDecided, match="approve by alice"):
        graph.invoke(Command(resume=approve(approver=BOB)), config(), context=CTX)
    assert approval_rows(db) == rows
    assert _state_of(graph, "t-1")["call_0_0"].approver == "alice"
    assert transfers(db) == [("carol", 5000.0)]


def test_the_claim_is_held_until_the_approved_run_has_stopped(db) -> None:
    """While the approved call runs, a second resume of the thread is turned away."""
    seen: list[str] = []
    policy = Policy.from_yaml(
        "rules: [{id: r, tools: [wire], effect: ask, approvers: [treasurer]}]"
    )

    def graph() -> Any:
        model = ScriptedChatModel([turn(call("wire", amount=5)), AIMessage("ok")])
        return build_agent(model, [wire], policy, checkpointer=db)

    @tool
    def wire(amount: int) -> str:
        """Send a wire, and meanwhile try to approve it a second time from elsewhere."""
        try:
            graph().invoke(Command(resume=approve(approver=BOB)), config(), context=CTX)
        except AlreadyDecided as exc:
            seen.append(exc.reason)
        return "sent"

    first = graph()
    first.invoke({"messages": [("user", "wire")]}, config(), context=CTX)
    result = first.invoke(Command(resume=approve()), config(), context=CTX)
    assert result["calls"]["call_0_0"].approver == "alice"
    assert len(seen) == 1 and f"process {os.getpid()}" in seen[0] and "approve by alice" in seen[0]
    (row,) = approval_rows(db)
    assert (row["status"], row["claim"], row["claim_pid"]) == ("decided", None, None)


class SlowDiskSaver(RetryingSqliteSaver):
    """A real SQLite saver on a slow disk: each checkpoint takes 0.3 s longer to save."""

    def put(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return super().put(*args, **kwargs)


@pytest.mark.backends("sqlite")
def test_a_decision_that_lands_before_the_request_is_saved_waits_for_it(db) -> None:
    # The inbox lists a request as soon as the approval node runs; LangGraph saves the interrupt
    # after the node has raised. An approver in another process can decide in between.
    saver = SlowDiskSaver(connect(db, autocommit=False), serde=JsonPlusSerializer())
    model = ScriptedChatModel(
        [turn(call("transfer_funds", to="carol", amount=5000)), AIMessage("ok")]
    )
    graph = build_agent(model, banking_tools(db), Policy.from_file(POLICY_PATH), checkpointer=saver)
    run = threading.Thread(
        target=graph.invoke,
        args=({"messages": [("user", "pay")]}, config()),
        kwargs={"context": CTX},
    )
    run.start()
    inbox = Inbox(db, graph=graph)
    deadline = time.monotonic() + 30
    while not inbox.pending() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert graph.pending_request(config()) is None  # listed, not yet saved
    inbox.approve("t-1", approver=Actor(**TREASURER))
    run.join()
    assert transfers(db) == [("carol", 5000.0)]
    assert inbox.pending() == []
