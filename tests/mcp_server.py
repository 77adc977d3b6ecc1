"""A real MCP server on stdio for ``test_mcp.py`` (FastMCP): a bank whose tools take typed
arguments and append each call they run, as one JSON line, to the file ``MCP_CALLS`` names.

Run by the MCP client (``langchain-mcp-adapters``) as ``python tests/mcp_server.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mcp.server.fastmcp import FastMCP

server = FastMCP("bank", log_level="WARNING")


def _record(tool: str, **args: object) -> None:
    with Path(os.environ["MCP_CALLS"]).open("a", encoding="utf-8") as calls:
        calls.write(json.dumps({"tool": tool, **args}) + "\n")


@server.tool()
def transfer_funds(to: str, amount: int, memo: str | None = None) -> str:
    """Send ``amount`` to ``to``."""
    _record("transfer_funds", to=to, amount=amount, memo=memo)
    return f"sent {amount} to {to}"


@server.tool()
def get_balance(account: str) -> str:
    """The balance of ``account``."""
    _record("get_balance", account=account)
    return f"{account}: 100"


if __name__ == "__main__":
    server.run("stdio")
