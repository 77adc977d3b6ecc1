"""MCP tools through Handrail: a real stdio MCP server (``mcp_server.py``, FastMCP) loaded with
``langchain-mcp-adapters``, run by an async graph on an ``AsyncSqliteSaver``.

The tools' arguments are a JSON schema: the policy sees them validated and coerced by it
(``amount: "5000"`` is 5000), a call asked for is resumed from another process by thread ID
and runs there once. The server appends each call it runs to a file: the ground truth.

Run as a script (``python test_mcp.py DB THREAD CALLS``), this module is that other process: it
rebuilds the graph with the MCP tools on the same SQLite file and approves the thread's call.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
from langchain_core.messages import AIMessage, ToolMessage
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.sessions import StdioConnection
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.types import Command
from support import CTX, approve, call, config, per_call, turn

from handrail import Policy, build_agent
from handrail.graph import HandrailGraph
from handrail.storage.checkpointer import STATE_TYPES
from handrail.testing import ScriptedChatModel

SERVER = Path(__file__).with_name("mcp_server.py")

POLICY = Policy.from_yaml(
    """
version: 1
default: deny
rules:
  - id: big-transfers
    tools: [transfer_funds]
    when: "args.amount > 1000"
    effect: ask
    approvers: [treasurer]
  - {id: small-transfers, tools: [transfer_funds], when: "args.amount <= 1000", effect: allow}
"""
)

PAY_BOB = [turn(call("transfer_funds", to="bob", amount="5000")), AIMessage("done")]
"""The model's script: 5000 as a string, as models write numbers."""


@asynccontextmanager
async def mcp_agent(
    db: Path, calls: Path, script: Sequence[AIMessage]
) -> AsyncIterator[HandrailGraph]:
    """An agent over the MCP server's tools (one server process per call), checkpointed in
    ``db``; the server records its calls in ``calls``."""
    server = StdioConnection(
        transport="stdio",
        command=sys.executable,
        args=[str(SERVER)],
        env={"MCP_CALLS": str(calls)},  # added to the MCP SDK's default environment
    )
    client = MultiServerMCPClient({"bank": server})
    tools = await client.get_tools()
    async with aiosqlite.connect(db) as conn:
        saver = AsyncSqliteSaver(
            conn, serde=JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)
        )
        yield build_agent(ScriptedChatModel(script), tools, POLICY, checkpointer=saver, db=db)


def ran(calls: Path) -> list[dict[str, Any]]:
    """The calls the MCP server ran, in order."""
    if not calls.exists():
        return []
    return [json.loads(line) for line in calls.read_text().splitlines()]


def test_an_mcp_call_is_coerced_asked_and_run_once_when_another_process_approves(
    db: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.jsonl"

    async def pause() -> dict[str, Any]:
        async with mcp_agent(db, calls, PAY_BOB) as graph:
            return await graph.ainvoke(
                {"messages": [("user", "pay bob")]}, config("mcp-1"), context=CTX
            )

    paused = asyncio.run(pause())
    (request,) = paused["__interrupt__"]
    assert request.value["action_requests"][0]["args"] == {"to": "bob", "amount": 5000}
    assert per_call(request.value, "rule_id") == ["big-transfers"]
    assert ran(calls) == []

    approver = subprocess.run(
        [sys.executable, __file__, str(db), "mcp-1", str(calls)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert approver.returncode == 0, approver.stderr
    assert approver.stdout.strip() == "done"
    assert ran(calls) == [{"tool": "transfer_funds", "to": "bob", "amount": 5000, "memo": None}]

    async def final() -> dict[str, Any]:
        async with mcp_agent(db, calls, PAY_BOB) as graph:
            return dict((await graph.aget_state(config("mcp-1"))).values)

    (record,) = asyncio.run(final())["calls"].values()
    assert (record.status, record.approver, record.args) == (
        "succeeded",
        "alice",
        {"to": "bob", "amount": 5000},  # the adapter's injected ``runtime`` is not an argument
    )


def test_an_mcp_call_that_does_not_fit_is_a_bad_request_and_a_small_one_runs(
    db: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.jsonl"
    script = [
        turn(call("transfer_funds", to="bob", amount="12x")),
        turn(call("transfer_funds", to="bob", amount="500")),
        AIMessage("done"),
    ]

    async def main() -> dict[str, Any]:
        async with mcp_agent(db, calls, script) as graph:
            return await graph.ainvoke({"messages": [("user", "pay")]}, config(), context=CTX)

    result = asyncio.run(main())
    refused, paid = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert refused.status == "error"
    assert "invalid arguments for 'transfer_funds': amount: '12x' is not of type 'integer'" in (
        refused.text
    )
    assert paid.text == "sent 500 to bob"
    assert ran(calls) == [{"tool": "transfer_funds", "to": "bob", "amount": 500, "memo": None}]


async def _approve(db: Path, thread: str, calls: Path) -> str:
    """Resume ``thread`` with a treasurer's approval; the model's last word."""
    async with mcp_agent(db, calls, PAY_BOB) as graph:
        result = await graph.ainvoke(Command(resume=approve()), config(thread), context=CTX)
    return str(result["messages"][-1].content)


if __name__ == "__main__":
    print(asyncio.run(_approve(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))))
