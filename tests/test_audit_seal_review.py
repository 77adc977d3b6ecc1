"""Review of f1bae0c: audit rows made before their transaction (`sealable`) and linked in it
(`seal`), drafts of events (`Batch.draft`/`Batch.keep`), and the ledger's intent made ahead.

Pins down, on both backends: rows written by the new code are the rows and hashes the previous
code wrote (reimplemented here as `old_append`) for awkward values, old and new rows chain into
one log that `AuditLog.verify` and ``handrail audit verify`` accept, a breaker's refusal or a
ledger replay records no extra ``started``, and a call's events stay contiguous; a sink without
``sealable`` still records, and no event is lost when only some have rows made ahead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from support import CTX, call, config, table_rows, turn

from handrail import Actor, Inbox, Policy, build_agent
from handrail.audit import GENESIS, AuditLog
from handrail.audit._chain import HASHED, INSERT, chain, row_of, seal, sealable
from handrail.cli import main
from handrail.events import Recorder, ToolEvent
from handrail.state import ToolCallRecord
from handrail.storage._base import Sql
from handrail.testing import ScriptedChatModel
from handrail.tools.breaker import CircuitBreaker

T = "2026-12-08T01:00:00.000+00:00"
BASE: dict[str, Any] = {
    "graph": "g",
    "agent_id": "a",
    "thread_id": "t",
    "tool": "pay",
    "tool_call_id": "c",
}


def awkward_events() -> list[ToolEvent]:
    """Events whose values are hard to store and hash the same on both backends: NUL, unicode
    around ``"seq"`` in sort order, -0.0, NaN, tiny and huge floats and ints, None and set added
    columns, no thread."""
    nul = "a\x00b"
    cases: list[dict[str, Any]] = [
        {"payload": {"seq": 1, "step": 2, "": 3, "~": 4, "sep": 5, "sez": 6}, "duration_ms": -0.0},
        {"payload": {"x": nul, nul: [nul]}, "graph": nul, "reason": nul, "duration_ms": math.nan},
        {"payload": {"é": "ünï", "🙂": "\u202eRTL", "e\u0301": "\U0010ffff"}, "tool": "pày🙂"},
        {"payload": {"n": 2**70, "f": 0.1 + 0.2}, "call_seq": 2**31 - 1, "duration_ms": 5e-324},
        {"payload": {}, "duration_ms": 1.7976931348623157e308, "retry_count": 2**31 - 1},
        {"payload": {"k": None}, "args_hash": "h", "identified_by": nul, "policy_digest": "d"},
        {"payload": {"k": True}, "args_hash": None, "identified_by": "i", "policy_digest": None},
        {
            "payload": {"q": '"seq":1,'},
            "thread_id": None,
            "response": {"status": "x", "body": None},
        },
        {"payload": {}, "response": {"status": nul, "body": "🙂" * 3}, "decision": "ask"},
        {"payload": {}, "agent_id": None, "approver": "é", "rule_id": "\x7f", "duration_ms": 0.0},
    ]
    made = []
    for n, case in enumerate(cases):
        values = {**BASE, "tool_call_id": f"c{n}", "call_seq": n, **case}
        made.append(ToolEvent(timestamp=T, event="started", **values))
    return made


def old_append(log: AuditLog, events: Sequence[ToolEvent]) -> list[ToolEvent]:
    """What `AuditLog.append` did before f1bae0c: each row made and hashed inside the
    transaction with `row_of` and `chain`."""
    with log.store.transaction("handrail_audit") as sql:
        seq, prev = last(sql)
        recorded = []
        for event in events:
            row = row_of(seq + 1, event)
            digest = chain(prev, row)
            if sql.execute(INSERT, {**row, "prev_hash": prev, "hash": digest}).rowcount:
                seq, prev = seq + 1, digest
                recorded.append(event)
    return recorded


def last(sql: Sql) -> tuple[int, str]:
    found = sql.execute("SELECT seq, hash FROM handrail_audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS) if found is None else (int(found[0]), str(found[1]))


def expected_hashes(events: Sequence[ToolEvent]) -> list[str]:
    """The hashes the previous code gives ``events`` appended in order to an empty log."""
    prev, hashes = GENESIS, []
    for seq, event in enumerate(events, 1):
        prev = chain(prev, row_of(seq, event))
        hashes.append(prev)
    return hashes


def stored(db: Any) -> list[dict[str, Any]]:
    return table_rows(db, "SELECT * FROM handrail_audit ORDER BY seq")


@pytest.fixture
def log(db: Any) -> Iterator[AuditLog]:
    trail = AuditLog(db)
    yield trail
    trail.close()


# -- the rows and hashes --------------------------------------------------------------------------


@pytest.mark.backends("sqlite", "postgresql")
def test_new_rows_store_the_hashes_the_old_code_stored(db: Any, log: AuditLog) -> None:
    made = awkward_events()
    assert log.append(made) == made
    rows = stored(db)
    assert [r["hash"] for r in rows] == expected_hashes(made)
    for row in rows:  # the stored values hash to the stored hash (what verify recomputes)
        assert chain(row["prev_hash"], {k: row[k] for k in HASHED}) == row["hash"]
    assert log.verify(full=True).ok


@pytest.mark.backends("sqlite", "postgresql")
def test_old_rows_then_new_rows_then_old_rows_verify_as_one_log(
    db: Any, log: AuditLog, capsys: pytest.CaptureFixture[str]
) -> None:
    made = awkward_events()
    assert old_append(log, made[:3]) == made[:3]
    with log.store.transaction() as sql:  # a caller's transaction, events and sealables mixed
        assert log.append_in(sql, [sealable(made[3]), made[4]]) == made[3:5]
    assert log.append([sealable(e) for e in made[5:8]]) == made[5:8]
    assert old_append(log, made[8:]) == made[8:]
    assert [r["hash"] for r in stored(db)] == expected_hashes(made)
    check = log.verify(full=True)
    assert (check.ok, check.rows) == (True, len(made))
    assert main(["audit", "verify", "--db", str(db)]) == 0
    assert f"audit ok: {len(made)} rows" in capsys.readouterr().out


@pytest.mark.backends("sqlite", "postgresql")
def test_a_replayed_step_is_skipped_whichever_form_and_takes_no_seq(db: Any, log: AuditLog) -> None:
    made = awkward_events()
    old_append(log, made[:4])
    again = [sealable(made[1]), made[4], sealable(made[2]), sealable(made[5])]
    assert log.append(again) == [made[4], made[5]]  # seq 5 and 6, no gap
    assert [r["seq"] for r in stored(db)] == [1, 2, 3, 4, 5, 6]
    assert log.verify(full=True).ok


def test_sealing_is_pure_and_links_as_chain_does() -> None:
    """A sealable is pure: sealing it again (a retried transaction) changes nothing in it."""
    event = awkward_events()[1]
    ready = sealable(event)
    first, again = seal(ready, 1, GENESIS), seal(ready, 1, GENESIS)
    assert first == again and "seq" not in ready.row
    assert seal(ready, 2, first["hash"])["hash"] == chain(first["hash"], row_of(2, event))


# -- drafts in a batch ----------------------------------------------------------------------------


def record(call_id: str = "c0", events: int = 0) -> ToolCallRecord:
    return ToolCallRecord(id=call_id, name="pay", args={"to": "bob"}, args_hash="h", events=events)


POLICY = Policy.from_data({"rules": [{"id": "r", "tools": ["pay"], "effect": "allow"}]})


def test_a_draft_not_kept_is_never_recorded_and_a_kept_one_once(tmp_path: Path) -> None:
    trail = AuditLog(tmp_path / "a.db")
    try:
        batch = Recorder(POLICY, "g", trail).batch(config(), "a")
        dropped = batch.draft("started", record())
        assert dropped.record.events == 1 and batch.publish() == []
        kept = batch.draft("started", record())
        assert batch.keep(kept) == kept.record
        batch.keep(kept)  # kept twice: one step, recorded once
        assert batch.publish() == [kept.event]
        assert trail.count() == 1 and trail.verify(full=True).ok
    finally:
        trail.close()


def test_drop_forgets_the_rows_made_with_the_events(tmp_path: Path) -> None:
    """`drop` empties both lists: a later publish records only what came after."""
    trail = AuditLog(tmp_path / "a.db")
    try:
        batch = Recorder(POLICY, "g", trail).batch(config(), "a")
        batch.add("decided", record())
        with trail.store.transaction() as sql:
            assert not batch.recorded_in(sql)
        batch.drop()
        after = batch.add("started", record(events=1))
        assert after.events == 2
        assert [e.event for e in batch.publish()] == ["started"]
        assert [r["event"] for r in trail.export()] == ["started"]
    finally:
        trail.close()


def test_without_an_audit_drafts_carry_no_row_and_publish_once() -> None:
    recorder = Recorder(POLICY, "g")
    batch = recorder.batch(config(), "a")
    draft = batch.draft("started", record())
    assert draft.ready is None
    batch.keep(draft)
    assert batch.publish() == [draft.event]
    batch.keep(draft)
    assert batch.publish() == []  # seen by this process


class OldSink:
    """An `EventSink` as the protocol was before f1bae0c (no ``sealable``), over a real log."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def append(self, events: Sequence[Any]) -> list[ToolEvent]:
        return self.log.append(events)

    def append_in(self, sql: Sql, events: Sequence[Any]) -> list[ToolEvent]:
        return self.log.append_in(sql, events)

    def holds_in(self, sql: Sql, events: Sequence[ToolEvent]) -> bool:
        return self.log.holds_in(sql, events)

    def next_call_seq(self, thread_id: str, tool_call_id: str) -> int:
        return self.log.next_call_seq(thread_id, tool_call_id)


def test_a_sink_written_to_the_previous_protocol_still_records(tmp_path: Path) -> None:
    trail = AuditLog(tmp_path / "a.db")
    try:
        recorder = Recorder(POLICY, "g", OldSink(trail))  # type: ignore[arg-type]
        batch = recorder.batch(config(), "a")
        batch.add("started", record())
        assert len(batch.publish()) == 1 and trail.count() == 1
    finally:
        trail.close()


@pytest.mark.parametrize("how", ["audit_attached_later", "foreign_draft"])
def test_no_event_is_lost_when_only_some_have_rows_made_ahead(tmp_path: Path, how: str) -> None:
    trail = AuditLog(tmp_path / "a.db")
    try:
        recorder = Recorder(POLICY, "g", None if how == "audit_attached_later" else trail)
        batch = recorder.batch(config(), "a")
        if how == "audit_attached_later":
            first = batch.add("decided", record())
            recorder.audit = trail
        else:
            other = Recorder(POLICY, "g").batch(config(), "a")
            first = batch.keep(other.draft("decided", record()))
        batch.add("started", first)
        assert [e.event for e in batch.publish()] == ["decided", "started"]
        assert trail.count() == 2
    finally:
        trail.close()


# -- real graphs: the started event and the ledger ------------------------------------------------


def pay_policy(**settings: Any) -> Policy:
    return Policy.from_data(
        {
            "rules": [{"id": "r", "tools": ["pay"], "effect": "allow"}],
            "tools": {"pay": {"idempotent": False, **settings}},
        }
    )


def pay_graph(
    db: Any, paid: list[str], policy: Policy, breaker: CircuitBreaker | None = None
) -> Any:
    @tool
    def pay(to: str) -> str:
        """Send money."""
        paid.append(to)
        return f"paid {to}"

    model = ScriptedChatModel([turn(call("pay", to="bob")), AIMessage("ok")])
    return build_agent(model, [pay], policy, checkpointer=db, circuit_breaker=breaker)


def audit_rows(db: Any) -> list[dict[str, Any]]:
    trail = AuditLog(db)
    try:
        assert trail.verify(full=True).ok
        return list(trail.export())
    finally:
        trail.close()


def contiguous(rows: list[dict[str, Any]]) -> bool:
    """Each call's events at call_seq 0, 1, 2, ... in chain order (no gap, no repeat)."""
    by_call: dict[str, list[int]] = {}
    for row in rows:
        by_call.setdefault(row["tool_call_id"], []).append(row["call_seq"])
    return all(seqs == list(range(len(seqs))) for seqs in by_call.values())


@pytest.mark.backends("sqlite", "postgresql")
def test_an_allowed_call_has_one_started_recorded_with_its_intent(db: Any) -> None:
    paid: list[str] = []
    graph = pay_graph(db, paid, pay_policy())
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    rows = audit_rows(db)
    assert paid == ["bob"]
    assert [r["event"] for r in rows] == ["decided", "started", "succeeded"]
    assert contiguous(rows)
    ledger = table_rows(db, "SELECT started_at, outcome FROM handrail_ledger")
    assert [r["outcome"] for r in ledger] == ["succeeded"]
    started = next(r for r in rows if r["event"] == "started")
    assert started["payload"] == {"to": "bob"} and started["args_hash"]


@pytest.mark.backends("sqlite", "postgresql")
def test_a_call_the_breaker_refuses_has_no_started_and_no_gap(db: Any) -> None:
    paid: list[str] = []
    policy = pay_policy(circuit_breaker={"failures": 1, "cool_down": "1h"})
    breaker = CircuitBreaker()
    breaker.record("pay", policy.settings("pay").circuit_breaker, "server_error")
    graph = pay_graph(db, paid, policy, breaker)
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    rows = audit_rows(db)
    assert paid == []
    assert "started" not in [r["event"] for r in rows]
    assert [r["event"] for r in rows][:2] == ["decided", "failed"]
    assert rows[1]["response"]["status"] == "circuit_open"
    assert contiguous(rows)


@pytest.mark.backends("sqlite", "postgresql")
def test_a_step_run_again_is_answered_by_the_ledger_and_started_is_kept_once(db: Any) -> None:
    """The execute step run again from its checkpoint: the ledger knows the attempt (``known``),
    the draft made before `Ledger.begin` is not kept, the tool does not run again."""
    paid: list[str] = []
    graph = pay_graph(db, paid, pay_policy())
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    before = audit_rows(db)
    at_execute = next(s for s in graph.get_state_history(config()) if s.next == ("execute",))
    graph.invoke(None, at_execute.config, context=CTX)
    rows = audit_rows(db)
    assert paid == ["bob"]
    assert [r["event"] for r in rows].count("started") == 1
    assert [r["hash"] for r in rows[: len(before)]] == [r["hash"] for r in before]
    assert contiguous(rows)


@pytest.mark.backends("sqlite", "postgresql")
def test_an_asked_call_approved_in_the_inbox_verifies_with_its_start_after_the_approval(
    db: Any, bank: Any
) -> None:
    """Events recorded by the review paths (`ApprovalTable.open`/`resolve`, `ProofTable.add`:
    `Batch.publish_in`) and by execute's drafted start chain into one log that verifies (a
    ``started`` of an asked call must follow its approval)."""
    graph = bank(turn(call("transfer_funds", to="bob", amount=2000)))
    graph.invoke({"messages": [("user", "pay bob")]}, config(), context=CTX)
    Inbox(db, graph=graph).approve("t-1", approver=Actor(id="alice", roles=("treasurer",)))
    rows = audit_rows(db)
    events = [r["event"] for r in rows if r["tool"] == "transfer_funds"]
    assert events == ["decided", "approval_requested", "approval_decided", "started", "succeeded"]
    assert contiguous(rows)


def test_an_idempotent_tools_start_is_audited_with_the_arguments_it_was_given(
    tmp_path: Path,
) -> None:
    """Behaviour changed by f1bae0c, worth keeping: an idempotent tool's ``started`` is added
    before the run and published with its outcome; its row is now made when it is added, so a
    tool that changes its arguments in place no longer rewrites the audited start (the previous
    code hashed the mutated arguments into ``started``)."""

    @tool
    def pay(data: Any) -> str:
        """Send money."""
        data["items"].append("changed by the tool")
        return "ok"

    policy = Policy.from_data(
        {
            "rules": [{"id": "r", "tools": ["pay"], "effect": "allow"}],
            "tools": {"pay": {"idempotent": True}},
        }
    )
    model = ScriptedChatModel([turn(call("pay", data={"items": ["a"]})), AIMessage("ok")])
    graph = build_agent(model, [pay], policy, checkpointer=tmp_path / "h.db")
    graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    payloads = {r["event"]: r["payload"] for r in audit_rows(tmp_path / "h.db")}
    assert payloads["started"] == {"data": {"items": ["a"]}}
