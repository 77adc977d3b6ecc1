"""``handrail demo``: a small bank whose agent is gated by a policy, paused, and resumed elsewhere.

The first process runs the agent until a 5,000 transfer waits for a treasurer, then exits (with
``--pause`` it stops there and prints the ``handrail approve`` command to paste); a second
process finds the request in the inbox of the SQLite file, approves it by thread ID, and the run
ends with a ``delete_user`` call that the policy denies. Last, the thread's audit trail:
every step of every call, from both processes, in one verified hash chain.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.runnables import RunnableConfig

from handrail.audit import AuditLog
from handrail.context import Actor, RunContext
from handrail.graph import HandrailGraph, build_agent
from handrail.inbox import Inbox
from handrail.policies import Policy
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

AGENT = Actor(id="agent-123", roles=("ai-agent",))
TREASURER = Actor(id="alice", roles=("treasurer",))


def _call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": None}


def demo_model() -> ScriptedChatModel:
    """The demo's scripted model: the same script in every process, so a resume goes on."""
    return ScriptedChatModel(
        [
            AIMessage(
                "Checking the balance and paying Bob.",
                tool_calls=[
                    _call("get_balance", account="operating"),
                    _call("transfer_funds", to="bob", amount="250", memo="invoice 17"),
                ],
            ),
            AIMessage(
                "Paying Carol.",
                tool_calls=[_call("transfer_funds", to="carol", amount=5000, memo="contract")],
            ),
            AIMessage(
                "Cleaning up Bob's account.", tool_calls=[_call("delete_user", user_id="bob")]
            ),
            AIMessage("Done: Bob got 250, Carol got 5,000; deleting Bob was not allowed."),
        ]
    )


GRAPH_NAME = "handrail_demo"
"""The demo graph's name; the ``handrail.graphs`` entry point of that name rebuilds it."""


def demo_graph(db: str | Path, policy_path: Path = POLICY_PATH) -> HandrailGraph:
    """The demo agent on the SQLite file ``db`` (checkpoints and the bank's tables)."""
    return build_agent(
        demo_model(),
        banking_tools(db),
        Policy.from_file(policy_path),
        checkpointer=db,
        name=GRAPH_NAME,
    )


def run(db: str | Path, out: TextIO = sys.stdout) -> int:
    """Part one, then part two in a new process. Returns the exit status."""
    thread = _part_one(db, out)
    print(f"   checkpoint saved to {db}; this process (pid {os.getpid()}) hands over.\n", file=out)
    out.flush()
    step = subprocess.run(
        [sys.executable, "-m", "handrail", "demo", "--db", str(db), "--resume", thread],
        check=False,
    )
    return step.returncode


def pause(db: str | Path, out: TextIO = sys.stdout) -> int:
    """Part one only: stop at the approval and print the command that approves it."""
    thread = _part_one(db, out)
    where = ["--db", str(db)]
    print(
        f"   checkpoint saved to {db}; this process (pid {os.getpid()}) stops here.\n\n"
        f"   See the request:  {shlex.join(['handrail', 'show', thread, *where])}\n"
        f"   Approve it as {TREASURER.id}, a treasurer:\n\n"
        f"   {approve_command(thread, db)}\n",
        file=out,
    )
    return 0


def approve_command(thread: str, db: str | Path) -> str:
    """The shell command that approves the demo's paused transfer on ``thread`` as the
    treasurer."""
    approve = ["handrail", "approve", thread, "--db", str(db), "--as", TREASURER.id]
    return shlex.join([*approve, "--role", TREASURER.roles[0]])


def _part_one(db: str | Path, out: TextIO) -> str:
    """Run the agent on a new thread until the big transfer waits for a treasurer; the thread."""
    thread = f"demo-{uuid.uuid4().hex[:8]}"
    graph = demo_graph(db)
    config: RunnableConfig = {"configurable": {"thread_id": thread}}
    say: Callable[[str], None] = functools.partial(print, file=out)
    say(f"Handrail demo · policy {POLICY_PATH.name} · database {db} · thread {thread}\n")
    say("1. user: check the operating balance, pay Bob 250 and Carol 5,000")
    result = graph.invoke(
        {"messages": [("user", "Check the operating balance, pay Bob 250 and Carol 5,000.")]},
        config,
        context=RunContext(actor=AGENT),
    )
    _show(say, result["messages"], result["calls"])
    request = result["__interrupt__"][0].value
    info = request["handrail"]
    asked = info["calls"][info["tool_call_ids"][0]]
    say(
        f"\n2. paused for approval: {asked['tool']}({asked['args']}) "
        f"under rule {asked['rule_id']!r}; approvers: {asked['approvers']}"
    )
    return thread


def resume(db: str | Path, thread: str, out: TextIO = sys.stdout) -> int:
    """Part two: a fresh process approves the paused transfer by thread ID and finishes."""
    say: Callable[[str], None] = functools.partial(print, file=out)
    inbox = Inbox(db, graph=demo_graph(db))
    say(f"3. new process (pid {os.getpid()}): the inbox of {db} lists")
    for item in inbox.pending(approver_role="treasurer"):
        say(
            f"   · thread {item.thread_id}: {item.tool}({item.args}) asked by {item.actor.id} "
            f"under {item.rule_id!r}, args hash {item.args_hash[:12]}…"
        )
    say(
        f"   {TREASURER.id} ({', '.join(TREASURER.roles)}) approves thread {thread}; from a shell: "
        + approve_command(thread, db)
    )
    carol_before = sum(1 for to, _ in transfers(db) if to == "carol")
    result = inbox.approve(thread, approver=TREASURER)
    _show(say, result["messages"][-5:], result["calls"])
    say(f"\n4. the agent says: {result['messages'][-1].text}")
    made = transfers(db)
    say(f"   transfers in the bank's ledger: {made}")
    ran = sum(1 for to, _ in made if to == "carol") - carol_before
    say(f"   the approved 5,000 transfer ran {ran} time(s).")
    return 0 if ran == 1 and _audit(say, db, thread) else 1


def _audit(say: Callable[[str], None], db: str | Path, thread: str) -> bool:
    """Part three: the thread's audit trail, written by both processes, and its check."""
    log = AuditLog(db, readonly=True)
    try:
        rows = list(log.export(thread_id=thread))
        check = log.verify()
    finally:
        log.close()
    say(f"\n5. the audit trail of thread {thread}: {len(rows)} events from both processes")
    for row in rows:
        who = f"by {row['approver']}" if row["event"] == "approval_decided" else ""
        say(
            f"   #{row['seq']:<4} {row['event']:<18} {row['tool']:<14} "
            f"{row['decision'] or '':<8} {row['rule_id'] or '':<14} {who}".rstrip()
        )
    verdict = f"ok, {check.rows} rows, head {check.head}" if check.ok else f"{check.problem}"
    say(f"   handrail audit verify --db {db}: {verdict}")
    return check.ok


def _show(say: Callable[[str], None], messages: list[BaseMessage], calls: dict[str, Any]) -> None:
    for m in messages:
        if isinstance(m, AIMessage) and m.tool_calls:
            for c in m.tool_calls:
                rec = calls.get(c["id"] or "")
                verdict = f"{rec.decision} by {rec.rule_id or 'default'}" if rec else "?"
                if rec and rec.approver:
                    verdict += f", approved by {rec.approver}"
                say(f"   agent → {c['name']}({c['args']})   [{verdict}]")
        elif isinstance(m, ToolMessage):
            mark = "✓" if m.status == "success" else "✗"
            say(f"   {mark} {m.name}: {m.text}")
