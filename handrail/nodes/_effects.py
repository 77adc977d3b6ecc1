"""One implementation for the sync and the async graph: a node's logic as a generator.

A node that calls a model or a tool, or waits before a retry, is written once as a generator
that *yields* those effects (`Invoke`, `Sleep`, `Call`) and receives their results. `node` turns
it into a LangGraph node with two drivers: ``invoke``/``stream`` run the effects in the calling
thread, ``ainvoke``/``astream`` await them (an async tool or model is awaited, a wait does not
block the event loop) and run the rest in a worker thread. Everything else, the ledger, the
events, the records, is the same code for both. LangChain middleware (`handrail.integrations`)
runs its tool calls through the same drivers.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph._internal._runnable import RunnableCallable
from langgraph.runtime import Runtime

from handrail.context import RunContext

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Invoke:
    """Run ``runnable`` on ``input`` with ``config``: its result is sent back."""

    runnable: Runnable[Any, Any]
    input: Any
    config: RunnableConfig


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` before going on."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Call:
    """Call ``fn()`` (a handler LangChain hands a middleware): an awaitable it returns is
    awaited, so one script serves a sync and an async handler."""

    fn: Callable[[], Any]


Effect = Invoke | Sleep | Call
Script = Generator[Effect, Any, T]
"""A node's logic: yields effects, gets back their results (or their exceptions), returns the
node's update."""

NodeLogic = Callable[[Mapping[str, Any], RunnableConfig, Runtime[RunContext]], Script[Any]]


Step = tuple[bool, Any]
"""What advancing a script gave: (finished, its next effect or its return value)."""


def _advance(script: Script[Any], result: Any, error: Exception | None) -> Step:
    """Send ``result`` (or throw ``error``) into ``script``, up to its next effect or its end."""
    try:
        return False, (script.send(result) if error is None else script.throw(error))
    except StopIteration as stop:
        return True, stop.value


class _Sync:
    """Everything in the calling thread. Nothing here suspends (see `run`)."""

    async def advance(self, script: Script[Any], result: Any, error: Exception | None) -> Step:
        return _advance(script, result, error)

    def close(self, script: Script[Any]) -> None:
        script.close()

    async def perform(self, effect: Effect) -> Any:
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        if isinstance(effect, Call):
            return effect.fn()
        return effect.runnable.invoke(effect.input, effect.config)


class _Async:
    """Effects awaited on the event loop; the script's own steps (SQLite writes to the ledger,
    the audit, the approvals table) in a worker thread, like LangGraph's sync nodes.

    The loop must never block on Handrail's SQLite writes: an async saver (``aiosqlite``) may
    hold the file's write lock across an ``await`` and commit only when the loop runs again.
    Steps and effects all run in one copy of the node's context, so context variables set in a
    step (the tool's OpenTelemetry span) are seen by the effect that follows.
    """

    def __init__(self) -> None:
        self.context = contextvars.copy_context()

    def close(self, script: Script[Any]) -> None:
        self.context.run(script.close)  # in the context its steps ran in

    async def advance(self, script: Script[Any], result: Any, error: Exception | None) -> Step:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.context.run, _advance, script, result, error)

    async def perform(self, effect: Effect) -> Any:
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        if isinstance(effect, Call):
            result = effect.fn()
            if not inspect.isawaitable(result):
                return result
            return await asyncio.create_task(_awaited(result), context=self.context)
        call = effect.runnable.ainvoke(effect.input, effect.config)
        return await asyncio.create_task(call, context=self.context)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _drive(script: Script[T], driver: _Sync | _Async) -> T:
    """Run ``script`` to its end, performing each effect it yields with ``driver``."""
    done, value = await driver.advance(script, None, None)
    while not done:
        error: Exception | None = None
        result: Any = None
        try:
            result = await driver.perform(value)
        except Exception as exc:
            error = exc
        except BaseException:  # cancelled: close the script (its spans, its `with` blocks) now
            driver.close(script)
            raise
        done, value = await driver.advance(script, result, error)
    out: T = value
    return out


def run(script: Script[T]) -> T:
    """Drive ``script`` in this thread: effects run as they come.

    `_Sync` never suspends, so the driver coroutine finishes on its first step, without an
    event loop."""
    driver = _drive(script, _Sync())
    try:
        driver.send(None)
    except StopIteration as stop:
        value: T = stop.value
        return value
    driver.close()
    raise RuntimeError("a synchronous effect suspended")


async def arun(script: Script[T]) -> T:
    """Drive ``script`` from the event loop: effects awaited, steps in a worker thread."""
    return await _drive(script, _Async())


def node(logic: NodeLogic, name: str) -> RunnableCallable:
    """A LangGraph node running ``logic`` with the sync driver or the async one.

    Like LangGraph's own ``ToolNode``, the node is a ``RunnableCallable`` with a sync and an
    async function; LangGraph passes both the run's config and its runtime.
    """

    def sync(state: Mapping[str, Any], config: RunnableConfig, runtime: Runtime[RunContext]) -> Any:
        return run(logic(state, config, runtime))

    async def async_(
        state: Mapping[str, Any], config: RunnableConfig, runtime: Runtime[RunContext]
    ) -> Any:
        return await arun(logic(state, config, runtime))

    return RunnableCallable(sync, async_, name=name)
