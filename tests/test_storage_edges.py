"""Storage edge cases found in review: NUL characters in text, forked processes, how a database
is named, and passwords in messages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import tool
from support import CTX, agent, call, config, turn

from handrail import Policy
from handrail.audit import AuditLog
from handrail.errors import StorageError
from handrail.storage import open_store
from handrail.storage._base import display
from handrail.storage._postgres import PostgresStore
from handrail.storage.ledger import Ledger

pytestmark = pytest.mark.backends("sqlite", "postgresql")

POLICY = Policy.from_data(
    {"rules": [{"id": "r", "tools": ["fetch"], "effect": "allow"}], "tools": {"fetch": {}}}
)


def test_a_nul_in_a_tool_result_or_error_is_stored_and_the_run_goes_on(db: Any) -> None:
    @tool
    def fetch(q: str) -> str:
        """Fetch a blob."""
        if q == "bad":
            raise RuntimeError("bad byte \x00 here")
        return "header\x00binary"

    graph = agent(db, [fetch], POLICY, turn(call("fetch", q="x"), call("fetch", q="bad")))
    result = graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    records = result["calls"]
    assert sorted(r.status for r in records.values()) == ["escalated", "succeeded"]
    rows = Ledger(db).entries("t-1")
    assert sorted(r["outcome"] or "none" for r in rows) == ["failed", "succeeded"]
    (ok,) = [r for r in rows if r["outcome"] == "succeeded"]
    assert ok["result"].startswith("header") and ok["result"].endswith("binary")
    audit = AuditLog(db, readonly=True)
    assert audit.verify().ok
    reasons = [r["reason"] or "" for r in audit.export(thread_id="t-1")]
    assert any("bad byte \\u0000 here" in r for r in reasons)  # escaped alike on both backends


@pytest.mark.backends("postgresql")  # a SQLite store has no pool to inherit
def test_a_store_opened_before_a_fork_is_refused_in_the_child_and_the_parent_is_unharmed(
    db: Any,
) -> None:
    store = open_store(db)
    assert store.schema_version() > 0
    pid = os.fork()
    if pid == 0:  # the child: the parent's store is refused, a new one works, nothing is closed
        code = 1
        try:
            try:
                store.schema_version()
            except StorageError as error:
                fresh = PostgresStore(db)
                if "forked" in str(error) and fresh.schema_version() > 0:
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.schema_version() > 0  # the child's exit closed none of the parent's connections


def test_one_database_is_the_same_whatever_the_url_spells(db: Any, backend: str) -> None:
    if backend == "postgresql":
        other = db.replace("127.0.0.1", "localhost").replace("postgres@", "postgres:pw@")
        assert open_store(db).same(PostgresStore(other))
        assert not open_store(db).same(PostgresStore(db.split("?")[0]))  # another schema
    else:
        relative = os.path.relpath(db)
        assert open_store(db).same(open_store(Path(relative)))


def test_passwords_never_reach_a_message(tmp_path: Path) -> None:
    for url in (
        "postgresql://u:s3cr3t@127.0.0.1:1/db",
        "postgresql://u@127.0.0.1:1/db?password=s3cr3t",
        "mysql://u:s3cr3t@h/db",
    ):
        with pytest.raises(StorageError) as raised:
            open_store(url)
        assert "s3cr3t" not in str(raised.value)
    assert display("host=h password=s3cr3t dbname=d") == "host=h password=*** dbname=d"


def test_a_deferred_write_rides_with_the_next_transaction_and_survives_a_rollback(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "d.db")
    insert = "INSERT INTO handrail_secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING"
    store.defer(insert, ("deferred", "1"))
    with store.read() as sql:  # not written yet: no commit of its own
        assert (
            sql.execute("SELECT count(*) FROM handrail_secrets WHERE name = 'deferred'").fetchone()[
                0
            ]
            == 0
        )
    with pytest.raises(RuntimeError), store.transaction():
        raise RuntimeError("rolled back")
    with store.transaction() as sql:  # the rolled-back transaction left it pending
        sql.execute(insert, ("other", "2"))
    with store.read() as sql:
        names = {n for (n,) in sql.execute("SELECT name FROM handrail_secrets").fetchall()}
    assert {"deferred", "other"} <= names
    store.defer(insert, ("flushed", "3"))
    store.flush()
    with store.read() as sql:
        assert (
            sql.execute("SELECT value FROM handrail_secrets WHERE name = 'flushed'").fetchone()[0]
            == "3"
        )
    store.close()
