"""The ``approval`` node: one interrupt for every asked call of a turn, and the checked resume.

The interrupt value has LangChain's ``HITLRequest`` shape (``action_requests``,
``review_configs``) plus a ``handrail`` key, so HITL clients and Agent Inbox-style UIs render it.
A resume value is parsed and checked by `parse_resume`: payload shape, one decision per call in
order (each may name its ``tool_call_id``), an approver with an id who holds one of the rule's
approver roles, is not the requester and has not approved the call already (``min_approvals``),
a request not past its deadline, an approved args hash that matches, edited arguments that fit the
tool's schema. `EXPIRE` resolves the calls past their deadline as rejected.

The node does nothing with side effects before ``interrupt()`` (LangGraph re-runs it from the first
line on resume). A value that fails the checks is answered with a fresh interrupt carrying the
reason, never an exception: an exception would leave the bad value in the checkpoint's pending
writes and every later resume of the thread would replay it. Callers that go through a Handrail
graph's ``invoke``/``stream`` get the same checks *before* anything is written, as a typed error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END
from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import TypedDict

from handrail._approvals import ApprovalTable, Outcome, RequestKind
from handrail.context import Actor, RunContext
from handrail.errors import (
    ApprovalError,
    ApprovalExpired,
    ApproverNotAuthorized,
    DuplicateApprover,
    ResumeError,
    SelfApproval,
    StaleApproval,
    UnknownCall,
)
from handrail.events import Batch, since_ms
from handrail.nodes._gate import (
    Gate,
    actor_of,
    call_id,
    decided,
    escalation_reason,
    from_decision,
    schema_errors,
    tool_message,
    turn_calls,
)
from handrail.redaction import error_view, restore
from handrail.redaction import redact as hide
from handrail.state import ToolCallRecord
from handrail.tools.ledger import Ledger

__all__ = [
    "EXPIRE",
    "Abort",
    "ActionRequest",
    "ApprovalRequest",
    "Approve",
    "Edit",
    "Expire",
    "HandrailRequest",
    "Reject",
    "Resolution",
    "Respond",
    "ResumeDecision",
    "Retry",
    "ReviewConfig",
    "Skip",
    "approval_request",
    "escalation_reason",
    "parse_resume",
]

DecisionType = Literal["approve", "edit", "reject", "respond", "retry", "skip", "abort"]
ALLOWED_DECISIONS: list[DecisionType] = ["approve", "edit", "reject", "respond"]
"""What an approver may do with an asked call."""
ESCALATION_DECISIONS: list[DecisionType] = ["retry", "skip", "abort"]
"""What a human may do with an escalated (failed) call."""


# -- the interrupt value (JSON: it goes into the checkpoint) ------------------------------------


class ActionRequest(TypedDict):
    """One call awaiting a decision (LangChain HITL ``ActionRequest``)."""

    name: str
    args: dict[str, Any]
    description: str


class ReviewConfig(TypedDict):
    """What an approver may do with one call (LangChain HITL ``ReviewConfig``)."""

    action_name: str
    allowed_decisions: list[DecisionType]


class HandrailRequest(TypedDict):
    """Handrail's part of the request: parallel lists, one entry per call, in order."""

    kind: Literal["approval", "escalation"]
    """``approval``: calls the policy asked about. ``escalation``: calls that failed in a way
    only a human can settle (decided with retry, skip or abort)."""
    thread_id: str | None
    actor: dict[str, Any]
    """The requester: the actor the calls were made for (it may not approve them)."""
    tool_call_ids: list[str]
    rule_ids: list[str | None]
    approvers: list[list[str]]
    """For each call, the roles of which the approver must hold one."""
    expires_at: list[str | None]
    """For each call, when the request lapses (ISO-8601, UTC)."""
    min_approvals: list[int]
    """For each call, how many distinct approvers must approve it."""
    approvals: list[list[str]]
    """For each call, the ids of the approvers who approved it so far."""
    args_hashes: list[str]
    errors: list[dict[str, Any] | None]
    """For each call, its last error (kind, message, status_code) if it failed."""
    attempts: list[int]
    """For each call, how many times it has been run so far."""
    error: str | None
    """Why the previous resume value was refused, if it was."""


class ApprovalRequest(TypedDict):
    """The interrupt value: a LangChain ``HITLRequest`` plus the ``handrail`` key."""

    action_requests: list[ActionRequest]
    review_configs: list[ReviewConfig]
    handrail: HandrailRequest


def approval_request(
    records: Sequence[ToolCallRecord],
    thread_id: str | None,
    actor: Actor,
    *,
    escalation: bool = False,
    redact: Mapping[str, Sequence[str]] | None = None,
) -> ApprovalRequest:
    """The interrupt value asking for a decision on ``records`` (all asked calls of a turn).

    With ``escalation``, the records are failed calls and their ``approvers`` are the roles that
    may decide escalations of their tool. ``redact`` maps tool names to the policy's ``redact``
    paths: those arguments are shown as ``[redacted]`` (the approval is bound to the real ones
    by ``args_hashes``, and an edit that leaves a hidden value as it is keeps the real one).
    """
    hidden = redact or {}
    return {
        "action_requests": [
            {
                "name": r.name,
                "args": hide(r.args, hidden[r.name], "args") if hidden.get(r.name) else r.args,
                "description": escalation_reason(r, hidden.get(r.name, ()))
                if escalation
                else f"{r.reason}; approvers: {', '.join(r.approvers)}",
            }
            for r in records
        ],
        "review_configs": [
            {
                "action_name": r.name,
                "allowed_decisions": list(
                    ESCALATION_DECISIONS if escalation else ALLOWED_DECISIONS
                ),
            }
            for r in records
        ],
        "handrail": {
            "kind": "escalation" if escalation else "approval",
            "thread_id": thread_id,
            "actor": actor.as_dict(),
            "tool_call_ids": [r.id for r in records],
            "rule_ids": [r.rule_id for r in records],
            "approvers": [list(r.approvers) for r in records],
            "expires_at": [r.expires_at.isoformat() if r.expires_at else None for r in records],
            "min_approvals": [r.min_approvals for r in records],
            "approvals": [list(r.approvals) for r in records],
            "args_hashes": [r.args_hash for r in records],
            "errors": [error_view(r.error, hidden.get(r.name, ())) for r in records],
            "attempts": [r.retry_count + 1 if escalation else 0 for r in records],
            "error": None,
        },
    }


# -- the resume value ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Approve:
    """Run the call as requested (once enough distinct approvers have approved it)."""

    kind: Literal["approve"] = "approve"
    args_hash: str | None = None
    """The hash of the arguments the approver saw; refused if the pending call's differ."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Edit:
    """Run the call with other arguments (checked against the policy again)."""

    kind: Literal["edit"] = "edit"
    args: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Reject:
    """Do not run the call; tell the model why."""

    kind: Literal["reject"] = "reject"
    message: str = "rejected by the approver"


@dataclass(frozen=True, kw_only=True, slots=True)
class Respond:
    """Do not run the call; answer the model in its place."""

    kind: Literal["respond"] = "respond"
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Expire:
    """The request passed its deadline: the call is rejected, and the model is told so."""

    kind: Literal["expire"] = "expire"


@dataclass(frozen=True, kw_only=True, slots=True)
class Retry:
    """Run the failed call once more (a new attempt, with the same arguments)."""

    kind: Literal["retry"] = "retry"


@dataclass(frozen=True, kw_only=True, slots=True)
class Skip:
    """Do not run the failed call again; tell the model it was skipped."""

    kind: Literal["skip"] = "skip"
    message: str = "skipped by the operator"


@dataclass(frozen=True, kw_only=True, slots=True)
class Abort:
    """End the run: every escalated call of the turn is answered as aborted, then END."""

    kind: Literal["abort"] = "abort"
    message: str = "aborted by the operator"


ResumeDecision = Approve | Edit | Reject | Respond | Expire | Retry | Skip | Abort


@dataclass(frozen=True, kw_only=True, slots=True)
class Resolution:
    """A checked resume: who decided, and a decision per call id (absent: still waiting)."""

    approver: Actor | None
    """None when the request is resolved as expired."""
    decisions: dict[str, ResumeDecision]


EXPIRE: dict[str, Any] = {"expire": True}
"""The resume value that resolves a request past its deadline as rejected (`Inbox.expire`)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _DecisionIn(_Strict):
    tool_call_id: str | None = None
    """Optional: the call this decision is for; it must be the call at this position."""


class _ApproveIn(_DecisionIn):
    type: Literal["approve"]
    args_hash: str | None = None


class _Action(_Strict):
    name: str
    args: dict[str, Any]


class _EditIn(_DecisionIn):
    type: Literal["edit"]
    edited_action: _Action


class _RejectIn(_DecisionIn):
    type: Literal["reject"]
    message: str = "rejected by the approver"


class _RespondIn(_DecisionIn):
    type: Literal["respond"]
    message: str


class _RetryIn(_DecisionIn):
    type: Literal["retry"]


class _SkipIn(_DecisionIn):
    type: Literal["skip"]
    message: str = "skipped by the operator"


class _AbortIn(_DecisionIn):
    type: Literal["abort"]
    message: str = "aborted by the operator"


_AnyDecisionIn = _ApproveIn | _EditIn | _RejectIn | _RespondIn | _RetryIn | _SkipIn | _AbortIn


class _ApproverIn(_Strict):
    id: str = ""
    roles: list[str] = Field(default_factory=list)


class _ResumeIn(_Strict):
    decisions: list[Annotated[_AnyDecisionIn, Field(discriminator="type")]]
    approver: _ApproverIn | None = None


class _ExpireIn(_Strict):
    expire: Literal[True]


def parse_resume(
    value: object,
    request: ApprovalRequest,
    gate: Gate,
    now: datetime | None = None,
    originals: Mapping[str, Mapping[str, Any]] | None = None,
) -> Resolution:
    """Check a resume value against the request it answers; raise a typed `ApprovalError`.

    The value is either a decision per call, in the request's order, with the approver, or
    `EXPIRE`, which resolves the calls past their deadline at ``now``. ``originals`` (call id to
    the real arguments) puts back the hidden values an edit left as ``[redacted]``.
    """
    info = request["handrail"]
    thread = info["thread_id"]
    moment = now or datetime.now(UTC)
    if not isinstance(value, Mapping):
        raise ResumeError(
            f"a resume value must be a mapping with 'decisions' and 'approver', "
            f"not {type(value).__name__}",
            thread_id=thread,
        )
    if "expire" in value:
        return _expire(value, info, moment)
    try:
        parsed = _ResumeIn.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ResumeError(f"resume payload: {where}: {err['msg']}", thread_id=thread) from None
    calls = request["action_requests"]
    ids = info["tool_call_ids"]
    if len(parsed.decisions) != len(calls):
        names = ", ".join(f"{c['name']} ({i})" for c, i in zip(calls, ids, strict=True))
        raise ResumeError(
            f"expected {len(calls)} decision(s), one per call in order ({names}), "
            f"got {len(parsed.decisions)}",
            thread_id=thread,
        )
    for i, d in enumerate(parsed.decisions):
        allowed_types = request["review_configs"][i]["allowed_decisions"]
        if d.type not in allowed_types:
            raise ResumeError(
                f"decision {i} is {d.type!r}, but this {info['kind']} of {calls[i]['name']!r} "
                f"takes {', '.join(allowed_types)}",
                thread_id=thread,
            )
        if d.tool_call_id is None or d.tool_call_id == ids[i]:
            continue
        if d.tool_call_id not in ids:
            raise UnknownCall(
                f"decision {i} is for call {d.tool_call_id!r}, which is not waiting here; "
                f"waiting calls in order: {ids}",
                thread_id=thread,
            )
        raise ResumeError(
            f"decision {i} is for call {d.tool_call_id!r}, but the calls must be decided "
            f"in order: {ids}",
            thread_id=thread,
        )
    if parsed.approver is None or not parsed.approver.id.strip():
        raise ApproverNotAuthorized("the decision names no approver id", thread_id=thread)
    approver = Actor(id=parsed.approver.id.strip(), roles=tuple(parsed.approver.roles))
    if approver.id == str(info["actor"]["id"]).strip():
        raise SelfApproval(
            f"{approver.id!r} made the request and may not decide it", thread_id=thread
        )
    lapsed = _lapsed(info, moment)
    if lapsed:
        raise ApprovalExpired(
            f"the request for {', '.join(lapsed)} expired; it can only be resolved as expired "
            f"(Inbox.expire or `handrail expire`)",
            thread_id=thread,
        )
    decisions: dict[str, ResumeDecision] = {}
    for i, (d, call) in enumerate(zip(parsed.decisions, calls, strict=True)):
        allowed = info["approvers"][i]
        if not set(allowed) & set(approver.roles):
            raise ApproverNotAuthorized(
                f"{approver.id!r} (roles {list(approver.roles)}) holds none of the roles "
                f"{allowed} that may decide {call['name']!r} (rule {info['rule_ids'][i]!r})",
                thread_id=thread,
            )
        if isinstance(d, _ApproveIn | _EditIn) and approver.id in info["approvals"][i]:
            raise DuplicateApprover(
                f"{approver.id!r} already approved {call['name']!r}; rule "
                f"{info['rule_ids'][i]!r} needs {info['min_approvals'][i]} distinct approvers",
                thread_id=thread,
            )
        original = (originals or {}).get(ids[i])
        decisions[ids[i]] = _decision(d, call, info["args_hashes"][i], gate, thread, original)
    return Resolution(approver=approver, decisions=decisions)


def interrupt_until_valid(
    request: ApprovalRequest, gate: Gate, originals: Mapping[str, Mapping[str, Any]]
) -> tuple[Resolution, datetime]:
    """Interrupt with ``request`` until a resume value passes `parse_resume`: the resolution,
    and when it came.

    A refused value is answered with a fresh interrupt carrying the reason, never an exception
    (which would leave the value in the checkpoint's pending writes for every later resume to
    replay). A decision past the deadline resolves the lapsed calls as expired.
    """
    asking: ApprovalRequest = request
    while True:
        value = interrupt(asking)
        now = datetime.now(UTC)
        try:
            return parse_resume(value, request, gate, now, originals), now
        except ApprovalExpired:
            # Past the deadline, whatever was decided: the lapsed calls are rejected.
            return _expire(EXPIRE, request["handrail"], now), now
        except ApprovalError as exc:
            asking = {**request, "handrail": {**request["handrail"], "error": exc.reason}}


def _lapsed(info: HandrailRequest, now: datetime) -> list[str]:
    return [
        call
        for call, deadline in zip(info["tool_call_ids"], info["expires_at"], strict=True)
        if deadline is not None and now >= datetime.fromisoformat(deadline)
    ]


def _expire(value: Mapping[str, Any], info: HandrailRequest, now: datetime) -> Resolution:
    thread = info["thread_id"]
    try:
        _ExpireIn.model_validate(value)
    except ValidationError:
        raise ResumeError(
            f"an expiry resume value is exactly {EXPIRE}, not {dict(value)}", thread_id=thread
        ) from None
    lapsed = _lapsed(info, now)
    if not lapsed:
        deadlines = [d for d in info["expires_at"] if d is not None]
        raise ResumeError(
            "nothing in this request has expired"
            + (f" (earliest deadline {min(deadlines)})" if deadlines else " (it has no deadline)"),
            thread_id=thread,
        )
    return Resolution(approver=None, decisions={call: Expire() for call in lapsed})


def _decision(
    d: _AnyDecisionIn,
    call: ActionRequest,
    expected_hash: str,
    gate: Gate,
    thread: str | None,
    original: Mapping[str, Any] | None = None,
) -> ResumeDecision:
    if isinstance(d, _ApproveIn):
        if d.args_hash is not None and d.args_hash != expected_hash:
            raise StaleApproval(
                f"the approval for {call['name']!r} names args hash {d.args_hash[:12]}…, "
                f"but the pending call's arguments hash to {expected_hash[:12]}…",
                thread_id=thread,
            )
        return Approve(args_hash=d.args_hash)
    if isinstance(d, _EditIn):
        if d.edited_action.name != call["name"]:
            raise ResumeError(
                f"an edit may change the arguments of {call['name']!r}, not the tool "
                f"(got {d.edited_action.name!r})",
                thread_id=thread,
            )
        edited = d.edited_action.args
        paths = gate.policy.settings(call["name"]).redact
        if original is not None and paths:
            edited = restore(edited, original, paths)
        try:
            args = gate.coerce(call["name"], edited)
        except ValidationError as exc:
            raise ResumeError(
                f"edited arguments for {call['name']!r} do not fit the tool: {schema_errors(exc)}",
                thread_id=thread,
            ) from None
        return Edit(args=args)
    if isinstance(d, _RejectIn):
        return Reject(message=d.message)
    if isinstance(d, _RespondIn):
        return Respond(message=d.message)
    if isinstance(d, _RetryIn):
        return Retry()
    if isinstance(d, _SkipIn):
        return Skip(message=d.message)
    return Abort(message=d.message)


# -- the node -----------------------------------------------------------------------------------


def make_approval_node(
    gate: Gate,
    table: ApprovalTable | None = None,
    graph_name: str = "handrail_agent",
    ledger: Ledger | None = None,
) -> Callable[[Mapping[str, Any], RunnableConfig, Runtime[RunContext]], Command[str]]:
    """Pause for the turn's asked (or escalated) calls; apply the checked decisions on resume.

    Asked calls come first: escalations only arise once the turn's calls have run. With a
    ``table``, each waiting call has a row there (written before the interrupt, as an upsert) and
    its outcome is recorded after the resume, so the inbox stays exact. An approval that a crash
    took out of the checkpoint is not asked for again when the ``ledger`` saw the call begin or
    the ``table`` recorded it (`recover_approvals`).
    """
    redactions = {name: gate.policy.settings(name).redact for name in gate.tools}

    def approval(
        state: Mapping[str, Any], config: RunnableConfig, runtime: Runtime[RunContext]
    ) -> Command[str]:
        actor = actor_of(runtime)
        events = gate.events.batch(config, actor.id)
        known = gate.records(state)
        turn = [known[call_id(c)] for c in turn_calls(state["messages"]) if call_id(c) in known]
        waiting = [r for r in turn if r.status == "awaiting_approval"]
        shown = waiting
        escalation = not waiting
        if escalation:
            waiting = [r for r in turn if r.status == "escalated"]
            shown = [escalation_view(gate, r) for r in waiting]
        thread = events.thread_id
        recovered: dict[str, ToolCallRecord] = {}
        if not escalation and thread is not None:
            recovered = recover_approvals(waiting, thread, table, ledger)
            waiting = shown = [r for r in waiting if r.id not in recovered]
        if not waiting:
            events.publish()
            return Command(
                update={gate.key: recovered},
                goto=gate.route({**known, **recovered}, state["messages"]),
            )
        kind: RequestKind = "escalation" if escalation else "approval"
        if table is not None and thread is not None:
            table.open(thread, graph_name, actor, shown, redactions, datetime.now(UTC), kind)
        request = approval_request(shown, thread, actor, escalation=escalation, redact=redactions)
        asked = {
            r.id: events.add("approval_requested", r, reason=action["description"])
            for r, action in zip(waiting, request["action_requests"], strict=True)
        }
        events.publish()  # an upsert: the re-run after the resume adds nothing
        resolution, now = interrupt_until_valid(request, gate, {r.id: r.args for r in waiting})

        approver = resolution.approver
        aborted = next((d for d in resolution.decisions.values() if isinstance(d, Abort)), None)
        records: dict[str, ToolCallRecord] = {}
        messages: list[ToolMessage] = []
        decided_rows: list[tuple[ToolCallRecord, Outcome]] = []
        for record in waiting:
            decision = resolution.decisions.get(record.id)
            if decision is None:
                continue
            chosen = aborted or decision
            base = asked[record.id]
            new, status = apply_decision(gate, base, chosen, approver, actor)
            new = new.update(events=base.events)  # an edit is decided anew, as a new record
            by = approver.id if approver else None
            new = decision_events(events, base, new, chosen, by, now)
            records[new.id] = new
            if new.status in ("rejected", "failed"):
                messages.append(tool_message(new, status=status))
            if new.status != "awaiting_approval":
                outcome: Outcome = "deny" if new.decision == "deny" else chosen.kind
                decided_rows.append((new, outcome))
        events.publish()
        if table is not None and thread is not None:
            now = datetime.now(UTC)
            still = [r for r in records.values() if r.status == "awaiting_approval"]
            table.resolve(thread, decided_rows, approver.id if approver else None, now)
            if still:
                table.open(thread, graph_name, actor, still, redactions, now, kind)
        update = {gate.key: {**recovered, **records}, "messages": messages}
        if aborted is not None:
            # The model gets no further turn; a workflow's `steps` node records the stop.
            return Command(update=update, goto=END if gate.done == "agent" else gate.done)
        return Command(update=update, goto=gate.route({**known, **records}, state["messages"]))

    return approval


def decision_events(
    events: Batch,
    before: ToolCallRecord,
    after: ToolCallRecord,
    decision: ResumeDecision,
    by: str | None,
    now: datetime,
) -> ToolCallRecord:
    """Add the events of a human's decision on a call; returns the record counting them.

    ``approval_decided`` (or ``expired``), then for an edit the policy's new ``decided``, and
    for a retry the ``retried`` of the new attempt.
    """
    waited = since_ms(before.asked_at, now)
    if isinstance(decision, Expire):
        return events.add("expired", after, decision="expire", duration_ms=waited)
    if isinstance(decision, Edit):  # the request's rule, with the arguments the approver chose
        shown = before.update(args=after.args)
        shown = events.add(
            "approval_decided", shown, decision="edit", approver=by, duration_ms=waited
        )
        return decided(events, after.update(events=shown.events))
    record = events.add(
        "approval_decided",
        after,
        decision=decision.kind,
        approver=by,
        duration_ms=waited,
        reason=getattr(decision, "message", None),
    )
    if isinstance(decision, Retry):
        return events.add("retried", record, reason="retry decided by a human")
    return record


def recover_approvals(
    waiting: Sequence[ToolCallRecord],
    thread: str,
    table: ApprovalTable | None,
    ledger: Ledger | None,
) -> dict[str, ToolCallRecord]:
    """Asked calls whose approval a crash took out of the checkpoint, approved again from what
    Handrail's own tables kept.

    Under ``durability="async"`` LangGraph saves a step in the background while the next one
    runs, so a process killed while running an approved tool can lose the approval. Asking again
    would be wrong: the call may already have run. A call the ledger saw begin goes on with the
    arguments it began with (``execute`` then answers from the ledger: its recorded result, or
    an outcome-unknown escalation); a call whose approval the table recorded goes on approved.
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
        elif args_hash == record.args_hash:
            recovered[record.id] = record.update(
                status="approved", approver=by, approvals=approvals, events=record.events + 2
            )
    return recovered


def escalation_view(gate: Gate, record: ToolCallRecord) -> ToolCallRecord:
    """An escalated call as its request shows it: decided once, by the roles that handle its
    tool's failures (the record itself keeps its approval's history)."""
    roles = gate.policy.settings(record.name).escalate_to or gate.policy.escalate_to
    return record.update(approvers=roles, expires_at=None, min_approvals=1, approvals=())


def apply_decision(
    gate: Gate,
    record: ToolCallRecord,
    decision: ResumeDecision,
    approver: Actor | None,
    requester: Actor,
) -> tuple[ToolCallRecord, Literal["success", "error"]]:
    """The record after ``decision``, and the status of the ToolMessage if one is owed."""
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
    verdict = gate.policy.decide(record.name, decision.args, requester)
    edited = from_decision(
        record.id,
        record.name,
        decision.args,
        verdict,
        hash_key=gate.hash_key,
        approver=approver.id,
    )
    if verdict.effect == "allow":
        edited = edited.update(status="approved")
    elif verdict.effect == "ask" and set(verdict.approvers) & set(approver.roles):
        done = verdict.min_approvals <= 1
        edited = edited.update(
            status="approved" if done else "awaiting_approval", approvals=(approver.id,)
        )
    elif verdict.effect == "ask":
        edited = edited.update(approver=None)
    return edited, "error"
