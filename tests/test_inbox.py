"""The inbox: an exact listing across threads, decisions by thread ID, and crashes on both sides."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage
from support import AGENT, CTX, call, config, turn, two_transfers_graph

from handrail import Actor, HandrailGraph, Inbox, Policy, build_agent
from handrail.errors import AlreadyDecided, GraphNotFound, ResumeError, StaleApproval, UnknownCall
from handrail.redaction import REDACTED
from handrail.review import Approve, Reject
from handrail.storage.approvals import ApprovalTable
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import banking_tools, transfers

pytestmark = pytest.mark.backends("sqlite", "postgresql")

ALICE = Actor(id="alice", roles=("treasurer",))
AS_ALICE = ["--as", "alice", "--role", "treasurer"]
POLICY = Policy.from_yaml(
    """
rules:
  - id: reads
    tools: [get_balance]
    effect: allow
  - id: big
    tools: [transfer_funds]
    when: "args.amount > 1000.0 && args.amount <= 9000.0"
    effect: ask
    approvers: [treasurer]
    expires_in: 24h
  - id: huge
    tools: [transfer_funds]
    when: "args.amount > 9000.0"
    effect: ask
    approvers: [treasurer, cfo]
    expires_in: 1s
  - id: deletes
    tools: [delete_user]
    effect: ask
    approvers: [admin]
tools:
  transfer_funds: {redact: [args.memo]}
"""
)


def graph_for(db: str | Path, *turns: AIMessage) -> HandrailGraph:
    return build_agent(
        ScriptedChatModel([*turns, AIMessage("done")]), banking_tools(db), POLICY, checkpointer=db
    )


def in_checkpoints(graph: HandrailGraph, threads: list[str]) -> set[tuple[str, str]]:
    """The ground truth: calls waiting according to each thread's checkpoint."""
    waiting = set()
    for thread in threads:
        request = graph.pending_request(config(thread))
        if request is not None:
            waiting |= {(thread, c) for c in request[1]["handrail"]["tool_call_ids"]}
    return waiting


def listed(inbox: Inbox) -> set[tuple[str, str]]:
    return {(p.thread_id, p.tool_call_id) for p in inbox.pending()}


def pay(amount: float, memo: str = "") -> AIMessage:
    return turn(call("transfer_funds", to="carol", amount=amount, memo=memo))


def test_the_listing_stays_exact_through_approve_reject_respond_edit_and_expire(db) -> None:
    graph = graph_for(db, pay(5000))
    threads = [f"t-{i}" for i in range(6)]
    for thread in threads:
        graph.invoke({"messages": [("user", "pay")]}, config(thread), context=CTX)
    huge = graph_for(db, pay(20000))
    huge.invoke({"messages": [("user", "pay")]}, config("t-huge"), context=CTX)
    threads.append("t-huge")
    inbox = Inbox(db, graph=graph)
    assert len(inbox.pending()) == 7
    assert listed(inbox) == in_checkpoints(graph, threads)

    inbox.approve("t-0", approver=ALICE)
    inbox.reject("t-1", "not today", approver=ALICE)
    inbox.respond("t-2", "paid by cheque instead", approver=ALICE)
    inbox.edit("t-3", "call_0_0", {"to": "carol", "amount": 3000}, approver=ALICE)
    assert (
        listed(inbox)
        == in_checkpoints(graph, threads)
        == {
            ("t-4", "call_0_0"),
            ("t-5", "call_0_0"),
            ("t-huge", "call_0_0"),
        }
    )
    time.sleep(1.05)
    (expired,) = inbox.expire(graph=huge)
    assert expired.thread_id == "t-huge"
    assert (
        listed(inbox)
        == in_checkpoints(graph, threads)
        == {("t-4", "call_0_0"), ("t-5", "call_0_0")}
    )
    assert transfers(db) == [("carol", 5000.0), ("carol", 3000.0)]


def test_filters_by_tool_approver_role_and_age(db) -> None:
    graph_for(db, pay(5000)).invoke({"messages": [("user", "x")]}, config("pay"), context=CTX)
    graph_for(db, turn(call("delete_user", user_id="bob"))).invoke(
        {"messages": [("user", "x")]}, config("delete"), context=CTX
    )
    graph_for(db, pay(20000)).invoke({"messages": [("user", "x")]}, config("huge"), context=CTX)
    inbox = Inbox(db)
    assert [p.thread_id for p in inbox.pending(tool="delete_user")] == ["delete"]
    assert [p.thread_id for p in inbox.pending(approver_role="treasurer")] == ["pay", "huge"]
    assert [p.thread_id for p in inbox.pending(approver_role="cfo")] == ["huge"]
    assert inbox.pending(approver_role="nobody") == []
    assert inbox.pending(older_than=timedelta(hours=1)) == []
    time.sleep(0.05)
    assert len(inbox.pending(older_than=timedelta(milliseconds=10))) == 3
    first = inbox.pending()[0]
    assert first.actor == AGENT and first.rule_id == "big" and first.approvers == ("treasurer",)
    assert first.expires_at is not None and first.expires_at - first.requested_at < timedelta(
        hours=24, seconds=1
    )


def test_the_listing_redacts_marked_arguments_but_the_approval_runs_the_real_ones(db) -> None:
    graph = graph_for(db, pay(5000, memo="acct 1234-5678"))
    graph.invoke({"messages": [("user", "x")]}, config(), context=CTX)
    inbox = Inbox(db, graph=graph)
    (item,) = inbox.pending()
    assert item.args == {"to": "carol", "amount": 5000.0, "memo": REDACTED}
    inbox.approve("t-1", approver=ALICE, args_hash=item.args_hash)
    state = graph.get_state(config()).values
    assert state["calls"]["call_0_0"].args["memo"] == "acct 1234-5678"
    assert transfers(db) == [("carol", 5000.0)]


def test_an_approval_is_bound_to_the_arguments_listed(db) -> None:
    graph = graph_for(db, pay(5000))
    graph.invoke({"messages": [("user", "x")]}, config(), context=CTX)
    inbox = Inbox(db, graph=graph)
    with pytest.raises(StaleApproval):
        inbox.approve("t-1", approver=ALICE, args_hash="f" * 64)
    assert transfers(db) == [] and len(inbox.pending()) == 1


def test_decisions_name_the_waiting_calls_and_cover_each(db) -> None:
    two = turn(
        call("transfer_funds", to="carol", amount=5000),
        call("transfer_funds", to="dave", amount=6000),
    )
    graph = graph_for(db, two)
    graph.invoke({"messages": [("user", "x")]}, config(), context=CTX)
    inbox = Inbox(db, graph=graph)
    with pytest.raises(UnknownCall, match="call_7"):
        inbox.approve("t-1", approver=ALICE, call_id="call_7")
    with pytest.raises(ResumeError, match="none given for"):
        inbox.approve("t-1", approver=ALICE, call_id="call_0_0")
    with pytest.raises(ResumeError, match="binds one call"):
        inbox.approve("t-1", approver=ALICE, args_hash="0" * 64)
    inbox.decide(
        "t-1",
        {"call_0_1": Reject(message="not dave"), "call_0_0": Approve()},
        approver=ALICE,
    )
    assert transfers(db) == [("carol", 5000.0)]
    with pytest.raises(AlreadyDecided, match="reject by alice"):
        inbox.approve("t-1", approver=ALICE)


def test_the_inbox_finds_the_graph_by_name_or_says_how_to_give_it(db, tmp_path) -> None:
    graph_for(db, pay(5000)).invoke({"messages": [("user", "x")]}, config(), context=CTX)
    inbox = Inbox(db)
    with pytest.raises(GraphNotFound, match=r"Inbox\.register"):
        inbox.approve("t-1", approver=ALICE)
    elsewhere = graph_for(tmp_path / "other.db", pay(5000))
    with pytest.raises(GraphNotFound, match="does not keep its checkpoints"):
        inbox.approve("t-1", approver=ALICE, graph=elsewhere)
    built: list[str] = []

    def factory(path: str) -> HandrailGraph:
        built.append(path)
        return graph_for(path, pay(5000))

    inbox.register("handrail_agent", factory)
    inbox.approve("t-1", approver=ALICE)
    assert built == [str(db)]
    assert transfers(db) == [("carol", 5000.0)]


PAUSE_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from handrail import Actor, RunContext
    from handrail.demo import demo_graph

    db, thread = sys.argv[1], sys.argv[2]
    graph = demo_graph(db)  # found again through its entry point by `handrail approve`
    graph.invoke({"messages": [("user", "pay")]}, {"configurable": {"thread_id": thread}},
                 context=RunContext(actor=Actor(id="agent-123", roles=["ai-agent"])))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_thread_paused_by_a_process_that_was_killed_is_listed_and_approvable(
    db, tmp_path
) -> None:
    script = tmp_path / "pause.py"
    script.write_text(PAUSE_AND_DIE)
    died = subprocess.run([sys.executable, str(script), str(db), "t-9"], timeout=120)
    assert died.returncode == -signal.SIGKILL
    inbox = Inbox(db)
    (item,) = inbox.pending()
    assert (item.thread_id, item.tool, item.graph) == ("t-9", "transfer_funds", "handrail_demo")
    approved = subprocess.run(
        [sys.executable, "-m", "handrail", "approve", "t-9", "--db", str(db), *AS_ALICE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert approved.returncode == 0, approved.stderr
    assert transfers(db) == [("bob", 250.0), ("carol", 5000.0)]
    assert inbox.pending() == []


CLAIM_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import UTC, datetime
    from handrail.storage.approvals import ApprovalTable

    ApprovalTable(sys.argv[1]).claim(sys.argv[2], ["call_0_0"], datetime.now(UTC))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_claim_left_by_a_killed_approver_is_taken_over(db, tmp_path) -> None:
    graph = graph_for(db, pay(5000))
    graph.invoke({"messages": [("user", "x")]}, config(), context=CTX)
    script = tmp_path / "claim.py"
    script.write_text(CLAIM_AND_DIE)
    died = subprocess.run([sys.executable, str(script), str(db), "t-1"], timeout=120)
    assert died.returncode == -signal.SIGKILL
    inbox = Inbox(db, graph=graph)
    (item,) = inbox.pending()
    assert not item.deciding  # its claimant is dead
    inbox.approve("t-1", approver=ALICE)
    assert transfers(db) == [("carol", 5000.0)]
    assert inbox.pending() == []


def test_a_live_claim_turns_a_second_resume_away(db) -> None:
    graph = graph_for(db, pay(5000))
    graph.invoke({"messages": [("user", "x")]}, config(), context=CTX)
    table = ApprovalTable(db)
    token = table.claim("t-1", ["call_0_0"], datetime.now(UTC))
    assert token is not None
    assert table.claim("t-1", ["call_9_9"], datetime.now(UTC)) is None  # no row for that call
    inbox = Inbox(db, graph=graph)
    assert inbox.pending()[0].deciding
    with pytest.raises(AlreadyDecided, match=f"process {os.getpid()}"):
        inbox.approve("t-1", approver=ALICE)
    table.release(token)
    inbox.approve("t-1", approver=ALICE)
    assert transfers(db) == [("carol", 5000.0)]


APPROVE_AND_DIE = textwrap.dedent(
    """
    import sys
    from handrail import Actor, Inbox
    from support import two_transfers_graph

    db = sys.argv[1]
    graph = two_transfers_graph(db, kill_after="carol")
    Inbox(db, graph=graph).approve("t-1", approver=Actor(id="alice", roles=["treasurer"]))
    """
)


def test_a_killed_approver_leaves_no_decided_call_listed_after_the_thread_goes_on(
    db, tmp_path
) -> None:
    graph = two_transfers_graph(db)
    graph.invoke({"messages": [("user", "x")]}, config(), context=CTX)
    assert len(Inbox(db).pending()) == 2
    script = tmp_path / "approve.py"
    script.write_text(APPROVE_AND_DIE)
    tests = str(Path(__file__).parent)
    died = subprocess.run(
        [sys.executable, str(script), str(db)], timeout=120, env={**os.environ, "PYTHONPATH": tests}
    )
    assert died.returncode == -signal.SIGKILL
    assert transfers(db) == [("bob", 2000.0), ("carol", 5000.0)]
    # run on by thread id: carol's transfer has an intent and no outcome, so a human decides
    result = graph.invoke(None, config(), context=CTX)
    info = result["__interrupt__"][0].value["handrail"]
    assert (info["kind"], info["tool_call_ids"]) == ("escalation", ["call_0_1"])
    inbox = Inbox(db, graph=graph)
    assert [(p.kind, p.tool_call_id) for p in inbox.pending()] == [("escalation", "call_0_1")]
    inbox.skip("t-1", "carol was paid; checked with the bank", approver=ALICE)
    assert inbox.pending() == [] and graph.get_state(config()).next == ()
    assert transfers(db) == [("bob", 2000.0), ("carol", 5000.0)]
