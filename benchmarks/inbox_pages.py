"""Pages of the inbox: `Inbox.pending_page` costs the same however many calls wait.

N waiting rows are written straight into ``handrail_approvals`` (one bulk INSERT, in one
transaction; N = 10,000, 100,000 and 1,000,000, or ``--sizes``) in a fresh SQLite file, and on
PostgreSQL with ``--postgres [URL]`` (a fresh schema there; without a URL, a throwaway server).
At each size: ``Inbox.pending_page(limit=50)`` oldest and newest first, and a page halfway down
the listing by its cursor; for contrast, the same page by offset. Target: the largest size's
median <= 1.5x the smallest's, for the first and the deep page.

Run: ``python benchmarks/inbox_pages.py [--sizes N,N] [--postgres [URL]] [--check]``. Prints a
table and one PASS/FAIL line per target; exits 1 on a miss only with ``--check``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from gate_overhead import verdict

import handrail
from handrail.storage._postgres import close_pool
from handrail.storage.approvals import ApprovalTable, iso
from handrail.testing import postgres_schema, postgres_server

PAGE_SIZES = "10000,100000,1000000"
PAGE_RATIO_TARGET = 1.5


def page_times(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """`timed` for calls of a millisecond: one collection, then none while timing."""
    gc.collect()
    gc.disable()
    try:
        times, result = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            result = fn()
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        gc.enable()
    return times, result


def fill(store: Any, upto: int, have: int) -> float:
    """Rows ``have`` .. ``upto - 1`` of a synthetic inbox, in one transaction; the seconds."""
    start = time.perf_counter()
    columns = (
        "thread_id, tool_call_id, kind, seq, tool, args_hash, approvers, approvals, item, "
        "requested_at, status"
    )
    item = json.dumps(
        {"thread_id": "T", "tool_call_id": "c0", "graph": "bench", "tool": "transfer_funds",
         "args": {"to": "carol", "amount": 5000}, "args_hash": "h", "rule_id": "big-transfers",
         "approvers": ["treasurer"], "actor": {"id": "agent-123", "roles": ["ai-agent"]}}
    )  # fmt: skip
    with store.transaction() as sql:
        if store.dialect == "postgresql":  # the rows made by the server
            sql.execute(
                f"INSERT INTO handrail_approvals ({columns}) SELECT 't-' || lpad(n::text, 7, '0'),"
                " 'c0', 'approval', 0, 'transfer_funds', 'h', '[\"treasurer\"]', '[]', "
                "replace(?, '\"T\"', '\"t-' || lpad(n::text, 7, '0') || '\"'), "
                "to_char((timestamptz '2026-01-01 00:00:00+00' + n * interval '1 millisecond') "
                "AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), 'open' "
                "FROM generate_series(?::int, ?::int) AS n",
                (item, have, upto - 1),
            )
            sql.execute("ANALYZE handrail_approvals")  # as autovacuum would, after a bulk load
        else:
            base = datetime(2026, 1, 1, tzinfo=UTC)
            sql.executemany(
                f"INSERT INTO handrail_approvals ({columns}) "
                "VALUES (?, 'c0', 'approval', 0, 'transfer_funds', 'h', '[\"treasurer\"]', "
                "'[]', ?, ?, 'open')",
                (
                    (t, item.replace('"T"', f'"{t}"'), iso(base + timedelta(milliseconds=n)))
                    for n in range(have, upto)
                    for t in [f"t-{n:07d}"]
                ),
            )
    return time.perf_counter() - start


def run_pages(db: str, sizes: list[int], label: str, repeats: int) -> list[tuple[str, bool]]:
    """Times pages of `Inbox.pending_page` as the table grows through ``sizes``."""
    inbox, table = handrail.Inbox(db), ApprovalTable(db)
    figures: dict[str, list[float]] = {}
    print(f"\n{label}: a page of 50 waiting calls, median ms of {repeats} runs (min)\n{'rows':>10}"
          f" {'build s':>8} {'first':>15} {'newest first':>15} {'deep, cursor':>15} "
          f"{'deep, offset':>15}")  # fmt: skip
    try:
        for have, n in zip([0, *sizes], sizes, strict=False):
            built = fill(table.store, n, have)
            deep = table.waiting_page(limit=1, offset=n // 2 - 1).next_cursor
            assert inbox.pending_page(limit=50, after=deep).items[0].thread_id == f"t-{n // 2:07d}"
            cases = {
                "first": partial(inbox.pending_page, limit=50),
                "newest": partial(inbox.pending_page, limit=50, newest_first=True),
                "deep": partial(inbox.pending_page, limit=50, after=deep),
                "offset": partial(table.waiting_page, limit=50, offset=n // 2),
            }
            shown = []
            for name, fn in cases.items():
                fn()  # warm-up
                times, page = page_times(fn, repeats if name != "offset" else 11)
                assert len(getattr(page, "items", None) or page.rows) == 50
                figures.setdefault(name, []).append(statistics.median(times))
                shown.append(f"{statistics.median(times):.3f} ({min(times):.3f})")
            print(f"{n:>10,} {built:>8.1f} " + " ".join(f"{c:>15}" for c in shown))
    finally:
        inbox.close()
        table.close()
    offset = figures["offset"][-1] / figures["offset"][0]
    print(f"for contrast, the deep page by offset: {offset:.1f}x from the smallest to the largest")
    results = []
    for name, what in (("first", "first page"), ("deep", "page halfway, by cursor")):
        small, large = figures[name][0], figures[name][-1]
        text = f"{label}: {what} {large:.3f} ms at {sizes[-1]:,} rows, {large / small:.2f}x"
        text += f" its {small:.3f} ms at {sizes[0]:,} (target <= {PAGE_RATIO_TARGET:g}x)"
        results.append((text, large / small <= PAGE_RATIO_TARGET))
    return results


def pages(opts: argparse.Namespace) -> int:
    """SQLite, then PostgreSQL when asked."""
    sizes = sorted(int(n) for n in opts.sizes.split(","))
    results: list[tuple[str, bool]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpdir:
        results += run_pages(str(Path(tmpdir) / "pages.sqlite"), sizes, "sqlite", 201)
    if opts.postgres is not None:
        with contextlib.ExitStack() as stack:
            server = opts.postgres or stack.enter_context(postgres_server(durable=True))
            url = postgres_schema(server)  # a fresh schema, dropped after
            try:
                results += run_pages(url, sizes, "postgresql", 201)
            finally:
                close_pool(url)
                with psycopg.connect(server, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {url.rsplit('%3D', 1)[1]} CASCADE")
    status = verdict(results, opts.check)
    print(f"INFO: whole run {time.perf_counter() - start:.1f} s")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default=PAGE_SIZES, help="rows (%(default)s)")
    parser.add_argument("--postgres", nargs="?", const="", metavar="URL", help="on PostgreSQL too")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return pages(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
