"""One round of review for a turn's waiting calls, shared by the approval node and
`handrail.integrations.HandrailMiddleware`.

A round: the calls are described (`WaitingCall`), their approvals read back from Handrail's store
(state's list of approvers proves nothing), the request is asked with ``ask`` (LangGraph's
``interrupt``) until a resume value passes the checks, and the decisions are applied, recorded as
events and, for approvals, as proofs in Handrail's store (before the decision is saved: ``execute``
runs asked calls on those proofs only). The approval node runs one round per run of the node; the
middleware runs rounds until no call of the turn waits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from langchain_core.messages import ToolMessage

from handrail.auth import Identity
from handrail.context import Actor
from handrail.events import Batch
from handrail.policies import Decision, Policy
from handrail.review.authority import approvers_of
from handrail.review.check import until_valid
from handrail.review.decisions import Abort, Edit, Expire, Retry
from handrail.review.records import tool_message
from handrail.review.reviewer import Reviewer
from handrail.review.transitions import (
    apply_decision,
    decision_events,
    escalation_view,
    recover_approvals,
)
from handrail.review.waiting import ApprovalRequest, RequestKind, WaitingCall, approval_request
from handrail.review.waiting import waiting_call as describe
from handrail.state import ToolCallRecord
from handrail.storage.proofs import Proof

if TYPE_CHECKING:
    from handrail.storage.approvals import ApprovalTable, Outcome
    from handrail.storage.ledger import Ledger

__all__ = [
    "Round",
    "approved_in_store",
    "policy_ask",
    "proof",
    "proven",
    "recover",
    "review_round",
    "waiting_calls",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Round:
    """What a round decided."""

    records: dict[str, ToolCallRecord]
    """Every waiting call after the round (decided, or still waiting), by id."""
    messages: list[ToolMessage]
    """The answers owed to the model (rejections, responses, skips, aborts, expiries)."""
    decided: list[tuple[ToolCallRecord, Outcome]]
    """The calls no longer waiting, and their outcome, for the approvals table."""
    approver: Actor | None
    """Who decided (None: the request expired)."""
    aborted: bool
    """An escalation was aborted: the run ends."""
    proofs: list[Proof]
    """The approvals (and retries) people gave, to keep before the decision is saved: execute
    runs on these. The caller keeps them with the round's events (`ask_once`)."""

    def still(self) -> list[ToolCallRecord]:
        """The calls still waiting: a rule needs more approvers, or only some calls expired."""
        return [r for r in self.records.values() if r.status in ("awaiting_approval", "escalated")]


def review_round(
    gate: Reviewer,
    waiting: Sequence[ToolCallRecord],
    events: Batch,
    requester: Actor,
    *,
    kind: RequestKind,
    graph: str,
    ask: Callable[[ApprovalRequest], object],
    server: Identity | None = None,
    opened: Callable[[list[WaitingCall], Batch], None] | None = None,
) -> Round:
    """Ask about ``waiting`` (asked calls, or escalated ones) once, until validly decided. The
    decisions' events stay in ``events``, for the caller to keep with the round's proofs.

    ``opened`` hears of the calls just before the ask, with ``events`` holding their
    ``approval_requested`` events, and records both (the approvals table lists the calls, in the
    commit that records the events); without it the events are published here.
    """
    thread = events.thread_id
    if kind == "approval" and thread is not None:
        waiting = [proven(gate, thread, r) for r in waiting]
    calls = waiting_calls(gate, waiting, thread, graph, requester, kind)
    request = approval_request(calls, requester)
    asked = {
        r.id: events.add("approval_requested", r, reason=c.reason)
        for r, c in zip(waiting, calls, strict=True)
    }
    gate.requesters.flush()  # a new thread's requester is on record before anyone decides
    if opened is not None:  # before the ask; the re-run after the resume adds nothing
        opened(calls, events)
    else:
        events.publish()
    originals = {r.id: r.args for r in waiting}
    resolution, now = until_valid(ask, request, gate, originals, server)
    approver, via = resolution.approver, resolution.identified_by
    abort = next((d for d in resolution.decisions.values() if isinstance(d, Abort)), None)
    records: dict[str, ToolCallRecord] = {}
    messages: list[ToolMessage] = []
    decided: list[tuple[ToolCallRecord, Outcome]] = []
    proofs: list[Proof] = []
    for base in asked.values():
        decision = resolution.decisions.get(base.id)
        if decision is None:
            records[base.id] = base
            continue
        chosen = abort or decision
        new, status = apply_decision(gate, base, chosen, approver, requester, thread)
        by = approver.id if approver else None
        # an edit is decided anew, as a new record that keeps the call's event count
        new = decision_events(events, base, new.update(events=base.events), chosen, by, now, via)
        records[new.id] = new
        if new.status in ("rejected", "failed"):
            person = None if isinstance(chosen, Expire) else chosen.type
            messages.append(tool_message(new, status=status, decided_by_person=person))
        edit_allowed = isinstance(chosen, Edit) and new.status == "approved"
        if approver is not None and thread is not None and (by in new.approvals or edit_allowed):
            # an edit's arguments are proved too
            proofs.append(proof(thread, new, approver, via, policy=gate.policy))
        elif approver is not None and thread is not None and isinstance(chosen, Retry):
            proofs.append(proof(thread, new, approver, via, policy=gate.policy, retry=True))
        if new.status != "awaiting_approval":
            decided.append((new, "deny" if new.decision == "deny" else chosen.type))
    return Round(
        records=records,
        messages=messages,
        decided=decided,
        approver=approver,
        aborted=abort is not None,
        proofs=proofs,
    )


def waiting_calls(
    gate: Reviewer,
    records: Sequence[ToolCallRecord],
    thread: str | None,
    graph: str,
    requester: Actor,
    kind: RequestKind,
) -> list[WaitingCall]:
    """``records`` described as waiting calls (an escalated call as its escalation shows it)."""
    return [
        describe(
            escalation_view(gate, r) if kind == "escalation" else r,
            thread=thread,
            graph=graph,
            actor=requester,
            kind=kind,
            hidden=gate.policy.settings(r.name).redact,
            asked=policy_ask(gate, r, requester, thread) if kind == "approval" else None,
            editable=r.name in gate.tools,
        )
        for r in records
    ]


def policy_ask(
    gate: Reviewer, record: ToolCallRecord, requester: Actor, thread: str | None
) -> Decision:
    """The policy's ask about ``record`` as the request shows it: the decisions its rules allow
    and the reviewer's text. Decided again, as ``execute`` decides it before it runs; a policy
    that no longer asks (changed since the call was asked about) gives the defaults."""
    policy = gate.policy
    verdict = gate.verdict(
        record.id, record.name, record.args, requester, thread, record.provenance
    )
    if verdict.effect == "ask":
        return verdict
    return Decision(
        effect="ask", rule_id=record.rule_id, description_prefix=policy.description_prefix
    )


def recover(
    gate: Reviewer,
    waiting: Sequence[ToolCallRecord],
    events: Batch,
    requester: Actor,
    table: ApprovalTable | None,
    ledger: Ledger | None,
) -> dict[str, ToolCallRecord]:
    """Asked calls whose decision a crash took out of the checkpoint, going on approved: from
    what the ledger and the approvals table kept (`recover_approvals`), else from the approvals
    in Handrail's store (`approved_in_store`), whose rows the table then lists no more."""
    thread = events.thread_id
    if thread is None:
        return {}

    def proven(record: ToolCallRecord) -> bool:
        return len(_approving(gate, thread, record, requester)[1]) >= record.min_approvals

    recovered = recover_approvals(waiting, thread, table, ledger, proven)
    rest = [r for r in waiting if r.id not in recovered]
    stored = approved_in_store(gate, rest, events, requester)
    if table is not None:
        for record in stored.values():
            table.resolve(thread, [(record, "approve")], record.approver, datetime.now(UTC))
    return {**recovered, **stored}


def approved_in_store(
    gate: Reviewer,
    waiting: Sequence[ToolCallRecord],
    events: Batch,
    requester: Actor,
) -> dict[str, ToolCallRecord]:
    """Asked calls whose approvals in Handrail's store already suffice: a process that wrote
    them died before the checkpoint saved the decision. They go on approved instead of asking
    people who have already decided (and would be refused as having approved already); the
    decision's event is added if the process died before publishing it."""
    thread = events.thread_id
    done: dict[str, ToolCallRecord] = {}
    if thread is None:
        return done
    for record in waiting:
        proofs, people = _approving(gate, thread, record, requester)
        if len(people) < record.min_approvals:
            continue
        last = proofs[-1]
        approved = gate.events.next_seq(thread, record).update(
            status="approved",
            approvals=tuple(p.approver for p in proofs if p.approver in people),
            approver=last.approver,
        )
        if approved.events <= record.events + 1:  # the ask was published, the decision not
            approved = events.add(
                "approval_decided",
                approved,
                decision="approve",
                reason="recovered from Handrail's store after the deciding process stopped",
                identified_by=last.identified_by,
            )
        done[record.id] = approved
    return done


def _approving(
    gate: Reviewer, thread: str, record: ToolCallRecord, requester: Actor
) -> tuple[list[Proof], set[str]]:
    """The approvals Handrail's store holds for ``record``'s arguments, and the people among
    them who may approve it as it is asked now (its roles; not its requester)."""
    proofs = gate.proofs.of(thread, record.id, record.args_hash)
    return proofs, approvers_of(record.approvers, proofs, requester)


def proven(gate: Reviewer, thread: str, record: ToolCallRecord) -> ToolCallRecord:
    """An asked call with the approvals Handrail's store holds for its arguments (state's list
    of approvers proves nothing: it can be written by anyone who can update the state)."""
    kept = tuple(p.approver for p in gate.proofs.of(thread, record.id, record.args_hash))
    if kept == record.approvals:
        return record
    moved = record.update(approvals=kept)
    if set(kept) - set(record.approvals):  # a decision the checkpoint lost: count its events
        moved = gate.events.next_seq(thread, moved)
    return moved


def proof(
    thread: str,
    record: ToolCallRecord,
    approver: Actor,
    via: str | None,
    *,
    policy: Policy,
    retry: bool = False,
) -> Proof:
    """The proof that ``approver`` approved ``record``'s arguments (or, with ``retry``, decided
    to run its next attempt, the record's ``retry_count``), checked under ``policy``."""
    return Proof(
        thread_id=thread,
        tool_call_id=record.id,
        args_hash=record.args_hash,
        approver=approver.id,
        roles=approver.roles,
        rule_id=record.rule_id,
        identified_by=via or "claimed",
        kind="retry" if retry else "approve",
        attempt=record.retry_count if retry else 0,
        policy_digest=policy.digest,
    )
