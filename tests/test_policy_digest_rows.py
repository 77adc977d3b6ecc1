"""Policy versions on every row: the record in state, the request (its approvals row, the inbox's
item, the interrupt) and each approval (its proof) carry the digest of the policy they were made
under; a database from schema version 6 gets the columns, NULL for its old rows, and works."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import ormsgpack
import psycopg
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.serde.jsonplus import EXT_PYDANTIC_V2, JsonPlusSerializer
from langgraph.types import Command
from support import CTX, Raw, agent, approve, call, config, edit, table_rows, turn

from handrail import Actor, HandrailGraph, Inbox, Policy, RunContext, ToolCallRecord
from handrail.integrations import HandrailMiddleware
from handrail.review import WaitingCall
from handrail.storage import SCHEMA_VERSION, is_postgres_url, migrate
from handrail.storage._postgres import close_pool
from handrail.storage._schema import MIGRATIONS
from handrail.storage.checkpointer import STATE_TYPES, open_checkpointer
from handrail.storage.proofs import ProofTable
from handrail.testing import ScriptedChatModel
from handrail.tools import ServerError
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

pytestmark = pytest.mark.backends("sqlite", "postgresql")

BIG = turn(call("transfer_funds", to="carol", amount=5000.0))
SMALL = turn(call("transfer_funds", to="bob", amount=50.0))
CFO_ASKS = POLICY_PATH.read_text().replace("approvers: [treasurer]", "approvers: [cfo]")


def paused(db: str | Path, policy: Policy, *turns: AIMessage) -> tuple[HandrailGraph, Any]:
    """The demo bank on ``db`` under ``policy``, paused on its first request: (graph, value)."""
    graph = agent(db, banking_tools(db), policy, *(turns or (BIG,)))
    out = graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    assert "__interrupt__" in out, out
    return graph, out["__interrupt__"][0].value


def records(graph: HandrailGraph) -> dict[str, ToolCallRecord]:
    calls: dict[str, ToolCallRecord] = graph.get_state(config()).values["calls"]
    return calls


def request_rows(db: str | Path) -> list[dict[str, Any]]:
    return table_rows(
        db,
        "SELECT tool_call_id, status, outcome, policy_digest, item FROM handrail_approvals "
        "ORDER BY requested_at",
    )


def proof_rows(db: str | Path) -> list[dict[str, Any]]:
    return table_rows(
        db,
        "SELECT tool_call_id, approver, kind, policy_digest FROM handrail_proofs "
        "ORDER BY decided_at",
    )


# -- 1. the request ------------------------------------------------------------------------------


def test_the_request_row_the_inbox_item_and_the_interrupt_carry_the_policy_digest(
    db: str | Path, policy: Policy
) -> None:
    graph, value = paused(db, policy)
    (cid,) = value["handrail"]["tool_call_ids"]
    assert value["handrail"]["calls"][cid]["policy_digest"] == policy.digest
    (row,) = request_rows(db)
    assert (row["tool_call_id"], row["status"]) == (cid, "open")
    assert row["policy_digest"] == policy.digest
    assert json.loads(row["item"])["policy_digest"] == policy.digest
    inbox = Inbox(db)
    try:
        (item,) = inbox.pending()
        assert item.policy_digest == policy.digest
        assert item.model_dump(mode="json")["policy_digest"] == policy.digest
    finally:
        inbox.close()
    assert records(graph)[cid].policy_digest == policy.digest


# -- 2. the record in state ----------------------------------------------------------------------


def test_every_record_in_state_carries_the_digest_of_the_policy_that_decided_it(
    db: str | Path, policy: Policy
) -> None:
    strict = Policy.from_yaml(POLICY_PATH.read_text() + "\nbody_limit: 4096\n")
    assert strict.digest != policy.digest
    graph = agent(db, banking_tools(db), policy, SMALL)
    graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (allowed,) = records(graph).values()
    assert (allowed.decision, allowed.status) == ("allow", "succeeded")
    assert allowed.policy_digest == policy.digest
    # read back from the checkpoint by a graph object that never decided it
    reader = agent(db, banking_tools(db), strict)
    assert records(reader)[allowed.id].policy_digest == policy.digest


def test_a_record_checkpointed_before_records_carried_the_digest_loads_as_none() -> None:
    """The saver's serializer rebuilds a record from the fields it stored; an old one lacks
    ``policy_digest``."""
    record = ToolCallRecord(
        id="c1", name="transfer", args={"amount": 5}, args_hash="h", decision="allow"
    )
    old = record.model_dump()
    del old["policy_digest"]
    inner = ormsgpack.packb((ToolCallRecord.__module__, "ToolCallRecord", old, "x"))
    data = ormsgpack.packb({"c1": ormsgpack.Ext(EXT_PYDANTIC_V2, inner)})
    loaded = JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES).loads_typed(("msgpack", data))
    assert loaded == {"c1": record} and loaded["c1"].policy_digest is None


# -- 3. approvals ---------------------------------------------------------------------------------


def test_approving_writes_a_proof_carrying_the_policy_digest(
    db: str | Path, policy: Policy
) -> None:
    graph, value = paused(db, policy)
    (cid,) = value["handrail"]["tool_call_ids"]
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("carol", 5000.0)]
    assert proof_rows(db) == [
        {
            "tool_call_id": cid,
            "approver": "alice",
            "kind": "approve",
            "policy_digest": policy.digest,
        }
    ]
    record = records(graph)[cid]
    assert (record.status, record.policy_digest) == ("succeeded", policy.digest)
    table = ProofTable(db)
    try:
        (proof,) = table.of("t-1", cid, record.args_hash)
    finally:
        table.close()
    assert (proof.approver, proof.policy_digest) == ("alice", policy.digest)
    (row,) = request_rows(db)
    assert (row["outcome"], row["policy_digest"]) == ("approve", policy.digest)


def test_an_edit_is_decided_again_and_its_record_and_proof_carry_the_digest(
    db: str | Path, policy: Policy
) -> None:
    graph, value = paused(db, policy)
    (cid,) = value["handrail"]["tool_call_ids"]
    graph.invoke(
        Command(resume=edit("transfer_funds", {"to": "carol", "amount": 4000.0})),
        config(),
        context=CTX,
    )
    assert transfers(db) == [("carol", 4000.0)]
    record = records(graph)[cid]
    assert (record.args["amount"], record.policy_digest) == (4000.0, policy.digest)
    assert [(p["approver"], p["policy_digest"]) for p in proof_rows(db)] == [
        ("alice", policy.digest)
    ]


def test_a_request_asked_again_under_a_new_policy_carries_the_new_digest_everywhere(
    db: str | Path, policy: Policy
) -> None:
    _, value = paused(db, policy)
    (cid,) = value["handrail"]["tool_call_ids"]
    newer = Policy.from_yaml(CFO_ASKS)
    graph = agent(db, banking_tools(db), newer, BIG)
    limited = {**config(), "recursion_limit": 40}
    out = graph.invoke(Command(resume=approve()), limited, context=CTX)
    asked = out["__interrupt__"][0].value["handrail"]["calls"][cid]
    assert (asked["approvers"], asked["policy_digest"]) == (["cfo"], newer.digest)
    (row,) = request_rows(db)
    assert (row["status"], row["policy_digest"]) == ("open", newer.digest)
    assert records(graph)[cid].policy_digest == newer.digest
    cfo = {"id": "carla", "roles": ["cfo"]}
    graph.invoke(Command(resume=approve(approver=cfo)), limited, context=CTX)
    assert transfers(db) == [("carol", 5000.0)]
    proofs = {p["approver"]: p["policy_digest"] for p in proof_rows(db)}
    assert proofs == {"alice": newer.digest, "carla": newer.digest}  # both checked under newer
    assert records(graph)[cid].policy_digest == newer.digest


FETCH_POLICY = Policy.from_data(
    {
        "rules": [{"id": "reads", "tools": ["fetch"], "effect": "allow"}],
        "tools": {"fetch": {"escalate_to": ["operator"]}},
    }
)


def fetch_failing_once(runs: list[str]) -> BaseTool:
    @tool
    def fetch(q: str) -> str:
        """Fetch a resource."""
        runs.append(q)
        if len(runs) == 1:
            raise ServerError("upstream said 500")
        return f"data for {q}"

    return fetch


def test_an_escalation_and_its_retry_carry_the_digest_of_the_policy_that_let_the_call_run(
    db: str | Path,
) -> None:
    runs: list[str] = []
    graph = agent(db, [fetch_failing_once(runs)], FETCH_POLICY, turn(call("fetch", q="x")))
    out = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    (cid,) = out["__interrupt__"][0].value["handrail"]["tool_call_ids"]
    (row,) = request_rows(db)
    assert json.loads(row["item"])["kind"] == "escalation"
    assert row["policy_digest"] == FETCH_POLICY.digest
    operator = {"id": "ops-1", "roles": ["operator"]}
    graph.invoke(Command(resume=approve(approver=operator)), config(), context=CTX)
    assert runs == ["x", "x"]
    assert proof_rows(db) == [
        {
            "tool_call_id": cid,
            "approver": "ops-1",
            "kind": "retry",
            "policy_digest": FETCH_POLICY.digest,
        }
    ]


def test_the_middleware_and_the_inbox_keep_the_digest_on_the_request_and_the_proof(
    db: str | Path, policy: Policy
) -> None:
    saver = open_checkpointer(db)
    handrail = HandrailMiddleware(policy=policy, db=saver)
    inbox = Inbox(db)
    try:
        app = create_agent(
            ScriptedChatModel([BIG, AIMessage("done")]),
            banking_tools(db),
            middleware=[handrail],
            checkpointer=saver,
            context_schema=RunContext,
        )
        assert "__interrupt__" in app.invoke({"messages": [("user", "go")]}, config(), context=CTX)
        (item,) = inbox.pending()
        assert (item.graph, item.policy_digest) == ("handrail_middleware", policy.digest)
        alice = Actor(id="alice", roles=("treasurer",))
        inbox.approve("t-1", approver=alice, graph=handrail.guard(app))
    finally:
        inbox.close()
        handrail.close()
        if isinstance(getattr(saver, "conn", None), sqlite3.Connection):
            saver.conn.close()  # type: ignore[union-attr]
    assert transfers(db) == [("carol", 5000.0)]
    assert [(r["outcome"], r["policy_digest"]) for r in request_rows(db)] == [
        ("approve", policy.digest)
    ]
    assert [(p["approver"], p["policy_digest"]) for p in proof_rows(db)] == [
        ("alice", policy.digest)
    ]


# -- 4. a database from schema version 6 ----------------------------------------------------------


@pytest.fixture
def version_6(db: str | Path, backend: str, request: pytest.FixtureRequest) -> Iterator[str | Path]:
    """A database at schema version 6 (SQLite: a new file; PostgreSQL: a schema of its own,
    unmigrated until then), holding a waiting request and an approval written at that version."""
    target: str | Path = db
    schema = None
    if backend == "postgresql":
        server = request.getfixturevalue("postgres")
        schema = f"v6_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        target = f"{server}?options=-csearch_path%3D{schema}"
    at_version_6(target)
    yield target
    if is_postgres_url(target):
        close_pool(str(target))


OLD_CALL = WaitingCall(
    thread_id="old-1",
    tool_call_id="o1",
    tool="transfer_funds",
    args={"to": "dave", "amount": 3000.0},
    args_hash="old-hash",
    rule_id="big-transfers",
    approvers=("treasurer",),
    min_approvals=2,
    actor=Actor(id="agent-123", roles=("ai-agent",)),
)


def at_version_6(target: str | Path) -> None:
    """Handrail's tables as versions 1 to 6 made them, and one row each in the approvals and
    proofs tables as Handrail wrote them then."""
    with closing(Raw(target)) as conn:
        dialect = "postgresql" if conn.postgres else "sqlite"
        conn.execute(
            "CREATE TABLE handrail_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        for migration in MIGRATIONS[:6]:
            for statement in migration.steps(dialect, conn):  # type: ignore[arg-type]
                conn.execute(statement)
            conn.execute(
                "INSERT INTO handrail_schema VALUES (?, ?)", (migration.version, "2025-01-01")
            )
        item = OLD_CALL.model_dump_json(exclude={"requested_at", "policy_digest"})
        conn.execute(
            "INSERT INTO handrail_approvals (thread_id, tool_call_id, kind, seq, tool, args_hash, "
            "approvers, approvals, item, requested_at, status) "
            "VALUES ('old-1', 'o1', 'approval', 0, 'transfer_funds', 'old-hash', "
            "'[\"treasurer\"]', '[\"tess\"]', ?, '2025-01-01T00:00:00.000000+00:00', 'open')",
            (item,),
        )
        conn.execute(
            "INSERT INTO handrail_proofs (thread_id, tool_call_id, args_hash, approver, rule_id, "
            "roles, identified_by, decided_at) VALUES ('old-1', 'o1', 'old-hash', 'tess', "
            "'big-transfers', '[\"treasurer\"]', 'claimed', '2025-01-01T00:00:01.000000+00:00')"
        )


def column_names(target: str | Path, table: str) -> set[str]:
    if is_postgres_url(target):
        rows = table_rows(
            target,
            "SELECT column_name AS name FROM information_schema.columns "
            "WHERE table_name = ? AND table_schema = current_schema()",
            (table,),
        )
    else:
        rows = table_rows(target, f"SELECT name FROM pragma_table_info('{table}')")
    return {r["name"] for r in rows}


def test_a_version_6_database_gets_the_columns_with_null_for_old_rows_and_works(
    version_6: str | Path, policy: Policy
) -> None:
    for table in ("handrail_approvals", "handrail_proofs"):
        assert "policy_digest" not in column_names(version_6, table)
    assert migrate(version_6) == list(range(7, SCHEMA_VERSION + 1))
    for table in ("handrail_approvals", "handrail_proofs"):
        assert "policy_digest" in column_names(version_6, table)
    assert table_rows(version_6, "SELECT policy_digest FROM handrail_approvals") == [
        {"policy_digest": None}
    ]
    assert table_rows(version_6, "SELECT policy_digest FROM handrail_proofs") == [
        {"policy_digest": None}
    ]
    inbox = Inbox(version_6)
    try:
        (old,) = inbox.pending()
        assert (old.thread_id, old.tool_call_id, old.policy_digest) == ("old-1", "o1", None)
    finally:
        inbox.close()
    proofs = ProofTable(version_6)
    try:
        (kept,) = proofs.of("old-1", "o1", "old-hash")
    finally:
        proofs.close()
    assert (kept.approver, kept.policy_digest) == ("tess", None)

    graph, value = paused(version_6, policy)  # a new thread runs on the migrated database
    (cid,) = value["handrail"]["tool_call_ids"]
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(version_6) == [("carol", 5000.0)]
    digests = {
        r["tool_call_id"]: r["policy_digest"]
        for r in table_rows(version_6, "SELECT tool_call_id, policy_digest FROM handrail_approvals")
    }
    assert digests == {"o1": None, cid: policy.digest}
    assert {(p["approver"], p["policy_digest"]) for p in proof_rows(version_6)} == {
        ("tess", None),
        ("alice", policy.digest),
    }
