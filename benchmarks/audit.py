"""Audit cost: the same Handrail graph with the audit table on and off, against plain LangGraph.

K threads (one user message -> one allowed tool call -> "done") through ``handrail.build_agent``
with ``audit=True`` (every event of the call is a row of the hash-chained audit table: decided,
started, succeeded) and ``audit=False`` (events are still built and offered to the ``handrail``
logger, which has no handler), each on its own SQLite file, plus plain LangGraph (model node,
``ToolNode``) for reference. Two tool settings: ``add`` as it is (non-idempotent, so the execution
ledger writes too) and ``idempotent: true`` (no ledger). Alternating rounds after a warm-up, as in
``gate_overhead.py``. Also times ``AuditLog.append`` of three events on its own.

Target: median(audit on) / median(audit off) <= 1.10 per tool call, for both tool settings.

Run: ``python benchmarks/audit.py [--calls N] [--quick] [--check]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gate_overhead import (
    IDEMPOTENT_YAML,
    POLICY_YAML,
    ROUNDS,
    Runner,
    add,
    bench_graphs,
    build_plain,
    graph_options,
    runner,
    verdict,
)
from gate_overhead import make_model as scripted_model

import handrail
from handrail.audit import AuditLog
from handrail.events import ToolEvent

TARGET = 1.10
ACTOR = handrail.Actor(id="bench", roles=("ai-agent",))


def graph_runners(tmp: Path) -> dict[str, Runner]:
    context = handrail.RunContext(actor=ACTOR)

    def hr(policy: str, file: str, audit: bool) -> Any:
        return handrail.build_agent(
            scripted_model(),
            [add],
            handrail.Policy.from_yaml(policy),
            checkpointer=tmp / file,
            audit=audit,
        )

    return {
        "plain": runner(build_plain([add], tmp / "plain.sqlite"), "p"),
        "audit-off": runner(hr(POLICY_YAML, "off.sqlite", False), "f", context=context),
        "audit-on": runner(hr(POLICY_YAML, "on.sqlite", True), "n", context=context),
        "idem-off": runner(hr(IDEMPOTENT_YAML, "ioff.sqlite", False), "if", context=context),
        "idem-on": runner(hr(IDEMPOTENT_YAML, "ion.sqlite", True), "in", context=context),
    }


def bench_append(n: int) -> list[float]:
    """Microseconds per ``append`` of one call's three events (decided, started, succeeded)."""
    with tempfile.TemporaryDirectory() as tmpdir:
        trail = AuditLog(Path(tmpdir) / "audit.sqlite")
        out: list[float] = []
        for i in range(n):
            events = [
                ToolEvent(
                    timestamp="2026-11-24T10:00:00.000+00:00",
                    event=kind,
                    graph="bench",
                    agent_id="bench",
                    thread_id=f"t{i}",
                    tool_call_id="call-1",
                    tool="add",
                    call_seq=seq,
                    payload={"a": 2, "b": 3},
                    decision="allow",
                    rule_id="allow-add",
                )
                for seq, kind in enumerate(("decided", "started", "succeeded"))
            ]
            start = time.perf_counter_ns()
            trail.append(events)
            out.append((time.perf_counter_ns() - start) / 1e3)
        trail.close()
        return out


def main(argv: list[str] | None = None) -> int:
    opts = graph_options(__doc__, argv)
    calls, warmup, appends = (20, 5, 200) if opts.quick else (opts.calls, 30, 3000)

    times = bench_graphs(calls, warmup, graph_runners)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"Graph: {len(times['plain'])} threads x 1 tool call per variant, {ROUNDS} alternating "
        f"rounds, warm-up {warmup}; SqliteSaver (WAL); durability=async"
    )
    head = ("variant", "median ms/call", "mean ms/call", "p90 ms", "/plain")
    print(f"{head[0]:<10} {head[1]:>15} {head[2]:>13} {head[3]:>8} {head[4]:>7}")
    for name, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(
            f"{name:<10} {med[name]:>15.3f} {statistics.fmean(values):>13.3f} {p90:>8.3f} "
            f"{med[name] / med['plain']:>7.3f}"
        )
    ledgered = med["audit-on"] / med["audit-off"]
    idempotent = med["idem-on"] / med["idem-off"]
    print(
        f"audit on/off, ledgered tool:   {ledgered:.3f} "
        f"({med['audit-on'] - med['audit-off']:+.3f} ms per call)"
    )
    print(
        f"audit on/off, idempotent tool: {idempotent:.3f} "
        f"({med['idem-on'] - med['idem-off']:+.3f} ms per call)"
    )

    append = bench_append(appends)
    print(
        f"\nAuditLog.append of 3 events, {appends} times: median "
        f"{statistics.median(append):.1f} µs, p90 {statistics.quantiles(append, n=10)[-1]:.1f} µs"
    )
    results = [
        (f"audit on/off ledgered {ledgered:.3f} <= {TARGET}", ledgered <= TARGET),
        (f"audit on/off idempotent {idempotent:.3f} <= {TARGET}", idempotent <= TARGET),
    ]
    return verdict(results, opts.check)


if __name__ == "__main__":
    sys.exit(main())
