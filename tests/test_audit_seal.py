"""Audit rows made before their transaction (`sealable`) and linked in it (`seal`) are the rows and
hashes `row_of` and `chain` give, which `AuditLog.verify` recomputes: for any event, at any place
in the chain."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from handrail.audit import GENESIS, AuditLog
from handrail.audit._chain import chain, row_of, seal, sealable
from handrail.events import EVENT_KINDS, ToolEvent

T = "2026-12-08T01:00:00.000+00:00"
_TEXT = st.text(max_size=12)  # any code point: NUL, quotes, braces, '"seq":', surrogates aside
_MAYBE = st.none() | _TEXT
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def events(draw: st.DrawFn) -> ToolEvent:
    body = draw(_MAYBE)
    return ToolEvent(
        timestamp=draw(st.sampled_from([T, "2026-01-01T00:00"])),
        event=draw(st.sampled_from(EVENT_KINDS)),
        graph=draw(_TEXT),
        agent_id=draw(_MAYBE),
        thread_id=draw(_MAYBE),
        tool_call_id=draw(_TEXT),
        tool=draw(_TEXT),
        call_seq=draw(st.integers(0, 10**6)),
        payload=draw(st.dictionaries(_TEXT, _JSON, max_size=4)),
        response=None if body is None else {"status": draw(_TEXT), "body": body},
        retry_count=draw(st.integers(0, 50)),
        decision=draw(_MAYBE),
        rule_id=draw(_MAYBE),
        approver=draw(_MAYBE),
        duration_ms=draw(st.none() | st.just(float("nan")) | st.floats(min_value=0)),
        reason=draw(_MAYBE),
        args_hash=draw(_MAYBE),
        identified_by=draw(_MAYBE),
        policy_digest=draw(_MAYBE),
    )


@given(event=events(), seq=st.integers(1, 10**12), prev=st.sampled_from([GENESIS, "ab" * 32]))
def test_a_sealed_row_is_the_row_and_hash_verify_recomputes(
    event: ToolEvent, seq: int, prev: str
) -> None:
    row = row_of(seq, event)
    sealed = seal(sealable(event), seq, prev)
    assert sealed == {**row, "prev_hash": prev, "hash": chain(prev, row)}


@given(event=events())
def test_one_sealable_seals_differently_at_each_place(event: ToolEvent) -> None:
    ready = sealable(event)
    hashes = {seal(ready, seq, prev)["hash"] for seq in (1, 2) for prev in (GENESIS, "f" * 64)}
    assert len(hashes) == 4


def test_rows_made_ahead_and_rows_made_in_the_transaction_chain_into_one_log(
    tmp_path: Any,
) -> None:
    """`append_in` takes events and sealables alike, in one chain that verifies."""
    log = AuditLog(tmp_path / "audit.db")
    try:
        call = {"graph": "g", "agent_id": "a", "thread_id": "t", "tool_call_id": "c", "tool": "pay"}
        made = [
            ToolEvent(timestamp=T, event=kind, call_seq=n, payload={"amount": n}, **call)
            for n, kind in enumerate(EVENT_KINDS[3:6])  # started, succeeded, failed
        ]
        with log.store.transaction() as sql:
            recorded = log.append_in(sql, [sealable(made[0]), made[1], sealable(made[2])])
        assert recorded == made
        assert log.append(made) == []  # each step once, whichever form it came in
        assert log.count() == 3 and log.verify(full=True).ok
    finally:
        log.close()
