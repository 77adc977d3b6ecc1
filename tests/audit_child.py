"""One phase of an audited payment, in its own process: ``audit_child.py DB PHASE``.

Phases: ``start`` (the payment waits for a treasurer), ``edit-and-die-in-the-tool`` (alice edits
it down to an allowed amount; the process is SIGKILLed inside the tool, after its side effect),
``reject-and-die-before-the-model`` (alice rejects; killed as the model's step starts),
``resume`` (prints the kind of request the thread waits on), ``approve-as-bob``. Every phase that
runs the graph uses ``durability="exit"``, so a killed phase leaves none of its steps saved.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.types import Command

from handrail import Actor, Policy, RunContext, build_agent
from handrail.graph import HandrailGraph
from handrail.testing import ScriptedChatModel

POLICY = Policy.from_yaml(
    """
rules:
  - {id: small, tools: [pay], effect: allow, when: "args.amount <= 100.0"}
  - {id: big, tools: [pay], effect: ask, approvers: [treasurer], when: "args.amount > 100.0"}
"""
)
CONFIG: Any = {"configurable": {"thread_id": "t"}}
CTX = RunContext(actor=Actor(id="agent-1", roles=("ai-agent",)))


class DieBeforeTheModel(BaseCallbackHandler):
    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        if kwargs.get("name") == "agent":
            os.kill(os.getpid(), signal.SIGKILL)


def graph(db: str, *, die_in_tool: bool = False) -> HandrailGraph:
    @tool
    def pay(to: str, amount: float) -> str:
        """Pay someone."""
        if die_in_tool:
            os.kill(os.getpid(), signal.SIGKILL)
        return f"paid {to} {amount}"

    call = {"name": "pay", "args": {"to": "bob", "amount": 500}, "id": "c1"}
    model = ScriptedChatModel([AIMessage("", tool_calls=[call]), AIMessage("done")])
    return build_agent(model, [pay], POLICY, checkpointer=db)


def decide(db: str, value: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    g = graph(db, die_in_tool=kwargs.pop("die_in_tool", False))
    out: dict[str, Any] = g.invoke(
        Command(resume=value), {**CONFIG, **kwargs}, context=CTX, durability="exit"
    )
    return out


def main(db: str, phase: str) -> None:
    alice = {"id": "alice", "roles": ["treasurer"]}
    if phase == "start":
        graph(db).invoke({"messages": [("user", "pay bob")]}, CONFIG, context=CTX)
    elif phase == "edit-and-die-in-the-tool":
        action = {"name": "pay", "args": {"to": "bob", "amount": 50}}
        edit = {"type": "edit", "edited_action": action}
        decide(db, {"decisions": [edit], "approver": alice}, die_in_tool=True)
    elif phase == "reject-and-die-before-the-model":
        reject = {"decisions": [{"type": "reject", "message": "no"}], "approver": alice}
        decide(db, reject, callbacks=[DieBeforeTheModel()])
    elif phase == "resume":
        out = graph(db).invoke(None, CONFIG, context=CTX, durability="exit")
        print(" ".join(i.value["handrail"]["kind"] for i in out.get("__interrupt__", [])))
    elif phase == "approve-as-bob":
        bob = {"id": "bob", "roles": ["treasurer"]}
        decide(db, {"decisions": [{"type": "approve"}], "approver": bob})
    else:
        raise SystemExit(f"unknown phase {phase!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
