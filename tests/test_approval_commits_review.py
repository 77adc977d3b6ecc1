"""An adversarial review of the approval path's merged commits (6659a37, 6c0106a): a request's
rows and its ``approval_requested`` events in one commit, skipped on the step's re-run when a
read finds them standing (`ApprovalTable.open`, `handrail.storage._approval_rows.standing`); a
decision's proofs, events and outcomes in one commit (`ApprovalTable.resolve`).

Each test is a finding. A passing test documents a guarantee that holds under the attack; a
strict xfail is a hole, its reason saying what goes wrong and where. Kills are real SIGKILLs of
a child process at the named point (as ``test_forgery.CRASHING_APPROVER`` does).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.types import Command
from support import CTX, TREASURER, approve, config, table_rows

from handrail import Actor, Inbox, Policy, build_agent
from handrail.audit import AuditLog
from handrail.errors import AlreadyDecided
from handrail.storage import approvals as approvals_module
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

BOB = {"id": "bob", "roles": ["treasurer"]}
TWO_PERSON = """
version: 1
default: deny
rules:
  - {id: two, tools: [transfer_funds], roles: [ai-agent], effect: ask,
     approvers: [treasurer], min_approvals: 2}
"""

CHILD = """
import json, os, signal, sys
from langchain_core.messages import AIMessage
from langgraph.types import Command
from handrail import Actor, Policy, RunContext, build_agent
from handrail.storage import approvals
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import banking_tools

db, policy_text, phase, kill = sys.argv[1:5]
call = {"name": "transfer_funds", "id": "c1", "args": {"to": "carol", "amount": 5000}}
model = ScriptedChatModel([AIMessage("", tool_calls=[call]), AIMessage("ok")])
graph = build_agent(model, banking_tools(db), Policy.from_yaml(policy_text), checkpointer=db)


def die(*_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if kill == "after-pre-check":  # the read said what it said; the write never happens
    read = approvals.standing
    approvals.standing = lambda *a, **k: (read(*a, **k), die())[0]
elif kill in ("after-open", "after-resolve"):
    name = kill.removeprefix("after-")
    kept = getattr(approvals.ApprovalTable, name)

    def then_die(self, *args, **kwargs):
        done = kept(self, *args, **kwargs)
        if name == "resolve" or done:
            die()
        return done

    setattr(approvals.ApprovalTable, name, then_die)
ctx = RunContext(actor=Actor(id="agent-123", roles=("ai-agent",)))
cfg = {"configurable": {"thread_id": "t-1"}}
if phase == "start":
    graph.invoke({"messages": [("user", "pay carol")]}, cfg, context=ctx)
elif phase == "run-on":
    graph.invoke(None, cfg, context=ctx)
else:
    resume = {"decisions": [{"type": "approve"}], "approver": json.loads(phase)}
    graph.invoke(Command(resume=resume), cfg, context=ctx)
"""


def child(tmp: Path, db: Any, phase: str, kill: str = "none", policy: str | None = None) -> int:
    """Run one phase of thread ``t-1`` in a process of its own; its exit status."""
    script = tmp / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    text = policy or Path(POLICY_PATH).read_text()
    done = subprocess.run(
        [sys.executable, str(script), str(db), text, phase, kill],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode in (0, -signal.SIGKILL), done.stderr.decode()[-2000:]
    return done.returncode


def graph(db: Any, policy: str | None = None) -> Any:
    """The demo bank on ``db``, its model asking once to pay carol 5,000 under call id c1."""
    pay = {"name": "transfer_funds", "id": "c1", "args": {"to": "carol", "amount": 5000}}
    model = ScriptedChatModel([AIMessage("", tool_calls=[pay]), AIMessage("ok")])
    rules = Policy.from_yaml(policy) if policy else Policy.from_file(POLICY_PATH)
    return build_agent(model, banking_tools(db), rules, checkpointer=db)


def audit(db: Any, thread: str = "t-1") -> list[tuple[int, str, str | None]]:
    """(call_seq, event, approver) of the thread's audit rows, in the chain's order."""
    rows = table_rows(
        db,
        "SELECT call_seq, event, approver FROM handrail_audit WHERE thread_id = ? ORDER BY seq",
        (thread,),
    )
    return [(r["call_seq"], r["event"], r["approver"]) for r in rows]


def contiguous(rows: list[tuple[int, str, str | None]]) -> bool:
    """Each call_seq once, from 0 with no gap."""
    return [r[0] for r in rows] == list(range(len(rows)))


APPROVED = ["decided", "approval_requested", "approval_decided", "started", "succeeded"]
"""The events of a call asked about, approved and run, in order."""


def sound(db: Any) -> bool:
    """The thread's audit has no gap in any call's events and the whole chain verifies."""
    return contiguous(audit(db)) and AuditLog(db).verify().ok


def _actor(who: dict[str, Any]) -> Actor:
    return Actor(id=who["id"], roles=tuple(who["roles"]))


def waiting(db: Any) -> list[dict[str, Any]]:
    return table_rows(
        db,
        "SELECT tool_call_id, status, outcome, approvals FROM handrail_approvals "
        "WHERE status IN ('open', 'deciding') AND outcome IS NULL",
    )


# -- kills around the pre-check and the merged commits ------------------------------------------


@pytest.mark.backends("sqlite", "postgresql")
@pytest.mark.parametrize("kill", ["after-pre-check", "after-open"])
def test_a_kill_around_the_requests_commit_leaves_rows_and_events_once(
    tmp_path: Path, db: Any, kill: str
) -> None:
    """Killed after the pre-check read (nothing written) or right after the commit of the rows
    and the ``approval_requested`` event (the interrupt never saved): the next run asks once,
    one row waits, and the event is in the audit exactly once."""
    assert child(tmp_path, db, "start", kill) == -signal.SIGKILL
    rows = waiting(db)
    events = audit(db)
    assert len(rows) == (0 if kill == "after-pre-check" else 1)
    assert [e for _, e, _ in events].count("approval_requested") == len(rows)
    assert "__interrupt__" in graph(db).invoke(None, config(), context=CTX)
    assert [r["tool_call_id"] for r in waiting(db)] == ["c1"]
    assert child(tmp_path, db, json.dumps(TREASURER)) == 0
    assert transfers(db) == [("carol", 5000.0)]
    assert [e for _, e, _ in audit(db)] == APPROVED
    assert sound(db)
    assert Inbox(db).pending() == []


@pytest.mark.backends("sqlite", "postgresql")
def test_a_resume_killed_between_its_pre_check_and_its_decision_is_taken_over(
    tmp_path: Path, db: Any
) -> None:
    """The resume's re-run reads the rows standing and is killed there (its claim left behind):
    another process's resume takes the dead claim over and the call runs once, its events once."""
    graph(db).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    assert child(tmp_path, db, json.dumps(TREASURER), "after-pre-check") == -signal.SIGKILL
    assert transfers(db) == []
    graph(db).invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]
    assert sound(db)
    assert Inbox(db).pending() == []


@pytest.mark.backends("sqlite", "postgresql")
def test_a_decision_killed_after_its_commit_is_recovered_without_a_second_event(
    tmp_path: Path, db: Any
) -> None:
    """Killed right after the commit of the proofs, the ``approval_decided`` event and the
    outcome (before the checkpoint): running the thread on recovers the approval from the store,
    records no second decision, and runs the call once."""
    graph(db).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    assert child(tmp_path, db, json.dumps(TREASURER), "after-resolve") == -signal.SIGKILL
    assert [e for _, e, _ in audit(db)][-1] == "approval_decided"
    graph(db).invoke(None, config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]
    assert [e for _, e, _ in audit(db)] == APPROVED
    assert contiguous(audit(db)) and Inbox(db).pending() == []


# -- two approvers ------------------------------------------------------------------------------


@pytest.mark.backends("sqlite", "postgresql")
def test_a_two_person_round_lists_the_first_approval_and_asks_each_approver_once(
    tmp_path: Path, db: Any
) -> None:
    """min_approvals 2, each resume from a new process: after alice the row waits again with her
    approval listed (the still-waiting rows written in `resolve`'s commit), the second
    ask is a new ``approval_requested`` (not dropped as recorded), bob's approval runs the call."""
    graph(db, TWO_PERSON).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    assert child(tmp_path, db, json.dumps(TREASURER), policy=TWO_PERSON) == 0
    (row,) = waiting(db)
    assert json.loads(row["approvals"]) == ["alice"] and row["status"] == "open"
    assert [p.approvals for p in Inbox(db).pending()] == [("alice",)]
    assert child(tmp_path, db, json.dumps(BOB), policy=TWO_PERSON) == 0
    assert transfers(db) == [("carol", 5000.0)]
    assert audit(db) == [
        (0, "decided", None),
        (1, "approval_requested", None),
        (2, "approval_decided", "alice"),
        (3, "approval_requested", "alice"),
        (4, "approval_decided", "bob"),
        (5, "started", "bob"),
        (6, "succeeded", "bob"),
    ]
    assert Inbox(db).pending() == [] and AuditLog(db).verify().ok


@pytest.mark.backends("sqlite", "postgresql")
def test_a_first_approval_killed_after_its_commit_keeps_call_seq_unique(
    tmp_path: Path, db: Any
) -> None:
    """min_approvals 2; alice's resume is killed right after `resolve` committed her proof and
    event (before the rows were rewritten and the checkpoint saved). Bob then approves: the call
    runs once, both approvals are counted, and each call_seq is used once."""
    graph(db, TWO_PERSON).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    assert (
        child(tmp_path, db, json.dumps(TREASURER), "after-resolve", TWO_PERSON) == -signal.SIGKILL
    )
    assert child(tmp_path, db, json.dumps(BOB), policy=TWO_PERSON) == 0
    assert transfers(db) == [("carol", 5000.0)]  # holds: alice's proof counts
    assert AuditLog(db).verify().ok  # holds: the chain is whole
    assert contiguous(audit(db)), audit(db)


@pytest.mark.backends("sqlite", "postgresql")
def test_a_first_approval_killed_after_its_commit_is_listed_in_the_inbox(
    tmp_path: Path, db: Any
) -> None:
    """min_approvals 2; alice's resume is killed right after `resolve` committed: the inbox
    (what approvers read to decide) lists her approval, as Handrail's store holds it."""
    graph(db, TWO_PERSON).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    assert (
        child(tmp_path, db, json.dumps(TREASURER), "after-resolve", TWO_PERSON) == -signal.SIGKILL
    )
    assert [r["approver"] for r in table_rows(db, "SELECT approver FROM handrail_proofs")] == [
        "alice"
    ]
    assert [p.approvals for p in Inbox(db).pending()] == [("alice",)]


# -- two processes at once: the pre-check is a read outside the transaction ---------------------


def pause_after_pre_check(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[threading.Event, threading.Event]:
    """Make the thread named ``A`` stop right after its pre-check read (`standing`, the real
    one, runs first): ``read`` is set then, and A goes on once ``decided`` is set."""
    read, decided = threading.Event(), threading.Event()
    kept = approvals_module.standing

    def slow_standing(*args: Any, **kwargs: Any) -> bool:
        found = kept(*args, **kwargs)
        if threading.current_thread().name == "A":
            read.set()
            assert decided.wait(60)
        return found

    monkeypatch.setattr(approvals_module, "standing", slow_standing)
    return read, decided


@pytest.mark.backends("sqlite", "postgresql")
def test_a_decision_landing_between_a_re_runs_pre_check_and_its_skip_is_not_undone(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process A runs the paused thread on (``invoke(None)``: the approval node re-runs, its
    rows read as standing); before A goes on, process B approves through the inbox and the call
    runs. A's stale read makes it write nothing, so it cannot reopen the request B decided (the
    upsert before these commits could): the inbox stays exact and the call runs once."""
    graph(db).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    read, decided = pause_after_pre_check(monkeypatch)
    errors: list[BaseException] = []

    def run_on() -> None:
        try:
            graph(db).invoke(None, config(), context=CTX)
        except BaseException as exc:  # reported below
            errors.append(exc)

    a = threading.Thread(target=run_on, name="A")
    a.start()
    assert read.wait(60)
    try:
        Inbox(db, graph=graph(db)).approve("t-1", approver=_actor(TREASURER))
    finally:
        decided.set()
        a.join(60)
    assert not errors, errors
    assert transfers(db) == [("carol", 5000.0)]
    assert waiting(db) == [] and Inbox(db).pending() == []
    assert [e for _, e, _ in audit(db)].count("approval_requested") == 1
    assert sound(db)


@pytest.mark.xfail(
    strict=True,
    reason="ApprovalTable.open (handrail/storage/approvals.py): when the pre-check finds the "
    "rows changed (here the policy's description, so the item differs) the upsert runs after "
    "another process decided the request, and its ON CONFLICT branch sets outcome = NULL, "
    "status = 'open': the inbox lists a request no checkpoint waits for",
)
@pytest.mark.backends("sqlite", "postgresql")
def test_a_re_run_whose_rows_changed_does_not_reopen_a_request_decided_meanwhile(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but A runs under a policy whose rule now has a description (changed between
    the pause and the re-run), so its pre-check reads the rows as not standing and A writes."""
    graph(db).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    described = (
        Path(POLICY_PATH)
        .read_text()
        .replace(
            "    approvers: [treasurer]\n    expires_in: 24h",
            "    approvers: [treasurer]\n    expires_in: 24h\n    description: Check the payee.",
        )
    )
    assert described != Path(POLICY_PATH).read_text()
    read, decided = pause_after_pre_check(monkeypatch)
    a = threading.Thread(
        target=lambda: graph(db, described).invoke(None, config(), context=CTX), name="A"
    )
    a.start()
    assert read.wait(60)
    try:
        Inbox(db, graph=graph(db)).approve("t-1", approver=_actor(TREASURER))
    finally:
        decided.set()
        a.join(60)
    assert transfers(db) == [("carol", 5000.0)]  # holds: B ran it once
    assert waiting(db) == []  # fails: A's upsert reopened c1


@pytest.mark.backends("sqlite", "postgresql")
def test_two_resumes_of_one_thread_at_once_decide_once(db: Any) -> None:
    """Two processes resume the same request at once: one claims it, the other is told it is
    already decided; the call runs once and each event is recorded once."""
    graph(db).invoke({"messages": [("user", "pay carol")]}, config(), context=CTX)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def resume(who: dict[str, Any]) -> None:
        g = graph(db)
        barrier.wait()
        try:
            g.invoke(Command(resume=approve(approver=who)), config(), context=CTX)
            outcomes.append("ran")
        except AlreadyDecided:
            outcomes.append("refused")

    runs = [threading.Thread(target=resume, args=(p,)) for p in (TREASURER, BOB)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(120)
    assert sorted(outcomes) == ["ran", "refused"]
    assert transfers(db) == [("carol", 5000.0)]
    assert [e for _, e, _ in audit(db)].count("approval_decided") == 1
    assert sound(db)


@pytest.mark.backends("postgresql")
def test_approvals_ledger_and_audit_locks_never_deadlock_on_postgresql(db: Any) -> None:
    """Eight threads each ask, approve and run a call on PostgreSQL at once: the approvals
    transaction takes its thread's advisory lock then the audit's, the ledger its own then the
    audit's, and nothing takes the audit's first; no deadlock, no lost event, one chain."""
    names = [f"p-{i}" for i in range(8)]
    for name in names:
        graph(db).invoke({"messages": [("user", "pay carol")]}, config(name), context=CTX)
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def decide(name: str) -> None:
        g = graph(db)
        barrier.wait()
        try:
            g.invoke(Command(resume=approve()), config(name), context=CTX)
        except BaseException as exc:  # reported below
            errors.append(exc)

    runs = [threading.Thread(target=decide, args=(n,)) for n in names]
    for t in runs:
        t.start()
    for t in runs:
        t.join(180)
    assert not errors, errors
    assert len(transfers(db)) == len(names)
    for name in names:
        assert [e for _, e, _ in audit(db, name)] == APPROVED
    assert AuditLog(db).verify().ok
