"""`ToolGate`: the node `handrail.build_tool_gate` puts where ``ToolNode`` was.

It takes ``ToolNode``'s inputs (your graph's state with its ``messages_key``, a list of messages,
``Send`` payloads: a ``ToolCallWithContext`` or a list of tool calls) and gives ``ToolNode``'s
outputs (the ToolMessages, the Commands tools returned), plus each call's `ToolCallRecord`
under its ``key``.

The allowed path is one node, as with ``ToolNode``: when every call of the turn is allowed (and
none has a record yet) the calls are decided and run in the gate's own step (the ``execute``
node's work, `execute_turn`). Only a turn with an asked, denied or invalid call, or a failure,
enters the gate's subgraph (``policy_check`` → ``approval`` → ``execute`` → ``classify_error``),
invoked from this node, so it pauses and resumes as a subgraph does. On a resume the node runs
again from its start (LangGraph re-runs a node that paused): if the subgraph was entered, it is
entered again and goes on from its checkpoint; a call already run is never run again on the fast
path (the execution ledger answers it).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from langchain_core.messages import AIMessage, AnyMessage, ToolCall
from langchain_core.runnables import RunnableConfig
from langgraph._internal._constants import (
    CONF,
    CONFIG_KEY_CHECKPOINT_NS,
    CONFIG_KEY_CHECKPOINTER,
    CONFIG_KEY_RESUMING,
    CONFIG_KEY_SCRATCHPAD,
)
from langgraph._internal._runnable import RunnableCallable
from langgraph._internal._scratchpad import PregelScratchpad
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Send

from handrail.context import RunContext, thread_id_of
from handrail.errors import HandrailError
from handrail.nodes._effects import Invoke, Script, arun, run
from handrail.nodes._gate import Gate, call_id, turn_calls
from handrail.nodes._tools import OUTER, Outer, ToolRunner
from handrail.nodes.execute import Turn, execute_turn
from handrail.state import ToolCallRecord
from handrail.storage.approvals import ApprovalTable
from handrail.storage.ledger import Ledger

if TYPE_CHECKING:
    from handrail.guard import HandrailGraph

__all__ = ["COMMANDS", "ToolGate"]

COMMANDS = "handrail_commands"
"""The subgraph's state key for the Commands tools returned, which the gate hands your graph."""


class ToolGate(RunnableCallable):
    """Handrail's gate as one node of your graph, in place of ``ToolNode``.

    Add it with ``builder.add_node("tools", gate)``; `guard` your compiled graph so a resume
    is checked and claimed before LangGraph stores it (and an `Inbox` can resume its threads).
    """

    def __init__(
        self,
        *,
        gate: Gate,
        ledger: Ledger | None,
        runner: ToolRunner,
        subgraph: CompiledStateGraph[Any, Any, Any, Any],
        table: ApprovalTable | None,
        name: str,
    ) -> None:
        logic = _Logic(gate, ledger, runner)

        def tool_gate(state: Any, config: RunnableConfig, runtime: Runtime[RunContext]) -> Any:
            return run(logic.script(subgraph, state, config, runtime))

        async def atool_gate(
            state: Any, config: RunnableConfig, runtime: Runtime[RunContext]
        ) -> Any:
            return await arun(logic.script(subgraph, state, config, runtime))

        super().__init__(tool_gate, atool_gate, name=name, trace=False)
        self.handrail_gate = gate
        """The tools and policy the gate decides calls with."""
        self.handrail_table = table
        """The approvals table beside the checkpoints (None without a database)."""
        self.subgraph = subgraph
        """The subgraph an asked, denied or failed call goes through (``get_graph`` draws it)."""

    def guard(self, graph: CompiledStateGraph[Any, Any, Any, Any]) -> HandrailGraph:
        """Your compiled ``graph`` that holds this gate, as a `handrail.HandrailGraph`: a resume
        is checked (and claimed) before LangGraph stores it, and an `Inbox` can resume its
        threads (``Inbox(db, graph=gate.guard(graph))``)."""
        from handrail.guard import HandrailGraph  # the guard imports the nodes

        return HandrailGraph.around(graph, self.handrail_gate, self.handrail_table)


@dataclass(frozen=True, slots=True)
class _Logic:
    """One turn of the gate, written once for the sync and the async driver."""

    gate: Gate
    ledger: Ledger | None
    runner: ToolRunner

    def script(
        self,
        subgraph: CompiledStateGraph[Any, Any, Any, Any],
        input: Any,
        config: RunnableConfig,
        runtime: Runtime[RunContext],
    ) -> Script[Any]:
        """The turn: its calls run here when all are allowed, else in ``subgraph``."""
        gate, key = self.gate, self.gate.key
        state, shape = _state_of(input, self.runner.node, config)
        messages, restrict = self._messages(input, state)
        view: dict[str, Any] = {"messages": messages, key: _field(state, key) or {}, COMMANDS: []}
        outer = Outer(self.runner, state, runtime, "list" if shape == "list" else "tool_calls")
        config = {**config, CONF: {**config.get(CONF, {}), OUTER: outer}}
        if not messages:
            raise HandrailError(
                f"the tool gate found no messages under {self.runner.messages_key!r} in its "
                "input (its messages_key)"
            )
        calls = turn_calls(messages)
        if not calls:
            return self._output({}, [], [], shape, restrict)
        if not self._entered(config) and self._allowed(calls, view, config, runtime):
            turn: Turn = yield from execute_turn(
                gate, self.ledger, self.runner, view, _counted(config, start=1), runtime
            )
            if turn.goto == END:
                return self._output(turn.records, turn.messages, turn.commands, shape, restrict)
            view = {
                "messages": [*messages, *turn.messages],
                key: {**view[key], **turn.records},
                COMMANDS: turn.commands,
            }
        final: dict[str, Any] = yield Invoke(subgraph, view, _counted(config, start=0))
        ids = {call_id(c) for c in calls}
        records = {i: r for i, r in (final.get(key) or {}).items() if i in ids}
        new = _new(messages, final.get("messages", []))
        return self._output(records, new, list(final.get(COMMANDS) or []), shape, restrict)

    def _messages(self, input: Any, state: Any) -> tuple[list[AnyMessage], set[str] | None]:
        """The state's messages, with the turn narrowed to the calls a ``Send`` payload gives
        (and those calls' ids; None when the whole turn is the gate's)."""
        found = state if isinstance(state, list) else _field(state, self.runner.messages_key)
        messages = list(found or [])
        sent = _sent_calls(input)
        if sent is None:
            return messages, None
        ids = {call_id(c) for c in sent}
        for i in range(len(messages) - 1, -1, -1):
            message = messages[i]
            if isinstance(message, AIMessage):
                mine = [c for c in message.tool_calls if call_id(c) in ids]
                messages[i] = message.model_copy(update={"tool_calls": mine or list(sent)})
                break
        else:
            messages.append(AIMessage(content="", tool_calls=list(sent)))
        return messages, ids

    def _entered(self, config: RunnableConfig) -> bool:
        """On a resume: whether this node's earlier run entered the subgraph (it has a
        checkpoint in the node's namespace), so the turn goes on there."""
        conf = config.get(CONF, {})
        if not conf.get(CONFIG_KEY_RESUMING):
            return False
        saver = conf.get(CONFIG_KEY_CHECKPOINTER)
        thread = thread_id_of(config)
        if not isinstance(saver, BaseCheckpointSaver) or thread is None:
            return False
        at = {CONF: {"thread_id": thread, "checkpoint_ns": conf.get(CONFIG_KEY_CHECKPOINT_NS, "")}}
        saved = saver.get_tuple(cast(RunnableConfig, at))
        # the subgraph's own checkpoint, not one of a graph a tool ran on the allowed path (it
        # shares the node's namespace): the subgraph's input always writes `COMMANDS`
        return saved is not None and COMMANDS in saved.checkpoint["channel_versions"]

    def _allowed(
        self,
        calls: Sequence[ToolCall],
        view: Mapping[str, Any],
        config: RunnableConfig,
        runtime: Runtime[RunContext],
    ) -> bool:
        """Every call of the turn is new and allowed (its check kept for `execute_turn`)."""
        records: Mapping[str, ToolCallRecord] = view[self.gate.key]
        if any(call_id(c) in records for c in calls):
            return False
        actor = self.gate.requester(runtime, config)
        thread = thread_id_of(config)
        seen = self.gate.seen(view, thread)
        return all(self.gate.check_ahead(c, actor, thread, seen).status == "checked" for c in calls)

    def _output(
        self,
        records: dict[str, ToolCallRecord],
        messages: Sequence[AnyMessage],
        commands: list[Command[Any]],
        shape: str,
        restrict: set[str] | None,
    ) -> Any:
        """``ToolNode``'s output for the turn, with the calls' records under the gate's key."""
        if restrict is not None:
            records = {i: r for i, r in records.items() if i in restrict}
        if shape == "list":
            update: Any = list(messages)
        else:
            update = {self.runner.messages_key: list(messages)}
            if records:
                update[self.gate.key] = records
        return [update, *_combined(commands)] if commands else update


def _counted(config: RunnableConfig, *, start: int) -> RunnableConfig:
    """``config`` with the node's count of the graphs it invokes fixed: the gate's subgraph is
    always the node's graph 0 (its namespace is the node's own, where `_entered` and
    ``get_state(subgraphs=True)`` look), and graphs the tools of the allowed path run count from
    1, whatever they and the subgraph did before (LangGraph numbers a node's graphs in the order
    they start)."""
    conf = config.get(CONF, {})
    scratchpad = conf.get(CONFIG_KEY_SCRATCHPAD)
    if not isinstance(scratchpad, PregelScratchpad):
        return config
    counter = (lambda: 0) if start == 0 else itertools.count(start).__next__
    counted = replace(scratchpad, subgraph_counter=counter)
    return {**config, CONF: {**conf, CONFIG_KEY_SCRATCHPAD: counted}}


def _new(before: Sequence[AnyMessage], after: Sequence[AnyMessage]) -> list[AnyMessage]:
    """The messages the subgraph added to ``before``: by id when every message had one (the
    subgraph's ``add_messages`` gives ids to those without); else by position, the subgraph
    only ever appending to its input (a state whose reducer keeps no ids)."""
    if all(m.id for m in before):
        known = {m.id for m in before}
        return [m for m in after if m.id not in known]
    return list(after[len(before) :])


def _combined(commands: list[Command[Any]]) -> list[Command[Any]]:
    """The tools' Commands as ``ToolNode`` gives them: those for the parent graph that only
    ``Send`` are combined into one, after the others (LangGraph applies one parent command)."""
    sends: list[Send] = []
    rest: list[Command[Any]] = []
    for command in commands:
        goto = command.goto
        only_sends = isinstance(goto, list) and all(isinstance(g, Send) for g in goto)
        if command.graph == Command.PARENT and isinstance(goto, list) and only_sends:
            sends.extend(goto)
        else:
            rest.append(command)
    return [*rest, Command(graph=Command.PARENT, goto=sends)] if sends else rest


def _state_of(input: Any, node: Any, config: RunnableConfig) -> tuple[Any, str]:
    """The graph state the turn is in (for a ``Send`` payload: the state it carries, or the
    graph's channels), and ``ToolNode``'s shape of the input (``list``, ``dict``, ...)."""
    if isinstance(input, dict) and input.get("__type") == "tool_call_with_context":
        return input["state"], "dict"
    if _is_call_list(input):
        return node._extract_state(input, config), "dict"
    if isinstance(input, list):
        return input, "list"
    if isinstance(input, Mapping) or hasattr(input, "__dict__"):
        return input, "dict"
    raise HandrailError(
        f"the tool gate takes a state with messages, a list of messages, or a Send of tool "
        f"calls, not {type(input).__name__}"
    )


def _sent_calls(input: Any) -> list[ToolCall] | None:
    """The calls a ``Send`` payload gives the gate (None for a state: the whole turn)."""
    if isinstance(input, dict) and input.get("__type") == "tool_call_with_context":
        return [input["tool_call"]]
    if _is_call_list(input):
        return list(input)
    return None


def _is_call_list(input: Any) -> bool:
    return (
        isinstance(input, list)
        and bool(input)
        and isinstance(input[-1], dict)
        and input[-1].get("type") == "tool_call"
    )


def _field(state: Any, name: str) -> Any:
    """A key of a dict state, or an attribute of a pydantic or dataclass state."""
    if isinstance(state, Mapping):
        return state.get(name)
    return getattr(state, name, None)
