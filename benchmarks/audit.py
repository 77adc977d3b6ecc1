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

Scale mode (``--scale``): costs that must not grow with history. For 10,000 and 100,000 audit
rows (and 1,000,000 with ``--million``), build the chain synthetically (rows computed with the
module's own hash, bulk-inserted in one transaction), sign a checkpoint at its end, append 100
rows through `AuditLog.append`, then time `AuditLog.verify` from the checkpoint and
`AuditLog.stats` with its rollup warm (read-only, so every call folds the same 100 rows), and
print the ratio largest/smallest. SQLite by default; ``--postgres URL`` (a server, as
``handrail.testing.postgres_server`` gives; ``auto`` starts one) uses a fresh schema there.
Target: ratio <= 1.5 for both.

Run: ``python benchmarks/audit.py --scale [--million] [--postgres URL|auto] [--check]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
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
from handrail.audit import GENESIS, AuditLog
from handrail.audit._chain import INSERT, chain, row_of
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


SCALE_TARGET = 1.5
TAIL = 100
"""Rows appended after the checkpoint."""


def synthetic_events(first: int, n: int) -> Iterator[ToolEvent]:
    """``n`` events of calls numbered from ``first``: 9 in 10 allowed (decided, started,
    succeeded), 1 in 10 asked and approved (decided, requested, approved, started, succeeded)."""
    made, call = 0, first
    while made < n:
        asked = call % 10 == 0
        kinds = (
            ("decided", "approval_requested", "approval_decided", "started", "succeeded")
            if asked
            else ("decided", "started", "succeeded")
        )
        for number, kind in enumerate(kinds):
            if made == n:
                return
            yield ToolEvent(
                timestamp="2026-11-24T10:00:00.000+00:00",
                event=kind,  # type: ignore[arg-type]
                graph="bench",
                agent_id="bench",
                thread_id=f"t{call}",
                tool_call_id="call-1",
                tool="transfer_funds" if asked else "add",
                call_seq=number,
                payload={"a": 2, "b": call},
                decision=(
                    "approve" if kind == "approval_decided" else ("ask" if asked else "allow")
                ),
                duration_ms=60_000.0 + call % 977 if kind == "approval_decided" else None,
                args_hash=f"{call:064x}",
            )
            made += 1
        call += 1


def build_chain(log: AuditLog, n: int) -> None:
    """``n`` chained rows, computed here and inserted in one transaction."""
    prev, batch = GENESIS, []
    with log.store.transaction("handrail_audit") as sql:
        for seq, event in enumerate(synthetic_events(0, n), 1):
            row = row_of(seq, event)
            digest = chain(prev, row)
            batch.append({**row, "prev_hash": prev, "hash": digest})
            prev = digest
            if len(batch) == 10_000:
                sql.executemany(INSERT, batch)
                batch = []
        sql.executemany(INSERT, batch)


def timed(call: Callable[[], Any], repeats: int = 15) -> float:
    """The median milliseconds of ``call``, after one call to warm the caches (the bulk build
    leaves pages cold)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@contextlib.contextmanager
def databases(postgres: str | None, tmp: Path) -> Iterator[Callable[[int], str]]:
    """A fresh database per size: a SQLite file, or a schema on the PostgreSQL server."""
    if postgres is None:
        yield lambda n: str(tmp / f"audit-{n}.sqlite")
        return
    from handrail.testing import postgres_schema, postgres_server

    if postgres != "auto":
        yield lambda n: postgres_schema(postgres)
        return
    with postgres_server() as server:
        yield lambda n: postgres_schema(server)


def scale_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="audit verify and stats against history")
    parser.add_argument("--scale", action="store_true", required=True)
    parser.add_argument("--million", action="store_true", help="also 1,000,000 rows")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server URL, or auto")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    opts = parser.parse_args(argv)
    sizes = [10_000, 100_000, *([1_000_000] if opts.million else [])]
    key = Ed25519PrivateKey.generate()
    backend = "sqlite" if opts.postgres is None else "postgresql"
    print(f"{backend}: checkpoint at the end of N synthetic rows, then {TAIL} appended rows")
    print(f"{'rows':>10} {'build s':>8} {'verify ms':>10} {'full ms':>9} {'stats ms':>9}")
    verify_ms, stats_ms = [], []
    with tempfile.TemporaryDirectory() as tmpdir, databases(opts.postgres, Path(tmpdir)) as new:
        for n in sizes:
            db = new(n)
            log = AuditLog(db)
            began = time.perf_counter()
            build_chain(log, n)
            log.sign(key)
            log.stats()  # the rollup, up to the checkpoint
            built = time.perf_counter() - began
            log.append(list(synthetic_events(n, TAIL)))
            result = log.verify(public_key=key.public_key())
            assert result.ok and result.rows_checked == TAIL, result
            reader = AuditLog(db, readonly=True)
            public = key.public_key()
            v = timed(partial(reader.verify, public_key=public))
            st = timed(reader.stats)
            began = time.perf_counter()
            reader.verify(public_key=public, full=True)
            full = (time.perf_counter() - began) * 1e3
            reader.close()
            log.close()
            verify_ms.append(v)
            stats_ms.append(st)
            print(f"{n:>10,} {built:>8.1f} {v:>10.2f} {full:>9.0f} {st:>9.2f}")
    v_ratio, s_ratio = verify_ms[-1] / verify_ms[0], stats_ms[-1] / stats_ms[0]
    print(f"verify from the checkpoint, {sizes[-1]:,} / {sizes[0]:,} rows: {v_ratio:.2f}x")
    print(f"stats from the rollup,      {sizes[-1]:,} / {sizes[0]:,} rows: {s_ratio:.2f}x")
    return verdict(
        [
            (f"verify ratio {v_ratio:.2f} <= {SCALE_TARGET}", v_ratio <= SCALE_TARGET),
            (f"stats ratio {s_ratio:.2f} <= {SCALE_TARGET}", s_ratio <= SCALE_TARGET),
        ],
        opts.check,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--scale" in argv:
        return scale_main(argv)
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
