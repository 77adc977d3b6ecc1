"""`load.py`'s figures: one variant's phases summed (`Phase`), what the stores and the tool's
records say afterwards (executions, the audit, the ledger, the inbox), and the printed table."""

from __future__ import annotations

import statistics
from argparse import Namespace
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from load_common import Backend, Mode

import handrail
from handrail.audit import AuditLog

EVENTS_RUN = Counter(
    {"decided": 1, "approval_requested": 1, "approval_decided": 1, "started": 1, "succeeded": 1}
)
EVENTS_EXPIRED = Counter({"decided": 1, "approval_requested": 1, "expired": 1})
EVENTS_ALLOWED = Counter({"decided": 1, "started": 1, "succeeded": 1})
TRACEBACKS_SHOWN = 2
"""Tracebacks printed per kind of error."""
NOTES_KEPT = 2
"""Examples kept per kind of audit or ledger mismatch."""
PG_COUNTERS = ("transactions", "WAL syncs", "WAL records")


@dataclass
class Phase:
    """One variant on one backend, as measured (the sum of its rounds)."""

    mode: Mode
    workers: int
    threads: int = 0
    """Threads that paused for an approval (expiring ones apart); the fleet: threads run."""
    wall_s: float = 0.0
    """From the barrier to the last execution of a thread that was not to expire."""
    tail_s: float = 0.0
    """From then to the last worker done (the expiring requests' deadline and their sweep)."""
    executions: int = 0
    latencies: list[float] = field(default_factory=list)
    """ms from just before each approve call that returned to the tool's run; the fleet: each
    thread's whole run."""
    approve_ms: list[float] = field(default_factory=list)
    double: int = 0
    lost: int = 0
    forks: int | None = None
    gaps: int | None = None
    ledger: int | None = None
    """The fleet: executed threads whose ledger row is not one succeeded outcome."""
    locked: int = 0
    other: int = 0
    races: int = 0
    expired: int = 0
    approvals: int = 0
    cross: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    tracebacks: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spent: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: Counter[str] = field(default_factory=Counter)
    pg: list[int] | None = None
    """PostgreSQL: the `PG_COUNTERS` the phase added."""

    def add(self, other: Phase) -> None:
        """Add one more round of the same variant."""
        for name in ("threads", "wall_s", "tail_s", "executions", "double", "lost", "locked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("other", "races", "expired", "approvals", "cross"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latencies += other.latencies
        self.approve_ms += other.approve_ms
        for name in ("forks", "gaps", "ledger"):
            if getattr(other, name) is not None:
                setattr(self, name, (getattr(self, name) or 0) + getattr(other, name))
        self.errors += other.errors
        self.tracebacks += other.tracebacks
        self.notes += other.notes
        for op, seconds in other.spent.items():
            self.spent[op] += seconds
        self.calls += other.calls
        if other.pg is not None:
            self.pg = [a + b for a, b in zip(self.pg or [0] * len(other.pg), other.pg, strict=True)]

    @property
    def calls_per_s(self) -> float:
        """Tool executions per second of ``wall_s``."""
        return self.executions / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def op_ms(self) -> dict[str, float]:
        """Mean ms per call of each operation, over all workers."""
        return {op: self.spent[op] / n * 1e3 for op, n in self.calls.items() if n}

    def zero_counts(self) -> dict[str, int]:
        """The counts that must be zero (those this variant has)."""
        counts = {"double executions": self.double, "lost approvals": self.lost}
        if self.mode.startswith("fleet"):
            counts = {"double executions": self.double, "missing runs": self.lost}
        for name, value in (
            ("audit forks", self.forks),
            ("audit gaps", self.gaps),
            ("ledger gaps", self.ledger),
        ):
            if value is not None:
                counts[name] = value
        counts["locked errors"] = self.locked
        counts["other errors"] = self.other
        return counts


def read_executions(log_dir: Path) -> list[tuple[str, str, float]]:
    """Every run of ``pay`` the worker processes recorded: (thread, call, time)."""
    runs: list[tuple[str, str, float]] = []
    for path in sorted(log_dir.glob("exec-*.log")):
        for line in path.read_text().splitlines():
            thread, call, at, _pid = line.split(",")
            runs.append((thread, call, float(at)))
    return runs


def audit_check(
    target: str, ran: set[str], expired: set[str], events_run: Counter[str] = EVENTS_RUN
) -> tuple[int, int, list[str]]:
    """Forks (rows sharing a prev_hash, +1 if verify fails) and gaps (threads whose events are
    not exactly ``events_run``, or `EVENTS_EXPIRED` for expired ones) in Handrail's audit."""
    log = AuditLog(target)
    notes: list[str] = []
    try:
        verified = log.verify()
        rows = list(log.export())
    finally:
        log.close()
    prevs = Counter(r["prev_hash"] for r in rows)
    forks = sum(n for n in prevs.values() if n > 1) + (0 if verified.ok else 1)
    if not verified.ok:
        notes.append(f"audit verify failed: {verified.problem}")
    events: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        events[r["thread_id"]][r["event"]] += 1
    gaps = 0
    for thread in ran | expired | set(events):
        want = events_run if thread in ran else EVENTS_EXPIRED if thread in expired else Counter()
        if events[thread] != want:
            gaps += 1
            if gaps <= NOTES_KEPT:
                notes.append(f"audit events of {thread}: {dict(events[thread])}, want {dict(want)}")
    notes.append(f"audit rows: {len(rows)}, verify ok: {verified.ok}")
    return forks, gaps, notes


def waiting_at_end(target: str) -> set[str]:
    """Threads Handrail's inbox still lists."""
    inbox = handrail.Inbox(target)
    try:
        return {i.thread_id for i in inbox.pending()}
    finally:
        inbox.close()


def percentile(values: list[float], n: int) -> float:
    """The ``n``-th percentile (inclusive method); NaN without values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[n - 1]


def ratio(a: float, b: float) -> float:
    """``a / b``; NaN when ``b`` is 0."""
    return a / b if b else float("nan")


def print_approvals(
    backend: Backend, phases: dict[Mode, Phase], threads: int, opts: Namespace
) -> None:
    """The approval mode's table for one backend, its ratios and what else it found."""
    lapsing = f" (+ 1 expiring per {opts.lapse_every})" if opts.lapse_every else ""
    print(
        f"\n{backend}: {opts.workers} worker process{'es' if opts.workers != 1 else ''} x "
        f"{threads:,} threads{lapsing}, one store per round, {opts.rounds} round(s) per "
        "variant in ABBA order; ask -> approve -> execute"
    )
    print(
        f"{'variant':<14} {'threads':>7} {'calls/s':>8} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'double':>6} {'lost':>5} {'forks':>5} {'gaps':>5} {'locked':>6} {'other':>5} "
        f"{'races':>5} {'expired':>7} {'cross':>6} {'wall s':>7} {'tail s':>6}"
    )
    for mode, p in phases.items():
        forks = "-" if p.forks is None else str(p.forks)
        gaps = "-" if p.gaps is None else str(p.gaps)
        cross = p.cross / p.approvals if p.approvals else 0.0
        print(
            f"{mode:<14} {p.threads:>7} {p.calls_per_s:>8.1f} "
            f"{percentile(p.latencies, 50):>7.1f} {percentile(p.latencies, 95):>7.1f} "
            f"{p.double:>6} {p.lost:>5} {forks:>5} {gaps:>5} {p.locked:>6} {p.other:>5} "
            f"{p.races:>5} {p.expired:>7} {cross:>6.0%} {p.wall_s:>7.2f} {p.tail_s:>6.2f}"
        )
    plain = phases["plain"]
    for mode, p in phases.items():
        if mode == "plain":
            continue
        call = (percentile(p.approve_ms, 50), percentile(plain.approve_ms, 50))
        print(
            f"ratio {mode}/plain: throughput {ratio(p.calls_per_s, plain.calls_per_s):.2f}, "
            f"approve->result p50 {ratio(*(percentile(x.latencies, 50) for x in (p, plain))):.2f}"
            f", p95 {ratio(*(percentile(x.latencies, 95) for x in (p, plain))):.2f}; "
            f"approve call p50 {call[0]:.1f} / {call[1]:.1f} ms = {ratio(*call):.2f}"
        )
    print_info(phases)


def print_info(phases: dict[Mode, Phase]) -> None:
    """Per variant: PostgreSQL's counters, the mean ms per operation, notes and errors."""
    for mode, p in phases.items():
        if p.pg is not None and p.threads:
            each = ", ".join(
                f"{n / p.threads:.1f} {name}" for name, n in zip(PG_COUNTERS, p.pg, strict=True)
            )
            print(f"INFO {mode}: PostgreSQL per thread: {each}")
        ops = ", ".join(f"{op} {ms:.2f}" for op, ms in p.op_ms.items())
        print(f"INFO {mode}: mean ms per call: {ops}")
        for note in p.notes:
            print(f"INFO {mode}: {note}")
        for kind, n in p.errors.most_common():
            print(f"INFO {mode}: {n} x {kind}")
        shown: Counter[str] = Counter()
        for kind, text in p.tracebacks:
            shown[kind] += 1
            if shown[kind] <= TRACEBACKS_SHOWN:
                print(f"ERROR {mode}: {text}")


def zero_counts(label: str, phases: list[Phase]) -> tuple[str, bool]:
    """One verdict over the phases' counts that must be zero: its text and whether all are."""
    parts, ok = [], True
    for p in phases:
        counts = p.zero_counts()
        ok = ok and not any(counts.values())
        parts.append(f"{p.mode}: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    return f"{label}: {'; '.join(parts)}", ok
