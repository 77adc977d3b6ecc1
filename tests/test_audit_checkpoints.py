"""Costs that do not grow with history: `AuditLog.verify` from a head or a signed checkpoint
(only the rows after it are recomputed, ``full=True`` checks every one) and `AuditLog.stats`
from a stored rollup (only the rows after it are read)."""

from __future__ import annotations

import dataclasses
import math
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Raw, table_rows
from test_audit import event, rows, six, unguard
from test_audit_anchors import H1, H2, asked, cli, rewrite_from

from handrail.audit import AuditLog, ToolStats
from handrail.audit._anchors import sign_head
from handrail.audit._stats import Waits
from handrail.errors import HandrailError
from handrail.events import ToolEvent

pytestmark = pytest.mark.backends("sqlite", "postgresql")

KEY = Ed25519PrivateKey.generate()
"""One signing key for the module (generating one per test adds nothing)."""
PUBLIC = KEY.public_key()


@pytest.fixture
def log(db: str | Path) -> Iterator[AuditLog]:
    audit = AuditLog(db)
    yield audit
    audit.close()


def later(n: int, *, first: int = 0) -> list[ToolEvent]:
    """``n`` allowed calls' ``decided`` rows, after the six."""
    return [event("decided", call=f"later-{first + i}", decision="allow") for i in range(n)]


@pytest.fixture
def signed(log: AuditLog) -> AuditLog:
    """Six rows, a checkpoint signed at row 6, then two rows after it."""
    log.append(six())
    log.sign(KEY)
    log.append(later(2))
    return log


def edit_row(db: str | Path, seq: int, reason: str = "changed") -> None:
    """Change row ``seq``'s contents, leaving every hash as it was."""
    with closing(Raw(db)) as conn:
        unguard(conn)
        conn.execute("UPDATE handrail_audit SET reason = ? WHERE seq = ?", (reason, seq))


# -- verify from a checkpoint --------------------------------------------------------------------


def test_verify_from_a_checkpoint_recomputes_only_the_rows_after_it(signed: AuditLog) -> None:
    result = signed.verify(public_key=PUBLIC)
    assert (result.ok, result.rows, result.head) == (True, 8, signed.head())
    assert (result.checked_from, result.rows_checked, result.vouched_by) == (7, 2, "checkpoint")
    assert (result.anchors, result.signed_head) == (1, signed.anchors()[0].head)
    whole = signed.verify(public_key=PUBLIC, full=True)
    assert (whole.ok, whole.rows, whole.checked_from, whole.rows_checked) == (True, 8, 1, 8)
    assert whole.vouched_by is None
    plain = signed.verify()  # no key, no head: nothing to start from
    assert (plain.checked_from, plain.rows_checked) == (1, 8)


def test_an_edit_before_the_checkpoint_is_not_read_by_default_but_found_by_full(
    signed: AuditLog, db: str | Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_row(db, 2)
    result = signed.verify(public_key=PUBLIC)
    assert result.ok and result.checked_from == 7
    whole = signed.verify(public_key=PUBLIC, full=True)
    assert (whole.ok, whole.bad_row, whole.rows) == (False, 2, 1)
    assert whole.problem == "row 2: its hash does not match its contents (edited)"
    key = str(tmp_path / "audit.pem.pub")
    Path(key).write_bytes(
        PUBLIC.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    code, out, err = cli(capsys, "audit", "verify", "--db", str(db), "--public-key", key)
    assert code == 0 and out.startswith("audit ok: 8 rows")
    assert err == (
        "checked rows 7-8 after the checkpoint at row 6; rows 1-6 were not read "
        "(--full recomputes every row)\n"
    )
    code, out, err = cli(capsys, "audit", "verify", "--db", str(db), "--public-key", key, "--full")
    assert (code, out, err) == (1, f"audit failed: {whole.problem}\n", "")


def test_an_edit_after_the_checkpoint_is_found(signed: AuditLog, db: str | Path) -> None:
    edit_row(db, 8)
    result = signed.verify(public_key=PUBLIC)
    assert (result.ok, result.bad_row, result.rows, result.checked_from) == (False, 8, 7, 7)
    assert result.rows_checked == 1 and result.vouched_by == "checkpoint"
    assert result.problem == "row 8: its hash does not match its contents (edited)"


def test_a_log_that_does_not_verify_is_not_signed(signed: AuditLog, db: str | Path) -> None:
    edit_row(db, 8)
    with pytest.raises(HandrailError, match="does not verify, so it is not signed: row 8"):
        signed.sign(KEY)
    assert [a.seq for a in signed.anchors()] == [6]  # nothing signed


def test_a_first_checkpoint_verifies_the_whole_log(log: AuditLog, db: str | Path) -> None:
    log.append(six())
    edit_row(db, 2)
    with pytest.raises(HandrailError, match="row 2"):
        log.sign(KEY)
    assert log.anchors() == []


def test_a_row_removed_right_after_the_checkpoint_is_found(
    signed: AuditLog, db: str | Path
) -> None:
    with closing(Raw(db)) as conn:
        unguard(conn)
        conn.execute("DELETE FROM handrail_audit WHERE seq = 7")
    result = signed.verify(public_key=PUBLIC)
    assert (result.ok, result.bad_row, result.rows) == (False, 8, 6)
    assert result.problem == "row 8: seq jumps from 6 (rows removed)"


def forge_latest(db: str | Path) -> str:
    """A checkpoint of row 8 in the key's name whose signature is another key's."""
    stranger = Ed25519PrivateKey.generate()
    forged = sign_head(stranger, 8, rows(db)[7]["hash"])
    with closing(Raw(db)) as conn:
        conn.execute(
            "INSERT INTO handrail_audit_anchors VALUES (?, ?, ?, ?, ?)",
            (8, forged.hash, forged.signed_at, sign_head(KEY, 1, "x").key_id, forged.signature),
        )
    return "the checkpoint at row 8 claiming key {kid} does not verify with it (forged or edited)"


def rewrite_under(db: str | Path) -> str:
    """Rows 2 on rewritten with every hash recomputed: row 6 no longer has the signed hash."""
    rewrite_from(db, 2, approver="mallory")
    return "row 6: its hash is not the one signed by key {kid} at {at}: the log was rewritten "


def past_the_end(db: str | Path) -> str:
    """A checkpoint properly signed by the key, of a row the log does not have."""
    anchor = sign_head(KEY, 20, "ab" * 32)
    with closing(Raw(db)) as conn:
        conn.execute(
            "INSERT INTO handrail_audit_anchors VALUES (?, ?, ?, ?, ?)",
            (20, anchor.hash, anchor.signed_at, anchor.key_id, anchor.signature),
        )
    return "the checkpoint at row 20 signed by key {kid} is past the end of the log (row 8)"


@pytest.mark.parametrize("forge", [forge_latest, rewrite_under, past_the_end])
def test_a_checkpoint_that_does_not_hold_fails_with_a_full_run_naming_it(
    signed: AuditLog, db: str | Path, forge: Any
) -> None:
    (anchor,) = signed.anchors()
    expected = forge(db).format(kid=anchor.key_id, at=anchor.signed_at)
    result = signed.verify(public_key=PUBLIC)
    assert not result.ok and result.problem is not None, result
    assert result.problem.startswith(expected), result.problem
    assert (result.checked_from, result.vouched_by) == (1, None)  # it fell back to a full run


def test_verify_from_a_head_and_from_the_later_of_head_and_checkpoint(
    signed: AuditLog, db: str | Path
) -> None:
    kept = signed.head()  # row 8, after the checkpoint at row 6
    signed.append(later(3, first=10))
    result = signed.verify(kept)
    assert (result.ok, result.rows, result.rows_after_head) == (True, 11, 3)
    assert (result.checked_from, result.rows_checked, result.vouched_by) == (9, 3, "head")
    both = signed.verify(kept, public_key=PUBLIC)
    assert (both.ok, both.checked_from, both.vouched_by, both.anchors) == (True, 9, "head", 1)
    early = f"3:{rows(db)[2]['hash']}"
    both = signed.verify(early, public_key=PUBLIC)
    assert (both.ok, both.checked_from, both.vouched_by) == (True, 7, "checkpoint")
    assert both.rows_after_head == 8
    wrong = f"3:{'0' * 64}"
    failed = signed.verify(wrong, public_key=PUBLIC)  # a head that does not hold: a full run
    assert (failed.ok, failed.bad_row, failed.checked_from) == (False, 3, 1)
    bare = signed.verify(rows(db)[2]["hash"])  # the old form: found only by a full run
    assert (bare.ok, bare.checked_from, bare.rows_after_head) == (True, 1, 8)


# -- the trail's meaning from a checkpoint -------------------------------------------------------


@pytest.mark.parametrize("thread", ["t-1", None])
def test_a_call_approved_before_the_checkpoint_and_started_after_it_verifies(
    log: AuditLog, thread: str | None
) -> None:
    events = asked(("approve", H1, thread, "c1"), started=(thread, "c1"))  # type: ignore[arg-type]
    log.append(six())
    log.append(events[:-1])  # decided, requested, approved
    log.sign(KEY)
    log.append([*later(2), events[-1]])  # then the start
    result = log.verify(public_key=PUBLIC)
    assert result.ok, result
    assert (result.checked_from, result.rows_checked) == (10, 3)


UNAPPROVED_AFTER = {
    "no approval at all": [],
    "approved for other arguments": [("approve", H2, "t-1", "c1")],
    "rejected": [("reject", H1, "t-1", "c1")],
    "approved in another thread": [("approve", H1, "t-2", "c1")],
}


@pytest.mark.parametrize("before", UNAPPROVED_AFTER.values(), ids=UNAPPROVED_AFTER.keys())
def test_a_start_without_an_approval_after_the_checkpoint_fails(
    log: AuditLog, before: list[Any]
) -> None:
    events = asked(*before)
    log.append(events[:-1])
    log.sign(KEY)
    log.append(events[-1:])
    bad = len(events)
    result = log.verify(public_key=PUBLIC)
    assert (result.ok, result.bad_row, result.checked_from) == (False, bad, bad)
    assert result.problem == (
        f"row {bad}: 'started' of an asked call (tool transfer_funds) with no approval of the "
        "same arguments"
    )


def test_an_approval_after_the_checkpoint_is_found_among_the_rows_read(log: AuditLog) -> None:
    events = asked(("approve", H1, "t-1", "c1"))
    log.append(events[:2])
    log.sign(KEY)
    log.append(events[2:])
    assert log.verify(public_key=PUBLIC).ok


# -- stats from a rollup -------------------------------------------------------------------------


def rollups(db: str | Path) -> list[dict[str, Any]]:
    return table_rows(db, "SELECT name, seq, hash FROM handrail_audit_rollups")


def test_stats_keep_a_rollup_and_read_only_the_rows_after_it(log: AuditLog, db: str | Path) -> None:
    log.append(six())
    first = log.stats()
    assert rollups(db) == [{"name": "stats", "seq": 6, "hash": rows(db)[5]["hash"]}]
    # Row 1 (a decided allow) now says deny, hashes untouched: the rollup does not read it.
    with closing(Raw(db)) as conn:
        unguard(conn)
        conn.execute("UPDATE handrail_audit SET decision = 'deny' WHERE seq = 1")
    assert log.stats() == first
    log.append(later(2))
    (after,) = log.stats()
    assert (after.calls, after.allowed, after.denied) == (first[0].calls + 2, 3, 0)
    assert rollups(db)[0]["seq"] == 8


def test_a_rollup_whose_row_changed_is_counted_again(log: AuditLog, db: str | Path) -> None:
    log.append(six())
    log.stats()
    with closing(Raw(db)) as conn:
        unguard(conn)
        conn.execute("DELETE FROM handrail_audit WHERE seq >= 5")
        conn.execute("UPDATE handrail_audit SET decision = 'deny' WHERE seq = 1")
    (stats,) = log.stats()  # row 6 is gone: every row is read again
    assert (stats.calls, stats.allowed, stats.denied, stats.asked) == (2, 0, 1, 1)
    assert rollups(db)[0]["seq"] == 4


def test_a_read_only_log_uses_the_rollup_and_keeps_none(log: AuditLog, db: str | Path) -> None:
    log.append(six())
    log.stats()
    log.append(later(3))
    reader = AuditLog(db, readonly=True)
    try:
        assert reader.stats() == log.stats() and reader.stats()[0].calls == 5
    finally:
        reader.close()


def test_cli_stats_keeps_the_rollup(
    log: AuditLog, db: str | Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log.append(six())
    code, out, _ = cli(capsys, "stats", "--db", str(db), "--json")
    assert code == 0 and rollups(db)[0]["seq"] == 6
    assert '"calls": 2' in out


@pytest.mark.backends("postgresql")
def test_cli_stats_reads_a_database_it_may_not_write(
    log: AuditLog, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log.append(six())
    role, schema = f"reader_{uuid.uuid4().hex[:8]}", db.rsplit("%3D", 1)[1]
    with closing(psycopg.connect(db.split("?")[0], autocommit=True)) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    reader = db.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
    code, out, err = cli(capsys, "stats", "--db", reader, "--json")
    assert code == 0, err
    assert '"calls": 2' in out
    assert rollups(db) == []  # nothing kept: the reader may not write


THREADS = st.sampled_from(["t-1", "t-2", None])
CALLS = st.sampled_from(["a", "b", "c", "d"])
TOOLS = st.sampled_from(["transfer_funds", "get_balance"])
KINDS = st.sampled_from(
    ["decided", "approval_decided", "expired", "retried", "failed", "escalated", "started"]
)
DECISIONS = st.sampled_from(["allow", "ask", "deny", "invalid", "approve", "edit", "reject"])


@st.composite
def events(draw: st.DrawFn) -> ToolEvent:
    kind = draw(KINDS)
    return event(
        kind,
        thread=draw(THREADS),
        call=draw(CALLS),
        tool=draw(TOOLS),
        seq=draw(st.integers(0, 1000)),
        decision=draw(DECISIONS),
        duration_ms=draw(st.none() | st.floats(0, 1e9)),
        response={"status": draw(st.sampled_from(["rate_limited", "server_error"]))}
        if kind == "failed"
        else None,
    )


def reference(trail: list[ToolEvent]) -> list[ToolStats]:
    """The figures as `stats` computed them before rollups: one pass, every value kept."""
    tallies: dict[str, dict[str, Any]] = {}
    decided: set[tuple[str | None, str]] = set()
    for e in trail:
        call = (e.thread_id, e.tool_call_id)
        first = e.event == "decided" and call not in decided
        if first:
            decided.add(call)
        t = tallies.setdefault(
            e.tool, {"calls": set(), "d": Counter(), "w": [], "r": 0, "f": Counter(), "e": 0}
        )
        t["calls"].add(call)
        if first:
            t["d"][e.decision] += 1
        elif (e.event == "approval_decided" and e.decision in ("approve", "edit", "reject")) or (
            e.event == "expired"
        ):
            if e.duration_ms is not None:
                t["w"].append(e.duration_ms)
        elif e.event == "retried":
            t["r"] += 1
        elif e.event == "failed":
            t["f"][(e.response or {}).get("status") or "unknown"] += 1
        elif e.event == "escalated":
            t["e"] += 1

    def rank(values: list[float], p: int) -> float | None:
        values = sorted(values)
        return values[max(-(-p * len(values) // 100), 1) - 1] if values else None

    return [
        ToolStats(
            tool=tool,
            calls=len(t["calls"]),
            allowed=t["d"]["allow"],
            asked=t["d"]["ask"],
            denied=t["d"]["deny"],
            invalid=t["d"]["invalid"],
            approval_p50_ms=rank(t["w"], 50),
            approval_p95_ms=rank(t["w"], 95),
            retries=t["r"],
            failures=dict(sorted(t["f"].items())),
            escalations=t["e"],
        )
        for tool, t in sorted(tallies.items())
    ]


@pytest.mark.backends("sqlite")
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.lists(events(), min_size=1, max_size=8), min_size=1, max_size=5),
    readers=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_stats_from_rollups_equal_a_full_recomputation(
    tmp_path: Path, batches: list[list[ToolEvent]], readers: list[bool]
) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.db"
    log = AuditLog(path)
    try:
        trail: list[ToolEvent] = []
        for batch, read in zip(batches, readers, strict=False):
            # each event is its own step: no two collide on (thread, call, call_seq, event)
            numbered = [
                dataclasses.replace(e, call_seq=len(trail) + i) for i, e in enumerate(batch)
            ]
            trail += log.append(numbered)
            if read:
                assert log.stats() == reference(trail)
        assert log.stats() == reference(trail)
    finally:
        log.close()


# -- the bounded waits ---------------------------------------------------------------------------


@pytest.mark.backends("sqlite")
@given(
    st.lists(st.just(0.0) | st.floats(1.0, 3.2e10), min_size=1, max_size=2000),
    st.randoms(use_true_random=False),
)
@settings(max_examples=30, deadline=None)
def test_waits_are_exact_then_within_one_percent_and_order_free(
    values: list[float], rnd: random.Random
) -> None:
    waits, shuffled = Waits(), Waits()
    for v in values:
        waits.add(v)
    for v in rnd.sample(values, len(values)):
        shuffled.add(v)
    assert waits.dump() == shuffled.dump() == Waits.load(waits.dump()).dump()
    assert len(waits.counts) <= 1300  # 1 ms to a year (and 0) in 1% buckets
    ordered = sorted(values)
    for p in (50, 95):
        exact = ordered[max(-(-p * len(ordered) // 100), 1) - 1]
        got = waits.percentile(p)
        assert got is not None
        if len(set(values)) <= Waits.EXACT:
            assert got == exact
        else:
            assert math.isclose(got, exact, rel_tol=Waits.ACCURACY)
