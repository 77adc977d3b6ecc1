"""The audit trail: a hash chain, append-only, once per step; tampering found at the first bad
row; export filters; per-tool stats; the read-only CLI commands."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Raw, table_rows

from handrail.audit import GENESIS, AuditLog, ToolStats
from handrail.cli import main
from handrail.errors import HandrailError, StorageError
from handrail.events import FIELDS, ToolEvent
from handrail.storage._sqlite import connect

pytestmark = pytest.mark.backends("sqlite", "postgresql")

T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)  # long before any "24h ago"
PAYLOAD = {"to": "carol", "amount": 5000.0, "memo": "café"}


def event(
    kind: str = "decided",
    *,
    call: str = "call_1",
    thread: str | None = "t-1",
    tool: str = "transfer_funds",
    seq: int = 0,
    at: datetime | None = None,
    **fields: Any,
) -> ToolEvent:
    """One event of one call; ``at`` defaults to T0 plus ``seq`` minutes."""
    when = at if at is not None else T0 + timedelta(minutes=seq)
    return ToolEvent(
        timestamp=when.isoformat(timespec="milliseconds"),
        event=kind,  # type: ignore[arg-type]
        graph="bank",
        agent_id="agent-1",
        thread_id=thread,
        tool_call_id=call,
        tool=tool,
        call_seq=seq,
        **{"payload": PAYLOAD, **fields},
    )


def six() -> list[ToolEvent]:
    """Two calls' worth of events, six rows."""
    ok = {"status": "success", "body": "done"}
    return [
        event("decided", call="c1", seq=0, decision="allow", rule_id="small"),
        event("started", call="c1", seq=1, decision="allow"),
        event("succeeded", call="c1", seq=2, decision="allow", response=ok, duration_ms=12.5),
        event("decided", call="c2", seq=0, decision="ask", rule_id="big"),
        event("approval_requested", call="c2", seq=1, decision="ask"),
        event(
            "approval_decided",
            call="c2",
            seq=2,
            decision="approve",
            approver="alice",
            duration_ms=60_000,
            reason="fine",
        ),
    ]


@pytest.fixture
def path(db: str | Path) -> str | Path:
    """The test's database: a SQLite file, or a PostgreSQL URL (see ``backends``)."""
    return db


@pytest.fixture
def log(path: Path) -> Iterator[AuditLog]:
    audit = AuditLog(path)
    yield audit
    audit.close()


@pytest.fixture
def full(log: AuditLog) -> AuditLog:
    """A log of six rows."""
    assert len(log.append(six())) == 6
    return log


APPEND_ONLY = (sqlite3.IntegrityError, psycopg.errors.RaiseException)
"""What a trigger's refusal raises, per backend."""


def rows(path: str | Path) -> list[dict[str, Any]]:
    return table_rows(path, "SELECT * FROM handrail_audit ORDER BY seq")


ADDED = ("args_hash", "identified_by", "policy_digest")
"""The columns added since schema version 1 (by v2, v2, v6): hashed only when set."""


def recompute(row: dict[str, Any]) -> str:
    """The row's hash, computed here from the spec, not with the module's code."""
    body = {k: v for k, v in row.items() if k not in ("prev_hash", "hash")}
    for added in ADDED:
        if body.get(added) is None:
            body.pop(added, None)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((row["prev_hash"] + text).encode()).hexdigest()


def insert(conn: Raw, row: dict[str, Any]) -> None:
    names = ", ".join(row)
    conn.execute(
        f"INSERT INTO handrail_audit ({names}) VALUES ({', '.join('?' * len(row))})",
        tuple(row.values()),
    )


def unguard(conn: Raw, table: str = "handrail_audit") -> None:
    """Drop the append-only triggers of ``table``, as someone who can write the database can."""
    if conn.postgres:
        conn.execute(f"DROP TRIGGER {table}_no_change ON {table}")
        return
    conn.execute(f"DROP TRIGGER {table}_no_update")
    conn.execute(f"DROP TRIGGER {table}_no_delete")


def has_audit_table(path: Path) -> bool:
    with closing(sqlite3.connect(path)) as conn:
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
    return bool({"handrail_audit", "handrail_audit_no_update"} & names)


# -- the chain -----------------------------------------------------------------------------------


def test_rows_chain_from_genesis_with_contiguous_seq(log: AuditLog, path: Path) -> None:
    events = six()
    assert log.append(events[:4]) == events[:4]
    assert log.append(events[4:]) == events[4:]
    stored = rows(path)
    assert list(stored[0]) == [
        "seq",
        "at",
        *(f for f in FIELDS if f not in ("timestamp", *ADDED)),
        "step",
        "prev_hash",
        "hash",
        "args_hash",  # added by schema version 2, after the v1 columns
        "identified_by",
        "policy_digest",  # added by schema version 6
    ]
    assert [r["seq"] for r in stored] == [1, 2, 3, 4, 5, 6]
    assert stored[0]["prev_hash"] == GENESIS
    for before, after in itertools.pairwise(stored):
        assert after["prev_hash"] == before["hash"]
    assert all(r["hash"] == recompute(r) for r in stored)
    first, third = stored[0], stored[2]
    assert first["at"] == "2024-03-01T10:00:00.000+00:00" and first["event"] == "decided"
    assert first["payload"] == '{"amount":5000.0,"memo":"caf\\u00e9","to":"carol"}'
    assert first["response"] is None and first["duration_ms"] is None
    assert third["response"] == '{"body":"done","status":"success"}'
    assert log.head() == f"6:{stored[-1]['hash']}" and log.count() == 6


def test_any_string_a_model_produces_is_stored_and_verifies(log: AuditLog) -> None:
    odd = event("decided", payload={"memo": "lone \ud800 surrogate", "emoji": "\U0001f4b8"})
    assert log.append([odd]) == [odd]
    assert log.verify().ok
    (row,) = log.export()
    assert row["payload"] == {"memo": "lone \ud800 surrogate", "emoji": "\U0001f4b8"}


def test_a_negative_zero_duration_is_stored_and_verifies(log: AuditLog) -> None:
    assert log.append([event("retried", duration_ms=-0.0)])
    assert log.verify().ok


def test_a_replayed_event_is_skipped_and_takes_no_seq(log: AuditLog, path: Path) -> None:
    a, b, c, d = (event("started", call=f"c{i}") for i in range(4))
    assert log.append([a, b]) == [a, b]
    head = log.head()
    assert log.append([b]) == [] and log.head() == head
    assert log.append([b, c, a]) == [c]
    assert log.append([d, d]) == [d]
    stored = rows(path)
    assert [(r["seq"], r["tool_call_id"]) for r in stored] == [
        (1, "c0"),
        (2, "c1"),
        (3, "c2"),
        (4, "c3"),
    ]
    assert head == f"2:{stored[2]['prev_hash']}"
    assert log.verify().ok
    other = event("started", call="c0", seq=1)  # another step of the same call is recorded
    assert log.append([other]) == [other]


def test_events_without_a_thread_are_never_deduplicated(log: AuditLog) -> None:
    loose = event("started", thread=None)
    assert log.append([loose]) == [loose]
    assert log.append([loose]) == [loose]
    assert log.count() == 2 and log.verify().ok


@pytest.mark.backends("sqlite")
def test_an_empty_append_opens_no_transaction(log: AuditLog, path: Path) -> None:
    with closing(Raw(path)) as other:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        assert log.append([]) == []  # returns at once instead of waiting for the lock
        other.execute("ROLLBACK")


def test_update_and_delete_are_refused_by_triggers(full: AuditLog, path: Path) -> None:
    with closing(Raw(path)) as conn:
        with pytest.raises(APPEND_ONLY, match="append-only"):
            conn.execute("UPDATE handrail_audit SET reason = 'x' WHERE seq = 2")
        with pytest.raises(APPEND_ONLY, match="append-only"):
            conn.execute("DELETE FROM handrail_audit WHERE seq = 6")
    assert full.count() == 6 and full.verify().ok


# -- verify --------------------------------------------------------------------------------------


def test_a_clean_log_verifies_and_any_of_its_heads_is_in_it(full: AuditLog, path: Path) -> None:
    result = full.verify()
    assert (result.ok, result.rows, result.head) == (True, 6, full.head())
    assert result.bad_row is None and result.problem is None and result.rows_after_head is None
    for row in rows(path):
        at = full.verify(head=f"{row['seq']}:{row['hash']}")
        assert at.ok and at.rows_after_head == 6 - row["seq"], at
        bare = full.verify(head=row["hash"])  # the old form: a hash of some row
        assert bare.ok and bare.rows_after_head == 6 - row["seq"], bare


def test_an_empty_log_verifies_but_not_against_a_head(log: AuditLog) -> None:
    assert log.head() is None and log.count() == 0
    assert log.verify() == log.verify(None)
    assert (log.verify().ok, log.verify().rows, log.verify().head) == (True, 0, None)
    for head in ("a" * 64, "1:" + "a" * 64):
        result = log.verify(head=head)
        assert not result.ok and result.bad_row is None, result
        assert "truncated or rewritten" in str(result.problem)


def tamper_edit(conn: Raw, stored: list[dict[str, Any]]) -> None:
    conn.execute("UPDATE handrail_audit SET payload = '{\"amount\":1.0}' WHERE seq = 3")


def tamper_delete(conn: Raw, stored: list[dict[str, Any]]) -> None:
    conn.execute("DELETE FROM handrail_audit WHERE seq = 3")


def tamper_delete_first(conn: Raw, stored: list[dict[str, Any]]) -> None:
    conn.execute("DELETE FROM handrail_audit WHERE seq = 1")


def tamper_swap(conn: Raw, stored: list[dict[str, Any]]) -> None:
    conn.execute("DELETE FROM handrail_audit WHERE seq IN (2, 4)")
    insert(conn, {**stored[3], "seq": 2})
    insert(conn, {**stored[1], "seq": 4})


def tamper_insert(conn: Raw, stored: list[dict[str, Any]]) -> None:
    conn.execute("UPDATE handrail_audit SET seq = seq + 1000 WHERE seq >= 3")
    conn.execute("UPDATE handrail_audit SET seq = seq - 999 WHERE seq >= 1000")
    forged = {
        **stored[2],
        "tool_call_id": "c-forged",
        "step": "forged",
        "prev_hash": stored[1]["hash"],
    }
    forged["hash"] = recompute(forged)  # self-consistent: the forged row itself verifies
    insert(conn, forged)


def tamper_append(conn: Raw, stored: list[dict[str, Any]]) -> None:
    forged = {**stored[5], "seq": 7, "call_seq": 3, "step": None, "prev_hash": stored[5]["hash"]}
    insert(conn, {**forged, "hash": "f" * 64})


def tamper_genesis(conn: Raw, stored: list[dict[str, Any]]) -> None:
    conn.execute("UPDATE handrail_audit SET prev_hash = ? WHERE seq = 1", ("1" * 64,))


@pytest.mark.parametrize(
    ("tamper", "bad_row", "problem"),
    [
        (tamper_edit, 3, "row 3: its hash does not match its contents (edited)"),
        (tamper_delete, 4, "row 4: seq jumps from 2 (rows removed)"),
        (tamper_delete_first, 2, "row 2: the log starts at seq 2, not 1"),
        (tamper_swap, 2, "row 2: prev_hash does not follow row 1 (a row was removed, inserted"),
        (tamper_insert, 4, "row 4: prev_hash does not follow row 3"),
        (tamper_append, 7, "row 7: its hash does not match its contents (edited)"),
        (tamper_genesis, 1, "row 1: prev_hash does not follow the start of the log"),
    ],
)
def test_tampering_is_found_at_the_first_bad_row(
    full: AuditLog, path: Path, tamper: Any, bad_row: int, problem: str
) -> None:
    stored = rows(path)
    with closing(Raw(path)) as conn:
        unguard(conn)
        tamper(conn, stored)
    result = full.verify()
    assert not result.ok
    assert result.bad_row == bad_row
    assert result.problem is not None and result.problem.startswith(problem)
    assert len(result.problem.splitlines()) == 1
    before = [r for r in rows(path) if r["seq"] < bad_row]  # these verified
    assert result.rows == len(before)
    assert result.head == (f"{before[-1]['seq']}:{before[-1]['hash']}" if before else None)


def test_truncation_is_found_only_against_a_stored_head(full: AuditLog, path: Path) -> None:
    kept = full.head()
    assert kept is not None and kept.startswith("6:")
    bare = kept.partition(":")[2]
    with closing(Raw(path)) as conn:
        unguard(conn)
        conn.execute("DELETE FROM handrail_audit WHERE seq > 4")
    assert full.verify().ok and full.verify().rows == 4  # the chain alone cannot tell
    result = full.verify(head=kept)
    assert not result.ok and result.bad_row is None and result.rows == 4
    assert result.rows_after_head is None
    assert result.problem == (
        f"head {kept}: row 6 is not in the log (it ends at row 4): it was truncated or "
        "rewritten after that head was taken"
    )
    result = full.verify(head=bare)
    assert not result.ok and result.bad_row is None and result.rows == 4
    assert result.problem == (
        f"head {bare} is not in the log: it was truncated or rewritten after that head was taken"
    )


def test_a_rewritten_tail_verifies_alone_but_not_against_a_stored_head(
    full: AuditLog, path: Path
) -> None:
    kept = full.head()
    stored = rows(path)
    with closing(Raw(path)) as conn:
        unguard(conn)
        conn.execute("DELETE FROM handrail_audit WHERE seq >= 5")
        prev = stored[3]["hash"]
        for row in stored[4:]:
            forged = {**row, "approver": "mallory", "prev_hash": prev}
            forged["hash"] = prev = recompute(forged)
            insert(conn, forged)
    assert full.verify().ok  # the chain is unkeyed: a full rewrite from row 5 on recomputes it
    result = full.verify(head=kept)
    assert not result.ok and result.bad_row == 6 and result.rows == 5
    assert result.problem == (
        f"row 6: its hash is not the one of head {kept}: the log was rewritten at or before "
        "row 6 after that head was taken"
    )
    assert not full.verify(head=stored[5]["hash"]).ok  # the old, bare form
    intact = full.verify(head=f"4:{stored[3]['hash']}")  # the rows before the rewrite
    assert intact.ok and intact.rows_after_head == 2


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed six-row log to copy (hypothesis runs many examples in one test)."""
    path = tmp_path_factory.mktemp("audit") / "template.db"
    audit = AuditLog(path)
    audit.append(six())
    audit.close()
    assert not path.with_name("template.db-wal").exists()
    return path


EDITABLE = [f for f in FIELDS if f != "timestamp"] + ["at", "step", "prev_hash", "hash"]
SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row=st.integers(1, 6), column=st.sampled_from(EDITABLE), data=st.data())
def test_any_single_edit_is_found_at_its_row(
    template: Path, row: int, column: str, data: st.DataObject
) -> None:
    path = template.with_name(f"{uuid.uuid4().hex}.db")
    shutil.copy(template, path)
    with closing(Raw(path)) as conn:
        old = conn.execute(f"SELECT {column} FROM handrail_audit WHERE seq = ?", (row,)).fetchone()
        value = old[0]
        if isinstance(value, int | float):
            new: Any = value + data.draw(st.integers(1, 10**6))
        elif isinstance(value, str):
            new = value + data.draw(SAFE_TEXT)
        else:
            new = data.draw(SAFE_TEXT)
        unguard(conn)
        conn.execute(f"UPDATE handrail_audit SET {column} = ? WHERE seq = ?", (new, row))
    audit = AuditLog(path, readonly=True)
    try:
        result = audit.verify()
    finally:
        audit.close()
    assert not result.ok and result.bad_row == row, (column, value, new, result)


# -- export --------------------------------------------------------------------------------------


def test_export_yields_rows_in_order_with_json_parsed_back(full: AuditLog, path: Path) -> None:
    out = list(full.export())
    assert [r["seq"] for r in out] == [1, 2, 3, 4, 5, 6]
    stored = rows(path)
    assert sorted(out[0]) == sorted(stored[0])
    assert out[0]["payload"] == PAYLOAD and out[0]["response"] is None
    assert out[2]["response"] == {"status": "success", "body": "done"}
    assert [r["hash"] for r in out] == [r["hash"] for r in stored]
    assert out[5]["duration_ms"] == 60_000.0 and out[5]["approver"] == "alice"


def test_export_filters_by_thread_tool_and_a_half_open_window(log: AuditLog) -> None:
    log.append(
        [
            event("decided", thread="t-1", call="a", tool="transfer_funds", seq=0),
            event("decided", thread="t-1", call="b", tool="get_balance", seq=1),
            event("decided", thread="t-2", call="a", tool="transfer_funds", seq=2),
            event("decided", thread="t-2", call="c", tool="get_balance", seq=3),
            event("started", thread="t-2", call="c", tool="get_balance", seq=4),
        ]
    )

    def seqs(**filters: Any) -> list[int]:
        return [r["seq"] for r in log.export(**filters)]

    assert seqs() == [1, 2, 3, 4, 5]
    assert seqs(thread_id="t-2") == [3, 4, 5]
    assert seqs(tool="get_balance") == [2, 4, 5]
    assert seqs(thread_id="t-1", tool="get_balance") == [2]
    assert seqs(thread_id="t-9") == []
    minute = timedelta(minutes=1)
    assert seqs(since=T0 + minute) == [2, 3, 4, 5]
    assert seqs(until=T0 + 2 * minute) == [1, 2]  # until is exclusive
    assert seqs(since=T0 + minute, until=T0 + 3 * minute) == [2, 3]
    assert seqs(since=T0 + 90 * minute / 60) == [3, 4, 5]
    naive = (T0 + 3 * minute).replace(tzinfo=None)  # naive is UTC
    assert seqs(since=naive) == [4, 5]
    paris = T0.astimezone(timezone(timedelta(hours=1))) + 3 * minute  # 11:03+01:00 is 10:03Z
    assert seqs(since=paris, tool="get_balance") == [4, 5]


def test_export_streams_past_a_page(log: AuditLog) -> None:
    many = [event("started", call=f"c{i}", seq=0) for i in range(1300)]
    assert len(log.append(many)) == 1300
    assert [r["seq"] for r in log.export()] == list(range(1, 1301))
    assert len(list(log.export(since=T0, until=T0 + timedelta(seconds=1)))) == 1300
    result = log.verify()
    assert result.ok and result.rows == 1300


# -- stats ---------------------------------------------------------------------------------------


def scenario() -> list[ToolEvent]:
    """Calls of two tools, every figure of `stats` exercised; minutes follow the list order."""
    n = iter(range(1000))

    def ev(kind: str, thread: str, call: str, tool: str = "transfer_funds", **f: Any) -> ToolEvent:
        i = next(n)
        return event(kind, thread=thread, call=call, tool=tool, seq=i, **f)

    fail = {"status": "rate_limited", "body": "429"}
    return [
        # transfer_funds, call A: asked, approved after 1 min, fails 3 times, escalated
        ev("decided", "t-1", "A", decision="ask"),
        ev("approval_requested", "t-1", "A", decision="ask"),
        ev("approval_decided", "t-1", "A", decision="approve", duration_ms=60_000),
        ev("started", "t-1", "A"),
        ev("failed", "t-1", "A", response=fail, duration_ms=5),
        ev("retried", "t-1", "A", duration_ms=1000),
        ev("failed", "t-1", "A", response=fail, duration_ms=5),
        ev("retried", "t-1", "A", duration_ms=2000),
        ev("failed", "t-1", "A", response={"status": "server_error", "body": "500"}),
        ev("escalated", "t-1", "A", reason="3 attempts failed"),
        ev("approval_decided", "t-1", "A", decision="retry", duration_ms=5000),  # not a wait
        # call B: asked, rejected after 2 min
        ev("decided", "t-1", "B", decision="ask"),
        ev("approval_decided", "t-1", "B", decision="reject", duration_ms=120_000),
        # call A again, on another thread: another call; allowed, succeeds
        ev("decided", "t-2", "A", decision="allow"),
        ev("started", "t-2", "A"),
        ev("succeeded", "t-2", "A", response={"status": "success", "body": "ok"}),
        # call D: asked, expired after a day
        ev("decided", "t-2", "D", decision="ask"),
        ev("expired", "t-2", "D", duration_ms=86_400_000),
        # call E: denied
        ev("decided", "t-3", "E", decision="deny"),
        # call F: asked, edited after 30 s, decided again (allow): still one asked call
        ev("decided", "t-3", "F", decision="ask"),
        ev("approval_decided", "t-3", "F", decision="edit", duration_ms=30_000),
        ev("decided", "t-3", "F", decision="allow"),
        ev("started", "t-3", "F"),
        ev("succeeded", "t-3", "F", response={"status": "success", "body": "ok"}),
        # get_balance: one invalid, one allowed
        ev("decided", "t-1", "G", tool="get_balance", decision="invalid"),
        ev("decided", "t-1", "H", tool="get_balance", decision="allow"),
        ev("succeeded", "t-1", "H", tool="get_balance", response={"status": "success", "body": ""}),
    ]


def test_stats_counts_every_figure(log: AuditLog) -> None:
    log.append(scenario())
    assert log.stats() == [
        ToolStats(
            tool="get_balance",
            calls=2,
            allowed=1,
            asked=0,
            denied=0,
            invalid=1,
            approval_p50_ms=None,
            approval_p95_ms=None,
            retries=0,
            failures={},
            escalations=0,
        ),
        ToolStats(
            tool="transfer_funds",
            calls=6,
            allowed=1,
            asked=4,
            denied=1,
            invalid=0,
            approval_p50_ms=60_000.0,  # of 30 s, 1 min, 2 min, 1 day: nearest rank 2 of 4
            approval_p95_ms=86_400_000.0,  # rank 4 of 4
            retries=2,
            failures={"rate_limited": 2, "server_error": 1},
            escalations=1,
        ),
    ]


def test_stats_since_counts_a_call_by_its_first_decision_only(log: AuditLog) -> None:
    log.append(
        [
            event("decided", call="X", seq=0, decision="ask"),
            event("decided", call="Z", seq=1, decision="ask"),
            event("approval_decided", call="X", seq=10, decision="approve", duration_ms=600_000),
            event("started", call="X", seq=11),
            event("decided", call="Z", seq=12, decision="allow"),  # after an edit
            event("decided", call="Y", seq=20, decision="deny"),
        ]
    )
    (stats,) = log.stats(since=T0 + timedelta(minutes=5))
    assert (stats.calls, stats.allowed, stats.asked, stats.denied) == (3, 0, 0, 1)
    assert stats.approval_p50_ms == stats.approval_p95_ms == 600_000.0
    assert log.stats(since=T0 + timedelta(days=1)) == []


def test_stats_percentiles_are_nearest_rank(log: AuditLog) -> None:
    log.append([event("expired", call=f"c{i}", duration_ms=i) for i in range(20, 0, -1)])
    log.append([event("expired", call=f"d{i}", tool="t5", duration_ms=i) for i in range(1, 6)])
    five, twenty = log.stats()  # sorted by tool: t5, transfer_funds
    assert (twenty.approval_p50_ms, twenty.approval_p95_ms) == (10.0, 19.0)
    assert (five.approval_p50_ms, five.approval_p95_ms) == (3.0, 5.0)  # ranks ceil(2.5), ceil(4.75)
    assert twenty.calls == 20 and twenty.asked == 0


# -- read-only ------------------------------------------------------------------------------------


def test_readonly_creates_nothing_and_refuses_to_append(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="no such database file"):
        AuditLog(missing, readonly=True)
    assert not missing.exists()
    other = tmp_path / "other.db"
    with closing(connect(other)) as conn:
        conn.execute("CREATE TABLE checkpoints (x)")
    audit = AuditLog(other, readonly=True)
    try:
        assert audit.count() == 0 and audit.head() is None and audit.verify().ok
        assert list(audit.export()) == [] and audit.stats() == []
        with pytest.raises(HandrailError, match="read-only"):
            audit.append([event()])
    finally:
        audit.close()
    assert not has_audit_table(other)


# -- CLI -----------------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_verify_exits_0_then_1_after_tampering(full: AuditLog, path: Path, capsys) -> None:
    head = full.head()
    assert cli(capsys, "audit", "verify", "--db", str(path)) == (
        0,
        f"audit ok: 6 rows, head {head}\n",
        "",
    )
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(path), "--head", str(head).upper())
    assert code == 0 and out.startswith("audit ok: 6 rows")
    with closing(Raw(path)) as conn:
        unguard(conn)
        conn.execute("DELETE FROM handrail_audit WHERE seq = 6")
    assert cli(capsys, "audit", "verify", "--db", str(path))[0] == 0
    code, out, err = cli(capsys, "audit", "verify", "--db", str(path), "--head", str(head))
    assert code == 1 and err == ""
    assert out.startswith("audit failed: head ") and "truncated or rewritten" in out
    with closing(Raw(path)) as conn:
        conn.execute("UPDATE handrail_audit SET reason = 'changed' WHERE seq = 2")
    code, out, _ = cli(capsys, "audit", "verify", "--db", str(path))
    assert code == 1
    assert out == "audit failed: row 2: its hash does not match its contents (edited)\n"


def test_cli_verify_refuses_a_malformed_head(full: AuditLog, path: Path, capsys) -> None:
    code, out, err = cli(capsys, "audit", "verify", "--db", str(path), "--head", "abc")
    assert code == 2 and out == "" and err.startswith("handrail: --head must be")
    assert len(err.splitlines()) == 1


def test_cli_head_prints_the_hash_or_nothing(
    full: AuditLog, path: Path, tmp_path: Path, capsys
) -> None:
    assert cli(capsys, "audit", "head", "--db", str(path)) == (0, f"{full.head()}\n", "")
    empty = tmp_path / "empty.db"
    AuditLog(empty).close()
    assert cli(capsys, "audit", "head", "--db", str(empty)) == (0, "", "")
    assert cli(capsys, "audit", "verify", "--db", str(empty), "--head", "") == (
        0,
        "audit ok: 0 rows\n",
        "",
    )


def test_cli_export_jsonl_with_filters(log: AuditLog, path: Path, capsys) -> None:
    now = datetime.now(UTC)
    log.append(
        [
            *six(),
            event("decided", call="old", tool="get_balance", at=now - timedelta(days=2)),
            event("decided", call="new", tool="get_balance", at=now - timedelta(hours=2)),
        ]
    )
    db = ["--db", str(path)]
    code, out, _ = cli(capsys, "audit", "export", "--jsonl", *db)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 8 and [r["seq"] for r in lines] == list(range(1, 9))
    assert lines[0]["payload"] == PAYLOAD and "café" in out  # UTF-8, not \u escapes
    assert lines == list(log.export())

    def count(*argv: str) -> int:
        code, out, _ = cli(capsys, "audit", "export", "--jsonl", *db, *argv)
        assert code == 0
        return len(out.splitlines())

    assert count("--tool", "get_balance") == 2
    assert count("--thread", "t-1", "--tool", "transfer_funds") == 6
    assert count("--thread", "nobody") == 0
    assert count("--since", "24h") == 1
    assert count("--since", "7d", "--until", "1d") == 1
    assert count("--since", "2024-03-01T10:01:00+00:00", "--until", "2024-03-01T10:02") == 2


def test_cli_export_needs_jsonl_and_a_readable_when(full: AuditLog, path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["audit", "export", "--db", str(path)])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        main(["audit", "export", "--jsonl", "--db", str(path), "--since", "yesterday"])
    assert exit_.value.code == 2
    assert "neither a duration" in capsys.readouterr().err


def test_cli_stats_table_and_json(log: AuditLog, path: Path, capsys) -> None:
    log.append(scenario())
    code, out, _ = cli(capsys, "stats", "--db", str(path))
    assert code == 0
    head, balance, transfer = (line.split() for line in out.splitlines())
    assert head == [
        "TOOL",
        "CALLS",
        "ALLOW",
        "ASK",
        "DENY",
        "P50",
        "P95",
        "RETRIES",
        "FAILURES",
        "ESCALATED",
    ]
    assert balance == ["get_balance", "2", "1", "0", "0", "-", "-", "0", "-", "0"]
    assert transfer == [
        "transfer_funds",
        "6",
        "1",
        "4",
        "1",
        "1m",
        "1d",
        "2",
        "rate_limited=2,server_error=1",
        "1",
    ]
    code, out, _ = cli(capsys, "stats", "--db", str(path), "--json")
    assert code == 0
    assert json.loads(out) == [dataclasses.asdict(s) for s in log.stats()]
    code, out, _ = cli(capsys, "stats", "--db", str(path), "--since", "2030-01-01")
    assert (code, out) == (0, "no tool calls audited\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "verify"],
        ["audit", "head"],
        ["audit", "export", "--jsonl"],
        ["stats"],
        ["stats", "--json"],
    ],
)
def test_cli_read_only_commands_create_neither_file_nor_table(
    tmp_path: Path, capsys, argv: list[str]
) -> None:
    missing = tmp_path / "missing.db"
    code, out, err = cli(capsys, *argv, "--db", str(missing))
    assert code == 2 and out == "" and err == f"handrail: no database at {missing}\n"
    assert not missing.exists()
    other = tmp_path / "checkpoints.db"
    with closing(connect(other)) as conn:
        conn.execute("CREATE TABLE checkpoints (x)")
    code, out, _ = cli(capsys, *argv, "--db", str(other))
    assert code == 0
    assert out in ("audit ok: 0 rows\n", "", "no tool calls audited\n", "[]\n")
    assert not has_audit_table(other)


def test_cli_refuses_a_file_that_is_not_a_database(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite " * 100)
    code, _, err = cli(capsys, "audit", "verify", "--db", str(junk))
    assert code == 2 and err.startswith(f"handrail: {junk}: ") and len(err.splitlines()) == 1
