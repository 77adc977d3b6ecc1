"""Load: worker processes on one store; ask -> approve -> execute, or (``--fleet``) allowed calls.

Per backend (SQLite: a file in a temp dir; PostgreSQL: a database on a throwaway server from
``handrail.testing.postgres_server(durable=True)``, the schema made once with
``handrail.storage.migrate``), W worker processes (default 4, ``spawn``ed once for the whole run)
are released together by a barrier onto the same store. ``pay`` is not idempotent; it records
each run outside Handrail, one line (thread, call, time) appended with ``O_APPEND`` to a file per
process. Nothing is retried, except building a worker's graphs when the workers open a fresh
store at once (up to 5 tries, each failure counted), so that one such error does not cost the
whole measurement. So that a drifting machine load favours no variant, each runs in ``--rounds``
rounds (default 2) in ABBA order (plain, Handrail, ...; then the reverse), the N threads split
between them, each round on a fresh store; a variant's figures are over all its rounds. On
PostgreSQL the server's counters give the transactions, WAL syncs and WAL records per thread.

**Approval mode** (the default). Each worker builds its own graphs and, for Handrail,
``handrail.build_agent(ScriptedChatModel, [pay], policy, checkpointer=TARGET)`` and its own
``handrail.Inbox(TARGET, graph=graph)``; it starts N threads (default 1,000) whose model asks
for ``pay``, and the policy asks a treasurer, so each pauses with ``interrupt()``. Every
``--lapse-every``-th extra thread (default 1 in 20, on top of the N) asks under a rule with
``expires_in: 1s`` that nobody approves; it must never execute. Three variants:

- ``plain``: plain LangGraph: model node, an approval node calling ``interrupt()``,
  ``ToolNode([pay])``, ``SqliteSaver`` (``handrail.graph.open_checkpointer``, Handrail's
  settings) or ``PostgresSaver``, resumed by thread id with ``Command(resume=...)``. A worker
  puts each paused thread's id on a shared ``multiprocessing`` queue; whoever takes it resumes
  it (nobody races). An expiring thread is resumed with a rejection by the worker that started
  it, 1 s after its pause.
- ``handrail``: the same hand-off: the same queue, the same loop (`load_workers.run_handoff`);
  an id taken off it is approved with ``inbox.approve(thread_id, approver=...)`` by a treasurer
  who is not the requester; an expiring thread's worker calls ``inbox.expire()`` 1 s after its
  pause (a sweep: it resolves any other request past its deadline too).
- ``handrail-inbox``: Handrail's own listing, reported as a figure apart: no queue; every loop
  a worker lists ``inbox.pending()``, approves one of the oldest W waiting threads at random,
  started by *another* worker whenever there is one (two workers often pick the same: one
  wins, the other's ``AlreadyDecided`` is a *lost race*, expected), and calls
  ``inbox.expire()`` when it lists an expiring request past its deadline.

Reported per backend and variant:

- tool calls/s: approved executions / the time from the barrier to the last execution of a
  thread that was not to expire. The rest, until the last worker is done, is the *tail*
  (reported apart): mostly the wait for the last expiring request's 1 s deadline. So
  ``--quick``'s ratios compare the approvals only, not a tail of the same 1 s on both sides;
  the deadline stays 1 s in every mode (in a full run the expiries happen during the run);
- p50/p95 ms from just before the approve call to the tool's own record of its run;
- **double executions**: (thread, call) pairs run more than once across all workers;
- **lost approvals**: threads that paused but whose tool never ran (an approval that returned
  without a run, a thread still waiting at the end, an expiring one left waiting);
- **audit forks**: ``handrail_audit`` rows sharing a ``prev_hash``, plus 1 if ``verify()``
  fails; **audit gaps**: threads whose events are not exactly decided, approval_requested,
  approval_decided, started, succeeded (or, expired: decided, approval_requested, expired), once;
- **locked**: exceptions that reached a worker saying ``database is locked`` (or PostgreSQL's
  lock-not-available, serialization-failure, deadlock); **other errors**: any other exception
  (summed up by kind, the first tracebacks of each kind printed); expired threads that ran
  anyway count as other errors;
- for information: the ratios of each Handrail variant to plain (throughput, approve->result
  p50 and p95, the approve call's p50), the share of approvals that crossed processes, the
  mean ms per call of each operation (start, take, pending, approve, expire), the lost races.

**Fleet mode** (``--fleet``): W processes each run T threads (default 1,000) one after another,
allowed calls only: user message -> the model asks for ``pay`` (not idempotent, allowed by the
policy) -> the tool runs (Handrail: the execution ledger and the audit on) -> the model says
done. Against plain LangGraph: model node + ``ToolNode([pay])`` + ``tools_condition`` on the
same savers, the same scripted model and tool. Reported: calls/s (executions / barrier to the
last worker done), p50/p95 ms per call (a thread's whole run), the Handrail/plain ratios, and
the counts that must be zero: double executions, missing runs (a run that returned without its
tool's record), audit forks and gaps (each thread exactly decided, started, succeeded), ledger
gaps (each thread exactly one ledger row, succeeded), locked and other errors.

Run: ``python benchmarks/load.py [--fleet] [--workers 4] [--threads 1000] [--backends
sqlite,postgres] [--rounds 2] [--lapse-every 20] [--quick] [--check]``. ``--quick``: 4 workers x
25 threads (the fleet: x 50). Prints a table per backend and one PASS/FAIL line per backend
(PASS: every count that must be zero is zero, for every Handrail variant); exits 1 on a FAIL
only with ``--check``.

Beside this entry point: ``load_common.py`` (the policy, jobs, results, the tool and models),
``load_workers.py`` (the approval mode's workers), ``load_fleet.py`` (the fleet mode),
``load_pool.py`` (the worker processes and the stores), ``load_report.py`` (the figures).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from gate_overhead import verdict
from load_common import BACKENDS, Backend, Mode
from load_fleet import (
    FLEET_MODES,
    print_fleet,
    run_fleet_handrail,
    run_fleet_phase,
    run_fleet_plain,
)
from load_pool import Pool, Runner, open_store, pg_counters
from load_report import (
    Phase,
    audit_check,
    print_approvals,
    read_executions,
    waiting_at_end,
    zero_counts,
)
from load_workers import run_handrail, run_handrail_inbox, run_plain

APPROVAL_MODES: tuple[Mode, ...] = ("plain", "handrail", "handrail-inbox")
RUNNERS: dict[Mode, Runner] = {
    "plain": run_plain,
    "handrail": run_handrail,
    "handrail-inbox": run_handrail_inbox,
    "fleet-plain": run_fleet_plain,
    "fleet-handrail": run_fleet_handrail,
}
PhaseRunner = Callable[
    [Pool, Mode, Backend, Callable[[str], str], Path, tuple[int, int, int], argparse.Namespace],
    Phase,
]


def run_phase(
    pool: Pool,
    mode: Mode,
    backend: Backend,
    store: Callable[[str], str],
    tmp: Path,
    rounds: tuple[int, int, int],
    opts: argparse.Namespace,
) -> Phase:
    """One round of one approval variant on a fresh store: ``rounds`` is (round, first thread,
    threads per worker)."""
    number, first, threads = rounds
    target = store(f"{mode.replace('-', '_')}{number}")
    log_dir = tmp / f"{mode}{number}-runs"
    plan = (first, threads, opts.lapse_every)
    began, results, counters = pool.round(
        mode, backend, target, log_dir, plan, opts.timeout, opts.seed
    )
    notes = [f"worker {r.worker} {r.failed}" for r in results if r.failed]

    runs = read_executions(log_dir)
    per_call = Counter((thread, call) for thread, call, _ in runs)
    first_run: dict[str, float] = {}
    for thread, _, at in runs:
        first_run[thread] = min(at, first_run.get(thread, at))
    ran = set(first_run)
    paused = {t for r in results for t in r.paused}
    lapsing = {t for r in results for t in r.lapsing}
    expired = {t for r in results for t in r.expired}
    approved: dict[str, float] = {}
    for r in results:
        approved.update(r.approved)
    ended = max(r.ended for r in results) - began
    last_run = max((at for thread, at in first_run.items() if thread in paused), default=None)
    wall = last_run - began if last_run is not None else ended
    left = waiting_at_end(target) if mode != "plain" else set()
    lost = (paused - ran) | left | (lapsing - expired)
    ran_expired = ran & expired
    if ran_expired:
        notes.append(f"expired threads that ran anyway: {sorted(ran_expired)[:5]}")
    unasked = ran - set(approved)
    if unasked:
        notes.append(
            f"{len(unasked)} runs without an approve call that returned "
            f"(e.g. {sorted(unasked)[:3]})"
        )
    phase = Phase(
        mode=mode,
        workers=opts.workers,
        threads=len(paused),
        wall_s=wall,
        tail_s=ended - wall,
        executions=len({(t, c) for t, c, _ in runs if t in paused}),
        latencies=[(first_run[t] - at) * 1e3 for t, at in approved.items() if t in ran],
        approve_ms=[ms for r in results for ms in r.approve_ms],
        double=sum(1 for n in per_call.values() if n > 1),
        lost=len(lost),
        locked=sum(r.locked for r in results),
        other=sum(r.other for r in results) + len(ran_expired),
        races=sum(r.lost_races for r in results),
        expired=len(expired),
        approvals=sum(len(r.approved) for r in results),
        cross=sum(r.cross for r in results),
        errors=sum((r.errors for r in results), Counter()),
        tracebacks=[t for r in results for t in r.tracebacks],
        notes=notes,
    )
    for r in results:
        for op, seconds in r.spent.items():
            phase.spent[op] += seconds
        phase.calls += r.calls
    if counters is not None:
        time.sleep(0.5)  # the workers' server processes report their statistics as they exit
        phase.pg = [b - a for a, b in zip(counters, pg_counters(target), strict=True)]
    if mode != "plain":
        phase.forks, phase.gaps, audit_notes = audit_check(target, ran, expired)
        notes += audit_notes
    return phase


def options(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with ``--quick``'s sizes applied."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fleet", action="store_true", help="allowed calls only, no approvals")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--threads", type=int, default=1000, help="threads per worker")
    parser.add_argument(
        "--lapse-every",
        type=int,
        default=20,
        help="one extra expiring thread per this many (0: none)",
    )
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,postgres"
    )
    parser.add_argument(
        "--quick", action="store_true", help="4 workers x 25 threads (the fleet: x 50)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds per variant, in ABBA order, the threads split between them",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 on a FAIL")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per phase")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.workers, opts.threads = 4, 50 if opts.fleet else 25
    opts.backend_list = []
    for name in opts.backends.split(","):
        if name not in BACKENDS:
            parser.error(f"--backends: {name!r} is not one of {', '.join(BACKENDS)}")
        opts.backend_list.append(name)
    return opts


def measure(
    pool: Pool, backend: Backend, modes: tuple[Mode, ...], opts: argparse.Namespace
) -> dict[Mode, Phase]:
    """Every variant of ``modes`` on ``backend``, in ABBA rounds, each round on a fresh store."""
    phases = {mode: Phase(mode=mode, workers=opts.workers) for mode in modes}
    run: PhaseRunner = run_fleet_phase if opts.fleet else run_phase
    with tempfile.TemporaryDirectory() as tmpdir, open_store(backend, Path(tmpdir)) as store:
        first = 0
        for number in range(opts.rounds):
            threads = opts.threads // opts.rounds + (number < opts.threads % opts.rounds)
            for mode in modes if number % 2 == 0 else modes[::-1]:
                rounds = (number, first, threads)
                phases[mode].add(run(pool, mode, backend, store, Path(tmpdir), rounds, opts))
            first += threads
    return phases


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit status."""
    opts = options(argv)
    modes = FLEET_MODES if opts.fleet else APPROVAL_MODES
    # Killed: unwind, so the PostgreSQL server and the worker processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.perf_counter()
    verdicts: list[tuple[str, bool]] = []
    pool = Pool(opts.workers, RUNNERS)
    try:
        for backend in opts.backend_list:
            label = f"fleet {backend}" if opts.fleet else backend
            began = time.perf_counter()
            try:
                phases = measure(pool, backend, modes, opts)
            except ImportError as exc:
                print(f"\n{backend}: not run: {exc!r}")
                verdicts.append((f"{label}: not run ({exc})", False))
                continue
            if opts.fleet:
                print_fleet(backend, phases, opts.threads, opts)
            else:
                print_approvals(backend, phases, opts.threads, opts)
            print(f"INFO: {backend} took {time.perf_counter() - began:.1f} s")
            verdicts.append(zero_counts(label, [p for m, p in phases.items() if "plain" not in m]))
    finally:
        pool.close()
    status = verdict(verdicts, opts.check)
    print(f"INFO: whole run {time.perf_counter() - start:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
