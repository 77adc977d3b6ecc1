"""What every builder shares: Handrail's tables beside the checkpoints, and the gate's nodes.

`build_agent`, `build_tool_gate` and `build_workflow` differ only in what comes before the gate
(a model, the user's graph, a fixed list of steps) and where a finished turn goes; the policy
check, the approval, the execution and the classification of failures are the same nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph

from handrail.audit import AuditLog
from handrail.auth import Trust
from handrail.events import Recorder
from handrail.nodes._gate import Gate
from handrail.nodes._limits import GateLimits
from handrail.nodes._provenance import GateSources
from handrail.nodes._tools import ToolRunner
from handrail.nodes.approval import make_approval_node
from handrail.nodes.classify_error import make_classify_error_node
from handrail.nodes.execute import make_execute_node
from handrail.nodes.policy_check import (
    make_policy_check_node,
    make_route_from_agent,
    make_route_turn,
)
from handrail.policies import Policy
from handrail.policies.lint import LintMode, enforce
from handrail.storage import Store
from handrail.storage.approvals import ApprovalTable
from handrail.storage.ledger import Ledger
from handrail.storage.limits import LimitTable
from handrail.storage.proofs import ProofTable
from handrail.storage.requesters import RequesterTable
from handrail.tools.breaker import CircuitBreaker


@dataclass(frozen=True, slots=True)
class GateParts:
    """A gate and the tables its nodes keep beside the checkpoints (None without a database)."""

    gate: Gate
    table: ApprovalTable | None
    ledger: Ledger | None
    runner: ToolRunner
    trail: AuditLog | None
    """The audit table the gate's events are recorded in."""


def gate_parts(
    store: Store | None,
    tools: Sequence[BaseTool],
    policy: Policy,
    *,
    name: str,
    circuit_breaker: CircuitBreaker | None,
    audit: bool,
    trust: Trust,
    key: str = "calls",
    done: str = "agent",
    runner: ToolRunner | None = None,
    lint: LintMode = "off",
    keeps_sources: bool = False,
) -> GateParts:
    """The gate for ``tools`` under ``policy``, with the approvals table, the execution ledger
    and the audit table on ``store`` (none without one; `handrail.storage.store_for` finds a
    saver's): the builders' and `HandrailMiddleware`'s.

    ``lint``: what to do with `Policy.lint`'s findings about ``policy`` against ``tools`` and
    the trust's directory (`handrail.policies.lint.enforce`).

    Every table writes through ``store``: a `SqliteSaver`'s connection and lock (so writers in
    one process queue on a lock instead of SQLite's busy handler), read through a connection of
    the store's own; on PostgreSQL, the process's pool.
    """
    enforce(policy, tools=tools, directory=trust.directory, mode=lint)
    table = ApprovalTable(store) if store is not None else None
    trail = AuditLog(store) if store is not None and audit else None
    gate = Gate(
        tools,
        policy,
        circuit_breaker,
        Recorder(policy, name, trail),
        store.secret("args_hash") if store is not None else b"",
        key=key,
        done=done,
        trust=trust,
        proofs=ProofTable(store) if store is not None else None,
        limits=GateLimits(policy, LimitTable(store)) if store is not None else None,
        sources=GateSources(policy, keep=keeps_sources),
        requesters=None if store is None else RequesterTable(store),
    )
    ledger = Ledger(store) if store is not None else None
    return GateParts(gate, table, ledger, runner or ToolRunner(tools), trail)


def add_gate(
    builder: StateGraph[Any, Any, Any, Any],
    parts: GateParts,
    name: str,
    after: str,
    *,
    carry: str | None = None,
) -> None:
    """Add ``policy_check``, ``approval``, ``execute`` and ``classify_error`` to ``builder``,
    entered from ``after`` (a node, or START): its calls go straight to ``execute`` when all are
    allowed, else to ``policy_check``; with no calls, to END. ``carry``: the state key where
    ``execute`` keeps the Commands tools return (the tool gate's subgraph)."""
    gate = parts.gate
    turn = tuple(dict.fromkeys(("classify_error", "approval", "execute", gate.done)))
    # Node factories return typed callables; LangGraph's add_node overloads want protocols.
    approval: Any = make_approval_node(gate, parts.table, name, parts.ledger)
    policy_check: Any = make_policy_check_node(gate)
    builder.add_node("policy_check", policy_check)
    builder.add_node("approval", approval, destinations=tuple(dict.fromkeys((*turn, END))))
    builder.add_node(
        "execute",
        make_execute_node(gate, parts.ledger, parts.runner, carry=carry),
        destinations=(*turn, "policy_check"),
    )
    builder.add_node("classify_error", make_classify_error_node(gate), destinations=turn)
    builder.add_conditional_edges(
        after, make_route_from_agent(gate, entered=after == START), ["execute", "policy_check", END]
    )
    builder.add_conditional_edges("policy_check", make_route_turn(gate), list(turn))
