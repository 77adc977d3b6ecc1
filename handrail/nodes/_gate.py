"""What every node shares: the tools by name, the policy, and the check of one call.

`Gate.check` is the single place where a tool call meets the policy: the arguments are
validated and coerced by the tool's own schema, then decided. The routing function after the
agent, the ``policy_check`` node and the ``execute`` node all call it, so the allowed fast path and
the full path cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from langchain_core.messages import AIMessage, AnyMessage, ToolCall, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.runtime import Runtime
from pydantic import BaseModel, ValidationError

from handrail.context import Actor, RunContext
from handrail.errors import ContextError, HandrailError
from handrail.events import Batch, Recorder
from handrail.policies import Decision, Policy
from handrail.redaction import redact_body
from handrail.state import CallError, CallStatus, ToolCallRecord, args_hash
from handrail.tools.breaker import CircuitBreaker

RUNNABLE = frozenset({"checked", "approved"})
"""Statuses of calls that ``execute`` may run."""

Step = Literal["classify_error", "approval", "execute", "agent"]


IDEMPOTENCY_KEY = "idempotency_key"
"""The injected argument (``Annotated[str, InjectedToolArg]``) through which a tool gets its key."""


class Gate:
    """The tools by name, the policy that gates them, the tools' circuit breaker, the recorder
    of the calls' events, and where the graph keeps the records and goes when a turn is done."""

    __slots__ = (
        "_schemas",
        "breaker",
        "done",
        "events",
        "hash_key",
        "key",
        "keyed",
        "policy",
        "tools",
    )

    def __init__(
        self,
        tools: Sequence[BaseTool],
        policy: Policy,
        breaker: CircuitBreaker | None = None,
        events: Recorder | None = None,
        hash_key: bytes = b"",
        *,
        key: str = "calls",
        done: str = "agent",
    ) -> None:
        self.key = key
        """The state key of the calls' records (``calls`` in `AgentState`)."""
        self.done = done
        """The node a finished turn goes to: the model, a workflow's next step, or END."""
        self.breaker = breaker or CircuitBreaker()
        """Fails calls fast while a tool keeps failing; shared by every thread of the graph."""
        self.events = events or Recorder(policy, "handrail_agent")
        """Publishes each step of each call once: audit table, ``handrail`` logger, traces."""
        self.hash_key = hash_key
        """The key of the calls' args hashes (`handrail.state.args_hash`)."""
        self.tools: dict[str, BaseTool] = {}
        for tool in tools:
            if tool.name in self.tools:
                raise HandrailError(f"two tools are named {tool.name!r}; tool names must be unique")
            self.tools[tool.name] = tool
        self.policy = policy
        self._schemas: dict[str, type[BaseModel] | None] = {}
        keyed: set[str] = set()
        for name, tool in self.tools.items():
            schema = tool.tool_call_schema
            self._schemas[name] = (
                schema if isinstance(schema, type) and issubclass(schema, BaseModel) else None
            )
            if _injected(tool, IDEMPOTENCY_KEY):
                keyed.add(name)
        self.keyed = frozenset(keyed)
        """Tools that take an injected ``idempotency_key`` argument."""

    def records(self, state: Mapping[str, Any]) -> dict[str, ToolCallRecord]:
        """The calls' records in ``state``."""
        known: dict[str, ToolCallRecord] = state.get(self.key) or {}
        return known

    def route(self, calls: Mapping[str, ToolCallRecord], messages: Sequence[AnyMessage]) -> str:
        """`next_step`, with a finished turn sent to this graph's `done` node."""
        step = next_step(calls, messages)
        return self.done if step == "agent" else step

    def coerce(self, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments as the tool's schema validates and coerces them (JSON-safe).

        Raises `ValidationError` when they do not fit, `KeyError` for an unknown tool.
        """
        schema = self._schemas[name]
        if schema is None:
            return dict(args)
        return schema.model_validate(dict(args)).model_dump(mode="json")

    def check(self, call: ToolCall, actor: Actor) -> ToolCallRecord:
        """Validate one call's arguments and decide it; the record says what happens next."""
        name, raw, cid = call["name"], call.get("args") or {}, call_id(call)
        if name not in self.tools:
            known = ", ".join(sorted(self.tools)) or "none"
            return _bad_request(
                cid, name, raw, f"unknown tool {name!r}; known tools: {known}", self.hash_key
            )
        try:
            args = self.coerce(name, raw)
        except ValidationError as exc:
            return _bad_request(
                cid,
                name,
                raw,
                f"invalid arguments for {name!r}: {schema_errors(exc)}",
                self.hash_key,
            )
        decision = self.policy.decide(name, args, actor)
        return from_decision(cid, name, args, decision, hash_key=self.hash_key)


def _injected(tool: BaseTool, name: str) -> bool:
    """Whether ``tool`` takes ``name`` as an argument the model does not see (injected)."""
    full = tool.get_input_schema()
    shown = tool.tool_call_schema
    in_full = isinstance(full, type) and issubclass(full, BaseModel) and name in full.model_fields
    in_shown = (
        isinstance(shown, type) and issubclass(shown, BaseModel) and name in shown.model_fields
    )
    return in_full and not in_shown


_STATUS: dict[str, CallStatus] = {
    "allow": "checked",
    "ask": "awaiting_approval",
    "deny": "rejected",
}


def from_decision(
    call_id: str,
    name: str,
    args: dict[str, Any],
    decision: Decision,
    *,
    hash_key: bytes = b"",
    **extra: Any,
) -> ToolCallRecord:
    """A record for a call decided by ``decision`` (its args hash keyed with ``hash_key``)."""
    status = _STATUS[decision.effect]
    if decision.effect == "ask":
        extra.setdefault("asked_at", datetime.now(UTC))
    record = ToolCallRecord(
        id=call_id,
        name=name,
        args=args,
        args_hash=args_hash(name, args, hash_key),
        decision=decision.effect,
        rule_id=decision.rule_id,
        reason=decision.reason,
        approvers=decision.approvers,
        expires_at=decision.expires_at,
        min_approvals=decision.min_approvals,
        status=status,
        **extra,
    )
    if decision.effect == "deny":
        record = record.update(
            result=f"Denied by policy ({decision.reason}). The tool {name!r} was not run."
        )
    return record


def decided(events: Batch, record: ToolCallRecord) -> ToolCallRecord:
    """Add the ``decided`` event of a freshly checked call (``invalid`` if it failed checks)."""
    if record.decision is None:
        reason = record.error.message if record.error else None
        return events.add("decided", record, decision="invalid", reason=reason)
    return events.add("decided", record, reason=record.reason)


def schema_errors(exc: ValidationError) -> str:
    """A validation error on one line: ``amount: Field required; to: Input should be ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}" for e in exc.errors()
    )


def _bad_request(
    call_id: str, name: str, args: Mapping[str, Any], message: str, hash_key: bytes
) -> ToolCallRecord:
    return ToolCallRecord(
        id=call_id,
        name=name,
        args=dict(args),
        args_hash=args_hash(name, args, hash_key),
        status="failed",
        last_action="failure",
        error=CallError(kind="bad_request", message=message),
        result=f"Bad request, the tool was not run: {message}",
    )


def actor_of(runtime: Runtime[RunContext]) -> Actor:
    """The acting identity from the run's context; a run without one is refused."""
    ctx = runtime.context
    if isinstance(ctx, Mapping):
        ctx = RunContext(**ctx)
    if not isinstance(ctx, RunContext):
        raise ContextError("this graph run has no Handrail context")
    return ctx.actor


def turn_calls(messages: Sequence[AnyMessage]) -> list[ToolCall]:
    """The tool calls of the latest model turn (the last AIMessage), each with an id."""
    for message in reversed(messages):
        if isinstance(message, AIMessage):
            return [c if c["id"] else {**c, "id": ""} for c in message.tool_calls]
    return []


def next_step(calls: Mapping[str, ToolCallRecord], messages: Sequence[AnyMessage]) -> Step:
    """Where the turn goes next; when nothing is left to do, back to the model.

    In order: classify new failures; ask for approvals (before anything of the turn runs); run
    what may run (automatic retries before any escalation); ask a human about escalations.
    """
    records = [calls[i] for i in (call_id(c) for c in turn_calls(messages)) if i in calls]
    statuses = {r.status for r in records}
    if any(r.status == "failed" and r.last_action is None for r in records):
        return "classify_error"
    if "awaiting_approval" in statuses:
        return "approval"
    if statuses & RUNNABLE:
        return "execute"
    if "escalated" in statuses:
        return "approval"
    return "agent"


def call_id(call: ToolCall) -> str:
    """A call's id (``""`` if the model gave none)."""
    return call["id"] or ""


def attempts_made(record: ToolCallRecord) -> str:
    """How many times a call has run so far, in words: ``1 attempt``, ``3 attempts``."""
    attempts = record.retry_count + 1
    return f"{attempts} attempt{'s' if attempts > 1 else ''}"


def escalation_reason(record: ToolCallRecord, redact: Sequence[str] = ()) -> str:
    """Why a failed call needs a human, in one line; the error's message is hidden like a
    response body by the tool's ``redact`` paths (``response.body``)."""
    error = record.error
    tries = attempts_made(record)
    if error is None:
        return f"{record.name!r} failed after {tries}"
    message = redact_body(error.message, redact)
    status = f" (HTTP {error.status_code})" if error.status_code else ""
    if error.kind == "outcome_unknown":
        return f"outcome unknown: {message}"
    if error.kind in ("rate_limited", "transient"):
        return f"{error.kind}{status} after {tries}, retries spent: {message}"
    return f"{error.kind}{status} after {tries}: {message}"


def tool_message(
    record: ToolCallRecord, *, status: Literal["success", "error"] = "error"
) -> ToolMessage:
    """The message answering a call the tools did not run: a refusal, failure or human answer."""
    return ToolMessage(
        content=record.result or "", tool_call_id=record.id, name=record.name, status=status
    )
