"""Test support: real SQLite files in tmp dirs, a real PostgreSQL server, real graphs, the
scripted model.

A module (or test) marked ``@pytest.mark.backends("sqlite", "postgresql")`` runs each test that
takes ``db`` once per backend: ``db`` is a SQLite file, or a URL to a fresh, migrated schema on
one throwaway PostgreSQL server for the session.
"""

from __future__ import annotations

import importlib.util
import operator
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any

import psycopg
import pytest
from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.tools import tool
from langgraph.graph.message import add_messages
from psycopg.rows import dict_row
from typing_extensions import TypedDict

from handrail import Actor, Policy, RunContext, ToolCallRecord
from handrail.graph import HandrailGraph, build_agent
from handrail.state import merge_calls
from handrail.storage import is_postgres_url
from handrail.storage._postgres import close_pool
from handrail.testing import ScriptedChatModel, postgres_schema, postgres_server
from handrail.tools.demo import POLICY_PATH, banking_tools

AGENT = Actor(id="agent-123", roles=("ai-agent",))
TREASURER = {"id": "alice", "roles": ["treasurer"]}
CTX = RunContext(actor=AGENT)


class GateState(TypedDict, total=False):
    """A user's graph state for the tool gate: messages, the records, and two keys of its own."""

    messages: Annotated[list[AnyMessage], add_messages]
    calls: Annotated[dict[str, ToolCallRecord], merge_calls]
    customer: str
    log: Annotated[list[str], operator.add]


def tool_turn(*calls: tuple[str, dict[str, Any]]) -> AIMessage:
    """A model turn making ``calls`` (name, args), with the ids ``c0``, ``c1``, ..."""
    return AIMessage(
        "",
        tool_calls=[
            {"name": n, "args": a, "id": f"c{i}", "type": "tool_call"}
            for i, (n, a) in enumerate(calls)
        ],
    )


def per_call(request: Any, field: str) -> list[Any]:
    """``field`` of each call an interrupt value (or its ``handrail`` part) asks about, in order."""
    info = request.get("handrail", request)
    return [info["calls"][i][field] for i in info["tool_call_ids"]]


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


def agent(db: str | Path, tools: list[Any], policy: Policy, *turns: AIMessage) -> HandrailGraph:
    """An agent over ``tools`` on ``db`` whose model plays ``turns`` and then says "ok"."""
    return build_agent(ScriptedChatModel([*turns, AIMessage("ok")]), tools, policy, checkpointer=db)


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """One throwaway PostgreSQL server for the session (`handrail.testing.postgres_server`)."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend a test runs on: ``sqlite``, or each one its ``backends`` mark names."""
    name: str = getattr(request, "param", "sqlite")
    return name


@pytest.fixture
def db(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Where the test keeps checkpoints and Handrail's tables: a SQLite file (a `Path`), or a
    ``postgresql://`` URL to a fresh schema of the session's server, migrated."""
    if backend == "sqlite":
        yield tmp_path / "handrail.db"
        return
    url = postgres_schema(request.getfixturevalue("postgres"))
    yield url
    close_pool(url)


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


def approval_rows(db: str | Path) -> list[dict[str, Any]]:
    """Every row of Handrail's approvals table, in a stable order."""
    return table_rows(db, "SELECT * FROM handrail_approvals ORDER BY thread_id, tool_call_id")


def table_rows(db: str | Path, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """The rows of ``query`` on either backend, as dicts (read on a connection of its own)."""
    with closing(Raw(db)) as conn:
        return [dict(r) for r in conn.execute(query, params).fetchall()]


class Raw:
    """A plain driver connection to the test's database, outside Handrail: autocommit, rows as
    dicts, ``?`` placeholders on both backends."""

    def __init__(self, db: str | Path) -> None:
        self.postgres = is_postgres_url(db)
        self.conn: Any
        if self.postgres:
            self.conn = psycopg.connect(str(db), autocommit=True, row_factory=dict_row)
        else:
            self.conn = sqlite3.connect(db, isolation_level=None)
            self.conn.row_factory = sqlite3.Row

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.postgres:
            return self.conn.execute(sql.replace("?", "%s"), tuple(params) or None)
        return self.conn.execute(sql, params)

    def close(self) -> None:
        self.conn.close()


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
