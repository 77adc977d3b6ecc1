"""`HandrailGraph`: a compiled graph that checks and claims a resume *before* LangGraph stores it.

Every Handrail builder returns one; `HandrailGraph.guard` wraps a user's graph that holds a tool
gate. Before ``invoke``/``stream`` (and their async twins) hand anything to LangGraph:

- the run's actor is checked against the thread's pinned requester (`RequesterMismatch`), or,
  behind an authenticating LangGraph server, taken from the authenticated user;
- a ``Command(resume=...)`` is checked against the paused request (`handrail.review.parse_resume`)
  and the request is claimed in the approvals table, so a refused resume changes nothing and two
  processes never apply two decisions;
- after the run the claim is released (the request opens again when the run failed before its
  decision was saved), and what the run left pending is committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Self

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import merge_configs
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, StateSnapshot

from handrail.auth import Identity
from handrail.context import RunContext, thread_id_of
from handrail.errors import AlreadyDecided, ContextError, NothingPending, RequesterMismatch
from handrail.nodes._effects import Call, Script, Sleep, arun, run
from handrail.nodes._gate import Gate
from handrail.review import ApprovalRequest, parse_resume
from handrail.state import AgentState, ToolCallRecord
from handrail.storage.approvals import ApprovalTable

__all__ = ["Claim", "HandrailGraph"]

log = logging.getLogger("handrail")

SAVE_WAIT_S = 2.0
"""How long a resume waits for a listed request's interrupt to reach the checkpoint."""
SAVE_POLL_S = 0.05


class HandrailGraph(CompiledStateGraph[AgentState, RunContext, Any, Any]):
    """A compiled Handrail graph: checks and claims a resume value *before* LangGraph stores it.

    ``invoke``/``stream`` (and their async twins) with ``Command(resume=...)`` raise a typed
    `ApprovalError` for a value the paused request refuses, leaving the checkpoint as it was. When
    the graph keeps its approvals table (a checkpointer with a database), a resume first claims
    the thread's request there: of two processes resuming the same thread at once, one goes on
    and the other gets `AlreadyDecided`. Everything else is a plain `CompiledStateGraph`.
    """

    def __init__(
        self,
        *args: Any,
        handrail_gate: Gate,
        handrail_table: ApprovalTable | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.handrail_gate = handrail_gate
        """The tools and policy the graph's nodes gate calls with."""
        self.handrail_table = handrail_table
        """The approvals table beside the checkpoints (None without a database)."""

    @classmethod
    def around(
        cls,
        compiled: CompiledStateGraph[Any, Any, Any, Any],
        gate: Gate,
        table: ApprovalTable | None,
    ) -> Self:
        """``compiled`` as a HandrailGraph that checks resumes for ``gate`` (and claims them in
        ``table``)."""
        skip = ("__orig_class__", "handrail_gate", "handrail_table")
        attrs = {k: v for k, v in compiled.__dict__.items() if k not in skip}
        return cls(handrail_gate=gate, handrail_table=table, **attrs)

    def guard(self, graph: CompiledStateGraph[Any, Any, Any, Any]) -> HandrailGraph:
        """Your compiled ``graph`` that holds this tool gate (`build_tool_gate`), as a
        HandrailGraph: a resume is checked (and claimed) before LangGraph stores it, and an
        `Inbox` can resume its threads (``Inbox(db, graph=gate.guard(graph))``)."""
        return HandrailGraph.around(graph, self.handrail_gate, self.handrail_table)

    def pending_request(self, config: RunnableConfig) -> tuple[str, ApprovalRequest] | None:
        """The interrupt id and value of the thread's open approval request, if any."""
        return _pending(self.get_state(config))

    def check_resume(self, resume: Any, config: RunnableConfig) -> None:
        """Raise the `ApprovalError` the paused thread would answer ``resume`` with, if any."""
        run(self._admit(Command(resume=resume), config, self.get_state, claim=False))

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        server = self._check_requester(input, config, kwargs.get("context"))
        if server is not None:  # behind an authenticating server: the user is the actor
            kwargs["context"] = RunContext(actor=server.actor)
        claim = run(self._admit(input, config, self.get_state))
        failed = True
        try:
            yield from super().stream(input, config, **kwargs)
            failed = False
        finally:
            self._flush()
            if claim is not None:
                reopen = failed and _asking(claim, lambda: self.get_state(claim.config))
                self._release(claim, reopen=reopen)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        # The state is read with aget_state; the table's writes run in a worker thread,
        # never on the event loop.
        context = kwargs.get("context")
        server = await asyncio.to_thread(self._check_requester, input, config, context)
        if server is not None:  # behind an authenticating server: the user is the actor
            kwargs["context"] = RunContext(actor=server.actor)
        claim = await arun(self._admit(input, config, self.aget_state))
        failed = True
        try:
            async for chunk in super().astream(input, config, **kwargs):
                yield chunk
            failed = False
        finally:
            await asyncio.to_thread(self._flush)
            if claim is not None:
                reopen = failed and await _aasking(claim, self.aget_state)
                await asyncio.to_thread(self._release, claim, reopen=reopen)

    def _check_requester(
        self, input: Any, config: RunnableConfig | None, context: Any
    ) -> Identity | None:
        """Before LangGraph stores anything: the run's actor is the thread's requester (if it
        has one; a new thread's is pinned by its first node), else `RequesterMismatch`; a resume
        needs the context too.
        Returns the user an authenticating LangGraph server vouched for, if any."""
        merged = merge_configs(self.config, config)
        thread = thread_id_of(merged)
        resume = isinstance(input, Command) and input.resume is not None
        gate = self.handrail_gate
        server = gate.trust.server(merged)
        if server is not None:  # the authenticated user: on a resume, the approver
            if not resume and thread is not None:
                pinned = gate.requesters.pinned(thread) or server.actor
                if pinned.id != server.actor.id:
                    raise RequesterMismatch(
                        f"{server.actor.id!r} may not run on a thread {pinned.id!r} started",
                        thread_id=thread,
                    )
            return server
        if context is None:
            if resume:
                raise ContextError("a resume needs the run's context: the thread's requester")
            return None  # the nodes refuse a run without context before any tool is decided
        ctx = RunContext(**context) if isinstance(context, Mapping) else context
        if not isinstance(ctx, RunContext):
            raise ContextError(f"the context is a {type(context).__name__}, not a RunContext")
        gate.identify(ctx.actor, thread, pin=False)
        return None

    def _admit(
        self,
        input: Any,
        config: RunnableConfig | None,
        read: Callable[..., Any],
        *,
        claim: bool = True,
    ) -> Script[Claim | None]:
        """Before a ``Command(resume=...)`` reaches LangGraph: check it against the thread's
        request (raising) and claim the request; the claim's token, to release after the run.
        Other input, and resumes of interrupts that are not Handrail's, pass unchecked.
        ``read`` is ``get_state`` or ``aget_state``."""
        if not (isinstance(input, Command) and input.resume is not None):
            return None
        config = merge_configs(self.config, config)
        snapshot: StateSnapshot = yield Call(partial(read, config))
        if _foreign(snapshot):
            return None
        thread = thread_id_of(config)
        pending = _pending(snapshot)
        table = self.handrail_table
        waited = 0.0
        while pending is None and table is not None and waited < SAVE_WAIT_S:
            # The approval node lists a request before LangGraph has saved the interrupt (it
            # saves it once the node has raised): a resume from another process can land in
            # between. Give the running process a moment to save it.
            if not table.waiting(thread_id=thread):
                break
            yield Sleep(SAVE_POLL_S)
            waited += SAVE_POLL_S
            snapshot = yield Call(partial(read, config))
            pending = _pending(snapshot)
        if pending is None:
            if table is not None:
                table.settle(thread, datetime.now(UTC))
                raise table.nothing_waiting(thread)
            raise NothingPending("no approval is pending on this thread", thread_id=thread)
        asked, request = pending
        resume = input.resume
        if isinstance(resume, Mapping) and asked in resume:  # the {interrupt_id: value} form
            resume = resume[asked]
        ids = list(request["handrail"]["tool_call_ids"])
        calls = self.handrail_gate.records(snapshot.values or {})
        if any(i not in calls for i in ids):  # a tool gate's turn: in its subgraph's state
            nested: StateSnapshot = yield Call(partial(read, config, subgraphs=True))
            calls = {**_nested_records(nested, self.handrail_gate), **calls}
        originals = {i: r.args for i, r in calls.items() if isinstance(r, ToolCallRecord)}
        server = self.handrail_gate.trust.server(config)
        parse_resume(resume, request, self.handrail_gate, originals=originals, server=server)
        token = self._claim(config, ids) if claim else None
        if token is None:
            return None
        taken = Claim(token=token, interrupt_id=asked, config=config)
        try:
            latest: StateSnapshot = yield Call(partial(read, config))
            _confirm(_pending(latest), asked, config)
        except BaseException:
            self._release(taken, reopen=True)
            raise
        return taken

    def _claim(self, config: RunnableConfig, calls: list[str]) -> str | None:
        """Claim the request's rows in the approvals table; None if it keeps no rows for them."""
        thread = thread_id_of(config)
        if self.handrail_table is None or thread is None:
            return None
        return self.handrail_table.claim(thread, calls, datetime.now(UTC))

    def _flush(self) -> None:
        """Commit what the run left pending (a new thread's pinned requester, when the run wrote
        nothing else); a failure leaves it pending for the next write, and never hides the run's
        own error."""
        try:
            self.handrail_gate.requesters.flush()
        except Exception:
            log.warning("the thread's requester could not be saved yet", exc_info=True)

    def _release(self, claim: Claim, *, reopen: bool) -> None:
        """End ``claim``; a release that fails (a locked or lost database) is retried in the
        background, and never hides the run's own error."""
        table = self.handrail_table
        if table is None:
            return
        try:
            table.release(claim.token, reopen=reopen)
        except Exception:
            table.abandon(claim.token, reopen=reopen)


@dataclass(frozen=True, slots=True)
class Claim:
    """A resume's hold on a request: the table's token, and the interrupt it answers."""

    token: str
    interrupt_id: str
    config: RunnableConfig


def _asking(claim: Claim, read: Callable[[], StateSnapshot]) -> bool:
    """After a failed run: whether the claimed request still waits (its decision was not saved),
    so its rows must wait again. Unknown (the state cannot be read) counts as waiting."""
    try:
        pending = _pending(read())
    except Exception:
        return True
    return pending is not None and pending[0] == claim.interrupt_id


async def _aasking(claim: Claim, aread: Callable[..., Any]) -> bool:
    try:
        snapshot: StateSnapshot = await aread(claim.config)
    except Exception:
        return True
    return _asking(claim, lambda: snapshot)


def _pending(snapshot: StateSnapshot) -> tuple[str, ApprovalRequest] | None:
    for item in reversed(snapshot.interrupts):
        value = item.value
        if isinstance(value, Mapping) and isinstance(value.get("handrail"), Mapping):
            return item.id, value  # type: ignore[return-value]
    return None


def _nested_records(snapshot: StateSnapshot, gate: Gate) -> dict[str, ToolCallRecord]:
    """The records in the states of ``snapshot``'s subgraph tasks (`get_state(subgraphs=True)`)."""
    found: dict[str, ToolCallRecord] = {}
    for task in snapshot.tasks:
        if isinstance(task.state, StateSnapshot):
            found.update(gate.records(task.state.values or {}))
            found.update(_nested_records(task.state, gate))
    return found


def _foreign(snapshot: StateSnapshot) -> bool:
    """The thread waits on interrupts, none of them Handrail's (e.g. one raised inside a tool):
    a resume of those is the app's business and goes to LangGraph unchecked."""
    return bool(snapshot.interrupts) and _pending(snapshot) is None


def _confirm(
    pending: tuple[str, ApprovalRequest] | None, asked: str, config: RunnableConfig
) -> None:
    """After the claim: the request checked is still the one waiting (no resume slipped in)."""
    if pending is None or pending[0] != asked:
        raise AlreadyDecided(
            "another resume decided the request while this one was being checked",
            thread_id=thread_id_of(config),
        )
