"""``handrail policy replay``: every call in the audit trail decided again under another policy,
on real graphs and a real database; what changes, by tool and rule; redacted calls and unknown
requesters named, not replayed; the window; the CLI's JSON and table; and a property: replaying
the policy that decided the calls changes nothing."""

from __future__ import annotations

import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.types import Command
from support import AGENT, CTX, Raw, agent, call, config, edit, turn

from handrail import Actor, Policy, RunContext
from handrail.audit import AuditLog
from handrail.cli import main
from handrail.errors import StorageError
from handrail.events import ToolEvent
from handrail.policies.replay import ReplayReport, Transition, replay
from handrail.storage.requesters import RequesterTable
from handrail.tools.demo import POLICY_PATH, banking_tools

STRICTER = {
    "rules": [
        {"id": "reads", "tools": ["get_balance"], "roles": ["ai-agent"], "effect": "allow"},
        {
            "id": "tiny-transfers",
            "tools": ["transfer_funds"],
            "when": "args.amount <= 100.0",
            "effect": "allow",
        },
        {
            "id": "mid-transfers",
            "tools": ["transfer_funds"],
            "when": "args.amount > 100.0 && args.amount <= 1000.0",
            "effect": "ask",
            "approvers": ["treasurer"],
        },
        {
            "id": "big-deny",
            "tools": ["transfer_funds"],
            "when": "args.amount > 1000.0",
            "effect": "deny",
        },
        {"id": "no-deletes", "tools": ["delete_user"], "effect": "deny"},
    ]
}
"""The demo policy made stricter: transfers over 100 wait, over 1,000 are refused."""

FOUR = turn(
    call("get_balance", account="operating"),
    call("transfer_funds", to="bob", amount=500),
    call("transfer_funds", to="carol", amount=5000),
    call("delete_user", user_id="bob"),
)
"""One turn the demo policy decides allow, allow, ask, deny."""


def demo_run(db: Any, thread: str = "t-1", *turns: AIMessage) -> dict[str, Any]:
    """The demo bank under its own policy, playing ``turns`` (default `FOUR`) on ``thread``."""
    graph = agent(db, banking_tools(db), Policy.from_file(POLICY_PATH), *(turns or (FOUR,)))
    result: dict[str, Any] = graph.invoke(
        {"messages": [("user", "go")]}, config(thread), context=CTX
    )
    return result


def changes(report: ReplayReport) -> set[tuple[str, str, str | None, str, str | None, int]]:
    return {
        (t.tool, t.old_effect, t.old_rule, t.new_effect, t.new_rule, t.calls)
        for t in report.transitions
    }


# -- real graphs, both backends ---------------------------------------------------------------


@pytest.mark.backends("sqlite", "postgresql")
def test_a_stricter_policy_shows_each_change_by_tool_and_rule(db: Any) -> None:
    assert "__interrupt__" in demo_run(db)

    report = replay(Policy.from_data(STRICTER), db)

    assert (report.calls, report.replayed, report.changed, report.unchanged) == (4, 4, 2, 2)
    assert changes(report) == {
        ("transfer_funds", "allow", "small-transfers", "ask", "mid-transfers", 1),
        ("transfer_funds", "ask", "big-transfers", "deny", "big-deny", 1),
    }
    assert report.by_effect == {"allow→ask": 1, "ask→deny": 1}
    assert {(c.thread_id, c.tool, c.old_effect, c.new_effect) for c in report.samples} == {
        ("t-1", "transfer_funds", "allow", "ask"),
        ("t-1", "transfer_funds", "ask", "deny"),
    }
    assert report.not_replayable == 0 and report.skipped == ()


@pytest.mark.backends("sqlite", "postgresql")
def test_replaying_the_deciding_policy_changes_nothing(db: Any) -> None:
    demo_run(db)
    report = replay(Policy.from_file(POLICY_PATH), db)
    assert (report.calls, report.replayed, report.changed, report.rule_changed) == (4, 4, 0, 0)
    assert report.transitions == () and report.samples == ()


def test_replay_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    demo_run(db)
    before = db.read_bytes(), AuditLog(db, readonly=True).head()
    replay(Policy.from_data(STRICTER), db)
    assert (db.read_bytes(), AuditLog(db, readonly=True).head()) == before


def test_an_edit_is_a_call_of_its_own(tmp_path: Path) -> None:
    """The approver's edit (5,000 made 800) is decided anew: two calls, two changes."""
    db = tmp_path / "bank.db"
    graph = agent(
        db,
        banking_tools(db),
        Policy.from_file(POLICY_PATH),
        turn(call("transfer_funds", to="carol", amount=5000)),
    )
    assert "__interrupt__" in graph.invoke({"messages": [("user", "go")]}, config(), context=CTX)
    graph.invoke(
        Command(resume=edit("transfer_funds", {"to": "carol", "amount": 800})),
        config(),
        context=CTX,
    )

    report = replay(Policy.from_data(STRICTER), db)

    assert report.calls == 2
    assert report.by_effect == {"allow→ask": 1, "ask→deny": 1}


def test_the_latest_decision_of_a_call_counts(tmp_path: Path) -> None:
    """A call decided twice with the same arguments (a crash lost the first) is one call, as
    last decided; a call whose thread pins someone else is not replayed."""
    db = tmp_path / "audit.db"
    at = datetime.now(UTC)

    def decided(call_id: str, decision: str, rule: str | None, seq: int, **kw: Any) -> ToolEvent:
        return ToolEvent(
            timestamp=(at + timedelta(seconds=seq)).isoformat(timespec="milliseconds"),
            event="decided",
            graph="bank",
            agent_id=kw.get("agent", "agent-123"),
            thread_id="t-1",
            tool_call_id=call_id,
            tool="transfer_funds",
            call_seq=seq,
            payload={"to": "bob", "amount": 5000.0},
            decision=decision,
            rule_id=rule,
            args_hash="h1",
        )

    log = AuditLog(db)
    log.append(
        [
            decided("c1", "allow", "old-rule", 0),
            decided("c1", "ask", "big-transfers", 1),
            decided("c2", "ask", "big-transfers", 2, agent="mallory"),
        ]
    )
    log.close()
    pins = RequesterTable(db)
    pins.pin("t-1", AGENT, "claimed", "bank")
    pins.flush()
    pins.close()

    report = replay(Policy.from_file(POLICY_PATH), db)

    assert (report.calls, report.replayed, report.changed, report.unknown_actor) == (2, 1, 0, 1)
    (skipped,) = report.skipped
    assert (skipped.tool_call_id, skipped.kind) == ("c2", "actor")
    assert "'mallory'" in skipped.reason and "'agent-123'" in skipped.reason


@tool
def pay(to: str, amount: float, account_number: str) -> str:
    """Pay someone into an account."""
    return f"paid {amount:.2f} to {to}"


def test_redacted_calls_are_counted_and_named_not_replayed(tmp_path: Path) -> None:
    db = tmp_path / "pay.db"
    policy = Policy.from_data(
        {
            "rules": [{"id": "pay", "tools": ["pay"], "effect": "allow"}],
            "tools": {"pay": {"redact": ["args.account_number"]}},
        }
    )
    graph = agent(
        db,
        [pay],
        policy,
        turn(call("pay", to="bob", amount=10, account_number="DE89370400440532013000")),
    )
    graph.invoke({"messages": [("user", "go")]}, config("p-1"), context=CTX)

    report = replay(Policy.from_data({"rules": []}), db)

    assert (report.calls, report.replayed, report.redacted, report.not_replayable) == (1, 0, 1, 1)
    (skipped,) = report.skipped
    assert (skipped.tool, skipped.thread_id, skipped.kind) == ("pay", "p-1", "redacted")
    assert skipped.reason == "redacted: args.account_number"
    assert "DE89" not in json.dumps(report.as_dict())


def test_a_thread_without_a_pinned_requester_is_not_replayed(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    demo_run(db)
    raw = Raw(db)
    raw.execute("DELETE FROM handrail_threads")  # as in a database older than the pins
    raw.close()

    report = replay(Policy.from_data(STRICTER), db)

    assert (report.calls, report.replayed, report.unknown_actor) == (4, 0, 4)
    assert {s.reason for s in report.skipped} == {"no requester is pinned for thread 't-1'"}


def test_since_keeps_the_calls_decided_in_the_window(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    demo_run(db, "early")
    time.sleep(0.005)
    now = datetime.now(UTC)
    boundary = now.replace(microsecond=now.microsecond // 1000 * 1000)
    demo_run(db, "late", turn(call("transfer_funds", to="bob", amount=500)))

    report = replay(Policy.from_data(STRICTER), db, since=boundary)
    assert (report.calls, report.since) == (1, boundary)
    assert [c.thread_id for c in report.samples] == ["late"]
    assert replay(Policy.from_data(STRICTER), db, since=boundary.replace(tzinfo=None)).calls == 1
    assert replay(Policy.from_data(STRICTER), db, since=now + timedelta(hours=1)).calls == 0
    assert replay(Policy.from_data(STRICTER), db).calls == 5


def test_the_sample_bounds_the_lists_not_the_counts(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    demo_run(db)
    report = replay(Policy.from_data({"rules": []}), db, sample=1)  # everything denied
    assert (report.changed, len(report.samples)) == (3, 1)
    assert sum(t.calls for t in report.transitions) == 3
    assert (
        Transition(
            tool="get_balance",
            old_effect="allow",
            old_rule="reads",
            new_effect="deny",
            new_rule=None,
            calls=1,
        )
        in report.transitions
    )


def test_a_database_that_cannot_be_opened_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        replay(Policy.from_data(STRICTER), tmp_path / "missing.db")
    assert caught.value.database == str(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


# -- the command line -------------------------------------------------------------------------


@pytest.fixture
def audited(tmp_path: Path) -> tuple[Path, Path]:
    """A database with the demo's four calls audited, and the stricter policy's file."""
    db = tmp_path / "bank.db"
    demo_run(db)
    pay_graph = agent(
        db,
        [pay],
        Policy.from_data(
            {
                "rules": [{"id": "pay", "tools": ["pay"], "effect": "allow"}],
                "tools": {"pay": {"redact": ["args.account_number"]}},
            }
        ),
        turn(call("pay", to="bob", amount=10, account_number="DE89370400440532013000")),
    )
    pay_graph.invoke(
        {"messages": [("user", "go")]}, config("a-very-long-thread-id-0001"), context=CTX
    )
    policy = tmp_path / "new.yaml"
    policy.write_text(json.dumps(STRICTER), encoding="utf-8")
    return db, policy


def test_cli_json(audited: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    db, policy = audited
    assert main(["policy", "replay", str(policy), "--db", str(db), "--since", "30d", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["calls"], shown["changed"], shown["redacted"]) == (5, 2, 1)
    assert shown["by_effect"] == {"allow→ask": 1, "ask→deny": 1}
    assert {(t["old_rule"], t["new_rule"]) for t in shown["transitions"]} == {
        ("small-transfers", "mid-transfers"),
        ("big-transfers", "big-deny"),
    }
    assert shown["skipped"][0]["tool"] == "pay"
    assert datetime.fromisoformat(shown["since"]) < datetime.now(UTC) - timedelta(days=29)

    future = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert (
        main(["policy", "replay", str(policy), "--db", str(db), "--since", future, "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["calls"] == 0


def test_cli_table_fits_80_columns(
    audited: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, policy = audited
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["policy", "replay", str(policy), "--db", str(db)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "2 would change (allow→ask 1, ask→deny 1)" in text
    assert "1 with redacted arguments" in text
    assert any(line.startswith("transfer_funds") and "big-deny" in line for line in lines)
    assert any("pay" in line and "args.account_number" in line for line in lines)


def test_cli_refuses_a_missing_database_or_a_broken_policy(
    audited: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, policy = audited
    assert main(["policy", "replay", str(policy), "--db", str(tmp_path / "nope.db")]) == 2
    assert "no database at" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [{id: r, tools: [t], effect: perhaps}]", encoding="utf-8")
    assert main(["policy", "replay", str(broken), "--db", str(db)]) == 2
    assert "rule 'r'" in capsys.readouterr().err


# -- the property -------------------------------------------------------------------------------

ROLES = ("ai-agent", "clerk")
AMOUNTS = (50.0, 500.0, 5000.0)
rules = st.lists(
    st.fixed_dictionaries(
        {
            "tools": st.sampled_from([["get_balance"], ["transfer_funds"], ["*"]]),
            "roles": st.sampled_from([[], ["ai-agent"], ["clerk"]]),
            "when": st.sampled_from([None, "args.amount > 100.0", "args.amount <= 1000.0"]),
            "effect": st.sampled_from(["allow", "ask", "deny"]),
        }
    ),
    max_size=4,
)


def _policy(drawn: list[dict[str, Any]], default: str) -> Policy:
    made = []
    for i, r in enumerate(drawn):
        rule = {"id": f"r{i}", **{k: v for k, v in r.items() if v not in (None, [])}}
        if "when" in rule and rule["tools"] != ["transfer_funds"]:
            rule["tools"] = ["transfer_funds"]
        if rule["effect"] == "ask":
            rule["approvers"] = ["treasurer"]
        made.append(rule)
    fallback: Any = {"effect": "ask", "approvers": ["owner"]} if default == "ask" else default
    return Policy.from_data({"rules": made, "default": fallback})


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    drawn=rules,
    default=st.sampled_from(["allow", "ask", "deny"]),
    roles=st.lists(st.sampled_from(ROLES), unique=True),
    amounts=st.lists(st.sampled_from(AMOUNTS), min_size=1, max_size=3),
)
def test_replaying_the_same_policy_changes_nothing(
    drawn: list[dict[str, Any]], default: str, roles: list[str], amounts: list[float]
) -> None:
    policy = _policy(drawn, default)
    calls = [call("get_balance", account="operating")]
    calls += [call("transfer_funds", to="bob", amount=a) for a in amounts]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "p.db"
        graph = agent(db, banking_tools(db), policy, turn(*calls))
        ctx = RunContext(actor=Actor(id="agent-7", roles=tuple(roles)))
        graph.invoke({"messages": [("user", "go")]}, config("h-1"), context=ctx)
        report = replay(policy, db)
    assert report.calls == len(calls)
    assert (report.replayed, report.changed, report.rule_changed) == (len(calls), 0, 0)
    assert report.transitions == ()
