"""`load.py --fleet`: a fleet of agents making allowed calls at once, Handrail against plain
LangGraph (model node + ``ToolNode`` + ``tools_condition``), on one store per round."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from load_common import (
    BARRIER_TIMEOUT_S,
    Backend,
    Job,
    Mode,
    Shared,
    Tally,
    WorkerResult,
    close_quietly,
    config_for,
    make_model,
    open_saver,
    retried,
    timed,
)
from load_pool import Pool, pg_counters
from load_report import (
    EVENTS_ALLOWED,
    NOTES_KEPT,
    Phase,
    audit_check,
    percentile,
    print_info,
    ratio,
    read_executions,
)

import handrail

FLEET_MEMO = "fleet"
FLEET_POLICY_YAML = f"""
version: 1
default: deny
rules:
  - id: fleet-payments
    tools: [pay]
    roles: [ai-agent]
    when: "args.memo == '{FLEET_MEMO}'"
    effect: allow
tools:
  pay: {{idempotent: false}}
"""
"""Every fleet payment is allowed; ``pay`` is not idempotent, so each run is ledgered."""
FLEET_MODES: tuple[Mode, ...] = ("fleet-plain", "fleet-handrail")
PROMPT = "Pay carol's invoice."

Output = dict[str, Any]


def build_fleet_plain(pay: BaseTool, job: Job, stack: contextlib.ExitStack) -> Any:
    """Plain LangGraph: model node -> ``ToolNode`` (``tools_condition``) -> model."""
    bound = make_model(FLEET_MEMO).bind_tools([pay])

    def agent(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"], config)]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([pay]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    graph: CompiledStateGraph[Any, Any, Any, Any] = builder.compile(
        checkpointer=open_saver(job, stack)
    )
    return graph


def run_fleet(
    k: int, job: Job, shared: Shared, result: WorkerResult, run: Callable[[str], Output]
) -> None:
    """Worker ``k`` runs its threads one after another, each from the user's message to the
    model's "done" (one allowed tool call)."""
    tally = Tally(result)
    shared.barrier.wait(BARRIER_TIMEOUT_S)
    for i in range(job.first, job.first + job.threads):
        thread = f"w{k}-f{i:05d}"
        began = time.perf_counter()
        try:
            with timed(result, "run"):
                out = run(thread)
        except Exception as exc:
            tally.error(f"run {thread}", exc)
            continue
        tally.ok()
        result.approve_ms.append((time.perf_counter() - began) * 1e3)
        result.paused.append(thread)
        if out["messages"][-1].content != "done":
            tally.wrong(f"run {thread}", f"the run ended with {out['messages'][-1]!r}")


def run_fleet_plain(k: int, job: Job, shared: Shared, pay: BaseTool, result: WorkerResult) -> None:
    """Plain LangGraph's side of the fleet."""
    with contextlib.ExitStack() as stack:
        graph = retried(Tally(result), lambda: build_fleet_plain(pay, job, stack))

        def run(thread: str) -> Output:
            out: Output = graph.invoke({"messages": [HumanMessage(PROMPT)]}, config_for(thread))
            return out

        run_fleet(k, job, shared, result, run)


def run_fleet_handrail(
    k: int, job: Job, shared: Shared, pay: BaseTool, result: WorkerResult
) -> None:
    """Handrail's side of the fleet: ``build_agent`` with the ledger and the audit on."""
    policy = handrail.Policy.from_yaml(FLEET_POLICY_YAML)
    graph = retried(
        Tally(result),
        lambda: handrail.build_agent(
            make_model(FLEET_MEMO), [pay], policy, checkpointer=job.target, name="fleet_agent"
        ),
    )
    context = handrail.RunContext(actor=handrail.Actor(id=f"agent-{k}", roles=("ai-agent",)))

    def run(thread: str) -> Output:
        out: Output = graph.invoke(
            {"messages": [HumanMessage(PROMPT)]}, config_for(thread), context=context
        )
        return out

    try:
        run_fleet(k, job, shared, result, run)
    finally:
        close_quietly(graph.handrail_table, getattr(graph.checkpointer, "conn", None))


def ledger_check(backend: Backend, target: str, ran: set[str]) -> tuple[int, list[str]]:
    """Threads that ran whose ledger is not exactly one row with a ``succeeded`` outcome, and
    ledger rows of threads that never ran."""
    query = "SELECT thread_id, outcome FROM handrail_ledger"
    if backend == "sqlite":
        import sqlite3

        with contextlib.closing(sqlite3.connect(target)) as conn:
            rows = conn.execute(query).fetchall()
    else:
        import psycopg

        with psycopg.connect(target) as pg:
            rows = pg.execute(query).fetchall()
    outcomes: dict[str, list[str | None]] = {}
    for thread, outcome in rows:
        outcomes.setdefault(thread, []).append(outcome)
    wrong = [t for t in ran | set(outcomes) if outcomes.get(t) != ["succeeded"] or t not in ran]
    notes = [f"ledger of {t}: {outcomes.get(t)}" for t in sorted(wrong)[:NOTES_KEPT]]
    return len(wrong), [*notes, f"ledger rows: {len(rows)}"]


def run_fleet_phase(
    pool: Pool,
    mode: Mode,
    backend: Backend,
    store: Callable[[str], str],
    tmp: Path,
    rounds: tuple[int, int, int],
    opts: argparse.Namespace,
) -> Phase:
    """One round of one side of the fleet on a fresh store: ``rounds`` is (round, first thread,
    threads per worker)."""
    number, first, threads = rounds
    target = store(f"{mode.replace('-', '_')}{number}")
    log_dir = tmp / f"{mode}{number}-runs"
    plan = (first, threads, 0)
    began, results, counters = pool.round(
        mode, backend, target, log_dir, plan, opts.timeout, opts.seed
    )
    runs = read_executions(log_dir)
    per_call = Counter((thread, call) for thread, call, _ in runs)
    ran = {thread for thread, _, _ in runs}
    returned = {t for r in results for t in r.paused}
    phase = Phase(
        mode=mode,
        workers=opts.workers,
        threads=len(returned),
        wall_s=max(r.ended for r in results) - began,
        executions=len(runs),
        latencies=[ms for r in results for ms in r.approve_ms],
        double=sum(1 for n in per_call.values() if n > 1),
        lost=len(returned - ran),
        locked=sum(r.locked for r in results),
        other=sum(r.other for r in results),
        errors=sum((r.errors for r in results), Counter()),
        tracebacks=[t for r in results for t in r.tracebacks],
        notes=[f"worker {r.worker} {r.failed}" for r in results if r.failed],
    )
    for r in results:
        for op, seconds in r.spent.items():
            phase.spent[op] += seconds
        phase.calls += r.calls
    if counters is not None:
        time.sleep(0.5)  # the workers' server processes report their statistics as they exit
        phase.pg = [b - a for a, b in zip(counters, pg_counters(target), strict=True)]
    if mode == "fleet-handrail":
        phase.forks, phase.gaps, notes = audit_check(target, ran, set(), EVENTS_ALLOWED)
        phase.ledger, ledger_notes = ledger_check(backend, target, ran)
        phase.notes += notes + ledger_notes
    return phase


def print_fleet(backend: Backend, phases: dict[Mode, Phase], threads: int, opts: Any) -> None:
    """The fleet's table for one backend, its ratios and what else it found."""
    print(
        f"\n{backend} fleet: {opts.workers} worker process{'es' if opts.workers != 1 else ''} x "
        f"{threads:,} threads, one store per round, {opts.rounds} round(s) per side in ABBA "
        "order; user -> model -> allowed non-idempotent tool (ledger, audit) -> model"
    )
    print(
        f"{'side':<14} {'threads':>7} {'calls/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'double':>6} "
        f"{'missing':>7} {'forks':>5} {'gaps':>5} {'ledger':>6} {'locked':>6} {'other':>5} "
        f"{'wall s':>7}"
    )
    for mode, p in phases.items():
        forks, gaps, ledger = ("-" if v is None else str(v) for v in (p.forks, p.gaps, p.ledger))
        print(
            f"{mode:<14} {p.threads:>7} {p.calls_per_s:>8.1f} "
            f"{percentile(p.latencies, 50):>7.2f} {percentile(p.latencies, 95):>7.2f} "
            f"{p.double:>6} {p.lost:>7} {forks:>5} {gaps:>5} {ledger:>6} {p.locked:>6} "
            f"{p.other:>5} {p.wall_s:>7.2f}"
        )
    plain, hr = phases["fleet-plain"], phases["fleet-handrail"]
    p50, p95 = (
        ratio(percentile(hr.latencies, n), percentile(plain.latencies, n)) for n in (50, 95)
    )
    print(
        f"fleet ratio handrail/plain: throughput {ratio(hr.calls_per_s, plain.calls_per_s):.2f}, "
        f"p50 per call {p50:.2f}, p95 per call {p95:.2f}"
    )
    print_info(phases)
