"""The agent graph end to end: real graphs, real SQLite checkpoints, real interrupts."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langgraph.types import Command, interrupt
from support import CTX, agent, approve, call, config, edit, per_call, turn

from handrail import Actor, Policy, RunContext
from handrail.errors import ApprovalExpired, ContextError
from handrail.review import EXPIRE
from handrail.tools.demo import transfers


def tool_messages(result: dict) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def test_allowed_calls_run_once_and_are_recorded(bank, db: Path) -> None:
    graph = bank(
        turn(call("get_balance", account="bob"), call("transfer_funds", to="bob", amount=50))
    )
    result = graph.invoke({"messages": [("user", "pay bob")]}, config(), context=CTX)
    assert "__interrupt__" not in result
    assert [m.text for m in tool_messages(result)] == ["bob: 100.00", "sent 50.00 to bob"]
    assert transfers(db) == [("bob", 50.0)]
    records = result["calls"]
    assert {(r.name, r.decision, r.rule_id, r.status, r.last_action) for r in records.values()} == {
        ("get_balance", "allow", "reads", "succeeded", "success"),
        ("transfer_funds", "allow", "small-transfers", "succeeded", "success"),
    }
    assert result["messages"][-1].text == "done"


def test_arguments_are_coerced_by_the_tool_schema_before_the_policy_sees_them(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="bob", amount="98.7")))
    result = graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (record,) = result["calls"].values()
    assert record.args == {"to": "bob", "amount": 98.7, "memo": ""}
    assert record.rule_id == "small-transfers"
    assert transfers(db) == [("bob", 98.7)]


def test_deny_answers_the_model_with_the_rule_and_never_runs_the_tool(bank, db) -> None:
    graph = bank(turn(call("delete_user", user_id="bob")))
    result = graph.invoke({"messages": [("user", "delete bob")]}, config(), context=CTX)
    (message,) = tool_messages(result)
    assert message.status == "error"
    assert "no-deletes" in message.text and "not run" in message.text
    (record,) = result["calls"].values()
    assert (record.decision, record.status) == ("deny", "rejected")
    balances = graph.handrail_gate.tools["get_balance"].invoke({"account": "bob"})
    assert balances == "bob: 100.00"  # the user still exists


def test_a_tool_no_rule_covers_is_denied_by_default(db) -> None:
    @tool
    def launch(target: str) -> str:
        """Launch."""
        raise AssertionError("must not run")

    graph = agent(db, [launch], Policy.from_yaml("rules: []"), turn(call("launch", target="moon")))
    result = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    (message,) = tool_messages(result)
    assert "policy default" in message.text
    assert next(iter(result["calls"].values())).rule_id is None


def test_invalid_arguments_go_back_to_the_model_as_a_bad_request(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="bob", amount="lots")))
    result = graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (message,) = tool_messages(result)
    assert message.status == "error" and "invalid arguments" in message.text
    (record,) = result["calls"].values()
    assert record.error is not None and record.error.kind == "bad_request"
    assert transfers(db) == []


def test_an_unknown_tool_goes_back_to_the_model_naming_the_known_ones(bank) -> None:
    graph = bank(turn(call("drop_tables")))
    result = graph.invoke({"messages": [("user", "x")]}, config(), context=CTX)
    (message,) = tool_messages(result)
    assert "unknown tool 'drop_tables'" in message.text and "transfer_funds" in message.text


def test_ask_pauses_with_one_hitl_request_and_approve_runs_the_tool_once(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="carol", amount=5000)))
    result = graph.invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    (pending,) = result["__interrupt__"]
    request = pending.value
    assert request["action_requests"] == [
        {
            "name": "transfer_funds",
            "args": {"to": "carol", "amount": 5000.0, "memo": ""},
            "description": request["action_requests"][0]["description"],
        }
    ]
    assert request["review_configs"][0]["action_name"] == "transfer_funds"
    info = request["handrail"]
    assert info["thread_id"] == "t-1" and per_call(info, "rule_id") == ["big-transfers"]
    assert per_call(info, "approvers") == [["treasurer"]] and info["actor"]["id"] == "agent-123"
    assert per_call(info, "expires_at")[0] is not None and len(per_call(info, "args_hash")[0]) == 64
    assert transfers(db) == []

    result = graph.invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]
    (record,) = result["calls"].values()
    assert (record.status, record.approver) == ("succeeded", "alice")


def test_two_asked_calls_in_one_turn_share_one_interrupt(bank, db) -> None:
    graph = bank(
        turn(
            call("transfer_funds", to="carol", amount=5000),
            call("get_balance", account="bob"),
            call("transfer_funds", to="dave", amount=2000),
        )
    )
    result = graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (pending,) = result["__interrupt__"]
    assert [a["args"]["to"] for a in pending.value["action_requests"]] == ["carol", "dave"]
    assert transfers(db) == []  # the allowed read waits for the turn's approvals too
    result = graph.invoke(
        Command(
            resume={
                "decisions": [{"type": "approve"}, {"type": "reject", "message": "not dave"}],
                "approver": {"id": "alice", "roles": ["treasurer"]},
            }
        ),
        config(),
        context=CTX,
    )
    assert transfers(db) == [("carol", 5000.0)]
    by_to = {r.args.get("to", r.name): r for r in result["calls"].values()}
    assert by_to["dave"].status == "rejected" and by_to["get_balance"].status == "succeeded"
    rejected = [m for m in tool_messages(result) if "not dave" in m.text]
    assert len(rejected) == 1 and "alice" in rejected[0].text


def test_reject_and_respond_answer_the_model_without_running_the_tool(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="carol", amount=5000)))
    graph.invoke({"messages": [("user", "pay")]}, config("a"), context=CTX)
    result = graph.invoke(
        Command(
            resume={
                "decisions": [{"type": "reject", "message": "over budget"}],
                "approver": {"id": "alice", "roles": ["treasurer"]},
            }
        ),
        config("a"),
        context=CTX,
    )
    assert "over budget" in tool_messages(result)[-1].text
    graph.invoke({"messages": [("user", "pay")]}, config("b"), context=CTX)
    result = graph.invoke(
        Command(
            resume={
                "decisions": [{"type": "respond", "message": "paid by cheque"}],
                "approver": {"id": "alice", "roles": ["treasurer"]},
            }
        ),
        config("b"),
        context=CTX,
    )
    answer = tool_messages(result)[-1]
    assert answer.text == "paid by cheque" and answer.status == "success"
    assert transfers(db) == []


def test_edit_runs_the_edited_arguments_after_a_fresh_policy_check(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="carol", amount=5000)))
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    result = graph.invoke(
        Command(resume=edit("transfer_funds", {"to": "carol", "amount": "900"})),
        config(),
        context=CTX,
    )
    assert transfers(db) == [("carol", 900.0)]
    (record,) = result["calls"].values()
    assert (record.rule_id, record.approver, record.args["amount"]) == (
        "small-transfers",
        "alice",
        900.0,
    )


def test_an_edit_that_the_policy_denies_is_denied(bank, db) -> None:
    policy = Policy.from_yaml(
        """
rules:
  - {id: ask-all, tools: [transfer_funds], effect: ask, approvers: [treasurer]}
  - {id: no-mallory, tools: [transfer_funds], when: 'args.to == "mallory"', effect: deny}
"""
    )
    graph = bank(turn(call("transfer_funds", to="carol", amount=10)), policy=policy)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    result = graph.invoke(
        Command(resume=edit("transfer_funds", {"to": "mallory", "amount": 10})),
        config(),
        context=CTX,
    )
    assert transfers(db) == []
    (record,) = result["calls"].values()
    assert (record.decision, record.rule_id, record.status) == ("deny", "no-mallory", "rejected")
    assert "no-mallory" in tool_messages(result)[-1].text


def test_an_edit_needing_another_approver_role_pauses_again_for_that_role(bank, db) -> None:
    policy = Policy.from_yaml(
        """
rules:
  - {id: small, tools: [transfer_funds], when: 'args.amount <= 10000.0', effect: ask,
     approvers: [treasurer]}
  - {id: huge, tools: [transfer_funds], when: 'args.amount > 10000.0', effect: ask,
     approvers: [cfo]}
"""
    )
    graph = bank(turn(call("transfer_funds", to="carol", amount=10)), policy=policy)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    result = graph.invoke(
        Command(resume=edit("transfer_funds", {"to": "carol", "amount": 20000})),
        config(),
        context=CTX,
    )
    (pending,) = result["__interrupt__"]
    assert per_call(pending.value, "rule_id") == ["huge"]
    assert per_call(pending.value, "approvers") == [["cfo"]]
    assert transfers(db) == []
    graph.invoke(
        Command(resume=approve(approver={"id": "carl", "roles": ["cfo"]})), config(), context=CTX
    )
    assert transfers(db) == [("carol", 20000.0)]


def test_an_interrupt_inside_a_tool_pauses_the_graph_and_its_resume_runs_the_tool(db) -> None:
    asked: list[str] = []

    @tool
    def confirm(q: str) -> str:
        """Ask the user, then act (not idempotent: the execution ledger guards it)."""
        answer = str(interrupt({"question": q}))
        asked.append(answer)
        return f"did it: {answer}"

    policy = Policy.from_yaml("rules: [{id: r, tools: [confirm], effect: allow}]")
    graph = agent(db, [confirm], policy, turn(call("confirm", q="sure?")))
    result = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    assert result["__interrupt__"][0].value == {"question": "sure?"}
    assert next(iter(result["calls"].values()), None) is None
    result = graph.invoke(Command(resume="yes"), config(), context=CTX)
    assert asked == ["yes"]
    assert result["calls"]["call_0_0"].status == "succeeded"
    assert tool_messages(result)[-1].text == "did it: yes"


def test_expired_approval_requests_resolve_as_rejected(bank, db) -> None:
    policy = Policy.from_yaml(
        "rules: [{id: r, tools: [transfer_funds], effect: ask, approvers: [treasurer],"
        " expires_in: 0s}]"
    )
    graph = bank(turn(call("transfer_funds", to="carol", amount=5)), policy=policy)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    with pytest.raises(ApprovalExpired, match="expired"):
        graph.invoke(Command(resume=approve()), config(), context=CTX)
    result = graph.invoke(Command(resume=EXPIRE), config(), context=CTX)
    assert transfers(db) == []
    assert "expired" in tool_messages(result)[-1].text
    assert result["calls"]["call_0_0"].status == "rejected"


def test_a_run_without_an_actor_is_refused_before_any_tool_runs(bank, db) -> None:
    graph = bank(turn(call("transfer_funds", to="bob", amount=5)))
    with pytest.raises(ContextError, match="RunContext"):
        graph.invoke({"messages": [("user", "pay")]}, config())
    assert transfers(db) == []


def test_the_actor_comes_from_the_runtime_context(bank, db) -> None:
    graph = bank(turn(call("get_balance", account="bob")))
    outsider = RunContext(actor=Actor(id="intern", roles=("intern",)))
    result = graph.invoke({"messages": [("user", "x")]}, config(), context=outsider)
    assert "policy default" in tool_messages(result)[0].text
