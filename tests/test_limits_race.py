"""Limits hold under concurrency: processes racing on one limit never pass its maximum, on
SQLite and PostgreSQL, and a call decided by several processes at once is reserved once.

Four worker processes stay up for a test; each Hypothesis example gives every worker a list of
calls to reserve against a fresh limit, all starting at the same instant.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import table_rows

pytestmark = pytest.mark.backends("sqlite", "postgresql")

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from datetime import UTC, datetime
    from handrail.policies import Policy
    from handrail.storage.limits import Claim, LimitTable

    table = LimitTable(sys.argv[1])
    print("ready", flush=True)
    for line in sys.stdin:
        task = json.loads(line)
        (limit,) = Policy.from_data(task["policy"]).limits
        while time.time() < task["at"]:
            time.sleep(0.0005)
        out = []
        for cid, amount in task["calls"]:
            measure = limit.measure({"amount": amount}).amount
            claim = Claim(limit, limit.scope("agent", "t"), measure)
            (use,) = table.reserve("t", cid, [claim], datetime.now(UTC))
            out.append([cid, use.total, use.amount, use.over])
        print(json.dumps(out), flush=True)
    """
)

WORKERS = 4


@pytest.fixture
def workers(db: Any, tmp_path: Any) -> Iterator[list[subprocess.Popen[str]]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield procs
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=30)


amounts = st.one_of(st.integers(0, 20), st.integers(0, 40).map(lambda n: n / 2))
"""Whole numbers and halves: sums exact in binary, in Python and in SQL alike."""


@st.composite
def races(draw: st.DrawFn) -> tuple[dict[str, Any], list[list[tuple[str, float]]]]:
    """A limit, and each worker's calls (ids shared between workers, each id one amount)."""
    ids = [f"c{n}" for n in range(draw(st.integers(1, 12)))]
    counted = draw(st.booleans())  # a count: each call adds 1
    amount_of = {cid: 1 if counted else draw(amounts) for cid in ids}
    calls = [
        [(cid, amount_of[cid]) for cid in draw(st.lists(st.sampled_from(ids), max_size=6))]
        for _ in range(WORKERS)
    ]
    then = draw(st.sampled_from(["ask", "deny"]))
    limit: dict[str, Any] = {
        "id": f"cap-{uuid.uuid4().hex[:8]}",
        "tools": ["pay"],
        "per": draw(st.sampled_from(["actor", "thread", "global"])),
        "window": "1h",
        "max": draw(st.one_of(st.integers(0, 60), st.integers(0, 120).map(lambda n: n / 2))),
        "then": then,
    }
    if then == "ask":
        limit["approvers"] = ["treasurer"]
    if not counted:
        limit["sum"] = "args.amount"
    return limit, calls


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(race=races())
def test_processes_racing_on_a_limit_never_pass_its_maximum(
    db: Any, workers: list[subprocess.Popen[str]], race: Any
) -> None:
    limit, calls = race
    at = time.time() + 0.15
    for proc, mine in zip(workers, calls, strict=True):
        task = {"policy": {"limits": [limit]}, "at": at, "calls": mine}
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(task) + "\n")
        proc.stdin.flush()
    answers = []
    for proc in workers:  # every answer read before any check (the next example starts clean)
        assert proc.stdout is not None
        answers += json.loads(proc.stdout.readline())
    verdicts: dict[str, set[tuple[float, float, bool]]] = {}
    for cid, total, amount, over in answers:
        assert over == (total + amount > limit["max"])
        verdicts.setdefault(cid, set()).add((total, amount, over))
    rows = table_rows(
        db,
        "SELECT tool_call_id, amount, total, over_max FROM handrail_limit_uses "
        "WHERE limit_id = ? ORDER BY total, tool_call_id",
        (limit["id"],),
    )
    # Each call is reserved once, and every process deciding it got the verdict it holds.
    assert len({r["tool_call_id"] for r in rows}) == len(rows)
    for r in rows:
        assert verdicts[r["tool_call_id"]] == {(r["total"], r["amount"], bool(r["over_max"]))}
    # The calls let through without a person never pass the maximum...
    within = sum(r["amount"] for r in rows if not r["over_max"])
    assert within <= limit["max"]
    if limit["then"] == "deny":
        assert all(not r["over_max"] for r in rows)
    # ... because the uses were reserved one after another: each saw all the earlier ones.
    seen = 0.0
    for r in sorted(rows, key=lambda r: (r["total"], r["amount"] != 0)):
        assert r["total"] == seen, rows
        seen += r["amount"]
    # A call refused by a deny limit reserved nothing.
    refused = {cid for cid, v in verdicts.items() if any(over for _, _, over in v)}
    if limit["then"] == "deny":
        assert refused.isdisjoint(r["tool_call_id"] for r in rows)
