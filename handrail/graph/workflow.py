"""`build_workflow`: a fixed sequence of tool steps, no model, through Handrail's gate.

For work where an autonomous agent is the wrong tool (a compliance change, a payout run), the
steps and their order are fixed in code. Each step is still a tool call that passes the same
nodes as an agent's: the policy decides it, an ``ask`` stops the run for a human before the step
runs, failures are retried or escalated, side effects go through the execution ledger, and every
step is logged and audited.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from langchain_core.messages import AIMessage
from langchain_core.tools import BaseTool
from langgraph.graph import START, StateGraph

from handrail.auth import Directory, JwtAuthenticator, Trust
from handrail.context import RunContext
from handrail.errors import HandrailError
from handrail.graph._wiring import add_gate, gate_parts
from handrail.guard import HandrailGraph
from handrail.nodes._gate import Gate, call_id, turn_calls
from handrail.policies import Policy
from handrail.policies.lint import LintMode
from handrail.state import AgentState
from handrail.storage import store_for
from handrail.storage.checkpointer import Checkpointer, open_checkpointer
from handrail.tools.breaker import CircuitBreaker

__all__ = ["Step", "WorkflowState", "build_workflow"]

Args = Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""A step's arguments: fixed, or made from the run's state (``inputs`` and earlier ``results``)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a workflow: a tool and its arguments.

    ``args`` is a mapping, or a function of the run's state that returns one; it sees
    ``state["inputs"]`` (what the run was started with) and ``state["results"]`` (each earlier
    step's result by step name). ``name`` defaults to the tool's name and must be unique.
    """

    tool: BaseTool
    args: Args = field(default_factory=dict)
    name: str = ""

    @property
    def id(self) -> str:
        """The step's name in ``results``."""
        return self.name or self.tool.name


def _merge(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    return {**(left or {}), **(right or {})}


class WorkflowState(AgentState, total=False):
    """State of a workflow run: the agent's keys, plus the run's own.

    ``messages`` holds one AIMessage per step (its tool call) and the step's ToolMessage, and
    ``calls`` each step's `ToolCallRecord`, as in an agent.
    """

    inputs: dict[str, Any]
    """What the run was started with."""
    results: Annotated[dict[str, Any], _merge]
    """Each finished step's result by step name: a JSON object or array (what a tool that
    returns a dict or a list gives) decoded, any other answer as its text."""
    status: Literal["completed", "stopped"]
    """``completed`` when every step succeeded; ``stopped`` when one did not."""
    stopped_at: str
    """The step that stopped the run (denied, rejected, failed, skipped or aborted)."""
    reason: str
    """Why it stopped: the step's answer (the denial, the rejection, the failure)."""


def build_workflow(
    steps: Sequence[Step | BaseTool],
    policy: Policy,
    *,
    checkpointer: Checkpointer = None,
    db: str | Path | None = None,
    name: str = "handrail_workflow",
    circuit_breaker: CircuitBreaker | None = None,
    audit: bool = True,
    directory: Directory | None = None,
    authenticator: JwtAuthenticator | None = None,
    lint: LintMode = "warn",
) -> HandrailGraph:
    """A graph that runs ``steps`` in order, each through the policy, with no model.

    Start it with ``graph.invoke({"inputs": {...}}, config, context=RunContext(actor=...))``;
    use one thread ID per run. A step the policy asks about pauses the run (``interrupt()``)
    before it runs, and is decided like an agent's call: ``Command(resume=...)``, an `Inbox`,
    or ``handrail approve``. A step goes on to the next only when it succeeded; a denied,
    rejected, failed, skipped or aborted step stops the run with ``status="stopped"``, and no
    later step runs. ``checkpointer``, ``db``, ``circuit_breaker``, ``audit``, ``directory``,
    ``authenticator`` and ``lint`` are as for `build_agent`; the nodes are ``steps`` (the next
    step's call), ``policy_check``, ``approval``, ``execute`` and ``classify_error``.
    """
    plan = [s if isinstance(s, Step) else Step(s) for s in steps]
    if not plan:
        raise HandrailError("a workflow needs at least one step")
    ids = [s.id for s in plan]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise HandrailError(f"step names must be unique; used twice: {twice}")
    tools = list({id(s.tool): s.tool for s in plan}.values())  # the Gate refuses a name twice
    saver = open_checkpointer(checkpointer)
    parts = gate_parts(
        store_for(saver, db),
        tools,
        policy,
        name=name,
        circuit_breaker=circuit_breaker,
        audit=audit,
        trust=Trust(directory=directory, authenticator=authenticator),
        lint=lint,
        done="steps",
        keeps_sources=True,  # AgentState's provenance
    )
    builder = StateGraph(WorkflowState, context_schema=RunContext)
    steps_node: Any = _make_steps_node(plan, parts.gate)
    builder.add_node("steps", steps_node)
    builder.add_edge(START, "steps")
    add_gate(builder, parts, name, after="steps")
    compiled = builder.compile(checkpointer=saver, name=name)
    return HandrailGraph.around(compiled, parts.gate, parts.table)


def _make_steps_node(
    plan: Sequence[Step], gate: Gate
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """The node that takes the last step's result and issues the next step's tool call."""
    by_call = {_call_id(i, s): s for i, s in enumerate(plan)}

    def steps(state: Mapping[str, Any]) -> dict[str, Any]:
        if state.get("status"):
            return {}  # a finished run: nothing more to do on this thread
        results = dict(state.get("results") or {})
        update: dict[str, Any] = {}
        for call in turn_calls(state.get("messages") or []):
            step = by_call.get(call_id(call))
            record = gate.records(state).get(call_id(call))
            if step is None or record is None:
                continue
            if record.status != "succeeded":
                return {"status": "stopped", "stopped_at": step.id, "reason": record.result or ""}
            results[step.id] = _value(record.result or "")
            update["results"] = {step.id: results[step.id]}
        index = len(results)
        if index == len(plan):
            return {**update, "status": "completed"}
        step = plan[index]
        try:
            args = step.args({**state, "results": results}) if callable(step.args) else step.args
        except Exception as exc:
            raise HandrailError(
                f"the arguments of step {step.id!r} could not be made: {exc!r}"
            ) from exc
        call = {"name": step.tool.name, "args": dict(args), "id": _call_id(index, step)}
        return {**update, "messages": [AIMessage("", tool_calls=[call])]}

    return steps


def _call_id(index: int, step: Step) -> str:
    return f"step_{index}_{step.id}"


def _value(text: str) -> Any:
    """A step's result: a JSON object or array decoded, anything else as the text."""
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text
