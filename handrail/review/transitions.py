"""What a person's decision does to a call: `apply_decision`, and the events that record it.

An approval counts the approver (the call runs once enough distinct people approved it); an edit
is a new call, decided again by the policy *for the requester*, so an edit can never reach a
denied action nor borrow the approver's roles; reject and respond answer the model; an
escalation's retry, skip and abort settle a failed call. `recover_approvals` applies an approval
that a crash took out of the checkpoint, from what Handrail's own tables kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from handrail.context import Actor
from handrail.events import Batch, since_ms
from handrail.redaction import redact
from handrail.review.authority import approvable
from handrail.review.check import Decided
from handrail.review.decisions import Abort, Approve, Edit, Expire, Reject, Respond, Retry, Skip
from handrail.review.origins import as_user
from handrail.review.records import decided, escalation_reason, from_decision
from handrail.review.reviewer import Reviewer
from handrail.state import ToolCallRecord

if TYPE_CHECKING:
    from handrail.storage.approvals import ApprovalTable
    from handrail.storage.ledger import Ledger

__all__ = ["apply_decision", "decision_events", "escalation_view", "recover_approvals"]


def decision_events(
    events: Batch,
    before: ToolCallRecord,
    after: ToolCallRecord,
    decision: Decided,
    by: str | None,
    now: datetime,
    identified_by: str | None = None,
) -> ToolCallRecord:
    """Add the events of a human's decision on a call; returns the record counting them.

    ``approval_decided`` (or ``expired``), then for an edit the policy's new ``decided``, and
    for a retry the ``retried`` of the new attempt.
    """
    waited = since_ms(before.asked_at, now)
    if isinstance(decision, Expire):
        return events.add("expired", after, decision="expire", duration_ms=waited)
    if isinstance(decision, Edit):  # the request's rule, with the arguments the approver chose
        shown = before.update(args=after.args, args_hash=after.args_hash)
        shown = events.add(
            "approval_decided",
            shown,
            decision="edit",
            approver=by,
            duration_ms=waited,
            identified_by=identified_by,
        )
        return decided(events, after.update(events=shown.events))
    record = events.add(
        "approval_decided",
        after,
        decision=decision.type,
        approver=by,
        duration_ms=waited,
        reason=getattr(decision, "message", None),
        identified_by=identified_by,
    )
    if isinstance(decision, Retry):
        return events.add("retried", record, reason="retry decided by a human")
    return record


def recover_approvals(
    waiting: Sequence[ToolCallRecord],
    thread: str,
    table: ApprovalTable | None,
    ledger: Ledger | None,
    proven: Callable[[ToolCallRecord], bool],
) -> dict[str, ToolCallRecord]:
    """Asked calls whose approval a crash took out of the checkpoint, approved again from what
    Handrail's own tables kept.

    Under ``durability="async"`` LangGraph saves a step in the background while the next one
    runs, so a process killed while running an approved tool can lose the approval. Asking again
    would be wrong: the call may already have run. A call the ledger saw begin goes on with the
    arguments it began with (``execute`` then answers from the ledger: its recorded result, or
    an outcome-unknown escalation); a call whose approval the table recorded goes on approved
    when the approvals in Handrail's store still authorise it as it is asked now (``proven``): a
    policy changed since may ask other roles, or more approvals, and then they are asked.
    """
    ids = [r.id for r in waiting]
    began = ledger.started(thread, ids) if ledger is not None else {}
    decided = table.approved(thread, ids) if table is not None else {}
    recovered: dict[str, ToolCallRecord] = {}
    for record in waiting:
        args_hash, by = decided.get(record.id, (None, None))
        approvals = (
            record.approvals
            if by is None or by in record.approvals
            else (
                *record.approvals,
                by,
            )
        )
        # The lost step's events were published before it ended: its ask (at record.events),
        # the decision (the next) and, if the call began, what the ledger's record counts.
        if record.id in began:
            run = began[record.id]
            recovered[record.id] = (
                run.record.update(status="approved")
                if run.record is not None
                else record.update(
                    args=run.args,
                    args_hash=run.args_hash,
                    retry_count=run.attempt,
                    status="approved",
                    approver=by,
                    approvals=approvals,
                    events=record.events + 2,
                )
            )
        elif args_hash == record.args_hash and proven(record):
            recovered[record.id] = record.update(
                status="approved", approver=by, approvals=approvals, events=record.events + 2
            )
    return recovered


def escalation_view(gate: Reviewer, record: ToolCallRecord) -> ToolCallRecord:
    """An escalated call as its request shows it: decided once, by the roles that handle its
    tool's failures (the record itself keeps its approval's history)."""
    roles = gate.policy.settings(record.name).escalate_to or gate.policy.escalate_to
    return record.update(approvers=roles, expires_at=None, min_approvals=1, approvals=())


def apply_decision(
    gate: Reviewer,
    record: ToolCallRecord,
    decision: Decided,
    approver: Actor | None,
    requester: Actor,
    thread: str | None = None,
) -> tuple[ToolCallRecord, Literal["success", "error"]]:
    """The record after ``decision`` on ``thread``, and the status of the ToolMessage if one
    is owed."""
    if isinstance(decision, Expire) or approver is None:
        deadline = record.expires_at.isoformat() if record.expires_at else "its deadline"
        return record.update(
            status="rejected",
            result=f"The approval request for {record.name!r} expired at {deadline} "
            f"without a decision; the tool was not run.",
        ), "error"
    if isinstance(decision, Approve):
        approvals = (*record.approvals, approver.id)
        done = len(approvals) >= record.min_approvals
        return record.update(
            status="approved" if done else "awaiting_approval",
            approvals=approvals,
            approver=approver.id,
            asked_at=record.asked_at if done else datetime.now(UTC),  # the next approver's wait
        ), "success"
    if isinstance(decision, Reject):
        return record.update(
            status="rejected",
            approver=approver.id,
            result=f"Rejected by {approver.id}: {decision.message}. The tool was not run.",
        ), "error"
    if isinstance(decision, Respond):
        return record.update(
            status="rejected", approver=approver.id, result=decision.message
        ), "success"
    if isinstance(decision, Retry):
        return record.update(
            status="approved",
            approver=approver.id,
            retry_count=record.retry_count + 1,
            last_action="retry",
            last_wait=None,
        ), "success"
    if isinstance(decision, Skip | Abort):
        verb = "Skipped" if isinstance(decision, Skip) else "Aborted; the run was stopped"
        return record.update(
            status="failed",
            approver=approver.id,
            last_action="failure",
            result=f"{verb} by {approver.id}: {decision.message}. The tool {record.name!r} "
            f"was not run again; it had failed with {escalation_reason(record)}",
        ), "error"
    # An edit is a new call: decided again for the requester; a deny stays a deny, and an ask
    # counts as this approver's approval only if they may decide the rule that now applies.
    args = gate.coerce(record.name, decision.args)  # checked to fit by `parse_resume`
    given = as_user(args)  # a person's arguments, not the model's
    verdict = gate.verdict(record.id, record.name, args, requester, thread, given)
    edited = from_decision(
        record.id,
        record.name,
        args,
        verdict,
        hash_key=gate.hash_key,
        approver=approver.id,
        given=gate.given(record.name, decision.args, args),
        provenance=given if record.provenance is not None else None,
    )
    if verdict.effect == "deny":
        paths = gate.policy.settings(record.name).redact
        shown = redact(args, paths, "args") if paths else args
        edited = edited.update(
            result=f"A human reviewer replaced this tool call with {record.name} with arguments "
            f"{json.dumps(shown, default=str)}, which the policy denies ({verdict.reason}). "
            f"The tool {record.name!r} was not run."
        )
    elif verdict.effect == "allow":
        edited = edited.update(status="approved")
    elif (
        verdict.effect == "ask"
        and set(verdict.approvers) & set(approver.roles)
        and approvable(verdict)  # the rule now asking takes an approval at all
    ):
        done = verdict.min_approvals <= 1
        edited = edited.update(
            status="approved" if done else "awaiting_approval", approvals=(approver.id,)
        )
    elif verdict.effect == "ask":
        edited = edited.update(approver=None)
    return edited, "error"
