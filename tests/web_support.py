"""Helpers for the web inbox's tests: tokens, a policy with approvals for two roles, tools that
count their runs, agents paused for real, and the app served by uvicorn on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from langchain_core.messages import AIMessage
from langchain_core.tools import BaseTool, tool
from starlette.applications import Starlette

from handrail import Actor, Policy, RunContext, build_agent
from handrail.auth import JwtAuthenticator
from handrail.graph import HandrailGraph
from handrail.testing import ScriptedChatModel

SECRET = "web-inbox-tests-secret-of-32-bytes-at-least!"
AUTH = JwtAuthenticator(secret=SECRET)
AGENT = Actor(id="agent-123", roles=("ai-agent",))
GRAPH = "handrail_agent"

POLICY = Policy.from_yaml(
    """
version: 1
default: deny
rules:
  - id: small-transfers
    tools: [transfer_funds]
    roles: [ai-agent]
    when: "args.amount <= 1000.0"
    effect: allow
  - id: big-transfers
    tools: [transfer_funds]
    roles: [ai-agent]
    when: "args.amount > 1000.0 && args.amount <= 100000.0"
    effect: ask
    approvers: [treasurer]
    expires_in: 24h
    description: Transfers above 1,000 need a treasurer.
  - id: huge-transfers
    tools: [transfer_funds]
    when: "args.amount > 100000.0"
    effect: deny
  - id: closing
    tools: [close_account]
    roles: [ai-agent]
    effect: ask
    approvers: [admin]
tools:
  transfer_funds: {idempotent: false, redact: [args.account_number], escalate_to: [treasurer]}
"""
)


def token(sub: str, roles: list[str], *, minutes: float = 30, secret: str = SECRET) -> str:
    """A signed token for ``sub`` with ``roles``, valid for ``minutes`` (negative: expired)."""
    exp = datetime.now(UTC) + timedelta(minutes=minutes)
    return jwt.encode({"sub": sub, "roles": roles, "exp": exp}, secret, algorithm="HS256")


def bearer(sub: str, roles: list[str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, roles)}"}


@dataclass
class Bank:
    """The tools' side effects: every transfer and closing that ran."""

    transfers: list[dict[str, Any]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    failures_left: int = 0
    """Transfers that fail (with an unknown error, escalated) before they succeed."""

    def tools(self) -> list[BaseTool]:
        @tool
        def transfer_funds(to: str, amount: float, account_number: str = "") -> str:
            """Move money to another account."""
            if self.failures_left:
                self.failures_left -= 1
                raise RuntimeError("the bank's server fell over")
            self.transfers.append({"to": to, "amount": amount, "account": account_number})
            return f"sent {amount} to {to}"

        @tool
        def close_account(user: str) -> str:
            """Close a customer's account."""
            self.closed.append(user)
            return f"closed {user}"

        return [transfer_funds, close_account]


def paused_agent(
    db: Path | str,
    bank: Bank,
    calls: list[tuple[str, dict[str, Any]]],
    *,
    actor: Actor = AGENT,
    prefix: str = "t",
) -> HandrailGraph:
    """An agent on ``db`` (verifying approvers' tokens with `AUTH`) run once per call in
    ``calls``, each on thread ``<prefix>-<i>``, until it waits; its model then says "done"."""
    graph: HandrailGraph | None = None
    for i, (name, args) in enumerate(calls):
        asks = AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call-{i}"}])
        model = ScriptedChatModel([asks, AIMessage("done")])  # answers by position: any resumes
        graph = build_agent(model, bank.tools(), POLICY, checkpointer=str(db), authenticator=AUTH)
        config: Any = {"configurable": {"thread_id": f"{prefix}-{i}"}}
        out = graph.invoke({"messages": [("user", "go")]}, config, context=RunContext(actor=actor))
        assert "__interrupt__" in out, out
    assert graph is not None
    return graph


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def served(app: Starlette) -> Iterator[str]:
    """``app`` served by uvicorn on a loopback port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
