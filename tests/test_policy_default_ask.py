"""``default: {effect: ask, approvers: [...]}``: anything no rule matches waits for a person, and
only that: a matching rule (an allow too) always decides over the default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handrail.context import Actor
from handrail.errors import PolicyError
from handrail.policies import DefaultRule, Policy

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
AGENT = Actor(id="agent", roles=("ai-agent",))

POLICY = """
default:
  effect: ask
  approvers: [owner, lead]
  expires_in: 24h
  min_approvals: 2
  allowed_decisions: [reject, approve]
  description: Anything not listed waits for its owner.
  description_prefix: Unlisted tool
rules:
  - id: reads
    tools: [get_balance]
    effect: allow
  - id: no-deletes
    tools: [delete_user]
    effect: deny
  - id: big
    tools: [transfer_funds]
    when: args.amount > 1000
    effect: ask
    approvers: [treasurer]
"""


def test_a_call_no_rule_matches_is_asked_with_the_defaults_fields() -> None:
    decision = Policy.from_yaml(POLICY).decide("send_email", {"to": "x"}, AGENT, now=NOW)
    assert decision.effect == "ask"
    assert decision.rule_id is None
    assert decision.approvers == ("lead", "owner")
    assert decision.expires_at == NOW + timedelta(hours=24)
    assert decision.min_approvals == 2
    assert decision.allowed_decisions == ("approve", "reject")
    assert decision.description == "Anything not listed waits for its owner."
    assert decision.description_prefix == "Unlisted tool"
    assert decision.reason == "no rule matched 'send_email'; the policy default is 'ask'"


def test_a_default_ask_never_overrides_a_matching_rule() -> None:
    policy = Policy.from_yaml(POLICY)
    assert policy.decide("get_balance", {}, AGENT).effect == "allow"
    assert policy.decide("delete_user", {}, AGENT).effect == "deny"
    asked = policy.decide("transfer_funds", {"amount": 5000}, AGENT)
    assert (asked.rule_id, asked.approvers) == ("big", ("treasurer",))
    # The rule does not match a small transfer: the default asks.
    small = policy.decide("transfer_funds", {"amount": 5}, AGENT)
    assert (small.effect, small.rule_id, small.approvers) == ("ask", None, ("lead", "owner"))


def test_the_policys_prefix_serves_a_default_naming_none() -> None:
    policy = Policy.from_yaml(
        "description_prefix: Check this\ndefault: {effect: ask, approvers: [owner]}\n"
    )
    decision = policy.decide("x", {}, AGENT)
    assert (decision.description_prefix, decision.allowed_decisions, decision.expires_at) == (
        "Check this",
        ("approve", "edit", "reject", "respond"),
        None,
    )


def test_explain_names_the_default() -> None:
    explanation = Policy.from_yaml(POLICY).explain("send_email", {}, AGENT, now=NOW)
    assert explanation.decision.rule_id is None
    assert "the policy default is 'ask'" in str(explanation).splitlines()[0]
    assert all(not t.matched for t in explanation.rules)


@pytest.mark.parametrize(
    ("default", "field", "fragment"),
    [
        ("ask", "default.approvers", "default effect 'ask' needs 'approvers'"),
        ("{effect: ask}", "default.approvers", "needs 'approvers'"),
        ("{effect: deny, approvers: [x]}", "default.approvers", "only applies to effect 'ask'"),
        ("{effect: allow, expires_in: 1h}", "default.expires_in", "only applies to effect 'ask'"),
        ("{effect: ask, approvers: [x], min_approvals: 9}", "default.min_approvals", "5"),
        ("{effect: ask, approvers: [x], expires_in: soon}", "default.expires_in", "'soon'"),
        ("{effect: ask, approvers: [x], when: 'true'}", "default.when", "unknown field"),
        ("maybe", "default", "'allow', 'deny' or a mapping"),
    ],
)
def test_a_bad_default_names_its_field(default: str, field: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_yaml(f"default: {default}\n", source="p.yaml")
    assert (info.value.source, info.value.rule_id, info.value.field) == ("p.yaml", None, field)
    assert fragment in info.value.problem


def test_an_effect_name_and_its_mapping_are_the_same_default() -> None:
    short = Policy.from_yaml("default: allow\n")
    long = Policy.from_yaml("default: {effect: allow}\n")
    assert short.default == long.default == DefaultRule(effect="allow")
    assert short.model_dump() == long.model_dump()


# -- the combining rules still hold with a default ask ------------------------------------------

RANK = {"allow": 0, "ask": 1, "deny": 2}


@st.composite
def rule_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    ids = draw(st.lists(st.sampled_from("abcdef"), max_size=5, unique=True))
    out = []
    for i in ids:
        effect = draw(st.sampled_from(["allow", "ask", "deny"]))
        rule: dict[str, Any] = {
            "id": i,
            "tools": draw(st.lists(st.sampled_from(["t1", "t2", "*"]), min_size=1, unique=True)),
            "effect": effect,
        }
        if draw(st.booleans()):
            rule["when"] = f"args.n > {draw(st.integers(-2, 2))}"
        if effect == "ask":
            rule["approvers"] = ["lead"]
        out.append(rule)
    return out


@settings(max_examples=300, deadline=None)
@given(rules=rule_lists(), tool=st.sampled_from(["t1", "t2", "t3"]), n=st.integers(-3, 3))
def test_with_a_default_ask_the_most_restrictive_matching_rule_still_wins(
    rules: list[dict[str, Any]], tool: str, n: int
) -> None:
    policy = Policy.from_data(
        {"default": {"effect": "ask", "approvers": ["owner"]}, "rules": rules}
    )
    decision = policy.decide(tool, {"n": n}, AGENT)
    matched = [
        r
        for r in rules
        if (tool in r["tools"] or "*" in r["tools"])
        and ("when" not in r or n > int(r["when"].rsplit(" ", 1)[1]))
    ]
    if not matched:
        assert (decision.effect, decision.rule_id, decision.approvers) == ("ask", None, ("owner",))
        return
    top = max(RANK[r["effect"]] for r in matched)
    assert RANK[decision.effect] == top
    assert decision.rule_id in {r["id"] for r in matched if RANK[r["effect"]] == top}
    # The same rules under a default deny decide the same: the default never takes part.
    under_deny = Policy.from_data({"rules": rules}).decide(tool, {"n": n}, AGENT)
    assert (under_deny.effect, under_deny.rule_id) == (decision.effect, decision.rule_id)
