"""Approvals inbox: `Inbox.pending()` versus scanning every thread's checkpoint for interrupts.

One SQLite file holds N threads (default 10,000) paused for real: each runs the demo bank's agent
(``handrail.build_agent`` over ``banking_tools``, the demo policy, a `ScriptedChatModel`) until a
``transfer_funds`` call above 1,000 waits for a treasurer. The transfer's payee, amount and memo
cycle through a few variants (one graph per variant, all on the same file), so rows differ.

1. ``Inbox(db).pending()``: one query on Handrail's ``handrail_approvals`` table, building a
   `PendingApproval` per row (each decodes its JSON fields on first access). Warmed up once, then
   timed on an open inbox. Target: median <= 50 ms at 10,000 threads (smaller runs are reported
   against the same figure). Also reported, so the deferred decoding is not hidden: ``pending()``
   plus reading every field of every item.
2. The naive scan, what a user without that table would do: the distinct thread ids from
   ``saver.list(None)`` over all checkpoints, then ``graph.get_state`` per thread, keeping the
   interrupts whose value has a ``"handrail"`` key. Both ways must find the same set of
   (thread_id, tool_call_id). Target: median(naive) / median(pending) >= 100.

3. The web inbox's list page (`handrail.web`), first page for a signed-in treasurer (bearer
   token), through starlette's TestClient in-process: target median <= 100 ms at 10,000 threads.

For information: ``handrail pending --json --db FILE`` as a subprocess (wall time including
Python start-up) and ``handrail.cli.main([...])`` in-process with stdout sent to a StringIO.

Run: ``python benchmarks/inbox.py [--threads N] [--quick] [--check] [--keep PATH]``. Prints a table
and one PASS/FAIL line per target; exits 1 on a miss only with ``--check``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
from gate_overhead import verdict
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from starlette.testclient import TestClient

import handrail
import handrail.cli
from handrail.auth import JwtAuthenticator
from handrail.graph import HandrailGraph
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools
from handrail.web import create_app

PENDING_TARGET_MS = 50.0
WEB_TARGET_MS = 100.0
WEB_SECRET = "benchmark-web-inbox-secret-32-bytes-long"
RATIO_TARGET = 100.0
TARGET_THREADS = 10_000
ACTOR = handrail.Actor(id="agent-123", roles=("ai-agent",))
VARIANTS = [  # (payee, amount, memo): every one is above 1,000, so the policy asks a treasurer
    ("carol", 5000, "contract"),
    ("bob", 1500.5, "invoice 18"),
    ("dave", 2750, "equipment"),
    ("erin", 9999.99, "quarterly fee"),
    ("frank", 1001, "refund"),
]

Pair = tuple[str, str]


def variant_graph(db: Path, payee: str, amount: float, memo: str) -> HandrailGraph:
    """The demo bank's agent whose first turn asks to transfer ``amount`` to ``payee``."""
    call = {"name": "transfer_funds", "args": {"to": payee, "amount": amount, "memo": memo}}
    model = ScriptedChatModel(
        [AIMessage(f"Paying {payee}.", tool_calls=[{**call, "id": None}]), AIMessage("Done.")]
    )
    policy = handrail.Policy.from_file(POLICY_PATH)
    return handrail.build_agent(model, banking_tools(db), policy, checkpointer=str(db))


def create_threads(graphs: list[HandrailGraph], n: int) -> float:
    """Run thread ``t-00000`` .. until each waits for approval; returns the seconds taken."""
    context = handrail.RunContext(actor=ACTOR)
    start = time.perf_counter()
    for i in range(n):
        config: RunnableConfig = {"configurable": {"thread_id": f"t-{i:05d}"}}
        out = graphs[i % len(graphs)].invoke(
            {"messages": [HumanMessage(f"Please make payment number {i}.")]},
            config,
            context=context,
        )
        assert "__interrupt__" in out, f"thread {i} did not pause"
    return time.perf_counter() - start


def naive_scan(graph: HandrailGraph) -> set[Pair]:
    """Every thread's state loaded from its checkpoint, keeping Handrail's open interrupts."""
    saver = graph.checkpointer
    assert saver is not None and not isinstance(saver, bool)
    threads = dict.fromkeys(c.config["configurable"]["thread_id"] for c in saver.list(None))
    found: set[Pair] = set()
    for thread in threads:
        snapshot = graph.get_state({"configurable": {"thread_id": thread}})
        for item in snapshot.interrupts:
            value = item.value
            if isinstance(value, Mapping) and "handrail" in value:
                found.update((thread, call) for call in value["handrail"]["tool_call_ids"])
    return found


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Run ``fn`` ``repeats`` times; the wall time of each in ms, and the last result."""
    times: list[float] = []
    result: Any = None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times, result


def cli_command() -> list[str]:
    """The ``handrail`` console script next to this interpreter (else ``python -m handrail``)."""
    script = Path(sys.executable).with_name("handrail")
    return [str(script)] if script.exists() else [sys.executable, "-m", "handrail"]


def cli_subprocess(db: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [*cli_command(), "pending", "--json", "--db", str(db)],
        capture_output=True,
        text=True,
        check=True,
    )
    listed: list[dict[str, Any]] = json.loads(done.stdout)
    return listed


def cli_in_process(db: Path) -> list[dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = handrail.cli.main(["pending", "--json", "--db", str(db)])
    assert code == 0, code
    listed: list[dict[str, Any]] = json.loads(out.getvalue())
    return listed


def read_every_field(item: handrail.PendingApproval) -> tuple[Any, ...]:
    return (
        item.thread_id,
        item.tool_call_id,
        item.graph,
        item.tool,
        item.args,
        item.args_hash,
        item.rule_id,
        item.approvers,
        item.min_approvals,
        item.approvals,
        item.actor,
        item.requested_at,
        item.expires_at,
        item.deciding,
    )


def web_first_page(db: Path, repeats: int) -> tuple[list[float], int]:
    """Times ``GET /inbox/`` (the first page) for a treasurer; the times and the rows shown."""
    auth = JwtAuthenticator(secret=WEB_SECRET)
    claims = {"sub": "alice", "roles": ["treasurer"], "exp": int(time.time()) + 3600}
    headers = {"Authorization": f"Bearer {jwt.encode(claims, WEB_SECRET, algorithm='HS256')}"}
    with TestClient(create_app(db, authenticator=auth, secret=WEB_SECRET)) as client:

        def first_page() -> str:
            answer = client.get("/inbox/", headers=headers)
            assert answer.status_code == 200, answer.status_code
            return answer.text

        first_page()  # warm-up (templates compiled)
        times, page = timed(first_page, repeats)
    return times, page.count('<tr class="request"')


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def run(db: Path, threads: int, repeats: dict[str, int]) -> list[tuple[str, bool]]:
    graphs = [variant_graph(db, *v) for v in VARIANTS]
    created = create_threads(graphs, threads)
    print(
        f"Created {threads} paused threads in {created:.1f} s "
        f"({created / threads * 1e3:.2f} ms/thread), {len(VARIANTS)} transfer variants"
    )

    inbox = handrail.Inbox(db)
    try:
        inbox.pending()  # warm-up
        pending_ms, items = timed(inbox.pending, repeats["pending"])
    finally:
        inbox.close()
    fast = {(i.thread_id, i.tool_call_id) for i in items}

    def read_all() -> int:
        box = handrail.Inbox(db)
        try:
            return sum(len(read_every_field(i)) for i in box.pending())
        finally:
            box.close()

    full_ms, _ = timed(read_all, repeats["pending"])

    def cold() -> int:
        box = handrail.Inbox(db)
        try:
            return len(box.pending())
        finally:
            box.close()

    cold_ms, _ = timed(cold, repeats["pending"])

    web_ms, shown = web_first_page(db, repeats["pending"])
    assert shown == min(threads, 25), shown
    naive_ms, slow = timed(lambda: naive_scan(graphs[0]), repeats["naive"])
    assert len(fast) == len(items) == threads, (len(fast), len(items), threads)
    assert fast == slow, f"pending() and the naive scan disagree: {len(fast ^ slow)} pairs differ"

    sub_ms, listed = timed(lambda: cli_subprocess(db), repeats["cli"])
    assert len(listed) == threads, len(listed)
    inproc_ms, listed = timed(lambda: cli_in_process(db), repeats["inproc"])
    assert len(listed) == threads, len(listed)

    with contextlib.closing(sqlite3.connect(db)) as conn:
        checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    for graph in graphs:
        if graph.handrail_table is not None:
            graph.handrail_table.close()
        saver_conn = getattr(graph.checkpointer, "conn", None)
        if isinstance(saver_conn, sqlite3.Connection):
            saver_conn.close()

    med = {
        "pending": statistics.median(pending_ms),
        "naive": statistics.median(naive_ms),
        "web": statistics.median(web_ms),
    }
    ratio = med["naive"] / med["pending"]
    print(
        f"Threads: {threads}; rows listed by pending(): {len(items)}; checkpoints: {checkpoints}; "
        f"database {db.stat().st_size / 1e6:.1f} MB"
    )
    print(f"pending() and the naive scan agree: {len(fast)} (thread_id, tool_call_id) pairs\n")
    print(f"{'measurement':<46} {'runs':>5} {'median ms':>11} {'p95 ms':>10} {'min ms':>10}")
    rows = [
        ("Inbox.pending() (open inbox)", pending_ms),
        ("Inbox(db).pending() + close()", cold_ms),
        ("Inbox(db).pending(), every field read", full_ms),
        ("naive scan (saver.list + get_state per thread)", naive_ms),
        ("web inbox list, first page (GET /inbox/)", web_ms),
        ("handrail pending --json (subprocess)", sub_ms),
        ("cli.main(['pending', '--json']) (in-process)", inproc_ms),
    ]
    for label, values in rows:
        print(
            f"{label:<46} {len(values):>5} {statistics.median(values):>11.2f} "
            f"{p95(values):>10.2f} {min(values):>10.2f}"
        )
    print(f"ratio naive/pending (medians): {ratio:,.0f}x  (target >= {RATIO_TARGET:g}x)")

    scale = "" if threads == TARGET_THREADS else f" (target is for {TARGET_THREADS:,} threads)"
    return [
        (
            f"pending() median {med['pending']:.2f} ms <= {PENDING_TARGET_MS:g} ms "
            f"at {threads:,} threads{scale}",
            med["pending"] <= PENDING_TARGET_MS,
        ),
        (f"naive/pending {ratio:,.0f}x >= {RATIO_TARGET:g}x", ratio >= RATIO_TARGET),
        (
            f"web list first page median {med['web']:.2f} ms <= {WEB_TARGET_MS:g} ms "
            f"at {threads:,} threads{scale}",
            med["web"] <= WEB_TARGET_MS,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=TARGET_THREADS, help="paused threads")
    parser.add_argument("--quick", action="store_true", help="300 threads, for a smoke test")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", type=Path, metavar="PATH", help="build the database here")
    opts = parser.parse_args(argv)
    if opts.quick:
        threads = 300
        repeats = {"pending": 11, "naive": 2, "cli": 3, "inproc": 3}
    else:
        threads = opts.threads
        repeats = {"pending": 21, "naive": 3, "cli": 5, "inproc": 7}

    if opts.keep and opts.keep.exists():
        parser.error(f"--keep {opts.keep}: the file exists; give a new path")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpdir:
        db = opts.keep or Path(tmpdir) / "inbox.sqlite"
        results = run(db, threads, repeats)
    status = verdict(results, opts.check)
    print(f"INFO: whole run {time.perf_counter() - start:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
