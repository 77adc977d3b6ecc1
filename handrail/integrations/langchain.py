"""`HandrailMiddleware`: Handrail's policy gate as middleware for LangChain's ``create_agent``.

```python
saver = SqliteSaver(sqlite3.connect("handrail.db", check_same_thread=False))
handrail = HandrailMiddleware(policy=Policy.from_file("policy.yaml"), db=saver)
agent = handrail.guard(create_agent(model, tools, middleware=[handrail], checkpointer=saver,
                                    context_schema=RunContext))
agent.invoke({"messages": [...]}, config, context=RunContext(actor=Actor(...)))
Inbox("handrail.db", graph=agent).pending()      # its waiting calls, with build_agent's
```

The agent then behaves as Handrail's own graph (`handrail.build_agent`), hook by hook:

- ``wrap_model_call``: each tool call of the model's answer is validated and coerced by the tool's
  schema and decided by the policy (`Gate.check`) *inside the model's step*, and its
  `ToolCallRecord` is written to the state's ``calls`` with that step. So what an approver sees
  (the rule, the deadline, the args hash) is fixed once and survives resumes and restarts.
- ``after_model``: denied and invalid calls are answered with an error ToolMessage naming the rule
  (the tool never runs); all asked calls of the turn go into **one** ``interrupt()`` whose value is
  Handrail's approval request (LangChain's ``HITLRequest`` keys plus ``handrail``), and into the
  approvals table beside the checkpoints, as the approval node's (`handrail.integrations._asking`).
  Resume values are Handrail's (``{"decisions": [...], "approver": {"id", "roles"}}``), checked
  by `parse_resume`; a value that fails the checks is answered with a fresh interrupt carrying the
  reason, never an exception. Approve keeps the call; reject and respond answer it; an edit is
  decided again by the policy and the tool runs with the edited arguments. As in ``build_agent``,
  the model's AIMessage is left as the model wrote it: the call runs with the record's arguments.
- ``wrap_tool_call`` / ``awrap_tool_call``: the call runs with exactly the decided arguments,
  behind the execution ledger and the circuit breaker; 429s and transient failures are retried
  up to the policy's ``max_retries``; 4xx, 401/403 and an open circuit go back to the model (one
  script, a sync and an async driver: `handrail.integrations._tool_node`). A tool that takes
  Handrail's injected ``idempotency_key`` is invoked by the middleware itself, with the key:
  LangGraph's tool node strips injected arguments it does not fill, so such a tool is not wrapped
  by middleware listed after this one, and gets no ``InjectedState`` or ``ToolRuntime``.
- **Escalations** (a 500, an unknown error, an unknown outcome, retries spent) go to a person:
  the call is left unanswered with its record ``escalated``, and ``after_model`` asks about the
  turn's escalated calls in one interrupt (``handrail.kind == "escalation"``): ``retry`` (a new
  attempt), ``skip`` (the model is told) or ``abort`` (the run ends). Like the approval node,
  ``after_model`` runs one round per run: calls still waiting (an escalation, after the tools; a
  rule that needs another approver) are asked about after a *pass* of the model's step, which
  does not call the model (`handrail.integrations._turn`).

**Resumes and the inbox.** `HandrailMiddleware.guard` gives the agent as a `HandrailGraph`: a
resume is checked against the paused request and claimed in the approvals table before LangGraph
stores it (one decision wins; a refused one changes nothing), and `handrail.Inbox` and the CLI
list and decide its threads by ID, like ``build_agent``'s. It also checks the agent's other
middleware (`CompositionError`): list ``ToolCallLimitMiddleware`` after Handrail, and
``ToolRetryMiddleware`` only after it and only for tools the policy marks idempotent
(`handrail.integrations._composition` says why). An agent run without ``guard`` is not checked.

Every step of every call is an event (`handrail.events`): on the ``handrail`` logger and, with a
``db``, a row of the hash-chained audit table (`handrail.audit.AuditLog`).

**Tools.** The schemas that coerce arguments come from the tools ``create_agent`` offers the model
(``ModelRequest.tools``) and runs (``ToolCallRequest.runtime.tools``), learned as requests go by;
``tools=`` (or `guard`) gives them up front, so a process that resumes a thread before its model
has run (an approver's worker) offers and accepts ``edit`` for every tool.

**Storage.** With ``db`` (a SQLite file path, a PostgreSQL URL, or the agent's `SqliteSaver` or
`PostgresSaver`, whose connection the tables then share), the approvals table, the execution
ledger, the audit table and the key of the args hashes live there; with an async saver, pass its
path or URL. Without ``db`` there are no tables; events are still logged. The state's ``calls``
holds Handrail's `ToolCallRecord`: give the saver a serde that allows
``handrail.state.ToolCallRecord`` and ``CallError`` (as `handrail.storage.checkpointer`'s
savers do), or LangGraph logs a one-time warning.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NotRequired

from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_config
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

try:
    from langchain.agents.middleware import (
        AgentMiddleware,
        AgentState,
        ExtendedModelResponse,
        ModelRequest,
        ModelResponse,
        ToolCallRequest,
        hook_config,
    )
    from langchain.agents.middleware.types import OmitFromInput
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "HandrailMiddleware needs LangChain's create_agent: pip install 'handrail[langchain]'"
    ) from exc

from handrail.auth import Directory, JwtAuthenticator, Trust
from handrail.bounds import bound_message
from handrail.context import RunContext, thread_id_of
from handrail.errors import HandrailError
from handrail.graph._wiring import gate_parts
from handrail.guard import HandrailGraph
from handrail.integrations._agent import agent_tools
from handrail.integrations._asking import close_blocked
from handrail.integrations._composition import CompositionError, check_composition
from handrail.integrations._tool_node import ToolReply, storage, tool_call
from handrail.integrations._turn import (
    answered_elsewhere,
    awaits_person,
    open_calls,
    pass_message,
    passes,
)
from handrail.nodes._effects import arun, run
from handrail.nodes._gate import Gate, call_id
from handrail.nodes._lineage import RunLineage
from handrail.nodes.approval import ask_once
from handrail.policies import Policy
from handrail.review import RequestKind
from handrail.review.records import decided, tool_message
from handrail.review.turn import recover
from handrail.state import ToolCallRecord, merge_calls
from handrail.tools.breaker import CircuitBreaker

__all__ = ["CompositionError", "HandrailMiddleware", "HandrailState"]


class HandrailState(AgentState[Any]):
    """The agent state with Handrail's records: ``calls`` as in `handrail.AgentState`."""

    calls: NotRequired[Annotated[dict[str, ToolCallRecord], OmitFromInput, merge_calls]]
    """One `ToolCallRecord` per tool call, by call id (not part of the agent's input)."""


class HandrailMiddleware(AgentMiddleware[HandrailState, RunContext, Any]):
    """Handrail's gate for ``langchain.agents.create_agent``: policy, approvals, failures, audit.

    Run the agent with ``context_schema=RunContext`` and ``context=RunContext(actor=...)``: the
    actor comes from the runtime context, never from the state. Pausing for approvals needs a
    checkpointer. See the module docstring for what each hook does.
    """

    state_schema = HandrailState

    def __init__(
        self,
        policy: Policy,
        *,
        db: BaseCheckpointSaver[Any] | str | Path | None = None,
        audit: bool = True,
        circuit_breaker: CircuitBreaker | None = None,
        name: str = "handrail_middleware",
        tools: Sequence[BaseTool] = (),
        directory: Directory | None = None,
        authenticator: JwtAuthenticator | None = None,
    ) -> None:
        """Gate an agent's tool calls with ``policy``.

        ``db``: the SQLite file or PostgreSQL URL for the approvals table, the execution ledger,
        the audit table (unless ``audit`` is off) and the args-hash key; it should be the
        checkpoints' database (the inbox finds a thread's checkpoint beside its rows).
        Given the agent's `SqliteSaver` or `PostgresSaver` itself, the tables use its database
        and connection (an async saver does not tell where it is: pass the path or URL).
        ``circuit_breaker``: share one between agents (default: one per middleware). ``name``:
        the middleware's node names (``<name>.after_model``) and the ``graph`` of its events.
        ``tools``: the agent's tools, known before any model request (see the module
        docstring). ``directory`` and ``authenticator``: who is who, as for `build_agent`.
        """
        super().__init__()
        if not isinstance(policy, Policy):
            raise HandrailError(f"policy must be a handrail Policy, not {type(policy).__name__}")
        self._name = name
        parts = gate_parts(
            storage(db),
            tools,
            policy,
            name=name,
            circuit_breaker=circuit_breaker,
            audit=audit,
            trust=Trust(directory=directory, authenticator=authenticator),
        )
        self._gate: Gate = parts.gate
        self._table = parts.table
        self._ledger = parts.ledger
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The middleware's name, which its nodes carry: ``<name>.after_model``, ..."""
        return self._name

    def close(self) -> None:
        """Close the connections Handrail opened to the ``db`` file: the store's own (given a
        path), or the reader of a store sharing the given `SqliteSaver`'s connection (which
        stays open for its owner). A PostgreSQL store uses the process's pool, left open."""
        store = self._table.store if self._table is not None else None
        if store is not None and store.dialect == "sqlite":
            store.close()

    def guard(self, agent: CompiledStateGraph[Any, Any, Any, Any]) -> HandrailGraph:
        """``agent`` (built by ``create_agent`` with this middleware) as a `HandrailGraph`, for
        `handrail.Inbox` and the CLI: ``Inbox(db, graph=handrail.guard(agent))``.

        As with `build_agent`'s graph, a resume through it is checked against the paused request
        and claimed in the approvals table *before* LangGraph stores it: a refused decision
        raises a typed error and changes nothing, and of two processes deciding the same thread
        one goes on and the other gets `AlreadyDecided`. Run the agent through it too.

        The agent's tools are learned here (so edits are offered and checked for all of them),
        and its middleware is checked: `CompositionError` when another middleware is listed where
        it would retry behind Handrail's back or block a call a person approved (see the module
        docstring).
        """
        gate = self._learn(agent_tools(agent))
        check_composition(self, agent, gate)
        return HandrailGraph.around(agent, gate, self._table)

    # -- deciding: inside the model's step -------------------------------------------------------

    def wrap_model_call(
        self,
        request: ModelRequest[RunContext],
        handler: Callable[[ModelRequest[RunContext]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | ExtendedModelResponse[Any]:
        """Call the model, then decide each tool call of its answer (records in the same step).

        While the turn has escalated calls the model is not called: the step passes, so that
        `after_model` asks a human about them first."""
        if awaits_person(request.state):
            return ModelResponse(result=[pass_message()])
        decide = self._decider(request)
        return decide(handler(request))

    async def awrap_model_call(
        self,
        request: ModelRequest[RunContext],
        handler: Callable[[ModelRequest[RunContext]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | ExtendedModelResponse[Any]:
        """Async `wrap_model_call`; the requester is looked up (and pinned) in a worker thread,
        off the event loop on which an async checkpointer commits."""
        if awaits_person(request.state):
            return ModelResponse(result=[pass_message()])
        decide = await asyncio.to_thread(self._decider, request)
        return decide(await handler(request))

    def _decider(
        self, request: ModelRequest[RunContext]
    ) -> Callable[[ModelResponse[Any]], ModelResponse[Any] | ExtendedModelResponse[Any]]:
        """What decides the model's answer to ``request`` (the actor is checked first, so a run
        without one fails before the model is paid for)."""
        gate = self._learn(request.tools)
        actor = gate.requester(request.runtime, get_config())

        def decide(response: ModelResponse[Any]) -> ModelResponse[Any] | ExtendedModelResponse[Any]:
            policy = gate.policy
            bounded = [
                bound_message(m, max_depth=policy.max_args_depth, max_bytes=policy.max_args_bytes)
                if isinstance(m, AIMessage) and m.tool_calls
                else m
                for m in response.result
            ]
            if any(b is not m for b, m in zip(bounded, response.result, strict=True)):
                response = replace(response, result=bounded)
            thread = thread_id_of(get_config())
            calls = open_calls(response.result)
            seen = gate.seen(request.state, thread)
            records = {r.id: r for r in (gate.check(c, actor, thread, seen) for c in calls)}
            if not records:
                return response
            return ExtendedModelResponse(
                model_response=response, command=Command(update={"calls": records})
            )

        return decide

    # -- asking: after the model (or after the tools, the model's step passing) ------------------

    @hook_config(can_jump_to=["end", "model"])
    def after_model(
        self, state: HandrailState, runtime: Runtime[RunContext]
    ) -> dict[str, Any] | None:
        """Answer the turn's denied and invalid calls; ask a person about its asked calls, or
        (after the tools) about its escalated calls, in one interrupt: one round, as the approval
        node's. Calls still waiting after it (a rule needs another approver) are asked again
        after a pass of the model's step (``retry`` sends escalated calls back to the tools,
        ``abort`` ends the run). A pass's placeholder is removed; calls another middleware
        answered first (a call limit) are closed as not run."""
        removed = passes(state["messages"])
        calls = open_calls(state["messages"])
        known = state.get("calls") or {}
        elsewhere = answered_elsewhere(state["messages"], known)
        if not calls and not elsewhere:
            return {"messages": removed} if removed else None
        gate = self._gate
        actor = gate.requester(runtime, get_config())
        gate.requesters.flush()  # no graph run ends here to commit a new thread's pin
        events = gate.events.batch(get_config(), actor.id)
        records: dict[str, ToolCallRecord] = {}
        if elsewhere:
            records.update(close_blocked(elsewhere, events, self._table))
            for blocked, _ in elsewhere:  # never ran: a limit's use is given back
                gate.limits.release(events.thread_id, blocked.id)
        messages: list[ToolMessage] = []
        waiting: list[ToolCallRecord] = []
        escalated: list[ToolCallRecord] = []
        for call in calls:
            record = known.get(call_id(call))
            if record is None:  # a call the model step did not decide (another middleware's)
                seen = gate.seen(state, events.thread_id)
                record = records[call_id(call)] = gate.check(call, actor, events.thread_id, seen)
            if not record.events and record.status != "checked":
                # An allowed call's ``decided`` event goes out with its run, in the tool node.
                record = records[record.id] = decided(events, record)
                if record.result is not None:  # denied or invalid: the model hears why now
                    messages.append(tool_message(record))
            if record.status == "awaiting_approval":
                waiting.append(record)
            elif record.status == "escalated":
                escalated.append(record)
        if waiting and events.thread_id is not None:
            recovered = recover(gate, waiting, events, actor, self._table, self._ledger)
            records.update(recovered)
            waiting = [r for r in waiting if r.id not in recovered]
        update: dict[str, Any] = {"calls": records}
        # A turn has asked calls before its tools run, escalated ones only after.
        kind: RequestKind = "approval" if waiting else "escalation"
        asking = waiting or escalated
        if asking:
            done = ask_once(
                gate,
                asking,
                events,
                actor,
                kind=kind,
                graph=self._name,
                table=self._table,
                holds=RunLineage(state, gate.key, events.config).knows,
            )
            records.update(done.records)
            messages.extend(done.messages)
            if done.aborted:
                update["jump_to"] = "end"
            elif done.still():  # asked again in a run of its own, after a pass of the model step
                update["jump_to"] = "model"
        events.publish()
        if removed or messages:
            update["messages"] = [*removed, *messages]
        return update if records or removed else None

    @hook_config(can_jump_to=["end", "model"])
    async def aafter_model(
        self, state: HandrailState, runtime: Runtime[RunContext]
    ) -> dict[str, Any] | None:
        """Async `after_model`, in a worker thread: its writes to Handrail's tables block and
        must not hold up the event loop, on which an async checkpointer commits."""
        return await asyncio.to_thread(self.after_model, state, runtime)

    # -- running: inside the tool node ------------------------------------------------------------

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolReply]
    ) -> ToolReply:
        """Run the call as decided: ledger, circuit breaker, bounded retries, events."""
        gate = self._learn(request.runtime.tools)
        reply: ToolReply = run(tool_call(gate, self._ledger, request, handler))
        return reply

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolReply]],
    ) -> ToolReply:
        """Async `wrap_tool_call`: the same script, the tool and the waits awaited, the SQLite
        writes in a worker thread (`handrail.nodes._effects`)."""
        gate = self._learn(request.runtime.tools)
        reply: ToolReply = await arun(tool_call(gate, self._ledger, request, handler))
        return reply

    def _learn(self, tools: Iterable[object]) -> Gate:
        """The gate, knowing ``tools`` too (a tool of a known name replaces the old one)."""
        gate = self._gate
        new = {
            t.name: t for t in tools if isinstance(t, BaseTool) and gate.tools.get(t.name) is not t
        }
        if not new:
            return gate
        with self._lock:
            gate = self._gate
            self._gate = gate.with_tools(list({**gate.tools, **new}.values()))
            return self._gate
