"""How `handrail.Inbox` resumes a thread: the graph that paused it, the decisions on the wire, and
the run that applies them, written once for the sync inbox and the async one.

Each of the inbox's decisions is a script (`handrail.nodes._effects`): `blocking` makes the
method that drives it in the calling thread (``Inbox.approve``), `awaited` its twin that drives
it from the event loop (``Inbox.aapprove``), with the table's reads in a worker thread. The
script's last step, `resume`, runs the graph as it can:

- a graph that runs only asynchronously (an ``AsyncSqliteSaver`` or ``AsyncPostgresSaver``, a
  tool with only a coroutine) is resumed with ``ainvoke``; asked to resume it synchronously, the
  inbox refuses with `AsyncOnlyGraph` before touching it (an async saver called from a thread
  without its event loop blocks for good; a tool that cannot run would fail the approved call);
- a graph whose saver is synchronous only (``SqliteSaver``, ``PostgresSaver``) is resumed by the
  async twin with ``invoke`` in a worker thread, so the event loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from functools import partial
from importlib.metadata import entry_points
from typing import Any, Concatenate, ParamSpec, TypeVar

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import StructuredTool, Tool
from langgraph.types import Command

from handrail.auth import Token
from handrail.context import Actor, RunContext
from handrail.errors import GraphNotFound, HandrailError
from handrail.guard import HandrailGraph
from handrail.nodes._effects import Call, Script, arun, run
from handrail.review import Approve, HumanDecision, PendingApproval
from handrail.review.decisions import wire
from handrail.storage import Store

__all__ = [
    "ENTRY_POINT_GROUP",
    "AsyncOnlyGraph",
    "GraphFactory",
    "Graphs",
    "Result",
    "approver_claim",
    "awaited",
    "blocking",
    "decision_entry",
    "resume",
]

ENTRY_POINT_GROUP = "handrail.graphs"
"""Entry points in this group map a graph's name to a factory ``(db: str) -> graph``."""

GraphFactory = Callable[[str], HandrailGraph]
"""Builds the app's graph on the given database (a SQLite path or a PostgreSQL URL)."""

Result = dict[str, Any]
"""What a decision's run returned (the graph's ``invoke`` result)."""

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")

_ASYNC_SAVERS = frozenset({"AsyncSqliteSaver", "AsyncPostgresSaver", "AsyncShallowPostgresSaver"})
_SYNC_SAVERS = frozenset({"SqliteSaver", "PostgresSaver", "ShallowPostgresSaver"})

_BLOCKING: ContextVar[str | None] = ContextVar("handrail_inbox_blocking", default=None)
"""While a sync inbox method drives a decision in this context: the name of its async twin."""


class AsyncOnlyGraph(HandrailError):
    """A synchronous decision (``Inbox.approve``) for a thread whose graph runs only
    asynchronously; the message names the async twin to await (``Inbox.aapprove``)."""

    def __init__(self, because: str, *, thread_id: str, use: str) -> None:
        self.thread_id = thread_id
        """The thread the decision was for (nothing was stored)."""
        self.use = use
        """The inbox method to await instead."""
        self.because = because
        """What makes the graph async only."""
        super().__init__(
            f"thread {thread_id!r}: the graph runs only asynchronously ({because}); nothing was "
            f"decided: use `await inbox.{use}(...)`"
        )


def blocking(
    twin: str,
) -> Callable[[Callable[Concatenate[S, P], Script[T]]], Callable[Concatenate[S, P], T]]:
    """Make a decision's script a method that runs it in the calling thread; ``twin`` names the
    async method a caller is sent to when the thread's graph runs only asynchronously."""

    def decorate(script: Callable[Concatenate[S, P], Script[T]]) -> Callable[Concatenate[S, P], T]:
        @functools.wraps(script)
        def method(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
            token = _BLOCKING.set(twin)
            try:
                return run(script(self, *args, **kwargs))
            finally:
                _BLOCKING.reset(token)

        method.__signature__ = _untyped(script)  # type: ignore[attr-defined]
        return method

    return decorate


def awaited(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], Awaitable[T]]:
    """The async twin of a `blocking` method: the same script, driven from the event loop."""
    script: Callable[Concatenate[S, P], Script[T]] = getattr(method, "__wrapped__")  # noqa: B009

    @functools.wraps(script)
    async def twin(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await arun(script(self, *args, **kwargs))

    twin.__signature__ = _untyped(script)  # type: ignore[attr-defined]
    twin.__name__ = twin.__qualname__ = f"a{method.__name__}"
    twin.__doc__ = f"Async `{method.__name__}`: the same decision, for graphs that run async."
    return twin


class Graphs:
    """The graphs the inbox resumes threads with: one given for all, or one per graph name,
    built by a registered factory or an entry point, and each checked to keep its checkpoints
    in the inbox's database."""

    def __init__(self, store: Store, db: str, default: HandrailGraph | None) -> None:
        self._store = store
        self._db = db
        self._default = default
        self._factories: dict[str, GraphFactory] = {}
        self._built: dict[str, HandrailGraph] = {}

    def register(self, name: str, factory: GraphFactory) -> None:
        """Build the graph for threads paused by graph ``name`` with ``factory(db)``."""
        self._factories[name] = factory

    def find(self, name: str, graph: HandrailGraph | None) -> HandrailGraph:
        """The graph to resume a thread paused by graph ``name`` with (``graph`` if given)."""
        found = graph or self._default or self._built.get(name)
        if found is None:
            factory = self._factories.get(name) or _entry_point(name)
            if factory is None:
                raise GraphNotFound(
                    f"no graph to resume {name!r} threads with: pass graph=, call "
                    f"Inbox.register({name!r}, factory), or declare an entry point "
                    f"{name} = 'module:factory' in the {ENTRY_POINT_GROUP!r} group"
                )
            found = self._built[name] = factory(self._db)
        if not isinstance(found, HandrailGraph):
            raise GraphNotFound(
                f"the graph for {name!r} is a {type(found).__name__}, not a HandrailGraph "
                f"(build it with handrail.build_agent, or guard a create_agent agent with "
                f"HandrailMiddleware.guard)"
            )
        table = found.handrail_table
        if table is None or not table.store.same(self._store):
            raise GraphNotFound(
                f"the graph for {name!r} does not keep its checkpoints in {self._store}"
            )
        return found


def resume(
    graph: HandrailGraph, row: PendingApproval, payload: Mapping[str, Any]
) -> Script[Result]:
    """Resume ``row``'s thread with ``payload`` through ``graph``: the run's result. A sync
    method refuses a graph that runs only asynchronously (`AsyncOnlyGraph`, naming its twin)."""
    thread = row.thread_id or ""
    config: RunnableConfig = {"configurable": {"thread_id": thread}}
    context = RunContext(actor=row.actor)
    command: Command[Any] = Command(resume=payload)
    async_only = _async_only(graph)
    twin = _BLOCKING.get()
    if twin is not None:
        if async_only is not None:
            raise AsyncOnlyGraph(async_only, thread_id=thread, use=twin)
        run_here = partial(graph.invoke, command, config, context=context)
        result: Result = yield Call(run_here)
    elif _sync_saver(graph):
        if async_only is not None:
            raise HandrailError(
                f"thread {thread!r}: the graph's checkpointer runs only synchronously and "
                f"{async_only}: it cannot be resumed"
            )
        in_thread = partial(asyncio.to_thread, graph.invoke, command, config, context=context)
        result = yield Call(in_thread)
    else:
        result = yield Call(partial(graph.ainvoke, command, config, context=context))
    return result


def approver_claim(approver: Actor | Token) -> dict[str, Any]:
    """The resume payload's approver: a token, or an id (with the roles it claims, if any)."""
    if isinstance(approver, Token):
        return {"token": approver.jwt}
    return (
        {"id": approver.id, "roles": list(approver.roles)}
        if approver.roles
        else {"id": approver.id}
    )


def decision_entry(decision: HumanDecision, row: PendingApproval) -> dict[str, Any]:
    """The decision for ``row`` on the wire, naming its call (an approval bound to the listed
    arguments unless it names a hash of its own)."""
    if isinstance(decision, Approve) and decision.args_hash is None:
        decision = Approve(args_hash=row.args_hash)
    return {**wire(decision), "tool_call_id": row.tool_call_id}


def _untyped(script: Callable[..., Any]) -> inspect.Signature:
    """``script``'s signature without its return annotation (a script, not what the method
    returns)."""
    return inspect.signature(script).replace(return_annotation=inspect.Signature.empty)


def _async_only(graph: HandrailGraph) -> str | None:
    """Why ``graph`` cannot run synchronously, if it cannot: its saver, or a tool with only a
    coroutine."""
    saver = graph.checkpointer
    if {c.__name__ for c in type(saver).__mro__} & _ASYNC_SAVERS:
        return f"its checkpointer is an {type(saver).__name__}"
    for tool in graph.handrail_gate.tools.values():
        if isinstance(tool, StructuredTool | Tool) and tool.func is None and tool.coroutine:
            return f"its tool {tool.name!r} has only an async implementation"
    return None


def _sync_saver(graph: HandrailGraph) -> bool:
    """Whether ``graph``'s saver runs only synchronously (its async methods raise)."""
    return bool({c.__name__ for c in type(graph.checkpointer).__mro__} & _SYNC_SAVERS)


def _entry_point(name: str) -> GraphFactory | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        factory: GraphFactory = ep.load()
        return factory
    return None
