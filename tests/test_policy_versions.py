"""Policy versions: a policy's digest, carried by its decisions and by every audit row, and
``handrail policy history``."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from langgraph.types import Command
from support import CTX, agent, approve, call, config, table_rows, turn

from handrail.audit import AuditLog
from handrail.audit._chain import GENESIS, chain, row_of
from handrail.cli import main
from handrail.context import Actor
from handrail.events import ToolEvent
from handrail.policies import Policy
from handrail.storage._schema import MIGRATIONS
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ALICE = Actor(id="alice", roles=("dev",))


def load(text: str) -> Policy:
    return Policy.from_yaml(textwrap.dedent(text), source="policy.yaml")


BASE = """
default: deny
rules:
  - id: small
    tools: [transfer]
    effect: allow
    when: 'args.amount < 100'
  - id: big
    tools: [transfer]
    effect: ask
    approvers: [owner]
    when: 'args.amount >= 100'
"""


# -- 1. the digest -------------------------------------------------------------------------------


def test_the_digest_is_the_sha256_of_the_sorted_canonical_json() -> None:
    policy = load(BASE)
    assert len(policy.digest) == 64 and int(policy.digest, 16) >= 0
    assert policy.digest == load(BASE).digest


def test_policies_that_mean_the_same_have_the_same_digest() -> None:
    spelled_out = BASE.replace("default: deny", "default: {effect: deny}")
    reordered = """
    rules:
      - id: big
        effect: ask
        when: 'args.amount >= 100'
        approvers: [owner]
        tools: [transfer]
      - id: small
        effect: allow
        tools: [transfer]
        when: 'args.amount < 100'
    """
    base = load(BASE).digest
    assert load(spelled_out).digest == base
    assert load(reordered).digest == base  # the default is deny; rule order means nothing


@pytest.mark.parametrize(
    "change",
    [
        ("args.amount < 100", "args.amount < 101"),
        ("approvers: [owner]", "approvers: [cfo]"),
        ("default: deny", "default: allow"),
        ("id: small", "id: tiny"),
    ],
)
def test_any_change_of_meaning_changes_the_digest(change: tuple[str, str]) -> None:
    assert load(BASE.replace(*change)).digest != load(BASE).digest


def test_a_body_limit_change_changes_the_digest() -> None:
    assert load(BASE + "body_limit: 10\n").digest != load(BASE).digest


def test_every_decision_carries_its_policys_digest_even_when_kept() -> None:
    a, b = load(BASE), load(BASE.replace("default: deny", "default: allow"))
    for policy in (a, b):
        for amount in (5, 5, 500, 500):  # the second of each is the kept decision
            decision = policy.decide("transfer", {"amount": amount}, ALICE, now=NOW)
            assert decision.policy_digest == policy.digest
        assert policy.decide("other", {}, ALICE).policy_digest == policy.digest  # the default
        assert policy.explain("transfer", {"amount": 5}, ALICE).decision.policy_digest == (
            policy.digest
        )
    assert a.digest != b.digest


def test_decisions_that_say_the_same_are_equal_whichever_policy_made_them() -> None:
    a, b = load(BASE), load(BASE + "body_limit: 10\n")
    da = a.decide("transfer", {"amount": 500}, ALICE, now=NOW)
    db = b.decide("transfer", {"amount": 500}, ALICE, now=NOW)
    assert da == db and da.policy_digest != db.policy_digest


# -- 2. the audit --------------------------------------------------------------------------------


@pytest.mark.backends("sqlite", "postgresql")
def test_every_audit_row_of_a_real_graph_carries_the_policy_digest(
    db: str | Path, policy: Policy
) -> None:
    graph = agent(
        db, banking_tools(db), policy, turn(call("transfer_funds", to="carol", amount=5000.0))
    )
    assert "__interrupt__" in graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    graph.invoke(Command(resume=approve()), config(), context=CTX)
    audited = table_rows(db, "SELECT event, policy_digest FROM handrail_audit ORDER BY seq")
    events = [r["event"] for r in audited]
    assert {"decided", "approval_requested", "approval_decided", "started"} <= set(events)
    assert {r["policy_digest"] for r in audited} == {policy.digest}
    trail = AuditLog(db, readonly=True)
    try:
        assert trail.verify().ok
    finally:
        trail.close()


def event(kind: str, seq: int, digest: str | None) -> ToolEvent:
    return ToolEvent(
        timestamp=f"2025-01-02T03:04:0{seq}.000+00:00",
        event=kind,  # type: ignore[arg-type]
        graph="g",
        agent_id="agent-1",
        thread_id="t-1",
        tool_call_id="c1",
        tool="transfer",
        call_seq=seq,
        payload={"amount": 5},
        decision="allow",
        rule_id="small",
        policy_digest=digest,
    )


def version_5_file(path: Path) -> None:
    """A database as Handrail wrote it at schema version 5, with two audit rows."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "CREATE TABLE handrail_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        for migration in MIGRATIONS[:5]:
            for statement in migration.steps("sqlite", conn):  # type: ignore[arg-type]
                conn.execute(statement)
            conn.execute(
                "INSERT INTO handrail_schema VALUES (?, ?)", (migration.version, "2025-01-01")
            )
        prev = GENESIS
        for seq, kind in enumerate(("decided", "started"), start=1):
            row = row_of(seq, event(kind, seq - 1, None))
            del row["policy_digest"]
            digest = chain(prev, row)
            names = [*row, "prev_hash", "hash"]
            conn.execute(
                f"INSERT INTO handrail_audit ({', '.join(names)}) "
                f"VALUES ({', '.join('?' * len(names))})",
                (*row.values(), prev, digest),
            )
            prev = digest
        conn.commit()


def test_rows_from_before_the_digest_still_verify_beside_rows_with_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    version_5_file(path)
    log = AuditLog(path)  # migrates to version 6
    try:
        digest = load(BASE).digest
        assert len(log.append([event("succeeded", 2, digest)])) == 1
        assert log.verify().ok and log.count() == 3
        stored = table_rows(path, "SELECT policy_digest FROM handrail_audit ORDER BY seq")
        assert [r["policy_digest"] for r in stored] == [None, None, digest]
    finally:
        log.close()


@pytest.mark.parametrize("row", [1, 3])
def test_a_changed_digest_is_found_at_its_row(tmp_path: Path, row: int) -> None:
    path = tmp_path / "old.db"
    version_5_file(path)
    log = AuditLog(path)
    try:
        log.append([event("succeeded", 2, load(BASE).digest)])
    finally:
        log.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TRIGGER handrail_audit_no_update")
        conn.execute("UPDATE handrail_audit SET policy_digest = ? WHERE seq = ?", ("0" * 64, row))
        conn.commit()
    log = AuditLog(path, readonly=True)
    try:
        result = log.verify()
    finally:
        log.close()
    assert not result.ok and result.bad_row == row


def test_a_database_not_yet_at_version_6_reads_and_verifies_read_only(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    version_5_file(path)
    log = AuditLog(path, readonly=True)  # migrates nothing
    try:
        assert log.verify().ok and log.count() == 2
        assert [r["policy_digest"] for r in log.export()] == [None, None]
        (old,) = log.policy_history()
        assert (old.digest, old.decisions, old.rows) == (None, 1, 2)
    finally:
        log.close()
    assert table_rows(path, "SELECT max(version) AS v FROM handrail_schema") == [{"v": 5}]


# -- 3. handrail policy history ------------------------------------------------------------------

STRICT = """
default: deny
rules:
  - id: no-transfers
    tools: [transfer_funds]
    effect: deny
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.mark.backends("sqlite", "postgresql")
def test_policy_history_lists_each_digest_with_when_and_how_many_decisions(
    db: str | Path, policy: Policy, capsys: pytest.CaptureFixture[str]
) -> None:
    strict = load(STRICT)
    pay = turn(call("transfer_funds", to="carol", amount=5.0))
    first = agent(db, banking_tools(db), policy, pay, pay)
    first.invoke({"messages": [("user", "pay")]}, config("t-1"), context=CTX)
    second = agent(db, banking_tools(db), strict, pay)
    second.invoke({"messages": [("user", "pay")]}, config("t-2"), context=CTX)
    code, text = run_cli(capsys, "policy", "history", "--db", str(db), "--json")
    assert code == 0
    history = json.loads(text)
    assert [v["digest"] for v in history] == [policy.digest, strict.digest]
    decided = table_rows(
        db, "SELECT policy_digest, at FROM handrail_audit WHERE event = 'decided' ORDER BY seq"
    )
    for version in history:
        mine = [r["at"] for r in decided if r["policy_digest"] == version["digest"]]
        assert version["decisions"] == len(mine) > 0
        assert version["first_seen"] <= mine[0] and version["last_seen"] >= mine[-1]
    assert history[0]["last_seen"] <= history[1]["first_seen"]
    code, text = run_cli(capsys, "policy", "history", "--db", str(db))
    assert code == 0 and policy.digest[:12] in text and strict.digest[:12] in text


def test_policy_history_of_an_empty_trail_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.db"
    AuditLog(path).close()
    assert run_cli(capsys, "policy", "history", "--db", str(path), "--json") == (0, "[]\n")
    code, text = run_cli(capsys, "policy", "history", "--db", str(path))
    assert code == 0 and "no policy version seen" in text


def test_policy_history_of_a_missing_database_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "history", "--db", str(tmp_path / "nope.db")]) == 2
    assert "no database at" in capsys.readouterr().err


# -- 4. a request waiting under an older policy ---------------------------------------------------

DENIES_BIG = POLICY_PATH.read_text().replace(
    """    effect: ask
    approvers: [treasurer]
    expires_in: 24h""",
    """    effect: deny""",
)


BIG = turn(call("transfer_funds", to="carol", amount=5000.0))


def paused(db: Path, policy: Policy) -> None:
    """A big transfer asked under ``policy``, waiting for a treasurer."""
    graph = agent(db, banking_tools(db), policy, BIG)
    assert "__interrupt__" in graph.invoke({"messages": [("user", "pay")]}, config(), context=CTX)


def test_a_request_resumed_under_a_policy_that_now_denies_it_is_refused(
    db: Path, policy: Policy
) -> None:
    paused(db, policy)
    newer = Policy.from_yaml(DENIES_BIG)
    assert newer.settings("transfer_funds") == policy.settings("transfer_funds")
    assert newer.digest != policy.digest
    graph = agent(db, banking_tools(db), newer, BIG)  # the same model, another policy
    out = graph.invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == []
    told = [m for m in out["messages"] if m.type == "tool"]
    assert len(told) == 1 and "big-transfers" in str(told[0].content), told
    assert "denied" in str(told[0].content).lower(), told
    digests = table_rows(
        db, "SELECT event, decision, policy_digest FROM handrail_audit ORDER BY seq"
    )
    assert {r["policy_digest"] for r in digests} == {policy.digest, newer.digest}
    assert not [r for r in digests if r["event"] == "started"]


CFO_ASKS = POLICY_PATH.read_text().replace("approvers: [treasurer]", "approvers: [cfo]")


def test_a_request_resumed_under_a_policy_asking_others_is_asked_again(
    db: Path, policy: Policy
) -> None:
    paused(db, policy)
    newer = Policy.from_yaml(CFO_ASKS)
    assert newer.digest != policy.digest
    graph = agent(db, banking_tools(db), newer, BIG)  # the same model, another policy
    limited = {**config(), "recursion_limit": 40}
    out = graph.invoke(Command(resume=approve()), limited, context=CTX)
    assert transfers(db) == []
    interrupts = out.get("__interrupt__")
    assert interrupts and "cfo" in json.dumps(interrupts[0].value, default=str), out
    cfo = {"id": "carla", "roles": ["cfo"]}
    graph.invoke(Command(resume=approve(approver=cfo)), limited, context=CTX)
    assert transfers(db) == [("carol", 5000.0)]


TWO_ASKED = POLICY_PATH.read_text().replace(
    "approvers: [treasurer]", "approvers: [treasurer]\n    min_approvals: 2"
)


def test_a_request_resumed_under_a_policy_asking_more_approvals_is_asked_again(
    db: Path, policy: Policy
) -> None:
    paused(db, policy)
    graph = agent(db, banking_tools(db), Policy.from_yaml(TWO_ASKED), BIG)
    limited = {**config(), "recursion_limit": 40}
    out = graph.invoke(Command(resume=approve()), limited, context=CTX)
    assert transfers(db) == []
    assert out.get("__interrupt__"), out  # alice's approval stands; a second treasurer is asked
    second = {"id": "tess", "roles": ["treasurer"]}
    graph.invoke(Command(resume=approve(approver=second)), limited, context=CTX)
    assert transfers(db) == [("carol", 5000.0)]
