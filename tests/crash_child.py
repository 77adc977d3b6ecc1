"""One phase of a crash test, in its own process: ``test_crash.py`` runs it and kills it.

    python tests/crash_child.py DB EFFECTS_DB MODE POINT PHASE FLOW

MODE is LangGraph's durability (``sync`` or ``async``). POINT is where the process kills itself
with SIGKILL (``none``, ``a``, ``b`` or ``c``, see `Killer`). FLOW is ``allowed`` (the agent pays
250, which the policy allows) or ``approved`` (it pays 5000, which waits for a treasurer).
PHASE is one of:

- ``start``: run the thread from the user's message;
- ``approve``: approve the pending payment through `Inbox.approve`;
- ``resume``: go on with the thread by its ID after a crash (``invoke(None, ...)``);
- ``decide-escalation``: skip the escalated call through `Inbox.skip`.

A phase that is not killed prints one JSON line (`summary`) for the test to read.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool
from langgraph._internal._constants import CONFIG_KEY_DURABILITY
from langgraph.types import Durability

from handrail import Actor, HandrailGraph, Inbox, Policy, RunContext, build_agent
from handrail.testing import ScriptedChatModel

THREAD = "t-crash"
CALL_ID = "call_0_0"
"""The id `ScriptedChatModel` gives the payment (turn 0, call 0)."""
AMOUNTS = {"allowed": 250.0, "approved": 5000.0}
AGENT = Actor(id="agent-123", roles=("ai-agent",))
TREASURER = Actor(id="alice", roles=("treasurer",))
OPERATOR = Actor(id="ops-1", roles=("operator",))

POLICY = """
rules:
  - id: small-payments
    tools: [pay]
    roles: [ai-agent]
    when: "args.amount <= 1000.0"
    effect: allow
  - id: big-payments
    tools: [pay]
    roles: [ai-agent]
    when: "args.amount > 1000.0"
    effect: ask
    approvers: [treasurer]
tools:
  pay: {idempotent: false}
"""
"""``pay`` is side-effecting: it goes through the execution ledger (the default, spelled out)."""

_EFFECTS = "CREATE TABLE IF NOT EXISTS payments (id INTEGER PRIMARY KEY, pid INTEGER, amount REAL)"


def payments(effects_db: Path) -> list[int]:
    """Every side effect ``pay`` has had: the id of the process that made it, in order."""
    with closing(sqlite3.connect(effects_db)) as conn:
        conn.execute(_EFFECTS)
        return [pid for (pid,) in conn.execute("SELECT pid FROM payments ORDER BY id")]


def pay_tool(effects_db: Path, *, die_after_effect: bool = False) -> BaseTool:
    """``pay``: one committed row in ``effects_db`` per call (then SIGKILL, for kill point b)."""

    @tool
    def pay(to: str, amount: float) -> str:
        """Send money to someone."""
        with closing(sqlite3.connect(effects_db)) as conn, conn:
            conn.execute(_EFFECTS)
            conn.execute("INSERT INTO payments (pid, amount) VALUES (?, ?)", (os.getpid(), amount))
        if die_after_effect:  # (b) the payment is made and the tool never returns
            os.kill(os.getpid(), signal.SIGKILL)
        return "paid"

    return pay


def build_graph(
    db: str | Path,
    effects_db: Path,
    flow: str,
    *,
    die_after_effect: bool = False,
    policy: str = POLICY,
) -> HandrailGraph:
    """The agent: turn 1 pays bob the flow's amount, turn 2 says "done"."""
    payment = {"name": "pay", "args": {"to": "bob", "amount": AMOUNTS[flow]}, "id": None}
    script = [AIMessage("", tool_calls=[payment]), AIMessage("done")]
    tools = [pay_tool(effects_db, die_after_effect=die_after_effect)]
    return build_agent(ScriptedChatModel(script), tools, Policy.from_yaml(policy), checkpointer=db)


class Killer(BaseCallbackHandler):
    """SIGKILLs this process at a kill point of the ``execute`` node (the task LangGraph runs).

    - ``a``: the node's run starts: no ledger intent yet, the tool has not run;
    - ``c``: the node's run ends: the tool ran and the ledger has its outcome, but LangGraph has
      not yet saved the node's writes (``put_writes``) nor the step's checkpoint.

    (``b``, inside the tool right after its side effect, is `pay_tool`'s.)
    """

    def __init__(self, point: str) -> None:
        self.point = point
        self.names: dict[UUID, str] = {}

    def on_chain_start(
        self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        name = kwargs.get("name") or ""
        self.names[run_id] = name
        if self.point == "a" and name == "execute":
            os.kill(os.getpid(), signal.SIGKILL)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        # on_chain_end carries no name: the run's id says which run ended
        if self.point == "c" and self.names.get(run_id) == "execute":
            os.kill(os.getpid(), signal.SIGKILL)


def summary(graph: HandrailGraph) -> dict[str, Any]:
    """Where the thread stands: its pause (if any), the payment's record, the last message."""
    state = graph.get_state({"configurable": {"thread_id": THREAD}})
    messages = state.values.get("messages", [])
    record = (state.values.get("calls") or {}).get(CALL_ID)
    paused = next((i.value["handrail"] for i in state.interrupts), None)
    return {
        "interrupt": paused["kind"] if paused else None,
        "errors": [c["error"]["kind"] for c in paused["calls"].values() if c["error"]]
        if paused
        else [],
        "status": record.status if record else None,
        "tool_results": [m.text for m in messages if isinstance(m, ToolMessage)],
        "last": messages[-1].text if messages else None,
    }


def main(argv: list[str]) -> None:
    db, effects_db, durability, point, phase, flow = argv
    mode = cast(Durability, durability)
    graph = build_graph(db, Path(effects_db), flow, die_after_effect=point == "b")
    callbacks: list[BaseCallbackHandler] = [Killer(point)]
    config: RunnableConfig = {"configurable": {"thread_id": THREAD}, "callbacks": callbacks}
    ctx = RunContext(actor=AGENT)
    if phase == "start":
        graph.invoke({"messages": [("user", "pay bob")]}, config, context=ctx, durability=mode)
    elif phase == "resume":
        graph.invoke(None, config, context=ctx, durability=mode)
    else:
        # Inbox resumes with graph.invoke and takes no durability or callbacks, so both ride on
        # the graph's own config (LangGraph reads the durability from this configurable key).
        bound = graph.with_config(callbacks=callbacks, configurable={CONFIG_KEY_DURABILITY: mode})
        inbox = Inbox(db, graph=bound)
        if phase == "approve":
            inbox.approve(THREAD, approver=TREASURER)
        elif phase == "decide-escalation":
            inbox.skip(THREAD, approver=OPERATOR)
        else:
            raise SystemExit(f"unknown phase {phase!r}")
    print(json.dumps(summary(graph)))


if __name__ == "__main__":
    main(sys.argv[1:])
