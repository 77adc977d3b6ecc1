"""One implementation for the sync and the async graph: a node's logic as a generator.

A node that calls a model or a tool, or waits before a retry, is written once as a generator
that *yields* those effects (`Invoke`, `Sleep`) and receives their results. `node` turns it into
a LangGraph node with two drivers: ``invoke``/``stream`` run the effects in the calling thread,
``ainvoke``/``astream`` await them (an async tool or model is awaited, a wait does not block the
event loop). Everything else, the ledger, the events, the records, is the same code for both.
"""

from __future__ import annotations

import asyncio
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


Effect = Invoke | Sleep
Script = Generator[Effect, Any, T]
"""A node's logic: yields effects, gets back their results (or their exceptions), returns the
node's update."""

NodeLogic = Callable[[Mapping[str, Any], RunnableConfig, Runtime[RunContext]], Script[Any]]


async def _drive(script: Script[T], perform: Callable[[Effect], Awaitable[Any]]) -> T:
    """Run ``script`` to its end, performing each effect it yields with ``perform``."""
    try:
        effect = next(script)
        while True:
            try:
                result = await perform(effect)
            except Exception as exc:
                effect = script.throw(exc)
            else:
                effect = script.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def _perform_sync(effect: Effect) -> Any:
    if isinstance(effect, Sleep):
        time.sleep(effect.seconds)
        return None
    return effect.runnable.invoke(effect.input, effect.config)


async def _perform_async(effect: Effect) -> Any:
    if isinstance(effect, Sleep):
        await asyncio.sleep(effect.seconds)
        return None
    return await effect.runnable.ainvoke(effect.input, effect.config)


def run(script: Script[T]) -> T:
    """Drive ``script`` in this thread: effects run as they come.

    `_perform_sync` never suspends, so the driver coroutine finishes on its first step, without
    an event loop."""
    driver = _drive(script, _perform_sync)
    try:
        driver.send(None)
    except StopIteration as stop:
        value: T = stop.value
        return value
    driver.close()
    raise RuntimeError("a synchronous effect suspended")


async def arun(script: Script[T]) -> T:
    """Drive ``script`` on the event loop: effects are awaited."""
    return await _drive(script, _perform_async)


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
