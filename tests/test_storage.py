"""The storage seam: explicit, versioned migrations; old SQLite files upgraded in place; claims
and the audit chain safe across processes on both backends; a locked SQLite file retried a
bounded number of times; bad targets refused with typed errors; `Store.same`."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from support import CTX, call, config, table_rows, turn

from handrail import Actor, Inbox, Policy, build_agent
from handrail.audit import AuditLog
from handrail.cli import main
from handrail.errors import SchemaOutdated, StorageError
from handrail.state import ToolCallRecord
from handrail.storage import SCHEMA_VERSION, SqliteStore, migrate, open_store
from handrail.storage._postgres import PostgresStore, close_pool
from handrail.storage.ledger import Ledger
from handrail.testing import ScriptedChatModel

ALICE = Actor(id="alice", roles=("treasurer",))
POLICY = Policy.from_yaml("rules: [{id: big, tools: [pay], effect: ask, approvers: [treasurer]}]")
CHECKPOINT_TABLES = {
    "checkpoints",
    "checkpoint_blobs",
    "checkpoint_writes",
    "checkpoint_migrations",
}


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def unmigrated(postgres: str) -> Iterator[tuple[str, str]]:
    """A fresh, empty PostgreSQL schema that nobody migrated: (its URL, its name)."""
    schema = f"u_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"{postgres}?options=-csearch_path%3D{schema}"
    yield url, schema
    close_pool(url)


def tables_in(server: str, schema: str) -> set[str]:
    """The tables of ``schema``, asked of the server on a connection of its own."""
    with psycopg.connect(server) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {str(name) for (name,) in rows}


def paying_agent(db: str | Path, paid: list[tuple[str, float]]) -> Any:
    """An agent whose one ``pay`` call (bob, 500) must be approved by a treasurer."""

    @tool
    def pay(to: str, amount: float) -> str:
        """Pay someone."""
        paid.append((to, amount))
        return f"paid {to} {amount}"

    model = ScriptedChatModel([turn(call("pay", to="bob", amount=500)), AIMessage("done")])
    return build_agent(model, [pay], POLICY, checkpointer=db)


def waits(server: str) -> str:
    """What the server's other sessions are doing, one line each (for a hang's report)."""
    with psycopg.connect(server) as conn:
        rows = conn.execute(
            "SELECT pid, state, wait_event_type, wait_event, left(query, 70) "
            "FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() ORDER BY pid"
        ).fetchall()
    return "server sessions:\n" + "\n".join(" | ".join(map(str, r)) for r in rows)


def free_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# A child process of a race: it gets everything ready (imports, connections), says so with its
# ready file, waits for the go file, then does its part at once with the others and prints JSON.
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    mode, db, ready, go, *rest = sys.argv[1:]

    if mode == "begin":
        from handrail.state import ToolCallRecord
        from handrail.storage.ledger import Ledger

        ledger = Ledger(db)
        record = ToolCallRecord.model_validate_json(rest[0])

        def act():
            entry = ledger.begin("t-race", record)
            if entry is None:
                return {"pid": os.getpid(), "entry": None}
            return {
                "pid": os.getpid(),
                "entry": {
                    "started_by": entry.started_by,
                    "outcome": entry.outcome,
                    "record": entry.record.model_dump(mode="json") if entry.record else None,
                },
            }
    elif mode == "append":
        from handrail.audit import AuditLog
        from handrail.events import ToolEvent

        log = AuditLog(db)
        who = rest[0]
        events = [
            ToolEvent(
                timestamp=f"2024-03-01T10:00:{i:02d}.000+00:00",
                event="decided",
                graph="bank",
                agent_id="agent-1",
                thread_id=f"t-{who}",
                tool_call_id=f"call_{i}",
                tool="pay",
                call_seq=0,
                payload={"to": "bob", "amount": i},
                decision="allow",
            )
            for i in range(int(rest[1]))
        ]

        def act():
            return {"recorded": sum(len(log.append([e])) for e in events)}
    elif mode == "migrate":
        from handrail.storage import migrate
        from handrail.storage._postgres import pool

        pool(db)  # connected before the start

        def act():
            return {"applied": migrate(db)}
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    Path(ready).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go within 60 s")
        time.sleep(0.002)
    print(json.dumps(act()))
    """
)


def race(
    tmp_path: Path,
    mode: str,
    db: str | Path,
    args: list[list[str]],
    *,
    timeout: float = 60,
    diagnose: Callable[[], str] | None = None,
) -> list[dict[str, Any]]:
    """Run one child per entry of ``args`` (``CHILD`` in ``mode`` on ``db``), released together
    once every one is ready; their JSON results, in order. Fails when they have not all finished
    ``timeout`` seconds after the start, with what ``diagnose()`` says. No child outlives the
    call."""
    script = tmp_path / "storage_child.py"
    script.write_text(CHILD)
    run = tmp_path / f"race-{uuid.uuid4().hex[:8]}"
    run.mkdir()
    go = run / "go"
    readies = [run / f"ready-{n}" for n in range(len(args))]
    children = [
        subprocess.Popen(
            [sys.executable, str(script), mode, str(db), str(ready), str(go), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ready, extra in zip(readies, args, strict=True)
    ]
    try:
        deadline = time.monotonic() + 90
        while not all(r.exists() for r in readies):
            dead = [c for c in children if c.poll() is not None]
            if dead:
                _, err = dead[0].communicate()
                pytest.fail(f"a child exited before the start ({dead[0].returncode}): {err}")
            assert time.monotonic() < deadline, "the children did not get ready within 90 s"
            time.sleep(0.01)
        go.touch()
        finish = time.monotonic() + timeout
        results = []
        for n, child in enumerate(children):
            try:
                out, err = child.communicate(timeout=max(finish - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                out = None
            if out is None:
                seen = diagnose() if diagnose is not None else ""
                pytest.fail(
                    f"child {n} of {len(children)} still running {timeout:.0f} s after the "
                    f"start (hung); {seen}"
                )
            assert child.returncode == 0, f"a child failed ({child.returncode}):\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()


# -- 1. migrations are explicit -------------------------------------------------------------------


def test_a_graph_on_an_unmigrated_postgres_database_is_refused_as_schema_outdated(
    unmigrated: tuple[str, str], postgres: str
) -> None:
    url, schema = unmigrated
    with pytest.raises(SchemaOutdated) as refused:
        paying_agent(url, [])
    assert "handrail db migrate" in str(refused.value)
    assert tables_in(postgres, schema) == set()


def test_the_inbox_and_the_cli_refuse_an_unmigrated_postgres_database_and_create_nothing(
    unmigrated: tuple[str, str], postgres: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url, schema = unmigrated
    with pytest.raises(SchemaOutdated) as refused:
        Inbox(url)
    assert refused.value.found == 0 and refused.value.wanted == SCHEMA_VERSION
    assert main(["pending", "--db", url]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.strip().splitlines()
    assert "handrail db migrate" in line
    assert tables_in(postgres, schema) == set()


def test_db_migrate_applies_the_schema_once_and_then_a_graph_runs_and_is_approved(
    unmigrated: tuple[str, str], postgres: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url, schema = unmigrated
    assert main(["db", "migrate", "--db", url]) == 0
    first = capsys.readouterr().out
    versions = ", ".join(str(v) for v in range(1, SCHEMA_VERSION + 1))
    assert f"applied schema version(s) {versions}" in first
    assert f"at version {SCHEMA_VERSION}" in first

    assert main(["db", "migrate", "--db", url]) == 0
    second = capsys.readouterr().out
    assert "applied" not in second and f"at version {SCHEMA_VERSION}" in second
    assert migrate(url) == []

    rows = table_rows(url, "SELECT version FROM handrail_schema ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    assert tables_in(postgres, schema) >= CHECKPOINT_TABLES | {
        "handrail_schema",
        "handrail_ledger",
        "handrail_approvals",
        "handrail_audit",
        "handrail_secrets",
    }

    paid: list[tuple[str, float]] = []
    graph = paying_agent(url, paid)
    out = graph.invoke({"messages": [("user", "pay bob")]}, config(), context=CTX)
    assert out.get("__interrupt__") and paid == []
    inbox = Inbox(url, graph=graph)
    try:
        (waiting,) = inbox.pending()
        assert (waiting.thread_id, waiting.tool) == ("t-1", "pay")
        result = inbox.approve("t-1", approver=ALICE)
        assert result["messages"][-1].text == "done"
        assert paid == [("bob", 500.0)]
        assert inbox.pending() == []
    finally:
        inbox.close()


# -- 2. a database from a newer Handrail ----------------------------------------------------------


@pytest.mark.backends("sqlite", "postgresql")
def test_a_database_at_a_newer_schema_version_is_refused_with_upgrade_handrail(
    db: str | Path,
) -> None:
    Ledger(db).close()  # the current schema (SQLite: made now; PostgreSQL: migrated)
    store = open_store(db)
    with store.transaction() as sql:
        sql.execute(
            "INSERT INTO handrail_schema (version, applied_at) VALUES (?, ?)",
            (SCHEMA_VERSION + 1, datetime.now(UTC).isoformat()),
        )
    store.close()
    for opening in (lambda: open_store(db), lambda: Ledger(db), lambda: Inbox(db)):
        with pytest.raises(SchemaOutdated) as refused:
            opening()
        assert refused.value.found == SCHEMA_VERSION + 1
        assert refused.value.wanted == SCHEMA_VERSION
        assert "upgrade Handrail" in str(refused.value)
        assert "db migrate" not in str(refused.value)  # migrating cannot help
    versions = table_rows(db, "SELECT max(version) AS v FROM handrail_schema")
    assert versions == [{"v": SCHEMA_VERSION + 1}]  # and nothing was changed


# -- 3. a SQLite file from before schema versions -------------------------------------------------

OLD_LEDGER = """
CREATE TABLE handrail_ledger (
    thread_id     TEXT NOT NULL,
    tool_call_id  TEXT NOT NULL,
    args_hash     TEXT NOT NULL,
    tool          TEXT NOT NULL,
    args          TEXT NOT NULL DEFAULT '{}',
    attempt       INTEGER NOT NULL,
    started_at    TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    host          TEXT NOT NULL,
    outcome       TEXT CHECK (outcome IN ('succeeded', 'failed')),
    result        TEXT,
    error         TEXT,
    finished_at   TEXT,
    PRIMARY KEY (thread_id, tool_call_id, args_hash)
)
"""

OLD_APPROVALS = """
CREATE TABLE handrail_approvals (
    thread_id     TEXT NOT NULL,
    tool_call_id  TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    tool          TEXT NOT NULL,
    args_hash     TEXT NOT NULL,
    approvers     TEXT NOT NULL,
    approvals     TEXT NOT NULL,
    item          TEXT NOT NULL,
    requested_at  TEXT NOT NULL,
    expires_at    TEXT,
    status        TEXT NOT NULL,
    claim         TEXT,
    claim_pid     INTEGER,
    claim_host    TEXT,
    claimed_at    TEXT,
    outcome       TEXT,
    decided_by    TEXT,
    decided_at    TEXT,
    PRIMARY KEY (thread_id, tool_call_id)
)
"""


def _columns(path: Path, table: str) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def test_a_sqlite_file_from_before_schema_versions_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_item = {
        "thread_id": "t-old",
        "tool_call_id": "call_7",
        "graph": "bank",
        "tool": "pay",
        "args": {"to": "bob", "amount": 500},
        "args_hash": "a" * 64,
        "rule_id": "big",
        "approvers": ["treasurer"],
        "min_approvals": 1,
        "approvals": [],
        "actor": {"id": "agent-1", "roles": ["ai-agent"]},
        "expires_at": None,
    }
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(OLD_LEDGER)
        conn.execute(OLD_APPROVALS)
        conn.execute(
            "INSERT INTO handrail_ledger (thread_id, tool_call_id, args_hash, tool, args, attempt,"
            " started_at, pid, host, outcome, result, finished_at) VALUES"
            " ('t-old', 'call_1', ?, 'pay', '{}', 0, '2024-03-01T10:00:00+00:00', 42, 'h',"
            " 'succeeded', 'paid', '2024-03-01T10:00:01+00:00')",
            ("b" * 64,),
        )
        conn.execute(
            "INSERT INTO handrail_approvals (thread_id, tool_call_id, seq, tool, args_hash,"
            " approvers, approvals, item, requested_at, status) VALUES"
            " ('t-old', 'call_7', 0, 'pay', ?, '[\"treasurer\"]', '[]', ?,"
            " '2024-03-01T10:00:00.000000+00:00', 'open')",
            ("a" * 64, json.dumps(old_item, sort_keys=True)),
        )
    assert "record" not in _columns(path, "handrail_ledger")

    ledger = Ledger(path)
    try:
        assert ledger.store.schema_version() == SCHEMA_VERSION
        assert "record" in _columns(path, "handrail_ledger")
        assert "kind" in _columns(path, "handrail_approvals")
        (old,) = ledger.entries("t-old")
        assert (old["tool_call_id"], old["outcome"]) == ("call_1", "succeeded")
        assert old["result"] == "paid"
        assert old["record"] is None
        # The old row still answers the ledger: that call is not run again.
        record = ToolCallRecord(id="call_1", name="pay", args={}, args_hash="b" * 64)
        entry = ledger.begin("t-old", record)
        assert entry is not None and entry.outcome == "succeeded" and entry.result == "paid"
        assert entry.record is None and entry.started_by == "42@h"
        assert ledger.store.migrate() == []  # nothing left to apply
    finally:
        ledger.close()

    assert table_rows(path, "SELECT thread_id, kind FROM handrail_approvals") == [
        {"thread_id": "t-old", "kind": "approval"}
    ]
    inbox = Inbox(path)
    try:
        (waiting,) = inbox.pending(kind="approval")
        assert (waiting.tool_call_id, waiting.kind, waiting.tool) == ("call_7", "approval", "pay")
    finally:
        inbox.close()


# -- 4. concurrency across processes --------------------------------------------------------------


@pytest.mark.backends("sqlite", "postgresql")
def test_six_processes_beginning_one_call_at_once_run_it_once(
    db: str | Path, tmp_path: Path
) -> None:
    Ledger(db).close()  # the tables exist before the race
    record = ToolCallRecord(
        id="call_1",
        name="pay",
        args={"to": "bob", "amount": 500.0},
        args_hash="c" * 64,
        decision="allow",
        rule_id="small",
    )
    results = race(tmp_path, "begin", db, [[record.model_dump_json()]] * 6)
    winners = [r for r in results if r["entry"] is None]
    assert len(winners) == 1, results
    winner = winners[0]["pid"]
    losers = [r["entry"] for r in results if r["entry"] is not None]
    assert len(losers) == 5
    for entry in losers:
        assert entry["started_by"].startswith(f"{winner}@")
        assert entry["outcome"] is None  # nobody finished: outcome unknown
        assert entry["record"] == record.model_dump(mode="json")
    rows = table_rows(db, "SELECT pid, attempt FROM handrail_ledger WHERE thread_id = 't-race'")
    assert rows == [{"pid": winner, "attempt": 0}]


@pytest.mark.backends("sqlite", "postgresql")
def test_four_processes_appending_at_once_never_fork_the_audit_chain(
    db: str | Path, tmp_path: Path
) -> None:
    AuditLog(db).close()  # the tables exist before the race
    results = race(tmp_path, "append", db, [[f"p{n}", "50"] for n in range(4)])
    assert [r["recorded"] for r in results] == [50] * 4
    log = AuditLog(db, readonly=True)
    try:
        verified = log.verify()
        assert verified.ok, verified.problem
        assert log.count() == 200 and verified.rows == 200
    finally:
        log.close()
    rows = table_rows(db, "SELECT seq, thread_id, prev_hash FROM handrail_audit ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, 201))
    assert len({r["prev_hash"] for r in rows}) == 200
    for n in range(4):
        mine = [r for r in rows if r["thread_id"] == f"t-p{n}"]
        assert len(mine) == 50


def test_four_processes_migrating_one_fresh_postgres_schema_at_once_all_succeed(
    unmigrated: tuple[str, str], postgres: str, tmp_path: Path
) -> None:
    url, schema = unmigrated
    results = race(tmp_path, "migrate", url, [[]] * 4, timeout=20, diagnose=lambda: waits(postgres))
    applied = sorted(v for r in results for v in r["applied"])
    assert applied == list(range(1, SCHEMA_VERSION + 1)), results  # each version applied once
    rows = table_rows(url, "SELECT version FROM handrail_schema ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    assert tables_in(postgres, schema) >= CHECKPOINT_TABLES
    open_store(url).check_schema()


# -- 5. a locked SQLite file ----------------------------------------------------------------------


def _holder(path: Path) -> sqlite3.Connection:
    """A plain connection holding ``path``'s write lock (``BEGIN IMMEDIATE``) until it ends."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_a_transaction_on_a_briefly_locked_sqlite_file_is_retried_and_goes_through(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    store = SqliteStore(path, busy_timeout=0.05)
    try:
        with store.transaction() as sql:
            sql.execute("CREATE TABLE t (x INTEGER)")
        holder = _holder(path)
        release = threading.Timer(0.3, holder.execute, ("COMMIT",))
        start = time.monotonic()
        release.start()
        try:
            with store.transaction() as sql:  # 6 busy timeouts' worth of lock: it retries
                sql.execute("INSERT INTO t VALUES (1)")
            waited = time.monotonic() - start
        finally:
            release.join()
            holder.close()
        assert waited >= 0.25  # it did wait for the lock, past its busy timeout
        assert table_rows(path, "SELECT x FROM t") == [{"x": 1}]
    finally:
        store.close()


def test_a_transaction_on_a_sqlite_file_locked_for_good_fails_after_bounded_retries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    store = SqliteStore(path, busy_timeout=0.05)
    try:
        with store.transaction() as sql:
            sql.execute("CREATE TABLE t (x INTEGER)")
        holder = _holder(path)
        try:
            start = time.monotonic()
            with (
                pytest.raises(sqlite3.OperationalError, match="database is locked"),
                store.transaction() as sql,
            ):
                sql.execute("INSERT INTO t VALUES (1)")
            failed_after = time.monotonic() - start
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert 0.4 <= failed_after < 5  # retried (4 tries and pauses), but not forever
        with store.transaction() as sql:  # the store is not left inside a transaction
            sql.execute("INSERT INTO t VALUES (2)")
        assert table_rows(path, "SELECT x FROM t") == [{"x": 2}]
    finally:
        store.close()


# -- 6. bad targets -------------------------------------------------------------------------------


def test_an_unknown_url_scheme_is_a_storage_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="scheme") as refused:
        open_store("mysql://x/y")
    assert "mysql://" in str(refused.value)


def test_a_postgres_url_where_nothing_listens_is_cannot_connect_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql://u:secret@127.0.0.1:{free_port()}/db"
    start = time.monotonic()
    try:
        with caplog.at_level("DEBUG"), pytest.raises(StorageError) as refused:
            open_store(url)
    finally:
        close_pool(url)
    assert time.monotonic() - start < 15
    assert "cannot connect" in str(refused.value)
    assert "secret" not in str(refused.value) and "secret" not in refused.value.database
    assert "secret" not in caplog.text


def test_a_postgres_url_passed_as_a_path_is_refused_with_pass_a_str() -> None:
    with pytest.raises(StorageError, match="pass it as a str"):
        open_store(Path("postgresql://u@127.0.0.1:5432/db"))


def test_a_read_only_audit_of_a_missing_file_is_a_storage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.db"
    with pytest.raises(StorageError, match="no such database file"):
        AuditLog(missing, readonly=True)
    assert not missing.exists()


# -- 7. Store.same --------------------------------------------------------------------------------


def test_store_same_ignores_the_password_but_not_the_schema(postgres: str) -> None:
    user, rest = postgres.split("://", 1)[1].split("@", 1)
    one = f"postgresql://{user}:one@{rest}?options=-csearch_path%3Dalpha"
    two = f"postgresql://{user}:two@{rest}?options=-csearch_path%3Dalpha"
    other = f"postgresql://{user}:one@{rest}?options=-csearch_path%3Dbeta"
    try:
        a, b, c = PostgresStore(one), PostgresStore(two), PostgresStore(other)
        assert a.same(b) and b.same(a)
        assert not a.same(c) and not c.same(a)
        assert ":one@" not in repr(a) and ":***@" in repr(a)
    finally:
        for url in (one, two, other):
            close_pool(url)


def test_store_same_resolves_sqlite_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative, absolute = SqliteStore("same.db"), SqliteStore(tmp_path / "same.db")
    elsewhere = SqliteStore(tmp_path / "other.db")
    try:
        assert relative.same(absolute) and absolute.same(relative)
        assert not relative.same(elsewhere)
    finally:
        for store in (relative, absolute, elsewhere):
            store.close()
