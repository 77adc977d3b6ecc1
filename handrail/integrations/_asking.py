"""How `HandrailMiddleware` asks people from ``after_model``: one round of review per run of the
node, with the approvals table kept as the approval node keeps it.

A round (`handrail.review.review_round`, the approval node's) asks about the turn's waiting calls
in one interrupt and applies the checked decisions. Like the approval node, the middleware runs
*one* round per run of its node: a round that leaves calls waiting (a rule needs more approvers,
an edit needs another approver, only some calls expired) ends the node, and the middleware comes
back to ask again through a pass of the model's step. Rounds run one after another in one run of
a node would be replayed on every resume, each against Handrail's store as the rounds after it
left it (the approvals they proved): the replay of an earlier round would no longer decide what
it decided, and the thread would be asked again.

With a table, each waiting call has a row there: upserted before the interrupt (idempotent: the
node runs again on resume; a claimed row keeps its claim), its outcome recorded after the round,
and a call still waiting listed again with the approvals it has so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from langchain_core.messages import ToolMessage

from handrail.events import Batch
from handrail.state import ToolCallRecord
from handrail.storage.approvals import ApprovalTable, Outcome

__all__ = ["close_blocked"]


def close_blocked(
    blocked: Sequence[tuple[ToolCallRecord, ToolMessage]],
    events: Batch,
    table: ApprovalTable | None,
) -> dict[str, ToolCallRecord]:
    """Close the records of calls another middleware answered first (`ToolCallLimitMiddleware`
    over its limit), with their answer as the result: not run (``rejected``), or, for an
    escalated call, ``failed``. A call with no event yet gets its ``decided`` event (the model
    asked for it), and a row that listed it is closed as ``blocked``: the thread no longer
    waits on it."""
    closed: dict[str, ToolCallRecord] = {}
    for record, answer in blocked:
        status = "failed" if record.status == "escalated" else "rejected"
        done = record.update(status=status, result=answer.text)
        if not record.events:
            why = f"answered by another middleware before it ran: {answer.text}"
            done = events.add("decided", done, reason=why)
        closed[done.id] = done
    thread = events.thread_id
    if table is not None and thread is not None:
        outcomes: list[tuple[ToolCallRecord, Outcome]] = [(r, "blocked") for r in closed.values()]
        table.resolve(thread, outcomes, None, datetime.now(UTC))
    return closed
