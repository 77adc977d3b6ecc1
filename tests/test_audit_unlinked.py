"""PostgreSQL's audit appends take no cluster-wide lock: rows are stored unlinked in the writer's
own transaction and linked into the chain after it commits (`handrail.audit._link`), by the
writer if the chain's lock is free, else by whoever holds it; readers link first. The chain,
its hashes and `verify` are as before; each step is recorded once, linked or not."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from langchain_core.messages import AIMessage
from support import CTX, call, config, table_rows, turn

from handrail import Policy, build_agent
from handrail.audit import GENESIS, AuditLog
from handrail.audit._chain import HASHED, chain, row_of
from handrail.cli import main
from handrail.events import ToolEvent
from handrail.storage import _open
from handrail.storage._postgres import close_pool
from handrail.storage._schema import MIGRATIONS
from handrail.testing import ScriptedChatModel, postgres_schema
from handrail.tools.demo import banking_tools

pytestmark = pytest.mark.backends("postgresql")

LOCK = "SELECT pg_advisory_lock(hashtextextended('handrail_audit', 0))"
UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('handrail_audit', 0))"


def event(
    n: int,
    thread: str = "t-1",
    kind: str = "started",
    *,
    call: str | None = None,
    call_seq: int = 0,
    decision: str | None = None,
    args_hash: str | None = None,
) -> ToolEvent:
    return ToolEvent(
        timestamp=datetime(2026, 1, 1, tzinfo=UTC).isoformat(timespec="milliseconds"),
        event=kind,  # type: ignore[arg-type]
        graph="g",
        agent_id="agent",
        thread_id=thread,
        tool_call_id=call or f"c{n}",
        tool="pay",
        call_seq=call_seq,
        payload={"n": n},
        decision=decision,
        args_hash=args_hash,
    )


def chained(db: str) -> list[dict[str, Any]]:
    return table_rows(db, "SELECT * FROM handrail_audit ORDER BY seq")


def unlinked(db: str) -> int:
    return int(table_rows(db, "SELECT count(*) AS n FROM handrail_audit_unlinked")[0]["n"])


def sound(db: str) -> list[dict[str, Any]]:
    """The chain's rows, checked here from the spec: seq 1, 2, 3, ..., each hash over the row
    after the one before."""
    rows = chained(db)
    prev = GENESIS
    for seq, row in enumerate(rows, 1):
        assert row["seq"] == seq and row["prev_hash"] == prev
        assert row["hash"] == chain(prev, {k: row[k] for k in HASHED})
        prev = row["hash"]
    return rows


@pytest.fixture
def chain_lock(db: str) -> Iterator[psycopg.Connection[Any]]:
    """A session holding the chain's lock, as a linker in another process would."""
    with psycopg.connect(db.split("?")[0], autocommit=True) as conn:
        conn.execute(LOCK)
        yield conn
        conn.execute(UNLOCK)


def test_an_append_does_not_wait_for_the_chains_lock(
    db: str, audit_log: AuditLog, chain_lock: psycopg.Connection[Any]
) -> None:
    done = threading.Event()
    recorded: list[ToolEvent] = []

    def append() -> None:
        recorded.extend(audit_log.append([event(1)]))
        done.set()

    worker = threading.Thread(target=append)
    worker.start()
    assert done.wait(10), "the append waited for the chain's lock"
    assert recorded == [event(1)]
    assert chained(db) == [] and unlinked(db) == 1  # stored, not yet in the chain
    chain_lock.execute(UNLOCK)
    chain_lock.execute(LOCK)  # taken again, for the fixture to let go of
    assert audit_log.append([event(1)]) == []  # already recorded: unlinked rows count
    chain_lock.execute(UNLOCK)
    assert audit_log.verify(full=True).ok  # a reader links first
    assert [r["tool_call_id"] for r in sound(db)] == ["c1"] and unlinked(db) == 0
    chain_lock.execute(LOCK)


def test_a_graph_runs_while_another_process_links_and_its_rows_join_the_chain_after(
    db: str, chain_lock: psycopg.Connection[Any]
) -> None:
    policy = Policy.from_data({"rules": [{"id": "r", "tools": ["get_balance"], "effect": "allow"}]})
    model = ScriptedChatModel([turn(call("get_balance", account="alice")), AIMessage("done")])
    graph = build_agent(model, banking_tools(db), policy, checkpointer=db)
    results: list[dict[str, Any]] = []
    run = threading.Thread(
        target=lambda: results.append(
            graph.invoke({"messages": [("user", "balance?")]}, config(), context=CTX)
        )
    )
    run.start()
    run.join(30)
    assert results, "the run waited for the chain's lock"
    assert results[0]["messages"][-1].content == "done"
    assert chained(db) == [] and unlinked(db) == 3  # decided, started, succeeded
    chain_lock.execute(UNLOCK)
    audit_log = AuditLog(db)
    try:
        assert audit_log.head() == f"3:{sound(db)[-1]['hash']}"
    finally:
        audit_log.close()
    assert [r["event"] for r in chained(db)] == ["decided", "started", "succeeded"]
    chain_lock.execute(LOCK)


def test_writers_at_once_leave_one_chain_each_step_once_and_nothing_unlinked(
    db: str, audit_log: AuditLog
) -> None:
    def write(worker: int) -> None:
        mine = AuditLog(db)
        try:
            for n in range(30):
                # every step twice: by this worker, and by the next one (a replay elsewhere)
                mine.append([event(worker * 100 + n), event(((worker + 1) % 6) * 100 + n)])
        finally:
            mine.close()

    workers = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert unlinked(db) == 0  # linked by the writers themselves, no reader needed
    rows = sound(db)
    assert sorted(r["tool_call_id"] for r in rows) == sorted(
        f"c{w * 100 + n}" for w in range(6) for n in range(30)
    )
    assert audit_log.verify(full=True).ok


def test_rows_a_killed_writer_left_unlinked_are_linked_by_the_next_reader(
    db: str, audit_log: AuditLog
) -> None:
    assert audit_log.append([event(1)]) == [event(1)]
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        from test_audit_unlinked import event
        from handrail.audit import AuditLog
        audit_log = AuditLog({db!r})
        with audit_log.store.transaction() as sql:
            audit_log.append_in(sql, [event(2), event(3)])
        os._exit(0)  # killed after its commit, before it links
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert len(chained(db)) == 1 and unlinked(db) == 2
    assert [r["tool_call_id"] for r in audit_log.export()] == ["c1", "c2", "c3"]
    assert audit_log.append([event(2)]) == []  # its steps were recorded, linked or not
    assert len(sound(db)) == 3 and audit_log.verify(full=True).ok


def test_the_cli_links_what_a_killed_writer_left_before_it_verifies(
    db: str, audit_log: AuditLog, capsys: pytest.CaptureFixture[str]
) -> None:
    with audit_log.store.transaction() as sql:  # what a writer killed after its commit leaves
        audit_log.append_in(sql, [event(1), event(2)])
    assert unlinked(db) == 2
    assert main(["audit", "verify", "--db", db, "--json"]) == 0
    assert '"rows": 2' in capsys.readouterr().out
    assert unlinked(db) == 0 and len(sound(db)) == 2


def test_unlinked_rows_and_recorded_steps_cannot_be_changed(db: str, audit_log: AuditLog) -> None:
    with audit_log.store.transaction() as sql:
        audit_log.append_in(sql, [event(1)])  # not linked yet
    with psycopg.connect(db.split("?")[0], autocommit=True) as conn:
        conn.execute(f"SET search_path TO {db.split('%3D')[-1]}")
        for statement in (
            "UPDATE handrail_audit_unlinked SET payload = '{}'",
            "UPDATE handrail_audit_steps SET step = 'other'",
            "DELETE FROM handrail_audit_steps",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
    assert audit_log.verify(full=True).ok and sound(db)[0]["payload"] == '{"n":1}'


def test_a_read_only_log_reads_the_rows_linked_so_far(db: str, audit_log: AuditLog) -> None:
    assert audit_log.append([event(1)]) == [event(1)]
    with audit_log.store.transaction() as sql:
        audit_log.append_in(sql, [event(2)])
    reader = AuditLog(db, readonly=True)
    try:
        assert [r["tool_call_id"] for r in reader.export()] == ["c1"]
        audit_log.link()
        assert [r["tool_call_id"] for r in reader.export()] == ["c1", "c2"]
        assert reader.verify(full=True).ok
    finally:
        reader.close()


def at_version_10(url: str) -> None:
    """Handrail's tables at ``url`` as schema version 10 made them, with two rows chained as
    version 10 appended them (in the writer's transaction, under the lock)."""
    store = _open(url, readonly=False)
    try:
        with store.transaction() as sql:
            sql.execute(
                "CREATE TABLE handrail_schema (version INTEGER PRIMARY KEY, applied_at TEXT)"
            )
            for migration in MIGRATIONS[:10]:
                for statement in migration.steps("postgresql", sql):
                    sql.execute(statement)
                sql.execute("INSERT INTO handrail_schema VALUES (?, 'then')", (migration.version,))
            prev = GENESIS
            for seq, item in enumerate([event(1), event(2)], 1):
                row = row_of(seq, item)
                row |= {"prev_hash": prev, "hash": chain(prev, row)}
                prev = row["hash"]
                names = ", ".join(row)
                marks = ", ".join("?" * len(row))
                sql.execute(
                    f"INSERT INTO handrail_audit ({names}) VALUES ({marks})", tuple(row.values())
                )
    finally:
        store.close()


def test_a_database_from_schema_10_keeps_its_chain_and_its_steps(postgres: str) -> None:
    url = postgres_schema(postgres)  # made again below, as version 10 made it
    schema = url.split("%3D")[-1]
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    close_pool(url)
    at_version_10(url)
    store = _open(url, readonly=False)
    try:
        assert store.migrate() == [11]
    finally:
        store.close()
    audit_log = AuditLog(url)
    try:
        assert audit_log.append([event(2), event(3)]) == [event(3)]  # step 2 was recorded before
        assert [r["tool_call_id"] for r in sound(url)] == ["c1", "c2", "c3"]
        assert audit_log.verify(full=True).ok
    finally:
        audit_log.close()
        close_pool(url)
