"""Gate overhead: Handrail's allowed path versus a plain LangGraph tool loop, and `Policy.decide`.

1. Graph: K threads (one user message -> one tool call -> "done") through
   ``handrail.build_agent`` and through a plain ``StateGraph(MessagesState)`` with a model node,
   ``ToolNode`` and ``tools_condition``. Same `ScriptedChatModel`, same ``add`` tool, each variant
   on a fresh SQLite file opened by ``handrail.graph.open_checkpointer`` (WAL, same settings),
   default durability. Both are warmed up, then timed per ``invoke`` in alternating rounds.
   Target: median(handrail) / median(plain) <= 1.05. ``add`` is not marked idempotent, so the
   Handrail run writes the execution ledger (intent and outcome) for every call; a third variant,
   ``hr-idem``, marks it ``idempotent: true`` (no ledger) to show what the ledger costs, and a
   fourth, ``hr-gate``, is the plain graph with ``build_tool_gate`` in place of ``ToolNode``,
   with the same target; a fifth, ``hr-limit``, is ``handrail`` with a count limit on ``add``
   (its use reserved in the store for every call). Target: it adds <= 0.2 ms per call.
2. ``Policy.decide`` with 100 rules: (a) 5 rules on each of 20 tools, (b) all 100 on one tool,
   each call with a new amount, so nothing decided before is reused. Target: median <= 10 µs for
   both. (c) and (d) are (a) and (b) deciding one call again and again (as the routing, the
   policy node and ``execute`` decide each call, from the policy's kept decisions): for
   information.

Run: ``python benchmarks/gate_overhead.py [--calls N] [--quick] [--check]``. Prints a table and
one PASS/FAIL line per target; exits 1 on a miss only with ``--check``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

import handrail
from handrail.graph import open_checkpointer
from handrail.testing import ScriptedChatModel

RATIO_TARGET = 1.05
DECIDE_TARGET_US = 10.0
ROUNDS = 5
DURABILITY = "async"  # LangGraph's default; invoke() is called without durability=
ACTOR = handrail.Actor(id="bench", roles=("ai-agent",))
POLICY_YAML = """
rules:
  - id: allow-add
    tools: [add]
    roles: [ai-agent]
    when: "args.a >= 0"
    effect: allow
"""
IDEMPOTENT_YAML = POLICY_YAML + "tools: {add: {idempotent: true}}\n"
LIMIT_YAML = POLICY_YAML + (
    "limits:\n  - {id: adds, tools: [add], per: actor, window: 24h, max: 1000000000, then: deny}\n"
)
LIMIT_TARGET_MS = 0.2


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def make_model() -> ScriptedChatModel:
    call = {"name": "add", "args": {"a": 2, "b": 3}, "id": None}
    return ScriptedChatModel([AIMessage("", tool_calls=[call]), AIMessage("done")])


def build_plain(tools: list[BaseTool], path: Path, gate_yaml: str | None = None) -> Any:
    """The plain tool loop; with ``gate_yaml``, Handrail's tool gate in place of ``ToolNode``."""
    bound = make_model().bind_tools(tools)

    def model(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"], config)]}

    saver = open_checkpointer(path)
    builder = StateGraph(handrail.ToolGateState if gate_yaml else MessagesState)
    builder.add_node("model", model)
    tools_node = (
        handrail.build_tool_gate(tools, handrail.Policy.from_yaml(gate_yaml), db=saver)
        if gate_yaml
        else ToolNode(tools)
    )
    builder.add_node("tools", tools_node)
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition)
    builder.add_edge("tools", "model")
    return builder.compile(checkpointer=saver)


Runner = Callable[[str], float]


def runner(graph: Any, prefix: str, **kwargs: Any) -> Runner:
    """Run one thread; return its wall time in ms (checking it ended with "done")."""

    def run(thread: str) -> float:
        config = {"configurable": {"thread_id": f"{prefix}-{thread}"}}
        start = time.perf_counter()
        out = graph.invoke({"messages": [HumanMessage("add 2 and 3")]}, config, **kwargs)
        elapsed = (time.perf_counter() - start) * 1e3
        assert out["messages"][-1].content == "done" and out["messages"][-2].content == "5"
        assert all(r.rule_id == "allow-add" for r in out.get("calls", {}).values())
        return elapsed

    return run


def graph_runners(tmp: Path) -> dict[str, Runner]:
    tools: list[BaseTool] = [add]
    context = handrail.RunContext(actor=ACTOR)

    def hr(policy: str, file: str) -> Any:
        return handrail.build_agent(
            make_model(), tools, handrail.Policy.from_yaml(policy), checkpointer=tmp / file
        )

    return {
        "plain": runner(build_plain(tools, tmp / "plain.sqlite"), "p"),
        "handrail": runner(hr(POLICY_YAML, "handrail.sqlite"), "h", context=context),
        "hr-idem": runner(hr(IDEMPOTENT_YAML, "idem.sqlite"), "i", context=context),
        "hr-limit": runner(hr(LIMIT_YAML, "limit.sqlite"), "l", context=context),
        "hr-gate": runner(
            build_plain(tools, tmp / "gate.sqlite", POLICY_YAML), "g", context=context
        ),
    }


def bench_graphs(
    calls: int, warmup: int, make_runners: Callable[[Path], dict[str, Runner]] | None = None
) -> dict[str, list[float]]:
    """Warm each variant up, then time ``calls`` threads per variant in alternating rounds."""
    with tempfile.TemporaryDirectory() as tmpdir:
        runs = (make_runners or graph_runners)(Path(tmpdir))
        times: dict[str, list[float]] = {name: [] for name in runs}
        for run in runs.values():
            for i in range(warmup):
                run(f"warm{i}")
        for r in range(ROUNDS):
            size = calls // ROUNDS + (r < calls % ROUNDS)
            for name in list(runs) if r % 2 == 0 else list(reversed(runs)):
                gc.collect()
                times[name] += [runs[name](f"{r}-{i}") for i in range(size)]
    return times


def decide_policy(worst: bool) -> handrail.Policy:
    """100 rules: 5 per tool over 20 tools, or (worst) all 100 on one tool."""
    shapes: list[tuple[str, str, dict[str, Any]]] = [
        ("allow", "args.amount < 1000 && args.region != 'xx'", {}),
        ("ask", "args.amount >= 1000 && args.amount < 10000", {"approvers": ["admin"]}),
        ("deny", "args.amount >= 10000", {}),
        ("allow", "args.region in ['eu', 'us'] && size(args.note) < 200", {}),
        ("deny", "args.region == 'xx'", {}),
    ]
    rules = []
    for n in range(100):
        effect, when, extra = shapes[n % 5]
        roles = ["admin"] if n % 5 == 3 and n % 2 else ["ai-agent", "operator"]
        name = "tool0" if worst else f"tool{n // 5}"
        rules.append(
            {"id": f"r{n}", "tools": [name], "roles": roles, "when": when, "effect": effect} | extra
        )
    return handrail.Policy.from_data({"rules": rules})


def bench_decide(
    policy: handrail.Policy, tool_name: str, iterations: int, fresh: bool = False
) -> list[float]:
    """Time ``decide`` on one call; with ``fresh``, a different amount each call."""
    calls = [
        {"amount": 500 - (n % 400 if fresh else 0), "region": "eu", "note": "monthly invoice"}
        for n in range(iterations + 1000)
    ]
    if fresh:  # no amount seen before: more distinct amounts than the policy keeps
        calls = [{**c, "amount": c["amount"] - n / 1e4} for n, c in enumerate(calls)]
    decide = policy.decide
    assert decide(tool_name, calls[0], ACTOR).effect == "allow"
    for args in calls[:1000]:
        decide(tool_name, args, ACTOR)
    out: list[float] = []
    clock = time.perf_counter_ns
    for args in calls[1000:]:
        start = clock()
        decide(tool_name, args, ACTOR)
        out.append((clock() - start) / 1e3)
    return out


def graph_options(doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    """``--calls N``, ``--quick``, ``--check``: the options of the graph benchmarks."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--calls", type=int, default=300, help="tool calls (threads) per variant")
    parser.add_argument("--quick", action="store_true", help="small N, for a smoke test")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args(argv)


def verdict(results: list[tuple[str, bool]], check: bool) -> int:
    """Print a PASS/FAIL line per target; the exit status (1 on a miss only with ``check``)."""
    print()
    for text, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    return 1 if check and not all(ok for _, ok in results) else 0


def main(argv: list[str] | None = None) -> int:
    opts = graph_options(__doc__, argv)
    calls, warmup, iterations = (20, 5, 2000) if opts.quick else (opts.calls, 30, 20_000)

    times = bench_graphs(calls, warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["handrail"] / med["plain"]
    print(
        f"Graph: {len(times['plain'])} threads x 1 tool call per variant, {ROUNDS} "
        f"alternating rounds, warm-up {warmup}; SqliteSaver (WAL) via open_checkpointer; "
        f"durability={DURABILITY}"
    )
    print(f"{'variant':<10} {'median ms/call':>15} {'mean ms/call':>13} {'p90 ms':>8}")
    for name, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:<10} {med[name]:>15.3f} {statistics.fmean(values):>13.3f} {p90:>8.3f}")
    print(f"ratio handrail/plain (medians): {ratio:.3f}  (target <= {RATIO_TARGET})")
    print(
        f"ratio hr-idem/plain (no ledger): {med['hr-idem'] / med['plain']:.3f}; the ledger's "
        f"two commits cost {med['handrail'] - med['hr-idem']:.3f} ms per call"
    )
    gate = med["hr-gate"] / med["plain"]
    print(f"ratio hr-gate/plain (build_tool_gate in place of ToolNode): {gate:.3f}")
    limit = med["hr-limit"] - med["handrail"]
    print(f"a count limit on the call (hr-limit - handrail): {limit:+.3f} ms per call")

    print(f"\nPolicy.decide, 100 rules, {iterations} calls each (µs)")
    print(f"{'case':<38} {'median':>8} {'mean':>8} {'p99':>8}")
    decide_med: list[float] = []
    for label, worst, fresh in (
        ("(a) 20 tools x 5 rules, new calls", False, True),
        ("(b) 100 rules on one tool, new calls", True, True),
        ("(c) as (a), one call again", False, False),
        ("(d) as (b), one call again", True, False),
    ):
        tool_name = "tool0" if worst else "tool7"
        values = bench_decide(decide_policy(worst), tool_name, iterations, fresh)
        decide_med.append(statistics.median(values))
        p99 = statistics.quantiles(values, n=100)[-1]
        print(f"{label:<38} {decide_med[-1]:>8.2f} {statistics.fmean(values):>8.2f} {p99:>8.2f}")

    results = [
        (f"graph ratio {ratio:.3f} <= {RATIO_TARGET}", ratio <= RATIO_TARGET),
        (f"tool gate ratio {gate:.3f} <= {RATIO_TARGET}", gate <= RATIO_TARGET),
        (f"a limit adds {limit:.3f} ms <= {LIMIT_TARGET_MS}", limit <= LIMIT_TARGET_MS),
        (
            f"decide medians (a) {decide_med[0]:.2f} µs and (b) {decide_med[1]:.2f} µs "
            f"<= {DECIDE_TARGET_US:g}",
            max(decide_med[:2]) <= DECIDE_TARGET_US,
        ),
    ]
    status = verdict(results, opts.check)
    for i, case in enumerate("cd", 2):
        print(f"INFO: decide ({case}) median {decide_med[i]:.2f} µs (no target)")
    return status


if __name__ == "__main__":
    sys.exit(main())
