"""What every node shares: the tools by name, the policy, and the check of one call.

`Gate.check` is the single place where a tool call meets the policy: the arguments are
validated and coerced by the tool's own schema, then decided. The routing function after the
agent, the ``policy_check`` node and the ``execute`` node all call it, so the allowed fast path and
the full path cannot disagree.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from langchain_core.messages import AIMessage, AnyMessage, ToolCall
from langchain_core.tools import BaseTool
from pydantic import ValidationError

from handrail.auth import Identity, Trust
from handrail.bounds import REFUSED_ARGS, oversize
from handrail.context import Actor, RunContext, thread_id_of
from handrail.errors import ContextError, HandrailError, IdentityError, RequesterMismatch
from handrail.events import Recorder
from handrail.nodes._limits import GateLimits
from handrail.nodes._provenance import SOURCES_KEY, GateSources, Seen, facts, with_origins
from handrail.nodes._schemas import Schema, bad_request, injected, schema_of
from handrail.policies import Decision, Policy
from handrail.review.records import from_decision, schema_errors
from handrail.state import ToolCallRecord
from handrail.storage.proofs import MemoryProofs, Proofs
from handrail.storage.requesters import MemoryRequesters, Requesters
from handrail.tools.breaker import CircuitBreaker
from handrail.tools.json_schema import JsonSchemaArgs

RUNNABLE = frozenset({"checked", "approved"})
"""Statuses of calls that ``execute`` may run."""

Step = Literal["classify_error", "approval", "execute", "agent"]


class Running(Protocol):
    """What a node knows of its run (LangGraph's ``Runtime``): the run's context."""

    @property
    def context(self) -> Any: ...


IDENTITY_TTL_S = 30.0
"""How long a gate keeps what the directory said of a run's actor."""

_AHEAD = 4096
"""Allowed calls whose check the routing function keeps for ``execute`` (per gate)."""

IDEMPOTENCY_KEY = "idempotency_key"
"""The injected argument (``Annotated[str, InjectedToolArg]``) through which a tool gets its key."""


class Gate:
    """The tools by name, the policy that gates them, the tools' circuit breaker, the recorder
    of the calls' events, and where the graph keeps the records and goes when a turn is done."""

    __slots__ = (
        "_ahead",
        "_identities",
        "_lock",
        "_schemas",
        "breaker",
        "done",
        "events",
        "hash_key",
        "key",
        "keyed",
        "limits",
        "policy",
        "proofs",
        "requesters",
        "sources",
        "tools",
        "trust",
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
        trust: Trust | None = None,
        proofs: Proofs | None = None,
        requesters: Requesters | None = None,
        limits: GateLimits | None = None,
        sources: GateSources | None = None,
    ) -> None:
        self.trust = trust or Trust()
        """Who is who: the directory and token authenticator the graph was built with."""
        self.proofs: Proofs = proofs or MemoryProofs()
        """The approvals people gave, bound to arguments; ``execute`` runs asked calls on them."""
        self.requesters: Requesters = requesters or MemoryRequesters()
        """Each thread's requester, pinned at its first run."""
        self._identities: OrderedDict[tuple[str, tuple[str, ...]], tuple[float, Identity]] = (
            OrderedDict()
        )
        self._ahead: OrderedDict[tuple[str, str], tuple[Actor, ToolCall, ToolCallRecord]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
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
        self.sources = sources or GateSources(policy)
        """The thread indexes of where texts came from, when the policy watches provenance;
        `GateSources.keep` says whether the graph's state keeps them."""
        self.limits = limits or GateLimits(policy)
        """The uses of the policy's cumulative limits, reserved as calls are decided."""
        if self.limits.hear not in self.events.listeners:
            self.events.listeners.append(self.limits.hear)
        self._schemas: dict[str, Schema] = {}
        keyed: set[str] = set()
        for name, tool in self.tools.items():
            self._schemas[name] = schema_of(tool)
            if injected(tool, IDEMPOTENCY_KEY):
                keyed.add(name)
        self.keyed = frozenset(keyed)
        """Tools that take an injected ``idempotency_key`` argument."""

    def with_tools(self, tools: Sequence[BaseTool]) -> Gate:
        """This gate for ``tools`` instead: the same policy, breaker, events, keys and stores."""
        return Gate(
            tools,
            self.policy,
            self.breaker,
            self.events,
            self.hash_key,
            key=self.key,
            done=self.done,
            trust=self.trust,
            proofs=self.proofs,
            requesters=self.requesters,
            limits=self.limits,
            sources=self.sources,
        )

    def requester(self, runtime: Running, config: Mapping[str, Any]) -> Actor:
        """The actor the thread's calls are decided for: the run's context actor, identified
        (`Trust.actor`: normalised id, the directory's roles), and the same as the thread's
        pinned requester. Raises `ContextError` (`RequesterMismatch` for another actor).

        Behind an authenticating LangGraph server the context is not asked: the thread's
        requester is the user who started it (``langgraph_auth_user``); a later run by someone
        else is an approver's resume, checked before it runs (`HandrailGraph`)."""
        thread = thread_id_of(config)
        server = self.trust.server(config)
        if server is None:
            return self.identify(actor_of(runtime), thread).actor
        if thread is None:
            return server.actor
        return self.requesters.pin(thread, server.actor, server.describe(), self.events.graph)

    def identify(self, claimed: Actor, thread: str | None, *, pin: bool = True) -> Identity:
        """`requester` for a context actor ``claimed`` on ``thread``; ``pin=False`` checks it
        against the thread's pin, if it has one, without pinning a new thread (a run not yet
        admitted must leave nothing behind)."""
        try:
            identity = self._identity(claimed.id, claimed.roles)
        except IdentityError as exc:
            raise ContextError(f"the run's actor cannot be used: {exc}") from None
        if thread is None:
            return identity
        actor = identity.actor
        if pin:
            pinned = self.requesters.pin(thread, actor, identity.describe(), self.events.graph)
        else:
            pinned = self.requesters.pinned(thread) or actor
        if pinned.id != actor.id or (claimed.roles and set(pinned.roles) != set(actor.roles)):
            raise RequesterMismatch(
                f"the run's context names {claimed.id!r} (roles {list(actor.roles)}), but the "
                f"thread's calls are decided for its requester {pinned.id!r} (roles "
                f"{list(pinned.roles)}), pinned at its first run",
                thread_id=thread,
            )
        return Identity(actor=pinned, via=identity.via)

    def _identity(self, person: str, roles: tuple[str, ...]) -> Identity:
        """`Trust.actor` of a context actor, kept for `IDENTITY_TTL_S` (a directory that drops a
        person or a role is believed again within that time)."""
        key, now = (person, roles), time.monotonic()
        with self._lock:
            kept = self._identities.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        identity = self.trust.actor(Actor(id=person, roles=roles))
        with self._lock:
            self._identities[key] = (now + IDENTITY_TTL_S, identity)
            if len(self._identities) > _AHEAD:
                self._identities.popitem(last=False)
        return identity

    def records(self, state: Mapping[str, Any]) -> dict[str, ToolCallRecord]:
        """The calls' records in ``state``."""
        known: dict[str, ToolCallRecord] = state.get(self.key) or {}
        return known

    def route(self, calls: Mapping[str, ToolCallRecord], messages: Sequence[AnyMessage]) -> str:
        """`next_step`, with a finished turn sent to this graph's `done` node."""
        step = next_step(calls, messages)
        return self.done if step == "agent" else step

    def coerce(self, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments as the tool's schema validates and coerces them (JSON-safe): a pydantic
        model's, or a JSON schema's (`JsonSchemaArgs`: an MCP tool's).

        Raises `ValidationError` when they do not fit, `KeyError` for an unknown tool.
        """
        schema = self._schemas[name]
        if schema is None:
            return dict(args)
        if isinstance(schema, JsonSchemaArgs):
            return schema.validate(args)
        return schema.model_validate(dict(args)).model_dump(mode="json")

    def seen(self, state: Mapping[str, Any], thread: str | None) -> Seen | None:
        """What the thread has shown the model, indexed (None when the policy does not watch
        provenance), from ``state``'s messages and kept index."""
        messages = state.get("messages") or ()
        index = self.sources.index(messages, thread, state.get(SOURCES_KEY), state.get(self.key))
        return None if index is None else Seen(index, messages)

    def check(
        self,
        call: ToolCall,
        actor: Actor,
        thread: str | None = None,
        seen: Seen | None = None,
    ) -> ToolCallRecord:
        """Validate one call's arguments and decide it on ``thread``, knowing what the thread
        has ``seen``; the record says what happens next."""
        return self.decide(call, actor, thread, seen)[0]

    def check_ahead(
        self, call: ToolCall, actor: Actor, thread: str | None, seen: Seen | None = None
    ) -> ToolCallRecord:
        """`check`, for the routing after the model: an allowed call's record is kept for
        `checked`, so ``execute`` does not validate and decide it a second time."""
        record = self.check(call, actor, thread, seen)
        if record.status == "checked" and thread is not None:
            with self._lock:
                self._ahead[(thread, record.id)] = (actor, call, record)
                if len(self._ahead) > _AHEAD:
                    self._ahead.popitem(last=False)
        return record

    def checked(
        self, call: ToolCall, actor: Actor, thread: str | None, seen: Seen | None = None
    ) -> ToolCallRecord:
        """The record `check_ahead` made for this very call (same tool, arguments and actor)
        in this process; else `check` it now."""
        with self._lock:
            kept = self._ahead.pop((thread, call_id(call)), None) if thread is not None else None
        if kept is not None:
            who, ahead, record = kept
            if who == actor and ahead["name"] == call["name"] and ahead["args"] == call["args"]:
                return record
        return self.check(call, actor, thread, seen)

    def decide(
        self, call: ToolCall, actor: Actor, thread: str | None = None, seen: Seen | None = None
    ) -> tuple[ToolCallRecord, Decision | None]:
        """`check`, with the policy's decision (None when the call failed validation).

        A call some of the policy's limits cover has its use of them reserved on ``thread``
        (`GateLimits.apply`): deciding the same call again reserves nothing more."""
        name, raw, cid = call["name"], call.get("args") or {}, call_id(call)
        policy = self.policy
        refused = raw.get(REFUSED_ARGS)  # cut down by `bound_message` before it was stored
        too_big = (
            refused
            if isinstance(refused, str)
            else oversize(raw, max_depth=policy.max_args_depth, max_bytes=policy.max_args_bytes)
        )
        if too_big is not None:  # not kept: neither hashed, stored, validated nor shown
            message = f"the arguments for {name!r} are too large: {too_big}"
            return bad_request(cid, name, {}, message, self.hash_key), None
        if name not in self.tools:
            known = ", ".join(sorted(self.tools)) or "none"
            message = f"unknown tool {name!r}; known tools: {known}"
            return bad_request(cid, name, raw, message, self.hash_key), None
        try:
            args = self.coerce(name, raw)
        except ValidationError as exc:
            message = f"invalid arguments for {name!r}: {schema_errors(exc)}"
            return bad_request(cid, name, raw, message, self.hash_key), None
        origin = None if seen is None else facts(seen.index, args)
        decision = self.verdict(cid, name, args, actor, thread, origin)
        if seen is not None and origin is not None and decision.effect != "allow":  # read later
            origin = with_origins(origin, seen, args)
        given = self.given(name, raw, args)
        record = from_decision(
            cid, name, args, decision, hash_key=self.hash_key, given=given, provenance=origin
        )
        return record, decision

    def verdict(
        self,
        call_id: str,
        name: str,
        args: Mapping[str, Any],
        actor: Actor,
        thread: str | None,
        provenance: Mapping[str, Any] | None = None,
    ) -> Decision:
        """The policy's decision on call ``call_id`` of ``name`` with ``args`` (as the tool's
        schema makes them) for ``actor`` on ``thread``, ``provenance`` saying where they came
        from (`handrail.nodes._provenance.facts`): the rules (reading the limits' totals when a
        condition reads ``usage``), then the limits covering it, its uses reserved."""
        policy = self.policy
        if not policy.limits:
            return policy.decide(name, args, actor, provenance=provenance)
        now = datetime.now(UTC)
        usage = self.limits.totals(name, actor, thread, now)
        decision = policy.decide(name, args, actor, now=now, usage=usage, provenance=provenance)
        return self.limits.apply(decision, (call_id, name, args), actor, thread, now)

    def given(
        self, name: str, raw: Mapping[str, Any], args: dict[str, Any]
    ) -> dict[str, Any] | None:
        """What a call of ``name`` decided as ``args`` runs with when not ``args`` itself:
        ``raw``, as given, for a tool that validates its own input (a pydantic schema) when its
        schema makes other arguments of them. The tool then makes ``args`` of them once, where
        ``args`` validated again would run a validator that changes its input twice (an
        ``AfterValidator`` that wraps a value). A JSON-schema tool runs with ``args``: nothing
        validates its input on this side."""
        if raw == args or not isinstance(self._schemas.get(name), type):
            return None
        return {k: v for k, v in raw.items() if k != IDEMPOTENCY_KEY}


def actor_of(runtime: Running) -> Actor:
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
