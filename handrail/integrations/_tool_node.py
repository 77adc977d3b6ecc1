"""How `HandrailMiddleware` runs a call in LangChain's tool node (`tool_call`), and what it reads
from and gives back to the agent: the store of its tables and the tool node's replies (a
ToolMessage, or a Command that carries the call's record with it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from langchain.agents.middleware import ToolCallRequest
from langchain_core.messages import ToolCall, ToolMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.runtime import get_runtime
from langgraph.types import Command

from handrail.context import RunContext
from handrail.errors import HandrailError
from handrail.events import Batch
from handrail.nodes._authorise import authorise
from handrail.nodes._effects import Call, Effect, Invoke, Script, Sleep
from handrail.nodes._gate import IDEMPOTENCY_KEY, RUNNABLE, Gate, call_id
from handrail.nodes._lineage import RunLineage
from handrail.nodes.classify_error import handle_failure
from handrail.nodes.execute import Outcome, attempt, reported_error
from handrail.nodes.execute import result_text as message_text
from handrail.review.notice import with_edit_notice
from handrail.review.records import decided, tool_message
from handrail.state import CallError, ToolCallRecord
from handrail.storage import Store, store_for
from handrail.storage.ledger import Ledger
from handrail.tracing import tool_config

__all__ = [
    "ToolReply",
    "answer",
    "refused",
    "reply_message",
    "storage",
    "text",
    "tool_call",
    "with_record",
]

ToolReply = ToolMessage | Command[Any]
"""What running a tool call gives back in LangChain's tool node."""


def storage(db: object) -> Store | None:
    """The store for Handrail's tables: at a path or URL, or the database of a saver."""
    if db is None:
        return None
    if isinstance(db, str | Path):
        return store_for(None, db)
    if isinstance(db, BaseCheckpointSaver) and (store := store_for(db, None)) is not None:
        return store
    raise HandrailError(
        f"db must be a SQLite file path, a postgresql:// URL, or a SqliteSaver or PostgresSaver "
        f"on a database, not {type(db).__name__}; for an async saver pass its path or URL"
    )


def answer(record: ToolCallRecord, message: ToolMessage) -> Command[Any]:
    """The tool node's reply for a call answered without a (successful) run."""
    return Command(update={"calls": {record.id: record}, "messages": [message]})


def reply_message(reply: ToolReply, cid: str) -> ToolMessage | None:
    """The ToolMessage answering call ``cid`` in a tool node reply (a Command may carry it)."""
    if isinstance(reply, ToolMessage):
        return reply
    update = reply.update if isinstance(reply.update, dict) else {}
    found = [
        m
        for m in update.get("messages", [])
        if isinstance(m, ToolMessage) and m.tool_call_id == cid
    ]
    return found[-1] if found else None


def text(reply: ToolReply, cid: str) -> str:
    """The content a reply gives the model for call ``cid``, as the record keeps it."""
    message = reply_message(reply, cid)
    return message_text(message) if message is not None else ""


def refused(reply: ToolReply, cid: str) -> CallError | None:
    """The tool, or the tool node, answered with an error instead of a result."""
    message = reply_message(reply, cid)
    return None if message is None else reported_error(message)


def with_record(reply: ToolReply, record: ToolCallRecord) -> ToolReply:
    """The tool node's reply, with the call's record added to the state update.

    A Command a tool returned keeps its own update; the record joins it when it is a dict (or
    empty) for this graph.
    """
    if isinstance(reply, ToolMessage):
        return answer(record, reply)
    update = reply.update
    if reply.graph is not None or not isinstance(update, dict | None):
        return reply
    calls = {**(update or {}).get("calls", {}), record.id: record}
    return replace(reply, update={**(update or {}), "calls": calls})


def _noticed(gate: Gate, call: ToolCall, record: ToolCallRecord, reply: ToolReply) -> ToolReply:
    """``reply`` with the edit notice before the call's answer if a reviewer edited the call
    (`handrail.review.notice.with_edit_notice`); a Command keeps everything else it carries."""
    if isinstance(reply, ToolMessage):
        return with_edit_notice(gate, call, record, reply)
    update = reply.update
    if reply.graph is not None or not isinstance(update, dict):
        return reply
    messages = [
        with_edit_notice(gate, call, record, m)
        if isinstance(m, ToolMessage) and m.tool_call_id == record.id
        else m
        for m in update.get("messages", [])
    ]
    return replace(reply, update={**update, "messages": messages})


def tool_call(
    gate: Gate,
    ledger: Ledger | None,
    request: ToolCallRequest,
    handler: Callable[[ToolCallRequest], Any],
) -> Script[ToolReply]:
    """One tool call in the tool node, from its record to the reply: decided again unless the
    model's step decided it, run behind the ledger and the breaker, retried while the policy
    allows, answered, or left for a human (an escalation)."""
    call = request.tool_call
    cid = call_id(call)
    state = request.state
    runtime = request.runtime
    actor = gate.requester(get_runtime(RunContext), runtime.config)
    events = gate.events.batch(runtime.config, actor.id)
    record = (state.get("calls") or {}).get(cid)
    if record is None:  # a call no model step decided: only an allowed one may run
        record = gate.check(call, actor, events.thread_id, gate.seen(state, events.thread_id))
    elif record.status in RUNNABLE:  # state proves nothing: decided again, proofs checked
        seen = gate.seen(state, events.thread_id)
        record = authorise(gate, events, record, actor, call, seen) or record
    if not record.events:
        record = decided(events, record)
    if record.status not in RUNNABLE:
        if record.result is None:
            record = record.update(
                result=f"The tool {record.name!r} was not run: the call was not approved "
                f"({record.reason or record.status})."
            )
        events.publish()
        return answer(record, tool_message(record))
    settings = gate.policy.settings(record.name)
    while True:
        record, reply = yield from _attempt(gate, ledger, events, record, request, handler)
        if reply is not None:
            events.publish()
            return with_record(_noticed(gate, call, record, reply), record)
        route, record, pause = handle_failure(events, record, settings)
        events.publish()
        if route == "retry":
            yield Sleep(pause)
            continue
        if route == "model":
            return answer(record, tool_message(record))
        # A human decides (`after_model`, the model's step passing); the call stays
        # unanswered until then.
        return Command(update={"calls": {record.id: record}})


def _attempt(
    gate: Gate,
    ledger: Ledger | None,
    events: Batch,
    record: ToolCallRecord,
    request: ToolCallRequest,
    handler: Callable[[ToolCallRequest], Any],
) -> Script[tuple[ToolCallRecord, ToolReply | None]]:
    """One attempt through `handrail.nodes.execute.attempt` (ledger, breaker, events): the
    record after it, and the reply if it succeeded. The call goes through the tool node's
    ``handler``, except for a tool that takes the idempotency key: LangGraph's tool node
    strips injected arguments it does not fill itself, so that tool is invoked here, with it.
    """
    config = tool_config(request.runtime.config, record, events.thread_id)

    def run_call(args: dict[str, Any]) -> Effect:
        call: ToolCall = {**request.tool_call, "args": args}
        if IDEMPOTENCY_KEY in args:
            return Invoke(gate.tools[record.name], {"type": "tool_call", **call}, config)
        return Call(partial(handler, request.override(tool_call=call)))

    def read(reply: Any) -> Outcome:
        return text(reply, record.id), refused(reply, record.id)

    lineage = RunLineage(request.state, gate.key, request.runtime.config)
    done, reply = yield from attempt(gate, ledger, events, record, run_call, read, lineage)
    return done, reply
