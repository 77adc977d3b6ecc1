"""Cumulative limits: a ``limits:`` section, its uses reserved in Handrail's store when calls are
decided, a limit past its maximum asking or denying, uses given back by calls that end without
running."""

from __future__ import annotations

import json
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage
from langgraph.types import Command
from support import CTX, TREASURER, agent, approve, call, config, table_rows, turn

from handrail import build_agent
from handrail.cli import main
from handrail.context import Actor, RunContext
from handrail.errors import PolicyError
from handrail.policies import Decision, Policy
from handrail.policies.limits import LimitUse, apply_limits
from handrail.policies.replay import replay
from handrail.storage.limits import Claim, LimitTable, MemoryUses
from handrail.testing import ScriptedChatModel
from handrail.tools.demo import POLICY_PATH, banking_tools, transfers

pytestmark = pytest.mark.backends("sqlite", "postgresql")

AGENT_ = CTX.actor
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

LIMITS = """
limits:
  - id: daily-spend
    tools: [transfer_funds]
    per: actor
    window: 24h
    sum: args.amount
    max: 1500
    then: ask
    approvers: [treasurer]
    description: An agent moves at most 1,500 a day without a treasurer.
  - id: balance-reads
    tools: [get_balance]
    per: thread
    window: 1h
    max: 2
    then: deny
"""


def bank_policy(extra: str = LIMITS) -> Policy:
    return Policy.from_yaml(Path(POLICY_PATH).read_text() + textwrap.dedent(extra))


def bank(db: Any, *turns: Any) -> Any:
    """The demo bank's agent under `bank_policy` on ``db``, playing ``turns``."""
    return agent(db, banking_tools(db), bank_policy(), *turns)


def load(text: str) -> Policy:
    return Policy.from_yaml(textwrap.dedent(text), source="p.yaml")


# -- loading -------------------------------------------------------------------------------------


def test_a_limits_section_loads_and_changes_the_digest() -> None:
    policy = bank_policy()
    (spend,) = policy.limits_for("transfer_funds")
    assert (spend.id, spend.per, spend.window, spend.max, spend.effect) == (
        "daily-spend",
        "actor",
        timedelta(hours=24),
        1500,
        "ask",
    )
    assert [lim.id for lim in policy.limits_for("get_balance")] == ["balance-reads"]
    assert policy.limits_for("delete_user") == ()
    assert policy.digest != Policy.from_file(POLICY_PATH).digest


BAD = [
    ("then: allow", "then", "'ask' or 'deny'"),
    ("then: deny\n    approvers: [x]", "approvers", "only applies to effect 'ask'"),
    ("then: ask", "approvers", "needs 'approvers'"),
    ("then: deny\n    window: 0s", "window", "longer than 0"),
    ("then: deny\n    max: '10'", "max", "must be a number"),
    ("then: deny\n    max: -1", "max", "greater than or equal to 0"),
    ("then: deny\n    sum: 'args.('", "sum", "does not compile"),
    ("then: deny\n    per: team", "per", "'actor', 'thread' or 'global'"),
    ("then: deny\n    every: 1h", "every", "unknown field"),
]


@pytest.mark.parametrize(("extra", "field", "fragment"), BAD)
def test_a_bad_limit_names_its_id_and_field(extra: str, field: str, fragment: str) -> None:
    text = "limits:\n  - id: cap\n    tools: [t]\n    per: actor\n    window: 1h\n    max: 10\n"
    lines = [line for line in text.splitlines() if not line.strip().startswith(field + ":")]
    with pytest.raises(PolicyError) as info:
        Policy.from_yaml("\n".join(lines) + "\n    " + extra + "\n", source="p.yaml")
    assert (info.value.source, info.value.rule_id, info.value.field) == ("p.yaml", "cap", field)
    assert fragment in info.value.problem


def test_a_limit_may_not_share_a_rules_id() -> None:
    with pytest.raises(PolicyError) as info:
        load(
            """
            rules: [{id: cap, tools: [t], effect: allow}]
            limits: [{id: cap, tools: [t], per: actor, window: 1h, max: 1, then: deny}]
            """
        )
    assert info.value.rule_id == "cap" and "differ" in info.value.problem


def test_a_limit_measures_a_count_or_a_non_negative_sum() -> None:
    policy = bank_policy()
    (spend,) = policy.limits_for("transfer_funds")
    (reads,) = policy.limits_for("get_balance")
    assert reads.measure({"anything": 1}).amount == 1
    assert spend.measure({"amount": 250.5}).amount == 250.5
    assert "not 0 or more" in str(spend.measure({"amount": -5}).error)
    assert "not a number" in str(spend.measure({"amount": "5"}).error)
    assert "failed" in str(spend.measure({}).error)


# -- combining -----------------------------------------------------------------------------------

ALLOW = Decision(effect="allow", rule_id="small", reason="rule 'small'")


def use(policy: Policy, limit_id: str, total: float, amount: float, over: bool) -> LimitUse:
    (limit,) = [lim for lim in policy.limits if lim.id == limit_id]
    return LimitUse(limit=limit, total=total, amount=amount, over=over)


def test_an_allowed_call_past_an_ask_limit_is_asked_of_the_limits_approvers() -> None:
    policy = bank_policy()
    asked = apply_limits(ALLOW, [use(policy, "daily-spend", 1200, 800, True)], NOW)
    assert (asked.effect, asked.rule_id, asked.approvers) == ("ask", "daily-spend", ("treasurer",))
    assert "brings the 24h total of args.amount to 2,000 of 1,500" in asked.reason
    assert asked.description.startswith("An agent moves at most 1,500 a day")
    assert asked.description.endswith("to 2,000 of 1,500")


def test_within_its_limits_an_allowed_call_stays_allowed() -> None:
    policy = bank_policy()
    assert apply_limits(ALLOW, [use(policy, "daily-spend", 200, 800, False)], NOW) == ALLOW


def test_a_deny_limit_beats_an_ask_and_a_deny_rule_stays_a_deny() -> None:
    policy = bank_policy()
    ask = Decision(effect="ask", rule_id="big", approvers=("treasurer",), reason="big")
    denied = apply_limits(ask, [use(policy, "balance-reads", 2, 1, True)], NOW)
    assert (denied.effect, denied.rule_id, denied.approvers) == ("deny", "balance-reads", ())
    deny = Decision(effect="deny", rule_id="no", reason="no")
    assert apply_limits(deny, [use(policy, "daily-spend", 9000, 1, True)], NOW) == deny


def test_an_asked_call_past_an_ask_limit_meets_both_asks_or_is_denied() -> None:
    policy = load(
        """
        limits:
          - {id: a, tools: [t], per: actor, window: 1h, max: 1, then: ask,
             approvers: [owner, lead], min_approvals: 2, expires_in: 1h}
        """
    )
    ask = Decision(
        effect="ask",
        rule_id="r",
        approvers=("lead", "ops"),
        reason="r",
        expires_at=NOW + timedelta(days=1),
    )
    met = apply_limits(ask, [use(policy, "a", 1, 1, True)], NOW)
    assert (met.effect, met.rule_id, met.approvers, met.min_approvals) == ("ask", "r", ("lead",), 2)
    assert met.expires_at == NOW + timedelta(hours=1)
    other = Decision(effect="ask", rule_id="r", approvers=("ops",), reason="r")
    assert apply_limits(other, [use(policy, "a", 1, 1, True)], NOW).effect == "deny"


# -- the store -----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "table"])
def uses(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        return MemoryUses()
    return LimitTable(tmp_path / "h.db")


def claims(policy: Policy, amount: float, who: str = "agent-123") -> list[Claim]:
    (limit,) = policy.limits_for("transfer_funds")
    return [Claim(limit, limit.scope(who, "t"), amount)]


def test_uses_add_up_in_their_window_and_scope(uses: Any) -> None:
    policy = bank_policy()
    first = uses.reserve("t", "c1", claims(policy, 1000), NOW)
    second = uses.reserve("t", "c2", claims(policy, 400), NOW + timedelta(hours=1))
    third = uses.reserve("t", "c3", claims(policy, 200), NOW + timedelta(hours=2))
    assert [(u.total, u.amount, u.over) for u in (*first, *second, *third)] == [
        (0, 1000, False),
        (1000, 400, False),
        (1400, 200, True),
    ]
    other = uses.reserve("t2", "c1", claims(policy, 1500, who="someone-else"), NOW)
    assert [(u.total, u.over) for u in other] == [(0, False)]
    # A day after the first use, it no longer counts.
    later = uses.reserve("t", "c4", claims(policy, 100), NOW + timedelta(hours=24, seconds=1))
    assert [(u.total, u.over) for u in later] == [(600, False)]


def test_deciding_a_call_again_reserves_nothing_more_and_keeps_its_verdict(uses: Any) -> None:
    policy = bank_policy()
    uses.reserve("t", "c1", claims(policy, 1000), NOW)
    over = uses.reserve("t", "c2", claims(policy, 1000), NOW)
    uses.release("t", "c1")
    again = uses.reserve("t", "c2", claims(policy, 1000), NOW)
    assert [(u.total, u.over) for u in over] == [(u.total, u.over) for u in again] == [(1000, True)]
    (limit,) = policy.limits_for("transfer_funds")
    assert uses.totals([(limit, limit.scope("agent-123", "t"))], NOW) == {"daily-spend": 1000}


def test_an_edited_amount_is_reserved_afresh(uses: Any) -> None:
    policy = bank_policy()
    uses.reserve("t", "c1", claims(policy, 1000), NOW)
    uses.reserve("t", "c2", claims(policy, 1000), NOW)
    (edited,) = uses.reserve("t", "c2", claims(policy, 300), NOW)
    assert (edited.total, edited.amount, edited.over) == (1000, 300, False)


def test_a_deny_limit_reserves_nothing_past_its_maximum(uses: Any) -> None:
    policy = bank_policy()
    (limit,) = policy.limits_for("get_balance")
    verdicts = [
        uses.reserve("t", f"c{i}", [Claim(limit, limit.scope("a", "t"), 1)], NOW)[0].over
        for i in range(4)
    ]
    assert verdicts == [False, False, True, True]
    assert uses.totals([(limit, limit.scope("a", "t"))], NOW) == {"balance-reads": 2}


# -- in a graph ----------------------------------------------------------------------------------


def interrupted(result: dict[str, Any]) -> dict[str, Any]:
    (pending,) = result["__interrupt__"]
    value: dict[str, Any] = pending.value
    return value


def test_a_transfer_that_brings_the_days_total_past_the_limit_waits_for_a_treasurer(
    db: Any,
) -> None:
    g = bank(
        db,
        turn(call("transfer_funds", to="bob", amount=800)),
        turn(call("transfer_funds", to="carol", amount=900)),
    )
    result = g.invoke({"messages": [("user", "pay bob and carol")]}, config(), context=CTX)
    request = interrupted(result)
    (action,) = request["action_requests"]
    assert "brings the 24h total of args.amount to 1,700 of 1,500" in action["description"]
    (entry,) = request["handrail"]["calls"].values()
    assert entry["rule_id"] == "daily-spend" and entry["approvers"] == ["treasurer"]
    assert transfers(db) == [("bob", 800.0)]
    g.invoke(Command(resume=approve()), config(), context=CTX)
    assert transfers(db) == [("bob", 800.0), ("carol", 900.0)]
    rows = table_rows(db, "SELECT limit_id, amount, total, over_max FROM handrail_limit_uses")
    assert sorted((r["amount"], r["total"], r["over_max"]) for r in rows) == [
        (800, 0, 0),
        (900, 800, 1),
    ]


def test_a_rejected_call_gives_its_use_back(db: Any) -> None:
    g = bank(
        db,
        turn(call("transfer_funds", to="bob", amount=800)),
        turn(call("transfer_funds", to="carol", amount=900)),
        turn(call("transfer_funds", to="dave", amount=600)),
    )
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    reject = {"decisions": [{"type": "reject", "message": "no"}], "approver": TREASURER}
    result = g.invoke(Command(resume=reject), config(), context=CTX)
    # 800 + 600 fits in 1,500 once carol's 900 is given back: dave's transfer runs unasked.
    assert "__interrupt__" not in result
    assert transfers(db) == [("bob", 800.0), ("dave", 600.0)]


def test_a_third_balance_read_in_a_thread_is_denied_and_another_thread_counts_apart(
    db: Any,
) -> None:
    reads = [turn(call("get_balance", account="operating")) for _ in range(3)]
    g = agent(db, banking_tools(db), bank_policy(), *reads)
    result = g.invoke({"messages": [("user", "look")]}, config(), context=CTX)
    answers = [m.content for m in result["messages"] if m.type == "tool"]
    assert len(answers) == 3
    assert "limit 'balance-reads'" in answers[2] and "denied" in answers[2]
    assert all("balance-reads" not in str(a) for a in answers[:2])
    other = agent(
        db, banking_tools(db), bank_policy(), turn(call("get_balance", account="operating"))
    )
    result = other.invoke({"messages": [("user", "look")]}, config("t-2"), context=CTX)
    (answer,) = [m.content for m in result["messages"] if m.type == "tool"]
    assert "balance-reads" not in str(answer)


def test_an_actor_limit_counts_across_threads(db: Any) -> None:
    policy = bank_policy()
    first = agent(db, banking_tools(db), policy, turn(call("transfer_funds", to="bob", amount=900)))
    first.invoke({"messages": [("user", "pay")]}, config("t-1"), context=CTX)
    second = agent(
        db, banking_tools(db), policy, turn(call("transfer_funds", to="eve", amount=900))
    )
    result = second.invoke({"messages": [("user", "pay")]}, config("t-2"), context=CTX)
    assert interrupted(result)["handrail"]["calls"]
    assert transfers(db) == [("bob", 900.0)]
    # Another agent has its own day.
    other = Actor(id="agent-456", roles=("ai-agent",))
    third = agent(db, banking_tools(db), policy, turn(call("transfer_funds", to="eve", amount=900)))
    third.invoke({"messages": [("user", "pay")]}, config("t-3"), context=RunContext(actor=other))
    assert transfers(db) == [("bob", 900.0), ("eve", 900.0)]


def test_a_rule_reads_a_limits_total_as_usage(db: Any) -> None:
    policy = bank_policy(
        """
        limits:
          - {id: spend, tools: [transfer_funds], per: actor, window: 24h, sum: args.amount,
             max: 100000, then: deny}
        """
    )
    careful = {
        "id": "careful",
        "tools": ["transfer_funds"],
        "effect": "ask",
        "approvers": ["treasurer"],
        "when": 'usage["spend"] + args.amount > 1000.0',
    }
    policy = Policy.from_data(
        {**policy.model_dump(by_alias=True), "rules": [*policy.model_dump()["rules"], careful]}
    )
    assert policy.reads_usage("transfer_funds") and not policy.reads_usage("get_balance")
    g = agent(
        db,
        banking_tools(db),
        policy,
        turn(call("transfer_funds", to="bob", amount=800)),
        turn(call("transfer_funds", to="carol", amount=300)),
    )
    result = g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    (entry,) = interrupted(result)["handrail"]["calls"].values()
    assert entry["rule_id"] == "careful"
    assert transfers(db) == [("bob", 800.0)]


def test_a_use_released_after_its_window_passed_is_not_taken_off_twice(uses: Any) -> None:
    policy = bank_policy()
    (limit,) = policy.limits_for("transfer_funds")
    scope = [(limit, limit.scope("agent-123", "t"))]
    uses.reserve("t", "c1", claims(policy, 1000), NOW)
    later = NOW + timedelta(hours=25)
    uses.reserve("t", "c2", claims(policy, 300), later)
    uses.release("t", "c1")  # no longer counted: the total stays 300
    assert uses.totals(scope, later) == {"daily-spend": 300}
    uses.release("t", "c2")
    assert uses.totals(scope, later) == {"daily-spend": 0}


def test_a_longer_window_in_a_new_policy_counts_the_uses_it_covers(db: Any) -> None:
    table = LimitTable(db)
    day = bank_policy()
    table.reserve("t", "c1", claims(day, 1000), NOW)
    table.reserve("t", "c2", claims(day, 100), NOW + timedelta(hours=30))
    week = bank_policy(LIMITS.replace("window: 24h", "window: 7d"))
    (uses,) = table.reserve("t", "c3", claims(week, 100), NOW + timedelta(hours=31))
    assert (uses.total, uses.over) == (1100, False)  # 1,000 from 31h ago counts again
    table.close()


# -- the running totals agree with counting every use ---------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("reserve"),
            st.sampled_from(["c0", "c1", "c2", "c3", "c4", "c5"]),
            st.integers(0, 12).map(lambda n: n / 4),
            st.integers(0, 40),
        ),
        st.tuples(
            st.just("release"),
            st.sampled_from(["c0", "c1", "c2", "c3"]),
            st.just(0),
            st.integers(0, 40),
        ),
    ),
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_the_stores_running_totals_agree_with_summing_every_use(db: Any, ops: list[Any]) -> None:
    """The table keeps running totals; `MemoryUses` sums every use: they answer alike."""
    text = LIMITS.replace("daily-spend", f"spend-{uuid.uuid4().hex[:8]}").replace("24h", "10h")
    policy = bank_policy(text)
    (limit,) = policy.limits_for("transfer_funds")
    table, memory = LimitTable(db), MemoryUses()
    scope = [(limit, limit.scope("agent-123", "t"))]
    now = NOW
    try:
        for op, cid, amount, minutes in ops:
            now += timedelta(minutes=15 * minutes)
            if op == "release":
                table.release("t", cid)
                memory.release("t", cid)
            else:
                mine = [Claim(limit, scope[0][1], amount)]
                assert table.reserve("t", cid, mine, now) == memory.reserve("t", cid, mine, now)
            assert table.totals(scope, now) == memory.totals(scope, now)
    finally:
        table.close()


# -- explain ---------------------------------------------------------------------------------------


def test_explain_shows_what_a_call_adds_and_where_a_known_total_brings_it() -> None:
    policy = bank_policy()
    args = {"to": "bob", "amount": 800.0, "memo": ""}
    blind = policy.explain("transfer_funds", args, AGENT_, now=NOW)
    assert blind.decision.effect == "allow"
    (trace,) = blind.limits
    assert (trace.limit_id, trace.amount, trace.total, trace.over) == (
        "daily-spend",
        800,
        None,
        None,
    )
    seen = policy.explain("transfer_funds", args, AGENT_, now=NOW, usage={"daily-spend": 1200.0})
    assert (seen.decision.effect, seen.decision.rule_id) == ("ask", "daily-spend")
    (trace,) = seen.limits
    assert (trace.total, trace.over) == (1200, True)
    assert "brings the 24h total of args.amount to 2,000 of 1,500" in str(seen)
    broken = policy.explain("transfer_funds", {**args, "amount": -1.0}, AGENT_, now=NOW)
    assert (broken.decision.effect, broken.decision.rule_id) == ("deny", "daily-spend")


def test_policy_explain_reads_the_totals_from_the_database(
    db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = agent(
        db, banking_tools(db), bank_policy(), turn(call("transfer_funds", to="bob", amount=800))
    )
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    path = tmp_path / "policy.yaml"
    path.write_text(Path(POLICY_PATH).read_text() + textwrap.dedent(LIMITS))
    argv = ["policy", "explain", str(path), "--tool", "transfer_funds"]
    argv += ["--args", '{"to": "carol", "amount": 900}', "--actor", AGENT_.id, "--role", "ai-agent"]
    assert main([*argv, "--db", str(db)]) == 0
    shown = capsys.readouterr().out
    assert "decision: ask" in shown and "to 1,700 of 1,500" in shown
    assert main([*argv, "--db", str(db), "--json"]) == 0
    (limit,) = json.loads(capsys.readouterr().out)["limits"]
    assert (limit["limit_id"], limit["total"], limit["over"]) == ("daily-spend", 800, True)
    assert main(argv) == 0
    assert "decision: allow" in capsys.readouterr().out


def test_a_run_without_a_thread_cannot_count_so_a_limited_call_is_denied() -> None:

    model = ScriptedChatModel([turn(call("get_balance", account="ops")), AIMessage("ok")])
    g = build_agent(model, banking_tools(":memory:"), bank_policy())
    result = g.invoke({"messages": [("user", "look")]}, context=CTX)
    (answer,) = [m.content for m in result["messages"] if m.type == "tool"]
    assert "limit 'balance-reads'" in answer and "no thread id" in answer


def test_a_replay_decides_limits_with_the_totals_kept_when_the_calls_were_decided(db: Any) -> None:
    g = bank(
        db,
        turn(call("transfer_funds", to="bob", amount=800)),
        turn(call("transfer_funds", to="carol", amount=900)),
        turn(*[call("get_balance", account="ops") for _ in range(3)]),
    )
    g.invoke({"messages": [("user", "pay")]}, config(), context=CTX)
    g.invoke(Command(resume=approve()), config(), context=CTX)
    same = replay(bank_policy(), db)
    assert (same.changed, same.replayed, same.limit_unknown) == (0, 4, 1)
    (skipped,) = same.skipped
    assert skipped.kind == "limit" and "balance-reads" in skipped.reason
    looser = replay(bank_policy(LIMITS.replace("max: 1500", "max: 2000")), db)
    assert (looser.changed, looser.by_effect) == (1, {"ask→allow": 1})


def test_the_lint_knows_usage_and_checks_limits() -> None:
    policy = load(
        """
        rules:
          - {id: r, tools: [pay], effect: ask, approvers: [owner],
             when: 'usage["spend"] + args.amount > 10.0 || usage["spnd"] > 2.0'}
        limits:
          - {id: spend, tools: [pya], per: actor, window: 1h, sum: args.amount, max: 5,
             then: ask, approvers: [ownr]}
        """
    )
    schema = {"pay": {"type": "object", "properties": {"amount": {"type": "number"}}}}
    found = {
        (f.rule_id, f.code, f.message)
        for f in policy.lint(tools=schema, directory={"a": ["owner"]})
    }
    assert ("r", "unknown-limit", "usage['spnd'] names no limit; did you mean 'spend'?") in found
    assert ("spend", "unknown-tool", "unknown tool 'pya'; did you mean 'pay'?") in found
    assert any(f[:2] == ("spend", "unknown-role") for f in found)
    assert not any(f[1] == "type-mismatch" for f in found), found
