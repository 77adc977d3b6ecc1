"""`build_agent`: the policy-gated agent graph. Wiring only; the logic lives in `handrail.nodes`,
the resume checks in `handrail.guard`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langgraph.graph import START, StateGraph

from handrail.auth import Directory, JwtAuthenticator, Trust
from handrail.context import RunContext
from handrail.graph._wiring import add_gate, gate_parts
from handrail.guard import HandrailGraph
from handrail.nodes.agent import make_agent_node
from handrail.policies import Policy
from handrail.policies.lint import LintMode
from handrail.state import AgentState
from handrail.storage import store_for
from handrail.storage.checkpointer import Checkpointer, open_checkpointer
from handrail.tools.breaker import CircuitBreaker

__all__ = ["build_agent"]


def build_agent(
    model: BaseChatModel | Runnable[Any, Any],
    tools: Sequence[BaseTool],
    policy: Policy,
    *,
    checkpointer: Checkpointer = None,
    db: str | Path | None = None,
    system_prompt: str | None = None,
    name: str = "handrail_agent",
    circuit_breaker: CircuitBreaker | None = None,
    audit: bool = True,
    directory: Directory | None = None,
    authenticator: JwtAuthenticator | None = None,
    lint: LintMode = "warn",
) -> HandrailGraph:
    """A LangGraph agent whose every tool call passes ``policy`` before it runs.

    Nodes: ``agent`` (the model), ``policy_check``, ``approval`` (one ``interrupt()`` for all asked
    calls of a turn), ``execute`` and ``classify_error``. Calls the policy allows go from the model
    straight to ``execute``. Run it with ``context=RunContext(actor=...)``; ``checkpointer`` may be
    a saver, a SQLite file path or a ``postgresql://`` URL (needed to pause and resume). The same
    database holds the approvals table, the execution ledger and the audit (`handrail.storage`);
    with an ``AsyncSqliteSaver`` or ``AsyncPostgresSaver`` (for ``ainvoke``/``astream``) pass its
    path or URL as ``db``. Pass one ``circuit_breaker`` to
    several graphs to share it; by default each graph has its own, shared by its threads.

    The graph runs with ``invoke``/``stream`` and with ``ainvoke``/``astream``: async models and
    tools are awaited, and retry waits do not block the event loop.

    Every step of every call is an event (`handrail.events`) on the ``handrail`` logger and,
    with a database and ``audit`` on, a row of the hash-chained audit table there
    (`handrail.audit`).

    Who is who (`handrail.auth.Trust`): with a ``directory``, the run's actor and every approver
    must be in it and their roles are its roles (claims of other roles are refused); with an
    ``authenticator``, approvers prove who they are with a signed token
    (``{"approver": {"token": ...}}``); with neither, ids and roles are taken as claimed and
    the audit says so. Behind the LangGraph server's auth handler (`handrail.auth.server`) the
    authenticated user is the actor of a new thread and the approver of a resume. The actor of
    a thread's first run is its requester for good: a later run naming another is refused.

    ``lint``: the policy is linted against ``tools`` and ``directory`` here (`Policy.lint`):
    ``"warn"`` (the default) warns each finding (`PolicyWarning`: a rule naming a tool the graph
    lacks, an argument the tool does not take, a role nobody holds...), ``"error"`` refuses to
    build on an error-level finding (`PolicyError`), ``"off"`` skips it.
    """
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
        keeps_sources=True,  # AgentState's provenance
    )
    builder = StateGraph(AgentState, context_schema=RunContext)
    builder.add_node("agent", make_agent_node(model, tools, policy, system_prompt))
    builder.add_edge(START, "agent")
    add_gate(builder, parts, name, after="agent")
    compiled = builder.compile(checkpointer=saver, name=name)
    return HandrailGraph.around(compiled, parts.gate, parts.table)
