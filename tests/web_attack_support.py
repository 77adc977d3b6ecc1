"""Helpers for the attacks on the web inbox: a policy whose texts are hostile, tools that count
their runs (and can fail with a hostile message), agents paused on threads an attacker names,
and the small HTTP chores an attacker does by hand (reading a form, signing a cookie)."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import itsdangerous
from langchain_core.messages import AIMessage
from langchain_core.tools import BaseTool, tool
from starlette.testclient import TestClient
from support import table_rows
from web_support import AGENT, AUTH, GRAPH, token

from handrail import Actor, Policy, RunContext, build_agent
from handrail.graph import HandrailGraph
from handrail.testing import ScriptedChatModel
from handrail.web import create_app

SCRIPT = '<script>alert("x")</script>'
"""A payload that runs wherever it is rendered unescaped."""
ATTRIBUTE = '"><img src=x onerror=alert(1)>'
"""A payload that breaks out of an attribute."""
SESSION_KEY = "web-attack-tests-session-key-of-32-bytes!"
"""The key the apps built here sign their session cookies with."""

HOSTILE_POLICY = Policy.from_yaml(
    f"""
version: 1
default: deny
rules:
  - id: big-transfers
    tools: [transfer_funds]
    when: "args.amount > 1000.0 && args.amount <= 100000.0"
    effect: ask
    approvers: [treasurer]
    expires_in: 24h
    description: {json.dumps(SCRIPT + " needs a treasurer")}
  - id: huge-transfers
    tools: [transfer_funds]
    when: "args.amount > 100000.0"
    effect: deny
  - id: closing
    tools: [close_account]
    effect: ask
    approvers: [admin]
  - id: tagging
    tools: [tag_transfer]
    effect: ask
    approvers: [treasurer]
  - id: wires
    tools: [wire_abroad]
    effect: ask
    approvers: [treasurer]
    min_approvals: 2
tools:
  transfer_funds: {{idempotent: false, redact: [args.account_number], escalate_to: [treasurer]}}
"""
)


@dataclass
class Vault:
    """The tools' side effects: every transfer, closing and wire that ran."""

    transfers: list[dict[str, Any]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    wires: list[float] = field(default_factory=list)
    tags: list[list[Any]] = field(default_factory=list)
    fail_with: str | None = None
    """A transfer raises this message (once) instead of running."""

    def ran(self) -> int:
        """How many side effects happened, all tools together."""
        return len(self.transfers) + len(self.closed) + len(self.wires) + len(self.tags)

    def tools(self) -> list[BaseTool]:
        @tool
        def transfer_funds(to: str, amount: float, account_number: str = "") -> str:
            """Move money to another account."""
            if self.fail_with is not None:
                message, self.fail_with = self.fail_with, None
                raise RuntimeError(message)
            self.transfers.append({"to": to, "amount": amount, "account": account_number})
            return f"sent {amount} to {to}"

        @tool
        def close_account(user: str) -> str:
            """Close a customer's account."""
            self.closed.append(user)
            return f"closed {user}"

        @tool
        def wire_abroad(amount: float) -> str:
            """Wire money abroad (two treasurers must agree)."""
            self.wires.append(amount)
            return f"wired {amount}"

        @tool
        def tag_transfer(tags: list[Any]) -> str:
            """Tag a transfer (any JSON values: an edit form takes them as JSON)."""
            self.tags.append(tags)
            return f"tagged {len(tags)}"

        return [transfer_funds, close_account, wire_abroad, tag_transfer]


def asks(*calls: tuple[str, dict[str, Any]], first: int = 0) -> AIMessage:
    """A model turn asking for ``calls`` (ids ``call-<first>``, ``call-<first+1>``, ...)."""
    made = [{"name": n, "args": a, "id": f"call-{first + i}"} for i, (n, a) in enumerate(calls)]
    return AIMessage("", tool_calls=made)


def paused(
    db: Path | str,
    vault: Vault,
    thread: str,
    *turns: AIMessage,
    actor: Actor = AGENT,
) -> HandrailGraph:
    """An agent on ``db`` (approvers' tokens verified with `AUTH`) whose model says ``turns``
    then "done", run on ``thread`` until it waits."""
    model = ScriptedChatModel([*turns, AIMessage("done")])
    graph = build_agent(
        model, vault.tools(), HOSTILE_POLICY, checkpointer=str(db), authenticator=AUTH
    )
    config: Any = {"configurable": {"thread_id": thread}}
    out = graph.invoke({"messages": [("user", "go")]}, config, context=RunContext(actor=actor))
    assert "__interrupt__" in out, out
    return graph


def client_for(db: Path | str, graph: HandrailGraph, **kwargs: Any) -> TestClient:
    """A test client of the inbox on ``db`` resuming with ``graph``, its cookies signed with
    `SESSION_KEY`."""
    app = create_app(
        db, authenticator=AUTH, graphs={GRAPH: lambda _: graph}, secret=SESSION_KEY, **kwargs
    )
    return TestClient(app)


def form_value(page: str, name: str) -> str:
    """The value of the first input called ``name`` in ``page``."""
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, f"no {name} in the page"
    return found.group(1)


def sign_in(client: TestClient, sub: str, roles: list[str]) -> str:
    """Sign in through the form as ``sub``; returns the session's CSRF token."""
    csrf = form_value(client.get("/inbox/login").text, "csrf")
    done = client.post(
        "/inbox/login", data={"csrf": csrf, "token": token(sub, roles)}, follow_redirects=False
    )
    assert done.status_code == 303, done.text
    return form_value(client.get("/inbox/").text, "csrf")


def session_cookie(client: TestClient) -> str:
    """The client's session cookie, as the browser keeps it."""
    value = client.cookies.get("handrail_session")
    assert value is not None, "no session cookie"
    return value


def session_data(cookie: str) -> dict[str, Any]:
    """What a session cookie says, read as anyone holding it can (no key needed)."""
    payload = cookie.split(".", 1)[0]
    data: dict[str, Any] = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
    return data


def readable(cookie: str) -> str:
    """A cookie and whatever its first part says once base64-decoded (empty if it is not)."""
    payload = cookie.split(".", 1)[0]
    try:
        decoded = base64.b64decode(payload + "=" * (-len(payload) % 4)).decode()
    except ValueError:
        decoded = ""
    return f"{cookie}\n{decoded}"


def forged_cookie(data: dict[str, Any], *, key: str = SESSION_KEY) -> str:
    """A session cookie holding ``data``, signed with ``key`` as the app signs its own."""
    encoded = base64.b64encode(json.dumps(data).encode())
    return itsdangerous.TimestampSigner(key).sign(encoded).decode()


def session_rows(db: Path | str) -> list[dict[str, Any]]:
    """Every row of the web inbox's sessions table."""
    return table_rows(db, "SELECT * FROM handrail_web_sessions ORDER BY created_at")


def set_cookie_headers(response: Any) -> list[str]:
    """The response's ``Set-Cookie`` headers for the session cookie (an httpx response, or the
    test client's)."""
    found: list[str] = response.headers.get_list("set-cookie")
    return [h for h in found if h.startswith("handrail_session=")]
