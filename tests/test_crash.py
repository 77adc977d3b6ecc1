"""Crash tests: a side-effecting tool is never silently run twice, wherever the process dies.

Every case runs real OS processes (``crash_child.py``) on a real SQLite checkpoint file. A process
runs the agent until it kills *itself* with SIGKILL at one of three points; a fresh process then
resumes the thread by its ID alone (``graph.invoke(None, config)``). The tool, ``pay``, makes its
side effect by committing a row to a *separate* SQLite file, so the payments counted there are
the ground truth, independent of anything Handrail or LangGraph saved.

The kill points, around the ``execute`` node that runs the tool:

(a) ``execute`` starts (``on_chain_start`` of its run): no ledger intent, no payment yet.
    Must end: the resumed run pays once and completes ("done").
(b) inside ``pay``, right after its payment is committed: the ledger holds an intent and no
    outcome. Nobody can know whether the payment happened, so the resumed run must not pay again:
    it must end as an ``outcome_unknown`` escalation. An operator then skips it (in another fresh
    process) and the model is told it was skipped.
(c) ``execute`` returned (``on_chain_end`` of its run): the ledger has the outcome, but LangGraph
    has not saved the node's writes or the step's checkpoint (``on_chain_end`` fires inside the
    task's ``proc.invoke``, before the runner's ``commit`` hands the writes to ``put_writes``).
    LangGraph runs ``execute`` again; it must end with the recorded result, without paying again.

Each point runs under LangGraph's ``durability="sync"`` and ``"async"``, and in two flows:
``allowed`` (the policy allows the payment; the first run is killed) and ``approved`` (it waits
for a treasurer; the process applying the approval through `Inbox.approve` is killed). In every
case exactly one payment is made, never two.

A decided approval survives the crash in every case (a *lost approval* would be one the resumed
thread asks for again). With ``durability="sync"`` LangGraph saved the approval step before
``execute`` started. With ``"async"`` it saves that step in the background while ``execute``
runs, and a kill often beats it (with ``"exit"``, which the approved flow also runs under, it
always does); the approval node then finds the decision in Handrail's own
tables (the ledger saw the call begin, or the approvals table recorded the approval) and goes on
instead of asking a treasurer to approve a payment that may already have been made.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from crash_child import CALL_ID, THREAD, build_graph, payments
from langchain_core.messages import ToolMessage

from handrail import Inbox
from handrail.audit import AuditLog
from handrail.storage.ledger import Ledger

pytestmark = pytest.mark.backends("sqlite", "postgresql")

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = CHILD.parent.parent


@dataclass
class Exit:
    """How one child process ended."""

    pid: int
    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON line the child printed: where the thread stands."""
        assert self.returncode == 0, self.stderr
        parsed: dict[str, Any] = json.loads(self.stdout.strip().splitlines()[-1])
        return parsed


@dataclass
class Thread:
    """One thread on its own database (the ``db`` fixture) and payments file, driven by child
    processes."""

    db: str | Path
    tmp_path: Path
    mode: str
    flow: str

    @property
    def effects_db(self) -> Path:
        return self.tmp_path / "payments.db"

    def run(self, phase: str, point: str = "none") -> Exit:
        """Run one phase in a fresh process, armed to die at ``point``."""
        args = [self.db, self.effects_db, self.mode, point, phase, self.flow]
        with subprocess.Popen(
            [sys.executable, str(CHILD), *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            out, err = proc.communicate(timeout=60)
        return Exit(proc.pid, proc.returncode, out, err)

    def payments(self) -> list[int]:
        """The id of the process behind each payment made so far."""
        return payments(self.effects_db)

    def ledger(self) -> list[dict[str, Any]]:
        ledger = Ledger(self.db)
        try:
            return ledger.entries(THREAD)
        finally:
            ledger.close()

    def saved(self) -> tuple[tuple[str, ...], list[str], list[str]]:
        """The saved thread: its next nodes, its tool results, the tasks whose writes are saved."""
        graph = build_graph(self.db, self.effects_db, self.flow)
        state = graph.get_state({"configurable": {"thread_id": THREAD}})
        messages = state.values.get("messages", [])
        results = [str(m.text) for m in messages if isinstance(m, ToolMessage)]
        return state.next, results, [t.name for t in state.tasks if t.result is not None]

    def audit(self) -> list[tuple[str, str]]:
        """(call id, event) of each audit row of the thread, in order; the chain must verify."""
        log = AuditLog(self.db, readonly=True)
        try:
            assert log.verify().ok
            return [(r["tool_call_id"], r["event"]) for r in log.export(thread_id=THREAD)]
        finally:
            log.close()

    def waiting(self) -> list[str]:
        """The kind of each request the inbox lists for the thread."""
        inbox = Inbox(self.db)
        try:
            return [item.kind for item in inbox.show(THREAD)]
        finally:
            inbox.close()


POINTS = ["a", "b", "c"]
MODES = ["sync", "async", "exit"]
FLOWS = ["allowed", "approved"]


CASES = [
    (point, mode, flow)
    for flow in FLOWS
    for mode in MODES
    for point in POINTS
    # "exit" saves nothing of a killed first run: there is no thread to resume by its ID
    if not (mode == "exit" and flow == "allowed")
]


@pytest.mark.parametrize(("point", "mode", "flow"), CASES)
def test_a_killed_run_resumed_by_thread_id_never_pays_twice(
    db: str | Path, tmp_path: Path, point: str, mode: str, flow: str
) -> None:
    thread = Thread(db, tmp_path, mode, flow)
    if flow == "approved":
        assert thread.run("start").summary["interrupt"] == "approval"
        killed = thread.run("approve", point)
    else:
        killed = thread.run("start", point)

    # The process died by SIGKILL, at the point it was armed for.
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert thread.payments() == ([] if point == "a" else [killed.pid])
    ledger = thread.ledger()
    if point == "a":
        assert ledger == []  # died before the intent
    else:
        (row,) = ledger
        assert (row["tool_call_id"], row["pid"], row["attempt"]) == (CALL_ID, killed.pid, 0)
        if point == "b":
            assert row["outcome"] is None  # paid, and never reported back
        else:
            assert (row["outcome"], row["result"]) == ("succeeded", "paid")
    next_nodes, results, task_writes = thread.saved()
    assert results == [] and "execute" not in task_writes, task_writes  # nothing of `execute`
    if mode == "sync":  # the step before was saved before `execute` started
        assert next_nodes == ("execute",)

    # A fresh process resumes the thread by its ID.
    after = thread.run("resume").summary
    assert after["interrupt"] != "approval", "a decided approval was asked for again"

    if point == "b":
        # The payment may or may not have happened: a human decides, nothing is paid again.
        assert (after["interrupt"], after["errors"]) == ("escalation", ["outcome_unknown"])
        assert after["status"] == "escalated"
        assert thread.payments() == [killed.pid]
        assert thread.waiting() == ["escalation"]
        after = thread.run("decide-escalation").summary
        assert after["status"] == "failed"
        (told,) = after["tool_results"]
        assert told.startswith("Skipped by ops-1") and "outcome unknown" in told
    else:
        # (a) pays now, once; (c) uses the result the ledger recorded before the crash.
        assert after["status"] == "succeeded"
        assert after["tool_results"] == ["paid"]
    assert (after["interrupt"], after["last"]) == (None, "done")

    # The ground truth: exactly one payment, made by the killed process unless it died first.
    (payer,) = thread.payments()
    assert (payer == killed.pid) == (point != "a")
    (row,) = thread.ledger()
    assert (row["attempt"], row["pid"], row["outcome"] is None) == (0, payer, point == "b")
    assert thread.waiting() == []

    # The audit trail tells the same story, each step once, whatever was replayed.
    steps = thread.audit()
    payment = [event for call, event in steps if call == CALL_ID]
    asked = ["approval_requested", "approval_decided"] if flow == "approved" else []
    if point == "b":
        outcome = ["failed", "escalated", "approval_requested", "approval_decided"]
    else:
        outcome = ["succeeded"]
    assert payment == ["decided", *asked, "started", *outcome]
