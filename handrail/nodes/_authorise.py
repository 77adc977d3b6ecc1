"""`authorise`: whether a call whose record the state holds may run as the turn's call.

A record in state proves nothing (``update_state`` and ``Command(goto=...)`` write any state), so
``execute`` (and the LangChain middleware's tool wrapper) check every record they did not decide
in the same step against the model's call, the policy now, and the proofs in Handrail's store.
"""

from __future__ import annotations

from langchain_core.messages import ToolCall

from handrail.context import Actor
from handrail.events import Batch
from handrail.nodes._gate import Gate, call_id
from handrail.nodes._provenance import Seen
from handrail.review import missing_approval
from handrail.review.notice import other_args
from handrail.review.records import decided
from handrail.state import ToolCallRecord

__all__ = ["authorise"]


def authorise(
    gate: Gate,
    events: Batch,
    record: ToolCallRecord,
    actor: Actor,
    call: ToolCall,
    seen: Seen | None = None,
) -> ToolCallRecord | None:
    """None when ``record`` may run as the turn's ``call``; else the call decided afresh, not run.

    A record in state proves nothing (``update_state`` and ``Command(goto=...)`` write any
    state): it must be the call's own (its id and tool), its arguments must be what the tool's
    schema makes of them, they are decided again for the thread's requester, and an asked call
    runs only on the approvals of exactly these arguments that Handrail's store holds
    (`missing_approval`). Anything else is audited as ``approval_missing`` and decided again: an
    asked call is asked for again, its request pending and decidable.
    """
    thread = events.thread_id
    if record.id != call_id(call) or record.name != call["name"]:
        fresh, _ = gate.decide(call, actor, thread, seen)  # the model's own call
        why = f"the record in state is for {record.name!r} ({record.id!r}), not this call"
        return _refused(events, gate.events.next_seq(thread, fresh), fresh, why)
    own = ToolCall(type="tool_call", id=record.id, name=record.name, args=record.runs_with)
    fresh, decision = gate.decide(own, actor, thread, seen)
    fresh = fresh.update(retry_count=record.retry_count)
    if decision is None or decision.effect == "deny":  # invalid or denied now: the model hears
        return decided(events, fresh.update(events=record.events))
    if fresh.args != record.args:
        why = "the record's arguments are not what the tool's schema makes of them"
    elif decision.effect == "allow" and not other_args(gate, call, record):
        return None
    elif (
        decision.effect == "allow"
        and thread is not None
        and gate.proofs.of(thread, record.id, fresh.args_hash)
    ):
        return None  # a reviewer's edit, kept in Handrail's store
    elif decision.effect == "allow":
        fresh, _ = gate.decide(call, actor, thread, seen)  # the model's own call
        why = "the record's arguments are not the model's, and no reviewer's edit gave them"
    elif thread is None:
        why = "the thread keeps no approvals (the graph has no checkpointer)"
    else:
        proofs = gate.proofs.of(thread, record.id, fresh.args_hash)  # hashed from the args
        missing = missing_approval(decision, proofs, actor)
        if missing is None:
            return None
        why = missing
    return _refused(events, gate.events.next_seq(thread, record), fresh, why)


def _refused(
    events: Batch, counted: ToolCallRecord, fresh: ToolCallRecord, why: str
) -> ToolCallRecord:
    """``fresh`` after the ``approval_missing`` event of a call state claimed may run."""
    missing = events.add("approval_missing", counted, reason=why)
    return fresh.update(events=missing.events)
