"""The review core on its own: the decisions' wire format, a request saved by an older Handrail,
what the proofs in the store authorise, and what a stock HITL decision means on an escalation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from handrail import Actor, Policy
from handrail.errors import ResumeError
from handrail.nodes._gate import Gate
from handrail.policies import Decision
from handrail.review import (
    Action,
    Approve,
    Edit,
    Reject,
    Resolution,
    ResumePayload,
    Retry,
    Skip,
    WaitingCall,
    calls_of,
    missing_approval,
    parse_resume,
)
from handrail.review.decisions import as_escalation, wire
from handrail.storage.proofs import Proof

REQUESTER = Actor(id="agent-123", roles=("ai-agent",))


def test_the_wire_format_validates_straight_into_the_decision_classes() -> None:
    payload = ResumePayload.model_validate(
        {
            "decisions": [
                {"type": "approve", "args_hash": "abc"},
                {"type": "edit", "edited_action": {"name": "pay", "args": {"amount": 5}}},
            ],
            "approver": {"id": "alice"},
        }
    )
    assert payload.decisions == [
        Approve(args_hash="abc"),
        Edit(edited_action=Action(name="pay", args={"amount": 5})),
    ]
    assert wire(payload.decisions[1]) == {
        "type": "edit",
        "edited_action": {"name": "pay", "args": {"amount": 5}},
    }
    with pytest.raises(ValidationError, match="extra"):
        ResumePayload.model_validate({"decisions": [{"type": "skip", "extra": 1}]})


def legacy_request() -> dict[str, Any]:
    """An interrupt value as Handrail kept it before the per-call ``calls`` map."""
    deadline = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    return {
        "action_requests": [
            {"name": "pay", "args": {"to": "bob"}, "description": "big; approvers: treasurer"}
        ],
        "review_configs": [
            {"action_name": "pay", "allowed_decisions": ["approve", "edit", "reject", "respond"]}
        ],
        "handrail": {
            "kind": "approval",
            "thread_id": "t-1",
            "actor": REQUESTER.as_dict(),
            "tool_call_ids": ["call-1"],
            "rule_ids": ["big"],
            "approvers": [["treasurer"]],
            "expires_at": [deadline],
            "min_approvals": [2],
            "approvals": [["alice"]],
            "args_hashes": ["h1"],
            "errors": [None],
            "attempts": [0],
            "error": None,
        },
    }


def test_a_request_saved_by_an_older_handrail_is_read_as_waiting_calls() -> None:
    (call,) = calls_of(legacy_request())
    assert isinstance(call, WaitingCall)
    assert (call.tool_call_id, call.tool, call.rule_id, call.args_hash) == (
        "call-1",
        "pay",
        "big",
        "h1",
    )
    assert (call.approvers, call.min_approvals, call.approvals) == (("treasurer",), 2, ("alice",))
    assert call.actor == REQUESTER and not call.expired()


POLICY = Policy.from_yaml(
    """
rules:
  - {id: big, tools: [pay], effect: ask, approvers: [treasurer], min_approvals: 2}
  - {id: nope, tools: [wipe], effect: deny}
  - {id: free, tools: [read], effect: allow}
"""
)


def proof(approver: str, *roles: str) -> Proof:
    return Proof(
        thread_id="t-1",
        tool_call_id="call-1",
        args_hash="h1",
        approver=approver,
        roles=roles,
        rule_id="big",
        identified_by="directory",
    )


def decided(tool: str) -> Decision:
    return POLICY.decide(tool, {}, REQUESTER)


@pytest.mark.parametrize(
    ("proofs", "authorised"),
    [
        ([], False),
        ([proof("alice", "treasurer")], False),
        ([proof("alice", "treasurer"), proof("alice", "treasurer")], False),
        ([proof("alice", "treasurer"), proof("agent-123", "treasurer")], False),
        ([proof("alice", "treasurer"), proof("bob", "clerk")], False),
        ([proof("alice", "treasurer"), proof("bob", "treasurer")], True),
    ],
)
def test_an_asked_call_needs_distinct_approvers_with_a_role_other_than_the_requester(
    proofs: list[Proof], authorised: bool
) -> None:
    why = missing_approval(decided("pay"), proofs, REQUESTER)
    assert (why is None) is authorised
    if why is not None:
        assert "rule 'big' needs 2 approval(s)" in why


def test_allowed_calls_need_no_proof_and_denied_ones_are_never_authorised() -> None:
    assert missing_approval(decided("read"), [], REQUESTER) is None
    denied = missing_approval(decided("wipe"), [proof("alice", "treasurer")] * 3, REQUESTER)
    assert denied is not None and "denies" in denied


def test_a_stock_decision_on_an_escalation_is_the_decision_it_stands_for() -> None:
    assert as_escalation(Approve(tool_call_id="c1")) == Retry(tool_call_id="c1")
    assert as_escalation(Reject(message="retired")) == Skip(message="retired")
    assert as_escalation(Reject()) == Skip()  # the skip's own words, not "rejected by ..."


def test_a_call_kept_before_allowed_decisions_gets_those_of_its_kind() -> None:
    kept = {**legacy_escalation()["handrail"]["calls"]["call-1"]}
    del kept["allowed_decisions"]
    assert WaitingCall.model_validate(kept).allowed_decisions == ("retry", "skip", "abort")
    approval = WaitingCall.model_validate({**kept, "kind": "approval"})
    assert approval.allowed_decisions == ("approve", "edit", "reject", "respond")


def legacy_escalation() -> dict[str, Any]:
    """An escalation as a Handrail before issue 17 kept it in a checkpoint: Handrail's own
    decisions in its ``review_configs``."""
    call = WaitingCall(
        thread_id="t-1",
        tool_call_id="call-1",
        kind="escalation",
        tool="read",
        args={},
        args_hash="h1",
        approvers=("operator",),
        actor=REQUESTER,
    )
    return {
        "action_requests": [{"name": "read", "args": {}, "description": "unknown after 1"}],
        "review_configs": [
            {"action_name": "read", "allowed_decisions": ["retry", "skip", "abort"]}
        ],
        "handrail": {
            "kind": "escalation",
            "thread_id": "t-1",
            "actor": REQUESTER.as_dict(),
            "tool_call_ids": ["call-1"],
            "calls": {"call-1": call.model_dump(mode="json")},
            "error": None,
        },
    }


def test_an_escalation_kept_by_an_older_handrail_takes_its_own_decisions_only() -> None:
    gate = Gate([], POLICY)
    request: Any = legacy_escalation()
    ops = {"id": "ops-1", "roles": ["operator"]}
    resolution = parse_resume({"decisions": [{"type": "retry"}], "approver": ops}, request, gate)
    assert resolution == Resolution(
        approver=Actor(id="ops-1", roles=("operator",)),
        decisions={"call-1": Retry()},
        identified_by="claimed",
    )
    with pytest.raises(ResumeError) as refused:
        parse_resume({"decisions": [{"type": "approve"}], "approver": ops}, request, gate)
    assert refused.value.reason == (
        "decision 0 is 'approve', but this escalation of 'read' takes retry, skip, abort"
    )
