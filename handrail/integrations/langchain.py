"""`HandrailMiddleware`: Handrail's policy gate as middleware for LangChain's ``create_agent``.

```python
saver = SqliteSaver(sqlite3.connect("handrail.db", check_same_thread=False))
agent = create_agent(
    model,
    tools,
    middleware=[HandrailMiddleware(policy=Policy.from_file("policy.yaml"), db=saver)],
    checkpointer=saver,
    context_schema=RunContext,
)
agent.invoke({"messages": [...]}, config, context=RunContext(actor=Actor(...)))
```

The agent then behaves as Handrail's own graph (`handrail.build_agent`), hook by hook:

- ``wrap_model_call``: each tool call of the model's answer is validated and coerced by the tool's
  schema and decided by the policy (`Gate.check`) *inside the model's step*, and its
  `ToolCallRecord` is written to the state's ``calls`` with that step. So what an approver sees
  (the rule, the deadline, the args hash) is fixed once and survives resumes and restarts.
- ``after_model``: denied and invalid calls are answered with an error ToolMessage naming the rule
  (the tool never runs); all asked calls of the turn go into **one** ``interrupt()`` whose value is
  Handrail's approval request (LangChain's ``HITLRequest`` keys plus ``handrail``). Resume values
  are Handrail's (``{"decisions": [...], "approver": {"id", "roles"}}``), checked by
  `parse_resume`; a value that fails the checks is answered with a fresh interrupt carrying the
  reason, never an exception, so the thread stays waiting and the next valid decision works.
  Approve keeps the call; reject and respond answer it; an edit is decided again by the policy
  (an edit can never reach a denied action) and the tool runs with the edited arguments. As in
  ``build_agent`` (and LangChain's own HITL middleware), the model's AIMessage is left as the
  model wrote it: the call runs with the record's arguments, which are what was decided. (While
  a turn waits for a human, the answers to its denied calls wait too; they were decided and
  audited before the interrupt.)
- ``wrap_tool_call`` / ``awrap_tool_call``: the call runs with exactly the decided arguments,
  behind the execution ledger (non-idempotent tools: a replayed attempt is answered from the
  ledger and never run twice; an intent with no outcome is ``outcome_unknown``) and the circuit
  breaker. 429s and transient failures are retried up to the policy's ``max_retries``, waiting
  `retry_wait` (Retry-After honoured, capped by ``max_wait``); 4xx, 401/403 and an open circuit
  go back to the model. One generator holds this logic; a sync and an async driver run it (the
  async one awaits the tool and the waits, and does the SQLite writes in a worker thread). A tool
  that takes Handrail's injected ``idempotency_key`` is invoked by the middleware itself, with
  the key, as ``build_agent`` invokes tools: LangGraph's tool node strips injected arguments it
  does not fill, so such a tool is not wrapped by middleware listed after this one, and gets no
  ``InjectedState`` or ``ToolRuntime``.
- **Escalations** (a 500, an unknown error, an unknown outcome, retries spent) go to a human, as
  in ``build_agent``: the tool call is left unanswered with its record ``escalated``; the model's
  next step passes without calling the model, and ``after_model`` asks about every escalated
  call of the turn in one interrupt (``handrail.kind == "escalation"``), answered with ``retry``
  (the call goes back to the tools, as a new attempt), ``skip`` (the model is told) or ``abort``
  (every escalated call is answered, then the run ends). So the middleware adds one node to the
  agent (``<name>.after_model``), as LangChain's own HITL middleware does.

Every step of every call is an event (`handrail.events`): on the ``handrail`` logger and, with a
``db``, a row of the hash-chained audit table (`handrail.audit.AuditLog`). List the middleware
last, so that its model wrapper sees the model's own answer.

**Tools.** The schemas that coerce arguments (and the tools that take an injected
``idempotency_key``) come from the tools ``create_agent`` offers the model (``ModelRequest.tools``)
and runs (``ToolCallRequest.runtime.tools``), learned as requests go by; ``tools=`` seeds them
up front. A process that resumes a thread before its model has run (an approver's worker) has seen
no model request: it takes approve, reject and respond, but offers and accepts ``edit`` only for
the tools it knows, so give such processes ``tools=`` (the list passed to ``create_agent``).

**Storage.** With ``db`` (a SQLite file path, or the agent's `SqliteSaver`, whose connection the
tables then share), the execution ledger, the audit table and the key of the args hashes live in
that file; with an ``AsyncSqliteSaver``, pass its file's path. Without ``db`` there is no ledger
and no audit table; events are still logged. The state's ``calls`` holds Handrail's
`ToolCallRecord`: LangGraph's serializer logs a one-time warning for unregistered types unless the
saver's serde allows ``handrail.state.ToolCallRecord`` and ``CallError`` (as
``handrail.build_agent``'s own saver does; under ``LANGGRAPH_STRICT_MSGPACK`` the state schema
registers them).
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
from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt

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

from handrail.audit import AuditLog
from handrail.auth import Directory, JwtAuthenticator, Trust
from handrail.bounds import bound_message
from handrail.context import Actor, RunContext
from handrail.errors import HandrailError
from handrail.events import Batch, Recorder
from handrail.integrations._tool_node import (
    ToolReply,
    awaits_escalation,
    open_calls,
    storage,
    tool_call,
)
from handrail.nodes._effects import arun, run
from handrail.nodes._gate import Gate, call_id
from handrail.policies import Policy
from handrail.review import RequestKind, review_round
from handrail.review.records import decided, tool_message
from handrail.review.turn import recover
from handrail.state import ToolCallRecord, merge_calls
from handrail.storage.ledger import Ledger
from handrail.storage.proofs import ProofTable
from handrail.storage.requesters import RequesterTable
from handrail.tools.breaker import CircuitBreaker

__all__ = ["HandrailMiddleware", "HandrailState"]


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

        ``db``: the SQLite file or PostgreSQL URL for the execution ledger, the audit table
        (unless ``audit`` is off) and the args-hash key; it may be the checkpoints' database.
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
        store = storage(db)
        self._name = name
        self._trail = AuditLog(store) if store is not None and audit else None
        self._ledger = Ledger(store) if store is not None else None
        self._gate = Gate(
            tools,
            policy,
            circuit_breaker,
            Recorder(policy, name, self._trail),
            store.secret("args_hash") if store is not None else b"",
            trust=Trust(directory=directory, authenticator=authenticator),
            proofs=ProofTable(store) if store is not None else None,
            requesters=RequesterTable(store) if store is not None else None,
        )
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The middleware's name, which its nodes carry: ``<name>.after_model``, ..."""
        return self._name

    def close(self) -> None:
        """Close the connections to the ``db`` file (the ledger's and the audit table's)."""
        for table in (self._ledger, self._trail):
            if table is not None:
                table.close()

    # -- deciding: inside the model's step -------------------------------------------------------

    def wrap_model_call(
        self,
        request: ModelRequest[RunContext],
        handler: Callable[[ModelRequest[RunContext]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | ExtendedModelResponse[Any]:
        """Call the model, then decide each tool call of its answer (records in the same step).

        While the turn has escalated calls the model is not called: the step passes, so that
        `after_model` asks a human about them first."""
        if awaits_escalation(request.state):
            return ModelResponse(result=[])
        decide = self._decider(request)
        return decide(handler(request))

    async def awrap_model_call(
        self,
        request: ModelRequest[RunContext],
        handler: Callable[[ModelRequest[RunContext]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | ExtendedModelResponse[Any]:
        """Async `wrap_model_call`; the requester is looked up (and pinned) in a worker thread,
        off the event loop on which an async checkpointer commits."""
        if awaits_escalation(request.state):
            return ModelResponse(result=[])
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
            records = {r.id: r for r in (gate.check(c, actor) for c in open_calls(response.result))}
            if not records:
                return response
            return ExtendedModelResponse(
                model_response=response, command=Command(update={"calls": records})
            )

        return decide

    # -- asking: after the model (or after the tools, the model's step passing) ------------------

    @hook_config(can_jump_to=["end"])
    def after_model(
        self, state: HandrailState, runtime: Runtime[RunContext]
    ) -> dict[str, Any] | None:
        """Answer the turn's denied and invalid calls; ask a human about its asked calls, in one
        interrupt, until each is decided; or, after the tools, about its escalated calls, in
        one interrupt (``retry`` sends them back to the tools, ``abort`` ends the run)."""
        calls = open_calls(state["messages"])
        if not calls:
            return None
        gate = self._gate
        known = state.get("calls") or {}
        actor = gate.requester(runtime, get_config())
        gate.requesters.flush()  # no graph run ends here to commit a new thread's pin
        events = gate.events.batch(get_config(), actor.id)
        records: dict[str, ToolCallRecord] = {}
        messages: list[ToolMessage] = []
        waiting: list[ToolCallRecord] = []
        escalated: list[ToolCallRecord] = []
        for call in calls:
            record = known.get(call_id(call))
            if record is None:  # a call the model step did not decide (another middleware's)
                record = records[call_id(call)] = gate.check(call, actor)
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
            recovered = recover(gate, waiting, events, actor, None, self._ledger)
            records.update(recovered)
            waiting = [r for r in waiting if r.id not in recovered]
        aborted = False
        for asking, escalation in ((waiting, False), (escalated, True)):
            if asking:  # a turn has asked calls before its tools run, escalations only after
                answered, replies, stop = self._ask(
                    gate, asking, events, actor, escalation=escalation
                )
                records.update(answered)
                messages.extend(replies)
                aborted = aborted or stop
        events.publish()
        if not records:
            return None
        update: dict[str, Any] = {"calls": records, "messages": messages}
        if aborted:
            update["jump_to"] = "end"
        return update

    @hook_config(can_jump_to=["end"])
    async def aafter_model(
        self, state: HandrailState, runtime: Runtime[RunContext]
    ) -> dict[str, Any] | None:
        """Async `after_model`, in a worker thread: its writes to Handrail's tables block and
        must not hold up the event loop, on which an async checkpointer commits."""
        return await asyncio.to_thread(self.after_model, state, runtime)

    def _ask(
        self,
        gate: Gate,
        waiting: list[ToolCallRecord],
        events: Batch,
        actor: Actor,
        *,
        escalation: bool,
    ) -> tuple[dict[str, ToolCallRecord], list[ToolMessage], bool]:
        """Interrupt until every call in ``waiting`` (asked calls, or escalated ones) is decided:
        the records after the decisions, the messages owed to the model, and whether an
        escalation was aborted.

        One round (`handrail.review.review_round`, as the approval node's) per interrupt; a round
        leaves calls waiting only when a rule needs more approvers, an edit needs another
        approver, or only some calls expired.
        """
        kind: RequestKind = "escalation" if escalation else "approval"
        server = gate.trust.server(get_config())
        records: dict[str, ToolCallRecord] = {}
        messages: list[ToolMessage] = []
        aborted = False
        while waiting:
            done = review_round(
                gate,
                waiting,
                events,
                actor,
                kind=kind,
                graph=self._name,
                ask=interrupt,
                server=server,
            )
            records.update(done.records)
            messages.extend(done.messages)
            aborted = aborted or done.aborted
            waiting = done.still()
        return records, messages, aborted

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
