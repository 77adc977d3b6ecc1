"""Crash tests: a side-effecting tool is never run twice, wherever the process dies, whatever ids
the model gives its calls.

Every case runs real OS processes on a real SQLite file or PostgreSQL database: a process runs
one phase of the thread (``crash_child.py``) until it kills *itself* with SIGKILL at a kill
point; a fresh process then goes on with the thread by its ID alone, or submits the same request
again when the crash left nothing to go on with (``durability="exit"`` saves nothing of a killed
run). The tool, ``pay``, commits each payment to a *separate* SQLite file: the payments counted
there are the ground truth, independent of anything Handrail or LangGraph saved.

The processes are forked from a server that imported everything once (``forkserver``), so a
case costs its graph's runs, not a Python start-up per phase.

The matrix, each against each: kill points a (the tool's node starts), b (inside the tool,
after its payment), c (the node returned, its writes unsaved), d (while the step before it, the
model's or the approval's, is still being saved: a saver whose ``put`` of that checkpoint takes
0.3 s); durability ``sync``, ``async``, ``exit``; SQLite, PostgreSQL; `build_agent`, the tool
gate in a graph whose model node is the user's, `HandrailMiddleware`; a model with stable ids,
one that gives fresh ids per generation (as a provider does); the ``allowed`` flow and the
``approved`` one. Every case ends with exactly one payment, or none and an ``outcome_unknown``
escalation that a person settles; a decided approval is never asked for again.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from crash_child import MODES, THREAD, Case, Forks, crash, payments, random_case
from support import table_rows

from handrail import Inbox
from handrail.audit import AuditLog
from handrail.storage.ledger import Ledger

pytestmark = pytest.mark.backends("sqlite", "postgresql")


@pytest.fixture(scope="module")
def forks() -> Iterator[Forks]:
    server = Forks()
    yield server
    server.close()


def ledger_rows(db: str) -> list[dict[str, Any]]:
    ledger = Ledger(db)
    try:
        return ledger.entries(THREAD)
    finally:
        ledger.close()


def audit_events(db: str) -> list[tuple[str, str]]:
    """(call id, event) of each audit row of the thread, in order; the chain must verify."""
    log = AuditLog(db, readonly=True)
    try:
        assert log.verify().ok
        return [(r["tool_call_id"], r["event"]) for r in log.export(thread_id=THREAD)]
    finally:
        log.close()


EMBEDDINGS = ["agent", "gate", "middleware"]
MODELS = ["scripted", "fresh"]
POINTS = ["a", "b", "c", "d"]
FLOWS = ["allowed", "approved"]


def cases() -> list[Any]:
    return list(_cases())


def _cases() -> Iterator[Any]:
    for flow, embedding, model, mode, point in itertools.product(
        FLOWS, EMBEDDINGS, MODELS, MODES, POINTS
    ):
        yield pytest.param(
            flow, embedding, model, mode, point, id="-".join((flow, embedding, model, mode, point))
        )


@pytest.mark.parametrize(("flow", "embedding", "model", "mode", "point"), cases())
def test_a_killed_run_never_pays_twice(
    forks: Forks,
    db: str | Path,
    tmp_path: Path,
    flow: str,
    embedding: str,
    model: str,
    mode: str,
    point: str,
) -> None:
    effects = tmp_path / "payments.db"
    case = Case(str(db), str(effects), embedding, model, mode, point, flow)
    killed, after = crash(forks, case, tmp_path)
    paid = payments(effects)

    # The ground truth: one payment at most; none only when nobody could know (b never, a and
    # d when the kill came before the tool ran)
    assert len(paid) == 1, (paid, killed)
    if point == "b":
        assert killed.killed and paid == [killed.pid]
        assert after["tool_results"][-1].startswith("Skipped by ops-1")
    elif not killed.killed:  # "exit" saves nothing during a run: d never comes
        assert (mode, point) == ("exit", "d")
    else:
        assert after["status"] == "succeeded" and after["tool_results"] == ["paid"]

    # the ledger: one attempt per call that ran, a replay under a new id marks the row it took
    rows = ledger_rows(str(db))
    assert sum(1 for r in rows if r["replayed_by"] is None) == 1, rows
    assert all(r["attempt"] == 0 for r in rows)
    if after["replay_of"] is not None:
        assert model == "fresh" and {r["tool_call_id"] for r in rows} >= {after["replay_of"]}

    # the audit: each call started at most once, and only one call of the payment succeeded
    events = audit_events(str(db))
    started = [call for call, event in events if event == "started"]
    assert len(started) == len(set(started))
    assert sum(1 for _, event in events if event == "succeeded") == (point != "b")


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("point", POINTS)
def test_an_agent_run_as_a_node_of_another_graph_never_pays_twice(
    forks: Forks, db: str | Path, tmp_path: Path, point: str, mode: str
) -> None:
    """`build_agent` as a subgraph: its model's step is a checkpoint of its own namespace, lost
    while the parent's step it runs in was saved long before."""
    effects = tmp_path / "payments.db"
    case = Case(str(db), str(effects), "nested", "fresh", mode, point, "allowed")
    killed, after = crash(forks, case, tmp_path)
    assert killed.killed
    assert len(payments(effects)) == 1
    assert after["tool_results"][-1] == "paid" or after.get("escalated")


KILLS = 40
"""Randomized kills per embedding in ``make test`` (120 in all); ``benchmarks/kills.py`` runs
as many as asked for, on either backend."""


@pytest.mark.backends("sqlite")
@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_random_kills_never_pay_twice(forks: Forks, tmp_path: Path, embedding: str) -> None:
    """Kill threads at random moments, go on with each: exactly one payment every time."""
    rng = random.Random(embedding)
    kills = 0
    for n in itertools.count():
        assert n < 3 * KILLS, f"only {kills} of {n} runs were killed"
        root = tmp_path / str(n)
        root.mkdir()
        case = random_case(rng, root, embedding)
        killed, after = crash(forks, case, root)
        kills += killed.killed
        paid = len(payments(case.effects_db))
        # one payment, or none and a person told that its outcome is unknown
        assert paid == 1 or (paid == 0 and after.get("escalated")), (case, paid)
        if kills == KILLS:
            break


@pytest.mark.parametrize("embedding", ["agent", "gate"])
def test_a_request_whose_step_was_lost_leaves_the_inbox_when_asked_again(
    forks: Forks, db: str | Path, tmp_path: Path, embedding: str
) -> None:
    """The model's step is lost while the approval is already asked (``async``: the node runs
    while the step is saved); the thread, gone on with, asks again under the new id. The inbox
    then lists the one request a resume can decide, and approving it pays once."""
    effects = tmp_path / "payments.db"
    case = Case(str(db), str(effects), embedding, "fresh", "async", "d", "approved")
    assert forks.phase(case, "start", tmp_path).killed
    going = replace(case, point="none")
    assert forks.phase(going, "resume", tmp_path).summary["interrupt"] == "approval"
    inbox = Inbox(db)
    try:
        (waiting,) = inbox.pending()
        assert forks.phase(going, "approve", tmp_path).summary["status"] == "succeeded"
        assert inbox.pending() == []
    finally:
        inbox.close()
    assert len(payments(effects)) == 1
    rows = table_rows(db, "SELECT tool_call_id, outcome FROM handrail_approvals ORDER BY seq")
    outcomes = {r["tool_call_id"]: r["outcome"] for r in rows}
    assert sorted(outcomes.values()) == ["approve", "superseded"]
    assert outcomes[waiting.tool_call_id] == "approve"
