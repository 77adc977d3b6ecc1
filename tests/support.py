"""Test support: real SQLite files in tmp dirs, real graphs, the scripted model."""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from handrail import Actor, Policy, RunContext
from handrail.graph import HandrailGraph, build_agent
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools

AGENT = Actor(id="agent-123", roles=("ai-agent",))
TREASURER = {"id": "alice", "roles": ["treasurer"]}
CTX = RunContext(actor=AGENT)


def call(name: str, **args: Any) -> dict[str, Any]:
    """A tool call for a scripted AIMessage (the model fills in the id)."""
    return {"name": name, "args": args, "id": None}


def turn(*calls: dict[str, Any]) -> AIMessage:
    """One model turn that makes ``calls``."""
    return AIMessage("", tool_calls=list(calls))


def approve(n: int = 1, approver: dict[str, Any] | None = None) -> dict[str, Any]:
    """A resume value approving ``n`` calls."""
    return {"decisions": [{"type": "approve"}] * n, "approver": approver or TREASURER}


def edit(name: str, args: dict[str, Any], approver: dict[str, Any] | None = None) -> dict[str, Any]:
    """A resume value editing the one pending call to ``args``."""
    action = {"name": name, "args": args}
    return {
        "decisions": [{"type": "edit", "edited_action": action}],
        "approver": approver or TREASURER,
    }


def agent(db: Path, tools: list[Any], policy: Policy, *turns: AIMessage) -> HandrailGraph:
    """An agent over ``tools`` on ``db`` whose model plays ``turns`` and then says "ok"."""
    return build_agent(ScriptedChatModel([*turns, AIMessage("ok")]), tools, policy, checkpointer=db)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "handrail.db"


@pytest.fixture
def policy() -> Policy:
    return Policy.from_file(POLICY_PATH)


@pytest.fixture
def bank(db: Path) -> Callable[..., HandrailGraph]:
    """Build the demo bank agent on ``db`` with a script of model turns."""

    def build(*turns: AIMessage, policy: Policy | None = None) -> HandrailGraph:
        return build_agent(
            ScriptedChatModel([*turns, AIMessage("done")]),
            banking_tools(db),
            policy or Policy.from_file(POLICY_PATH),
            checkpointer=db,
        )

    return build


def config(thread: str = "t-1") -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


def approval_rows(db: Path) -> list[dict[str, Any]]:
    """Every row of Handrail's approvals table, in a stable order (read with a plain connection)."""
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM handrail_approvals ORDER BY thread_id, tool_call_id")
        return [dict(r) for r in rows]


def two_transfers_graph(db: str | Path, *, kill_after: str | None = None) -> HandrailGraph:
    """The demo bank asked to pay bob 2,000 and carol 5,000 in one turn (both need a treasurer).

    With ``kill_after``, the process is killed (SIGKILL) right after that payee's transfer is
    committed: a worker that dies inside a tool, after its side effect.
    """
    tools = banking_tools(db)
    if kill_after is not None:
        send = tools[1]

        @tool
        def transfer_funds(to: str, amount: float, memo: str = "") -> str:
            """Move money from the operating account to another account."""
            out = str(send.invoke({"to": to, "amount": amount, "memo": memo}))
            if to == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        tools[1] = transfer_funds
    model = ScriptedChatModel(
        [
            turn(
                call("transfer_funds", to="bob", amount=2000),
                call("transfer_funds", to="carol", amount=5000),
            ),
            AIMessage("done"),
        ]
    )
    return build_agent(model, tools, Policy.from_file(POLICY_PATH), checkpointer=db)


def example(name: str) -> Any:
    """The module ``examples/<name>.py``, imported (examples are scripts, not a package)."""
    path = Path(__file__).parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and TypedDicts look their module up
    spec.loader.exec_module(module)
    return module
