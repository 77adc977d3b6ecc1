"""Checking a resume value against the request it answers: `parse_resume` and `until_valid`.

Checked: the payload's shape and size, one decision per waiting call in order (each may name its
``tool_call_id``), a decision the call takes (its rule's ``allowed_decisions``), who decided
(`handrail.auth.Trust`: a verified token, the directory, the LangGraph server's user, or a claim),
that they are not the requester and have not approved the call already (ids compared as people),
that they hold one of the rule's approver roles, that the request is not past its deadline, that
an approval's args hash is the call's, and that edited arguments fit the tool. `EXPIRE` resolves
the calls past their deadline.

A stock LangChain ``HITLResponse`` (``{"decisions": [...]}``, no ``approver``) is taken when the
resume came through an authenticating LangGraph server: its user is the approver, with every
check above. Anywhere else it is refused: it names no one to check. On an escalation, the stock
``approve`` is a retry and ``reject`` a skip (`handrail.review.decisions.ESCALATION_STOCK`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from handrail.auth import Identity, canonical_id
from handrail.bounds import oversize
from handrail.context import Actor
from handrail.errors import (
    ApprovalError,
    ApprovalExpired,
    ApproverNotAuthorized,
    DuplicateApprover,
    IdentityError,
    ResumeError,
    SelfApproval,
    StaleApproval,
    UnknownCall,
)
from handrail.redaction import restore
from handrail.review.authority import rule_name
from handrail.review.decisions import (
    ESCALATION_STOCK,
    EXPIRE,
    Abort,
    Action,
    Approve,
    DecisionType,
    Edit,
    Expire,
    Reject,
    Respond,
    ResumePayload,
    Retry,
    Skip,
    as_escalation,
)
from handrail.review.records import schema_errors
from handrail.review.reviewer import Reviewer
from handrail.review.waiting import ApprovalRequest, WaitingCall, calls_of

__all__ = ["Decided", "Resolution", "parse_resume", "until_valid"]

Decided = Approve | Edit | Reject | Respond | Retry | Skip | Abort | Expire
"""A checked decision for one call (an edit's arguments coerced by the tool's schema)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Resolution:
    """A checked resume: who decided, and a decision per call id (absent: still waiting)."""

    approver: Actor | None
    """None when the request is resolved as expired. Its id is normalised and its roles are
    the trusted ones."""
    decisions: dict[str, Decided]
    identified_by: str | None = None
    """How the approver was identified: ``directory``, ``token iss=... sub=...``, ``server`` or
    ``claimed``."""


def parse_resume(
    value: object,
    request: ApprovalRequest,
    gate: Reviewer,
    now: datetime | None = None,
    originals: Mapping[str, Mapping[str, Any]] | None = None,
    server: Identity | None = None,
) -> Resolution:
    """Check a resume value against the request it answers; raise a typed `ApprovalError`.

    ``originals`` (call id to the real arguments) puts back the hidden values an edit left as
    ``[redacted]``. ``server``: the user a LangGraph server authenticated for the resume, who is
    then the approver (a payload naming someone else is refused).
    """
    info = request["handrail"]
    thread = info["thread_id"]
    moment = now or datetime.now(UTC)
    calls = calls_of(request)
    if not isinstance(value, Mapping):
        raise ResumeError(
            f"a resume value must be a mapping with 'decisions' and 'approver', "
            f"not {type(value).__name__}",
            thread_id=thread,
        )
    if "expire" in value:
        return _expire(value, calls, moment, thread)
    limits = gate.policy
    too_big = oversize(
        value, max_depth=limits.max_args_depth + 4, max_bytes=limits.max_args_bytes + 65_536
    )
    if too_big is not None:  # an edit's arguments plus the decisions around them
        raise ResumeError(f"the resume payload is too large: {too_big}", thread_id=thread)
    try:
        parsed = ResumePayload.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ResumeError(f"resume payload: {where}: {err['msg']}", thread_id=thread) from None
    offered = [c["allowed_decisions"] for c in request["review_configs"]]
    _in_order(parsed, calls, offered, thread)
    approver, via = _approver(parsed, gate, server, thread)
    if approver.id == _person(info["actor"]["id"]):
        raise SelfApproval(
            f"{approver.id!r} made the request and may not decide it", thread_id=thread
        )
    lapsed = _lapsed(calls, moment)
    if lapsed:
        raise ApprovalExpired(
            f"the request for {', '.join(lapsed)} expired; it can only be resolved as expired "
            f"(Inbox.expire or `handrail expire`)",
            thread_id=thread,
        )
    decisions: dict[str, Decided] = {}
    for d, call in zip(parsed.decisions, calls, strict=True):
        if not set(call.approvers) & set(approver.roles):
            raise ApproverNotAuthorized(
                f"{approver.id!r} (roles {list(approver.roles)}) holds none of the roles "
                f"{list(call.approvers)} that may decide {call.tool!r} ({rule_name(call.rule_id)})",
                thread_id=thread,
            )
        approved = {_person(a) for a in call.approvals}
        if isinstance(d, Approve | Edit) and approver.id in approved:
            raise DuplicateApprover(
                f"{approver.id!r} already approved {call.tool!r}; {rule_name(call.rule_id)} "
                f"needs {call.min_approvals} distinct approvers",
                thread_id=thread,
            )
        original = (originals or {}).get(call.tool_call_id)
        decisions[call.tool_call_id] = _checked(d, call, gate, thread, original)
    return Resolution(approver=approver, decisions=decisions, identified_by=via)


def until_valid(
    ask: Callable[[ApprovalRequest], object],
    request: ApprovalRequest,
    gate: Reviewer,
    originals: Mapping[str, Mapping[str, Any]],
    server: Identity | None = None,
) -> tuple[Resolution, datetime]:
    """Ask with ``request`` (LangGraph's ``interrupt``) until a value passes `parse_resume`: the
    resolution, and when it came.

    A refused value is answered with a fresh ask carrying the reason, never an exception (which
    would leave the value in the checkpoint's pending writes for every later resume to replay).
    A decision past the deadline resolves the lapsed calls as expired.
    """
    asking: ApprovalRequest = request
    while True:
        value = ask(asking)
        now = datetime.now(UTC)
        try:
            return parse_resume(value, request, gate, now, originals, server), now
        except ApprovalExpired:
            calls = calls_of(request)
            return _expire(EXPIRE, calls, now, request["handrail"]["thread_id"]), now
        except ApprovalError as exc:
            asking = {**request, "handrail": {**request["handrail"], "error": exc.reason}}


def _in_order(
    parsed: ResumePayload,
    calls: list[WaitingCall],
    offered: list[list[DecisionType]],
    thread: str | None,
) -> None:
    """One decision per call, in order, each of a type the request offers for it (in its
    ``review_configs``, or, for an escalation, Handrail's own)."""
    ids = [c.tool_call_id for c in calls]
    if len(parsed.decisions) != len(calls):
        names = ", ".join(f"{c.tool} ({c.tool_call_id})" for c in calls)
        raise ResumeError(
            f"expected {len(calls)} decision(s), one per call in order ({names}), "
            f"got {len(parsed.decisions)}",
            thread_id=thread,
        )
    for i, (d, call) in enumerate(zip(parsed.decisions, calls, strict=True)):
        if call.kind == "escalation" and d.type not in (*call.allowed_decisions, *offered[i]):
            stock = ", ".join(f"{k} = {v}" for k, v in ESCALATION_STOCK.items() if k in offered[i])
            raise ResumeError(
                f"decision {i} is {d.type!r}, but this escalation of {call.tool!r} takes "
                f"{', '.join(call.allowed_decisions)}" + (f" (or {stock})" if stock else ""),
                thread_id=thread,
            )
        if call.kind != "escalation" and d.type not in offered[i]:
            rule = f" (rule {call.rule_id!r})" if call.rule_id else ""
            raise ResumeError(
                f"decision {i} is {d.type!r}, but this approval of {call.tool!r}{rule} takes "
                f"{', '.join(offered[i]) or 'nothing this process can check'}",
                thread_id=thread,
            )
        if d.tool_call_id is None or d.tool_call_id == call.tool_call_id:
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


def _approver(
    parsed: ResumePayload, gate: Reviewer, server: Identity | None, thread: str | None
) -> tuple[Actor, str]:
    """Who decided, and how they were identified: the server's user, or whom the payload
    names."""
    claim = parsed.approver.given() if parsed.approver is not None else {}
    names = "id" in claim or "token" in claim
    if server is None and parsed.approver is None:
        raise ApproverNotAuthorized(
            "a stock HITL response ({'decisions': [...]}) names no approver, and this resume "
            "did not come through an authenticating LangGraph server, whose user would be the "
            "approver; add 'approver': {'token': <JWT>} or {'id': ...} to the resume value",
            thread_id=thread,
        )
    if server is None and not names:
        raise ApproverNotAuthorized(
            "the decision names no approver id: its 'approver' has neither an 'id' nor a 'token'",
            thread_id=thread,
        )
    try:
        identity = server or gate.trust.approver(claim)
        named = gate.trust.approver(claim).actor.id if server and names else identity.actor.id
    except IdentityError as exc:
        raise ApproverNotAuthorized(
            f"the approver cannot be identified: {exc}", thread_id=thread
        ) from None
    if named != identity.actor.id:
        raise ApproverNotAuthorized(
            f"the payload names approver {named!r}, but the server authenticated the "
            f"resume's sender as {identity.actor.id!r}",
            thread_id=thread,
        )
    return identity.actor, identity.describe()


def _person(stored: object) -> str:
    """An id kept in a request (the requester, earlier approvers), compared as a person; ids kept
    before ids were normalised may fail the checks, and are then compared as written."""
    try:
        return canonical_id(str(stored))
    except IdentityError:
        return str(stored)


def _lapsed(calls: list[WaitingCall], now: datetime) -> list[str]:
    return [c.tool_call_id for c in calls if c.expired(now)]


def _expire(
    value: Mapping[str, Any], calls: list[WaitingCall], now: datetime, thread: str | None
) -> Resolution:
    if dict(value) != EXPIRE:
        raise ResumeError(
            f"an expiry resume value is exactly {EXPIRE}, not {dict(value)}", thread_id=thread
        )
    lapsed = _lapsed(calls, now)
    if not lapsed:
        deadlines = [c.expires_at.isoformat() for c in calls if c.expires_at is not None]
        raise ResumeError(
            "nothing in this request has expired"
            + (f" (earliest deadline {min(deadlines)})" if deadlines else " (it has no deadline)"),
            thread_id=thread,
        )
    return Resolution(approver=None, decisions={call: Expire() for call in lapsed})


def _checked(
    d: Decided,
    call: WaitingCall,
    gate: Reviewer,
    thread: str | None,
    original: Mapping[str, Any] | None,
) -> Decided:
    """The decision for ``call``, checked: an approval bound to the call's arguments, an edit's
    arguments validated and coerced by the tool's schema, a stock decision on an escalation as
    the decision it stands for."""
    if isinstance(d, Approve) and d.args_hash not in (None, call.args_hash):
        raise StaleApproval(
            f"the approval for {call.tool!r} names args hash {str(d.args_hash)[:12]}…, "
            f"but the pending call's arguments hash to {call.args_hash[:12]}…",
            thread_id=thread,
        )
    if isinstance(d, Approve | Reject) and call.kind == "escalation":
        return as_escalation(d)
    if isinstance(d, Approve):
        return d
    if not isinstance(d, Edit):
        return d
    if d.edited_action.name != call.tool:
        raise ResumeError(
            f"an edit may change the arguments of {call.tool!r}, not the tool "
            f"(got {d.edited_action.name!r})",
            thread_id=thread,
        )
    edited = d.args
    paths = gate.policy.settings(call.tool).redact
    if original is not None and paths:
        edited = restore(edited, original, paths)
    try:
        gate.coerce(call.tool, edited)  # `apply_decision` decides what it makes of them
    except ValidationError as exc:
        raise ResumeError(
            f"edited arguments for {call.tool!r} do not fit the tool: {schema_errors(exc)}",
            thread_id=thread,
        ) from None
    except KeyError:
        raise ResumeError(
            f"{call.tool!r} is not a tool this process knows, so it cannot be edited here",
            thread_id=thread,
        ) from None
    return Edit(tool_call_id=d.tool_call_id, edited_action=Action(name=call.tool, args=edited))
