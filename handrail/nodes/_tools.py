"""How the ``execute`` node runs a tool: through LangGraph's own ``ToolNode``, one call at a time.

Handrail decides, records and retries; running the tool is ``ToolNode``'s job, so a tool behaves
under Handrail as it does under ``ToolNode``: ``InjectedState``, ``InjectedStore``,
``ToolRuntime`` and ``InjectedToolCallId`` are filled (never seen by the policy or the args
hash: the model's arguments are what is decided), a ``Command`` the tool returns is kept whole,
results are serialised as ``ToolNode`` serialises them, and ``handle_tool_errors`` has
``ToolNode``'s meaning and default for the failures Handrail does not know. A failure Handrail
classifies (a 429, a timeout, a 5xx, ...) is never turned into a message here: it reaches
`handrail.nodes.execute.attempt`, which retries or escalates it.

Each call goes through ``ToolNode``'s step for one call (``_run_one``, ``_arun_one``) with the
state of the graph that holds the gate, so the tool sees that state. In
`handrail.build_tool_gate`'s subgraph that is the user's state and runtime (`Outer`), not the
subgraph's; a graph a tool itself runs (a sub-agent) never sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph._internal._constants import CONF, CONFIG_KEY_RUNTIME
from langgraph._internal._runnable import RunnableCallable
from langgraph.prebuilt import ToolNode, ToolRuntime
from langgraph.prebuilt.tool_node import (
    _default_handle_tool_errors,
    _handle_tool_error,
    _infer_handled_types,
)
from langgraph.runtime import Runtime
from langgraph.types import Command

from handrail.nodes._effects import Invoke
from handrail.nodes._gate import IDEMPOTENCY_KEY
from handrail.tools.errors import classify

__all__ = ["OUTER", "ErrorHandling", "Outer", "ToolRunner", "outer_of"]

ErrorHandling = bool | str | Callable[..., str] | type[Exception] | tuple[type[Exception], ...]
"""``ToolNode``'s ``handle_tool_errors``: which exceptions become an error message, and its text."""

OUTER = "__handrail_outer"
"""The configurable key under which the tool gate hands its subgraph the user's state and
runtime (``__`` keys are never copied into checkpoint metadata)."""


@dataclass(frozen=True, slots=True)
class Outer:
    """The state and runtime of the node that holds the gate, for the tools its subgraph runs
    through ``runner`` (and no other: the configurable reaches every graph below)."""

    runner: ToolRunner
    state: Any
    runtime: Runtime[Any] | None
    shape: Literal["list", "tool_calls"] = "tool_calls"
    """``list`` when the graph's state is a bare list of messages (a tool's Command then
    updates it with a list, as under ``ToolNode``)."""


def outer_of(config: RunnableConfig, runner: ToolRunner) -> Outer | None:
    """The `Outer` the tool gate put in ``config`` for ``runner``, if the node runs in that
    gate's subgraph (a graph a tool runs, a sub-agent, is not the gate's and gets none)."""
    outer = config.get(CONF, {}).get(OUTER)
    return outer if isinstance(outer, Outer) and outer.runner is runner else None


def _unknown_only(flag: ErrorHandling) -> Callable[[Exception], str]:
    """``handle_tool_errors`` for the failures Handrail does not classify: those the user's
    setting (``flag``) handles become an error message, as ``ToolNode`` makes it; anything
    else (every failure Handrail knows, and what the setting leaves) is raised on to Handrail."""
    types: tuple[type[Exception], ...]
    if isinstance(flag, type) and issubclass(flag, Exception):
        types = (flag,)
    elif isinstance(flag, tuple):
        types = flag
    elif callable(flag) and not isinstance(flag, type):
        types = _infer_handled_types(flag)
    else:
        types = (Exception,)

    def handle(e: Exception) -> str:
        if not flag or not isinstance(e, types) or classify(e).kind != "unknown":
            raise e
        content: str = _handle_tool_error(e, flag=flag)
        return content

    return handle


class _Node(ToolNode):
    """``ToolNode``, except that the idempotency key Handrail gives a tool that declares one
    reaches it: ``ToolNode`` strips every injected argument it does not fill itself. The
    model cannot forge the key: its arguments are what the tool's schema makes of them, which
    leaves injected arguments out."""

    def _inject_tool_args(
        self, tool_call: ToolCall, tool_runtime: ToolRuntime, tool: BaseTool | None = None
    ) -> ToolCall:
        injected = super()._inject_tool_args(tool_call, tool_runtime, tool)
        key = tool_call["args"].get(IDEMPOTENCY_KEY)
        if key is None:
            return injected
        return {**injected, "args": {**injected["args"], IDEMPOTENCY_KEY: key}}


_Given = tuple[ToolCall, Any, Literal["list", "tool_calls"]]
"""One call to run: the call, the state injected, and the shape of that state."""


class ToolRunner:
    """Runs one decided call through a private ``ToolNode`` of the gate's tools.

    The call goes through ``ToolNode``'s own step for one call (its wrapper-free ``_run_one``,
    awaited as ``_arun_one`` in an async graph), not through ``ToolNode.invoke``, which would
    start a thread pool for every call."""

    __slots__ = ("messages_key", "node", "one", "tools")

    def __init__(
        self,
        tools: Sequence[BaseTool],
        *,
        handle_tool_errors: ErrorHandling = _default_handle_tool_errors,
        messages_key: str = "messages",
    ) -> None:
        self.messages_key = messages_key
        """The state key of the messages (``ToolNode``'s ``messages_key``)."""
        self.node: ToolNode = _Node(
            tools,
            handle_tool_errors=_unknown_only(handle_tool_errors),
            messages_key=messages_key,
        )
        """The ``ToolNode`` the calls run in."""
        self.tools = list(self.node.tools_by_name.values())
        self.one = RunnableCallable(self._one, self._aone, name="tool", trace=False)
        """One call, as a runnable: `_Given` in, what ``ToolNode`` made of it out."""

    def run(self, call: ToolCall, state: Any, config: RunnableConfig) -> Invoke:
        """The effect that runs ``call`` (its decided arguments) with ``state`` injected.

        In the tool gate's subgraph the user's state and runtime (`outer_of`) are the ones
        injected, and the tool's stream writer is the user's graph's."""
        outer = outer_of(config, self)
        shape: Literal["list", "tool_calls"] = "tool_calls"
        conf = {k: v for k, v in config.get(CONF, {}).items() if k != OUTER}  # not for the tool
        if outer is not None:
            state, shape = outer.state, outer.shape
            if outer.runtime is not None:
                conf[CONFIG_KEY_RUNTIME] = outer.runtime
        config = {**config, CONF: conf}
        return Invoke(self.one, (call, state, shape), config)

    def _runtime(self, call: ToolCall, state: Any, config: RunnableConfig) -> ToolRuntime:
        """``ToolNode``'s `ToolRuntime` for ``call``, from the run's runtime in ``config``."""
        runtime = config.get(CONF, {}).get(CONFIG_KEY_RUNTIME)
        if not isinstance(runtime, Runtime):
            runtime = Runtime()
        return ToolRuntime(
            state=state,
            tool_call_id=call["id"],
            config=config,
            context=runtime.context,
            store=runtime.store,
            stream_writer=runtime.stream_writer,
            tools=self.tools,
            execution_info=runtime.execution_info,
            server_info=runtime.server_info,
        )

    def _one(self, given: _Given, config: RunnableConfig) -> Any:
        call, state, shape = given
        return self.node._run_one(call, shape, self._runtime(call, state, config))

    async def _aone(self, given: _Given, config: RunnableConfig) -> Any:
        call, state, shape = given
        return await self.node._arun_one(call, shape, self._runtime(call, state, config))

    def read(self, output: Any, call_id: str) -> tuple[ToolMessage | None, list[Command[Any]]]:
        """What ``ToolNode`` gave for one call: the ToolMessage answering it (None if the tool
        answered none, e.g. a ``Command`` for the parent graph), and the tool's Commands with
        that message taken out of their updates (the gate sends it with the call's record)."""
        key = self.messages_key
        outputs = output if isinstance(output, list) else [output]
        message: ToolMessage | None = None
        commands: list[Command[Any]] = []
        for item in outputs:
            if isinstance(item, list):  # a tool that returned several items
                found, more = self.read(item, call_id)
                message = message or found
                commands.extend(more)
            elif isinstance(item, Command):
                found, rest = _split(item, key, call_id)
                message = message or found
                if rest is not None:
                    commands.append(rest)
            elif isinstance(item, ToolMessage):  # answered from the execution ledger
                message = message or item
            elif isinstance(item, Mapping):
                for m in item.get(key, []):
                    if isinstance(m, ToolMessage) and m.tool_call_id == call_id and message is None:
                        message = m
        return message, commands


def _split(
    command: Command[Any], key: str, call_id: str
) -> tuple[ToolMessage | None, Command[Any] | None]:
    """``command``'s ToolMessage for ``call_id`` and the command without it (None when nothing
    else is left to do). A command for another graph keeps its messages."""
    update = command.update
    if command.graph is not None:
        return None, command
    if isinstance(update, list):  # a graph whose state is a list of messages
        messages, rest_of = update, None
    elif isinstance(update, Mapping):
        messages, rest_of = list(update.get(key, [])), update
    else:
        return None, command
    own = [m for m in messages if isinstance(m, ToolMessage) and m.tool_call_id == call_id]
    if not own:
        return None, command
    others = [m for m in messages if m is not own[-1]]
    rest: Any
    if rest_of is None:
        rest = others
    else:
        rest = {k: v for k, v in rest_of.items() if k != key}
        if others:
            rest[key] = others
    if not rest and command.goto in ((), None) and command.resume is None:
        return own[-1], None
    return own[-1], replace(command, update=rest)
