"""Approvals you can trust, tried as an attacker would: look-alike ids, two spellings of one
person, a more privileged resume context, forged state and ``goto``, roles claimed in a payload,
on real graphs, real interrupts and both stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.types import Command
from support import AGENT, CTX, approve, call, config, edit, table_rows, turn

from handrail import Actor, Inbox, Policy, RunContext, build_agent
from handrail.auth import Directory
from handrail.errors import (
    ApproverNotAuthorized,
    ContextError,
    DuplicateApprover,
    RequesterMismatch,
    SelfApproval,
    StaleApproval,
)
from handrail.state import args_hash
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import banking_tools, transfers

pytestmark = pytest.mark.backends("sqlite", "postgresql")

POLICY = Policy.from_yaml(
    """
rules:
  - {id: reads, tools: [get_balance], effect: allow}
  - {id: small, tools: [transfer_funds], roles: [ai-agent], effect: allow,
     when: "args.amount <= 1000.0"}
  - {id: big, tools: [transfer_funds], roles: [ai-agent], effect: ask, approvers: [treasurer],
     when: "args.amount > 1000.0 && args.amount <= 100000.0"}
  - {id: huge, tools: [transfer_funds], roles: [ai-agent], effect: deny,
     when: "args.amount > 100000.0"}
  - {id: supervisors, tools: [transfer_funds], roles: [supervisor], effect: allow}
  - {id: two-person, tools: [delete_user], effect: ask, approvers: [treasurer],
     min_approvals: 2}
"""
)
PEOPLE = {"alice": ["treasurer"], "bob": ["treasurer"], "agent-123": ["ai-agent"]}


def bank(db: Any, *turns: AIMessage, **kwargs: Any) -> Any:
    model = ScriptedChatModel([*turns, AIMessage("done")])
    return build_agent(model, banking_tools(db), POLICY, checkpointer=db, **kwargs)


def pay(amount: float) -> AIMessage:
    return turn(call("transfer_funds", to="mallory", amount=amount))


def waiting(graph: Any, thread: str = "t-1") -> bool:
    return bool(graph.get_state(config(thread)).interrupts)


@pytest.mark.parametrize(
    "spelling",
    ["AGENT-123", "agent-123\u200b", "\u0430gent-123", "\uff41\uff47\uff45\uff4e\uff54-123"],
    ids=["upper", "zero-width", "cyrillic", "fullwidth"],
)
def test_the_requester_cannot_approve_under_another_spelling(db: Any, spelling: str) -> None:
    graph = bank(db, pay(5000))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    payload = approve(approver={"id": spelling, "roles": ["treasurer"]})
    with pytest.raises((SelfApproval, ApproverNotAuthorized)) as refused:
        graph.invoke(Command(resume=payload), config(), context=CTX)
    assert refused.value.thread_id == "t-1"
    assert transfers(db) == [] and waiting(graph)
    graph.invoke(Command(resume=approve()), config(), context=CTX)  # the next valid one works
    assert transfers(db) == [("mallory", 5000.0)]


def test_one_person_under_two_spellings_is_one_approver(db: Any) -> None:
    graph = bank(db, turn(call("delete_user", user_id="u-1")))
    graph.invoke({"messages": [("user", "delete")]}, config(), context=CTX)
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    with pytest.raises(DuplicateApprover):
        graph.invoke(
            Command(resume=approve(approver={"id": "Alice", "roles": ["treasurer"]})),
            config(),
            context=CTX,
        )
    assert waiting(graph)
    result = graph.invoke(
        Command(resume=approve(approver={"id": "bob", "roles": ["treasurer"]})),
        config(),
        context=CTX,
    )
    assert result["calls"][next(iter(result["calls"]))].status == "succeeded"


def test_a_more_privileged_resume_context_cannot_edit_for_the_requester(db: Any) -> None:
    graph = bank(db, pay(5000))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    boss = RunContext(actor=Actor(id="boss", roles=("supervisor",)))
    with pytest.raises(RequesterMismatch) as refused:
        graph.invoke(
            Command(resume=edit("transfer_funds", {"to": "mallory", "amount": 5_000_000})),
            config(),
            context=boss,
        )
    assert refused.value.thread_id == "t-1"
    same_id_more_roles = RunContext(actor=Actor(id="agent-123", roles=("supervisor",)))
    with pytest.raises(RequesterMismatch):
        graph.invoke(Command(resume=approve()), config(), context=same_id_more_roles)
    assert transfers(db) == [] and waiting(graph)
    # Under the requester's own context, the edit is decided for the requester: denied.
    result = graph.invoke(
        Command(resume=edit("transfer_funds", {"to": "mallory", "amount": 5_000_000})),
        config(),
        context=CTX,
    )
    assert transfers(db) == []
    (record,) = result["calls"].values()
    assert record.decision == "deny" and record.rule_id == "huge"


def test_a_later_turn_under_another_actor_is_refused_before_anything_is_stored(db: Any) -> None:
    graph = bank(db, pay(10), AIMessage("paid"), pay(20))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    before = graph.get_state(config()).config
    boss = RunContext(actor=Actor(id="boss", roles=("supervisor",)))
    with pytest.raises(RequesterMismatch):
        graph.invoke({"messages": [("user", "again")]}, config(), context=boss)
    assert graph.get_state(config()).config == before
    assert transfers(db) == [("mallory", 10.0)]


def test_a_forged_approval_in_state_never_runs_the_tool(db: Any) -> None:
    graph = bank(db, pay(5000))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (asked,) = graph.get_state(config()).values["calls"].values()
    forged = asked.update(status="approved", approvals=("alice",), approver="alice")
    graph.update_state(config(), {"calls": {asked.id: forged}}, as_node="policy_check")
    graph.invoke(None, config(), context=CTX)
    assert transfers(db) == []
    assert waiting(graph)  # asked again: the request is pending and decidable
    (row,) = Inbox(db).pending()
    assert row.tool_call_id == asked.id
    missing = table_rows(db, "SELECT reason FROM handrail_audit WHERE event = 'approval_missing'")
    assert len(missing) == 1 and "holds 0" in missing[0]["reason"]
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("mallory", 5000.0)]


def test_a_forged_goto_with_changed_arguments_never_runs_them(db: Any) -> None:
    graph = bank(db, pay(5000))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (asked,) = graph.get_state(config()).values["calls"].values()
    bigger = asked.update(args={"to": "mallory", "amount": 90000.0, "memo": ""}, status="approved")
    graph.invoke(
        Command(update={"calls": {asked.id: bigger}}, goto="execute"), config(), context=CTX
    )
    assert transfers(db) == [] and waiting(graph)
    # the forged arguments are dropped: the model's own call is asked about again, bound to its
    # arguments
    (row,) = Inbox(db).pending()
    assert row.args["amount"] == 5000.0 and row.args_hash == asked.args_hash
    forged = args_hash("transfer_funds", bigger.args, graph.handrail_gate.hash_key)
    with pytest.raises(StaleApproval):  # an approval of the forged arguments does not fit
        graph.invoke(
            Command(resume={**approve(), "decisions": [{"type": "approve", "args_hash": forged}]}),
            config(),
            context=CTX,
        )
    assert transfers(db) == [] and waiting(graph)


def test_the_directory_gives_roles_and_refuses_strangers_and_claims(db: Any) -> None:
    people = Directory.from_mapping(PEOPLE)
    graph = bank(db, pay(5000), directory=people)
    stranger = RunContext(actor=Actor(id="eve", roles=("ai-agent",)))
    with pytest.raises(ContextError):
        graph.invoke({"messages": [("user", "pay")]}, config("t-2"), context=stranger)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    for claim, words in [
        ({"id": "mallory", "roles": ["treasurer"]}, "not in the directory"),
        ({"id": "agent-123", "roles": ["treasurer"]}, "treasurer"),
    ]:
        with pytest.raises(ApproverNotAuthorized, match=words):
            graph.invoke(
                Command(resume={"decisions": [{"type": "approve"}], "approver": claim}),
                config(),
                context=CTX,
            )
    assert transfers(db) == []
    # roles come from the directory: the approver names only an id
    graph.invoke(
        Command(resume={"decisions": [{"type": "approve"}], "approver": {"id": "Alice"}}),
        config(),
        context=CTX,
    )
    assert transfers(db) == [("mallory", 5000.0)]
    (decided,) = table_rows(
        db, "SELECT approver, identified_by FROM handrail_audit WHERE event = 'approval_decided'"
    )
    assert decided == {"approver": "alice", "identified_by": "directory"}


def test_the_inbox_decides_through_the_graphs_directory(db: Any) -> None:
    people = Directory.from_mapping(PEOPLE)
    graph = bank(db, pay(5000), directory=people)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    inbox = Inbox(db, graph=graph)
    with pytest.raises(ApproverNotAuthorized):
        inbox.approve("t-1", approver=Actor(id="anyone", roles=("treasurer",)))
    assert transfers(db) == [] and len(inbox.pending()) == 1
    inbox.approve("t-1", approver=Actor(id="bob"))
    assert transfers(db) == [("mallory", 5000.0)]
    inbox.close()


def test_audit_rows_say_how_a_claimed_approver_was_identified(db: Any, tmp_path: Path) -> None:
    graph = bank(db, pay(5000))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    (row,) = table_rows(
        db, "SELECT identified_by FROM handrail_audit WHERE event = 'approval_decided'"
    )
    assert row["identified_by"] == "claimed"
    assert AGENT.id == "agent-123"


def test_the_pinned_requester_holds_in_a_fresh_process(db: Any) -> None:
    bank(db, pay(10)).invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    pinned = table_rows(db, "SELECT actor_id, identified_by FROM handrail_threads")
    assert pinned == [{"actor_id": "agent-123", "identified_by": "claimed"}]
    fresh = bank(db, pay(20))  # another graph object: nothing cached, the store is asked
    boss = RunContext(actor=Actor(id="boss", roles=("supervisor",)))
    with pytest.raises(RequesterMismatch):
        fresh.invoke({"messages": [("user", "again")]}, config(), context=boss)
    assert transfers(db) == [("mallory", 10.0)]


def test_a_run_that_writes_nothing_else_still_pins_its_requester(db: Any) -> None:
    quiet = build_agent(
        ScriptedChatModel([AIMessage("nothing to do")]), banking_tools(db), POLICY, checkpointer=db
    )
    quiet.invoke({"messages": [("user", "hi")]}, config("t-quiet"), context=CTX)
    assert table_rows(db, "SELECT thread_id FROM handrail_threads") == [{"thread_id": "t-quiet"}]
