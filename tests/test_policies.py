"""Unit tests of `handrail.policies.Policy`: effects, combining, CEL, explain and loading."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from handrail.context import Actor
from handrail.errors import HandrailError, PolicyError
from handrail.policies import Decision, Explanation, Policy, RuleTrace

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ALICE = Actor(id="alice", roles=["dev"])
BOB = Actor(id="bob", roles=["admin", "ops"])
NOBODY = Actor(id="nobody")


def load(text: str) -> Policy:
    return Policy.from_yaml(textwrap.dedent(text), source="policy.yaml")


def one_rule(effect: str, *extra: str, tools: str = "[search]", when: str | None = None) -> Policy:
    lines = ["rules:", "  - id: r1", f"    tools: {tools}", f"    effect: {effect}"]
    if when is not None:
        lines.append(f"    when: '{when}'")
    lines.extend(f"    {line}" for line in extra)
    return Policy.from_yaml("\n".join(lines) + "\n", source="policy.yaml")


# -- single-rule effects -----------------------------------------------------------------------


def test_allow_rule_allows() -> None:
    decision = one_rule("allow").decide("search", {}, ALICE, now=NOW)
    assert decision.effect == "allow"
    assert decision.rule_id == "r1"
    assert decision.approvers == ()
    assert decision.expires_at is None
    assert "r1" in decision.reason


def test_deny_rule_denies() -> None:
    decision = one_rule("deny").decide("search", {}, ALICE, now=NOW)
    assert decision.effect == "deny"
    assert decision.rule_id == "r1"
    assert decision.approvers == ()
    assert decision.expires_at is None
    assert "r1" in decision.reason


def test_ask_rule_asks_with_sorted_approvers_and_expiry() -> None:
    policy = one_rule("ask", "approvers: [sre, lead]", "expires_in: 30m")
    decision = policy.decide("search", {}, ALICE, now=NOW)
    assert decision.effect == "ask"
    assert decision.rule_id == "r1"
    assert decision.approvers == ("lead", "sre")
    assert decision.expires_at == NOW + timedelta(minutes=30)
    assert "r1" in decision.reason


def test_ask_without_expires_in_never_lapses() -> None:
    decision = one_rule("ask", "approvers: [lead]").decide("search", {}, ALICE, now=NOW)
    assert decision.effect == "ask"
    assert decision.expires_at is None


def test_ask_expiry_counts_from_the_current_time_without_now() -> None:
    policy = one_rule("ask", "approvers: [lead]", "expires_in: 1h")
    before = datetime.now(UTC)
    decision = policy.decide("search", {}, ALICE)
    after = datetime.now(UTC)
    assert decision.expires_at is not None
    assert decision.expires_at.tzinfo is not None
    assert before + timedelta(hours=1) <= decision.expires_at <= after + timedelta(hours=1)


def test_decision_is_a_frozen_value() -> None:
    decision = one_rule("allow").decide("search", {}, ALICE, now=NOW)
    assert isinstance(decision, Decision)
    with pytest.raises(AttributeError):
        decision.effect = "deny"  # type: ignore[misc]


# -- combining ---------------------------------------------------------------------------------

_RULE_BY_EFFECT = {
    "allow": "  - id: {id}\n    tools: [search]\n    effect: allow\n",
    "ask": "  - id: {id}\n    tools: [search]\n    effect: ask\n    approvers: [lead]\n",
    "deny": "  - id: {id}\n    tools: [search]\n    effect: deny\n",
}


@pytest.mark.parametrize(
    ("effects", "expected"),
    [
        (["allow", "ask"], "ask"),
        (["ask", "allow"], "ask"),
        (["allow", "deny"], "deny"),
        (["deny", "allow"], "deny"),
        (["ask", "deny"], "deny"),
        (["deny", "ask"], "deny"),
        (["allow", "ask", "deny"], "deny"),
        (["deny", "ask", "allow"], "deny"),
        (["allow", "allow"], "allow"),
    ],
)
def test_deny_beats_ask_beats_allow(effects: list[str], expected: str) -> None:
    text = "rules:\n" + "".join(
        _RULE_BY_EFFECT[e].format(id=f"{e}-{i}") for i, e in enumerate(effects)
    )
    decision = Policy.from_yaml(text).decide("search", {}, ALICE, now=NOW)
    assert decision.effect == expected
    assert decision.rule_id is not None
    assert decision.rule_id.startswith(f"{expected}-")
    if expected == "ask":
        assert decision.approvers == ("lead",)
    else:
        assert decision.approvers == ()


def test_no_match_falls_back_to_deny_when_default_is_unset() -> None:
    policy = one_rule("allow")
    assert policy.default.effect == "deny"
    decision = policy.decide("delete_user", {}, ALICE, now=NOW)
    assert decision.effect == "deny"
    assert decision.rule_id is None
    assert "default" in decision.reason
    assert "delete_user" in decision.reason


def test_empty_policy_denies_everything() -> None:
    decision = Policy.from_yaml("version: 1\n").decide("search", {}, ALICE, now=NOW)
    assert decision.effect == "deny"
    assert decision.rule_id is None


def test_explicit_default_allow_is_honoured() -> None:
    policy = load(
        """
        default: allow
        rules:
          - id: no-delete
            tools: [delete_user]
            effect: deny
        """
    )
    allowed = policy.decide("search", {}, ALICE, now=NOW)
    assert allowed.effect == "allow"
    assert allowed.rule_id is None
    assert "'allow'" in allowed.reason
    denied = policy.decide("delete_user", {}, ALICE, now=NOW)
    assert denied.effect == "deny"
    assert denied.rule_id == "no-delete"


def test_rule_with_roles_matches_only_actors_holding_one_of_them() -> None:
    policy = load(
        """
        rules:
          - id: admins-delete
            tools: [delete_user]
            roles: [admin, root]
            effect: allow
        """
    )
    assert policy.decide("delete_user", {}, ALICE, now=NOW).effect == "deny"
    assert policy.decide("delete_user", {}, NOBODY, now=NOW).effect == "deny"
    decision = policy.decide("delete_user", {}, BOB, now=NOW)
    assert decision.effect == "allow"
    assert decision.rule_id == "admins-delete"


def test_rule_without_roles_matches_any_actor_even_one_without_roles() -> None:
    policy = one_rule("allow")
    for actor in (ALICE, BOB, NOBODY):
        assert policy.decide("search", {}, actor, now=NOW).effect == "allow"


def test_role_restricted_deny_does_not_touch_other_actors() -> None:
    policy = load(
        """
        rules:
          - id: everyone-searches
            tools: [search]
            effect: allow
          - id: no-interns
            tools: [search]
            roles: [intern]
            effect: deny
        """
    )
    assert policy.decide("search", {}, ALICE, now=NOW).effect == "allow"
    intern = Actor(id="ivy", roles=["dev", "intern"])
    decision = policy.decide("search", {}, intern, now=NOW)
    assert decision.effect == "deny"
    assert decision.rule_id == "no-interns"


def test_wildcard_rule_covers_every_tool() -> None:
    policy = load(
        """
        rules:
          - id: anything
            tools: ["*"]
            effect: allow
          - id: not-delete
            tools: [delete_user]
            effect: deny
        """
    )
    for tool in ("search", "refund", "some_tool_nobody_listed"):
        decision = policy.decide(tool, {}, ALICE, now=NOW)
        assert (decision.effect, decision.rule_id) == ("allow", "anything")
    decision = policy.decide("delete_user", {}, ALICE, now=NOW)
    assert (decision.effect, decision.rule_id) == ("deny", "not-delete")


def test_wildcard_deny_overrides_specific_allow() -> None:
    policy = load(
        """
        rules:
          - id: search-ok
            tools: [search]
            effect: allow
          - id: freeze
            tools: ["*"]
            roles: [frozen]
            effect: deny
        """
    )
    assert policy.decide("search", {}, ALICE, now=NOW).effect == "allow"
    frozen = Actor(id="f", roles=["frozen"])
    decision = policy.decide("search", {}, frozen, now=NOW)
    assert (decision.effect, decision.rule_id) == ("deny", "freeze")


def test_rule_listing_several_tools_covers_each() -> None:
    policy = one_rule("deny", tools="[refund, delete_user]")
    assert policy.decide("refund", {}, ALICE, now=NOW).rule_id == "r1"
    assert policy.decide("delete_user", {}, ALICE, now=NOW).rule_id == "r1"
    assert policy.decide("search", {}, ALICE, now=NOW).rule_id is None


# -- several ask rules -------------------------------------------------------------------------


def test_two_matching_ask_rules_need_an_approver_satisfying_both() -> None:
    policy = load(
        """
        rules:
          - id: big-refund
            tools: [refund]
            effect: ask
            approvers: [lead, sre]
            expires_in: 2h
          - id: any-refund
            tools: [refund]
            effect: ask
            approvers: [sre, security]
            expires_in: 30m
        """
    )
    decision = policy.decide("refund", {}, ALICE, now=NOW)
    assert decision.effect == "ask"
    assert decision.approvers == ("sre",)
    assert decision.rule_id in {"big-refund", "any-refund"}
    # The shortest lapse of the matching ask rules applies.
    assert decision.expires_at == NOW + timedelta(minutes=30)
    assert "big-refund" in decision.reason
    assert "any-refund" in decision.reason


def test_two_matching_ask_rules_with_disjoint_approvers_deny() -> None:
    policy = load(
        """
        rules:
          - id: finance
            tools: [refund]
            effect: ask
            approvers: [finance]
          - id: security
            tools: [refund]
            effect: ask
            approvers: [security]
        """
    )
    decision = policy.decide("refund", {}, ALICE, now=NOW)
    assert decision.effect == "deny"
    assert decision.rule_id in {"finance", "security"}
    assert decision.approvers == ()
    assert decision.expires_at is None
    assert "approver" in decision.reason


def test_ask_rule_that_does_not_match_does_not_narrow_approvers() -> None:
    policy = load(
        """
        rules:
          - id: finance
            tools: [refund]
            effect: ask
            approvers: [finance]
          - id: security-for-ops
            tools: [refund]
            roles: [ops]
            effect: ask
            approvers: [security]
        """
    )
    decision = policy.decide("refund", {}, ALICE, now=NOW)
    assert (decision.effect, decision.approvers) == ("ask", ("finance",))
    assert policy.decide("refund", {}, BOB, now=NOW).effect == "deny"


# -- what a reviewer may decide and reads ------------------------------------------------------


def test_an_ask_rule_allows_every_decision_and_the_default_prefix_unless_it_says_otherwise() -> (
    None
):
    decision = one_rule("ask", "approvers: [lead]").decide("search", {}, ALICE, now=NOW)
    assert decision.allowed_decisions == ("approve", "edit", "reject", "respond")
    assert (decision.description, decision.description_prefix) == (
        "",
        "Tool execution requires approval",
    )


def test_an_ask_rule_narrows_the_decisions_and_words_the_reviewers_text() -> None:
    policy = one_rule(
        "ask",
        "approvers: [lead]",
        "allowed_decisions: [reject, approve, reject]",
        "description: Searches of the archive are logged.",
        "description_prefix: Archive search",
    )
    decision = policy.decide("search", {}, ALICE, now=NOW)
    assert decision.allowed_decisions == ("approve", "reject")  # in order, once each
    assert decision.description == "Searches of the archive are logged."
    assert decision.description_prefix == "Archive search"


def test_the_policys_description_prefix_serves_rules_naming_none() -> None:
    policy = load(
        """
        description_prefix: Needs a second pair of eyes
        rules:
          - {id: r1, tools: [search], effect: ask, approvers: [lead]}
        """
    )
    decision = policy.decide("search", {}, ALICE, now=NOW)
    assert decision.description_prefix == "Needs a second pair of eyes"


def test_matching_ask_rules_allow_only_the_decisions_they_all_allow() -> None:
    rules = [
        "  - {id: a, tools: [refund], effect: ask, approvers: [sre], description: Money.,"
        " allowed_decisions: [approve, edit, reject]}\n",
        "  - {id: b, tools: [refund], effect: ask, approvers: [sre], description: Audited.,"
        " allowed_decisions: [reject, respond, approve]}\n",
        "  - {id: c, tools: [refund], effect: ask, approvers: [sre], description: Money.}\n",
    ]
    for order in (rules, rules[::-1]):
        decision = Policy.from_yaml("rules:\n" + "".join(order)).decide("refund", {}, ALICE)
        assert (decision.effect, decision.allowed_decisions) == ("ask", ("approve", "reject"))
        assert decision.description == "Money.\nAudited."


def test_matching_ask_rules_that_share_no_decision_deny() -> None:
    policy = load(
        """
        rules:
          - {id: a, tools: [refund], effect: ask, approvers: [sre], allowed_decisions: [approve]}
          - {id: b, tools: [refund], effect: ask, approvers: [sre], allowed_decisions: [reject]}
        """
    )
    decision = policy.decide("refund", {}, ALICE, now=NOW)
    assert decision.effect == "deny"
    assert decision.reason == "matching ask rules ['a', 'b'] share no allowed decision"


@pytest.mark.parametrize(
    ("extra", "effect", "field", "message"),
    [
        ("allowed_decisions: [approve, retry]", "ask", "allowed_decisions.1", "'approve', 'edit'"),
        ("allowed_decisions: []", "ask", "allowed_decisions", "at least 1 item"),
        ("allowed_decisions: [approve]", "allow", "allowed_decisions", "only applies to effect"),
        ("description_prefix: Look", "deny", "description_prefix", "only applies to effect"),
        ("description_prefix: ''", "ask", "description_prefix", "at least 1 character"),
    ],
    ids=["not-a-hitl-decision", "empty", "on-allow", "prefix-on-deny", "empty-prefix"],
)
def test_bad_review_fields_name_the_rule_and_the_field(
    extra: str, effect: str, field: str, message: str
) -> None:
    approvers = ["approvers: [lead]"] if effect == "ask" else []
    with pytest.raises(PolicyError) as info:
        one_rule(effect, *approvers, extra)
    assert (info.value.source, info.value.rule_id, info.value.field) == ("policy.yaml", "r1", field)
    assert message in str(info.value)


# -- CEL conditions ----------------------------------------------------------------------------

_FAILING_CONDITIONS = [
    pytest.param("args.amount > 100", {}, "no such key", id="missing-arg"),
    pytest.param("args.amount > 100", {"amount": "lots"}, "TypeError", id="string-vs-number"),
    pytest.param("args.amount > 100", {"amount": None}, "TypeError", id="null-vs-number"),
    pytest.param("args.amount", {"amount": 5}, "not a boolean", id="returns-int"),
    pytest.param("args.note", {"note": "hi"}, "not a boolean", id="returns-string"),
    pytest.param("args.amount / 0 > 1", {"amount": 5}, "failed", id="division-by-zero"),
]


@pytest.mark.parametrize(("when", "args", "why"), _FAILING_CONDITIONS)
@pytest.mark.parametrize("effect", ["allow", "deny"])
def test_failing_condition_matches_as_deny(
    when: str, args: dict[str, object], why: str, effect: str
) -> None:
    policy = one_rule(effect, tools="[refund]", when=when)
    decision = policy.decide("refund", args, ALICE, now=NOW)
    assert decision.effect == "deny"
    assert decision.rule_id == "r1"
    assert "failed" in decision.reason

    explanation = policy.explain("refund", args, ALICE, now=NOW)
    assert explanation.decision == decision
    (trace,) = explanation.rules
    assert trace == RuleTrace(rule_id="r1", effect="deny", matched=True, reason=trace.reason)
    assert "failed" in trace.reason
    assert why in trace.reason


def test_failing_condition_on_an_ask_rule_denies_instead_of_asking() -> None:
    policy = one_rule("ask", "approvers: [lead]", tools="[refund]", when="args.amount > 100")
    decision = policy.decide("refund", {}, ALICE, now=NOW)
    assert decision.effect == "deny"
    assert decision.approvers == ()


def test_failing_condition_overrides_an_unconditional_allow() -> None:
    policy = load(
        """
        rules:
          - id: refunds-ok
            tools: [refund]
            effect: allow
          - id: small-refunds
            tools: [refund]
            when: args.amount < 100
            effect: allow
        """
    )
    assert policy.decide("refund", {"amount": 5}, ALICE, now=NOW).effect == "allow"
    decision = policy.decide("refund", {"amount": "5"}, ALICE, now=NOW)
    assert (decision.effect, decision.rule_id) == ("deny", "small-refunds")


def test_condition_over_args_decides_whether_the_rule_matches() -> None:
    policy = load(
        """
        rules:
          - id: refunds
            tools: [refund]
            effect: allow
          - id: big-refunds
            tools: [refund]
            when: args.amount > 100
            effect: ask
            approvers: [lead]
        """
    )
    small = policy.decide("refund", {"amount": 50}, ALICE, now=NOW)
    assert (small.effect, small.rule_id) == ("allow", "refunds")
    big = policy.decide("refund", {"amount": 500}, ALICE, now=NOW)
    assert (big.effect, big.rule_id) == ("ask", "big-refunds")
    edge = policy.decide("refund", {"amount": 100}, ALICE, now=NOW)
    assert edge.effect == "allow"


def test_false_condition_is_not_a_match() -> None:
    policy = one_rule("deny", tools="[refund]", when="args.amount > 100")
    decision = policy.decide("refund", {"amount": 1}, ALICE, now=NOW)
    assert (decision.effect, decision.rule_id) == ("deny", None)
    (trace,) = policy.explain("refund", {"amount": 1}, ALICE, now=NOW).rules
    assert not trace.matched
    assert trace.effect == "deny"
    assert "is false" in trace.reason


def test_condition_over_actor_id() -> None:
    policy = one_rule("allow", when='actor.id == "alice"')
    assert policy.decide("search", {}, ALICE, now=NOW).effect == "allow"
    assert policy.decide("search", {}, BOB, now=NOW).effect == "deny"


def test_condition_over_actor_roles() -> None:
    policy = one_rule("allow", when='"ops" in actor.roles')
    assert policy.decide("search", {}, BOB, now=NOW).effect == "allow"
    assert policy.decide("search", {}, ALICE, now=NOW).effect == "deny"
    assert policy.decide("search", {}, NOBODY, now=NOW).effect == "deny"


def test_condition_over_tool_name() -> None:
    policy = load(
        """
        rules:
          - id: reads
            tools: ["*"]
            when: tool.startsWith("get_") || tool == "search"
            effect: allow
        """
    )
    assert policy.decide("get_user", {}, ALICE, now=NOW).effect == "allow"
    assert policy.decide("search", {}, ALICE, now=NOW).effect == "allow"
    assert policy.decide("delete_user", {}, ALICE, now=NOW).effect == "deny"


def test_condition_combining_args_and_actor() -> None:
    policy = one_rule(
        "allow", tools="[refund]", when='args.amount < 1000 || "admin" in actor.roles'
    )
    assert policy.decide("refund", {"amount": 5000}, BOB, now=NOW).effect == "allow"
    assert policy.decide("refund", {"amount": 5000}, ALICE, now=NOW).effect == "deny"
    assert policy.decide("refund", {"amount": 10}, ALICE, now=NOW).effect == "allow"


def test_conditions_on_other_tools_do_not_disturb_a_decision() -> None:
    # A broken-for-this-call condition on a rule for another tool must not deny this tool.
    policy = load(
        """
        rules:
          - id: search-ok
            tools: [search]
            effect: allow
          - id: refunds
            tools: [refund]
            when: args.amount < 100
            effect: allow
        """
    )
    assert policy.decide("search", {}, ALICE, now=NOW).effect == "allow"


# Argument values CEL cannot convert (a date, a set, a UUID) fail closed like any evaluation error.
def test_unconvertible_argument_fails_closed_instead_of_raising() -> None:
    policy = one_rule("allow", tools="[refund]", when="args.amount < 100")
    decision = policy.decide("refund", {"amount": 5, "due": date(2025, 1, 1)}, ALICE, now=NOW)
    assert decision.effect == "deny"


# -- explain -----------------------------------------------------------------------------------

_EXPLAIN_POLICY = """
rules:
  - id: z-wild
    tools: ["*"]
    effect: allow
  - id: y-other-tool
    tools: [delete_user]
    effect: deny
  - id: x-role
    tools: [refund]
    roles: [admin]
    effect: deny
  - id: w-false
    tools: [refund]
    when: args.amount > 100
    effect: ask
    approvers: [lead]
  - id: v-true
    tools: [refund]
    when: args.amount > 1
    effect: allow
  - id: u-broken
    tools: [refund]
    when: args.currency == "EUR"
    effect: allow
"""


def test_explain_traces_every_rule_in_policy_order() -> None:
    policy = Policy.from_yaml(_EXPLAIN_POLICY)
    explanation = policy.explain("refund", {"amount": 5}, ALICE, now=NOW)
    assert isinstance(explanation, Explanation)
    traces = {t.rule_id: t for t in explanation.rules}
    assert [t.rule_id for t in explanation.rules] == [r.id for r in policy.rules]
    assert len(traces) == len(policy.rules)

    assert (traces["z-wild"].matched, traces["z-wild"].effect) == (True, "allow")
    assert "tool and role match" in traces["z-wild"].reason

    assert (traces["y-other-tool"].matched, traces["y-other-tool"].effect) == (False, "deny")
    assert "delete_user" in traces["y-other-tool"].reason
    assert "'refund'" in traces["y-other-tool"].reason

    assert (traces["x-role"].matched, traces["x-role"].effect) == (False, "deny")
    assert "role" in traces["x-role"].reason

    assert (traces["w-false"].matched, traces["w-false"].effect) == (False, "ask")
    assert "`args.amount > 100` is false" in traces["w-false"].reason

    assert (traces["v-true"].matched, traces["v-true"].effect) == (True, "allow")
    assert "`args.amount > 1` is true" in traces["v-true"].reason

    assert (traces["u-broken"].matched, traces["u-broken"].effect) == (True, "deny")
    assert "failed" in traces["u-broken"].reason
    assert "currency" in traces["u-broken"].reason

    assert explanation.decision == policy.decide("refund", {"amount": 5}, ALICE, now=NOW)
    assert (explanation.decision.effect, explanation.decision.rule_id) == ("deny", "u-broken")


def test_explain_for_a_tool_only_the_wildcard_covers() -> None:
    policy = Policy.from_yaml(_EXPLAIN_POLICY)
    explanation = policy.explain("search", {}, BOB, now=NOW)
    assert [t.rule_id for t in explanation.rules] == [r.id for r in policy.rules]
    assert [t.matched for t in explanation.rules] == [True, False, False, False, False, False]
    for trace in explanation.rules[1:]:
        assert "'search'" in trace.reason
    assert explanation.decision.effect == "allow"


def test_explain_agrees_with_decide_and_renders() -> None:
    policy = Policy.from_yaml(_EXPLAIN_POLICY)
    explanation = policy.explain("refund", {"amount": 500, "currency": "EUR"}, BOB, now=NOW)
    assert explanation.decision == policy.decide(
        "refund", {"amount": 500, "currency": "EUR"}, BOB, now=NOW
    )
    assert explanation.decision.effect == "deny"
    assert explanation.decision.rule_id == "x-role"
    text = str(explanation)
    assert text.startswith("decision: deny")
    assert all(r.id in text for r in policy.rules)


def test_explain_with_no_rules_matching_reports_the_default() -> None:
    policy = one_rule("allow")
    explanation = policy.explain("refund", {}, ALICE, now=NOW)
    assert explanation.decision.rule_id is None
    assert explanation.decision.effect == "deny"
    (trace,) = explanation.rules
    assert not trace.matched


# A rule that lists a tool by name and "*" is one rule: evaluated and traced once.
def test_rule_listing_a_tool_and_the_wildcard_is_traced_once() -> None:
    policy = one_rule("allow", tools='[search, "*"]')
    explanation = policy.explain("search", {}, ALICE, now=NOW)
    assert explanation.decision.effect == "allow"
    assert [t.rule_id for t in explanation.rules] == ["r1"]
    assert "also" not in explanation.decision.reason


# -- bad policies ------------------------------------------------------------------------------

_BAD_POLICIES = [
    pytest.param("rules: 3\nfoo: [1\n", None, None, "line", id="yaml-syntax-flow"),
    pytest.param("- id: r1\n  effect: allow\n", None, None, "mapping", id="top-level-list"),
    pytest.param("just some text\n", None, None, "mapping", id="top-level-scalar"),
    pytest.param("", None, None, "mapping", id="empty-document"),
    pytest.param(
        "rules:\n  - id: r1\n    tools: [search]\n    effect: maybe\n",
        "r1",
        "effect",
        "'allow', 'ask' or 'deny'",
        id="unknown-effect",
    ),
    pytest.param(
        "rules:\n  - id: r1\n    tools: [search]\n    effect: allow\n    when: 'args.('\n",
        "r1",
        "when",
        "does not compile",
        id="cel-syntax",
    ),
    pytest.param(
        "rules:\n  - id: r1\n    tools: [search]\n    effect: allow\n"
        "  - id: r1\n    tools: [refund]\n    effect: deny\n",
        "r1",
        "id",
        "duplicate",
        id="duplicate-id",
    ),
    pytest.param(
        "rules:\n  - id: r1\n    tools: [search]\n    effect: allow\n    efect: deny\n",
        "r1",
        "efect",
        "unknown field",
        id="unknown-rule-field",
    ),
    pytest.param(
        "rulez:\n  - id: r1\n",
        None,
        "rulez",
        "unknown field",
        id="unknown-top-level-field",
    ),
    pytest.param(
        "tools:\n  search:\n    retries: 2\n",
        None,
        "tools.search.retries",
        "unknown field",
        id="unknown-tool-setting",
    ),
    pytest.param(
        "tools:\n  search:\n    max_retries: 1000\n",
        None,
        "tools.search.max_retries",
        "100",
        id="max-retries-out-of-range",
    ),
    pytest.param(
        "rules:\n  - id: r1\n    tools: [search]\n    effect: ask\n",
        "r1",
        "approvers",
        "approvers",
        id="ask-without-approvers",
    ),
    pytest.param(
        "rules:\n  - id: r1\n    tools: [search]\n    effect: allow\n    approvers: [lead]\n",
        "r1",
        "approvers",
        "only applies to effect 'ask'",
        id="approvers-on-allow",
    ),
    pytest.param(
        "rules:\n  - id: r1\n    tools: [search]\n    effect: deny\n    expires_in: 1h\n",
        "r1",
        "expires_in",
        "only applies to effect 'ask'",
        id="expires-in-on-deny",
    ),
    pytest.param(
        "rules:\n  - id: r1\n    tools: [search]\n    effect: ask\n    approvers: [lead]\n"
        "    expires_in: soon\n",
        "r1",
        "expires_in",
        "'soon'",
        id="bad-expires-in",
    ),
    pytest.param(
        "rules:\n  - id: ok\n    tools: [search]\n    effect: allow\n"
        "  - tools: [refund]\n    effect: deny\n",
        "#1",
        "id",
        "required",
        id="missing-id-named-by-index",
    ),
    pytest.param(
        "rules:\n  - id: r1\n    tools: []\n    effect: allow\n",
        "r1",
        "tools",
        "at least 1",
        id="no-tools",
    ),
    pytest.param("version: 2\n", None, "version", "1", id="unknown-version"),
    pytest.param("default: maybe\n", None, "default", "'allow'", id="bad-default"),
]


@pytest.mark.parametrize(("text", "rule_id", "field", "fragment"), _BAD_POLICIES)
def test_bad_policy_raises_policy_error(
    text: str, rule_id: str | None, field: str | None, fragment: str
) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_yaml(text, source="policy.yaml")
    exc = info.value
    assert isinstance(exc, HandrailError)
    assert exc.source == "policy.yaml"
    assert exc.rule_id == rule_id
    assert exc.field == field
    message = str(exc)
    assert message.startswith("policy.yaml: ")
    if rule_id is not None:
        assert f"rule {rule_id!r}" in message
    if field is not None:
        assert f"field {field!r}" in message
    assert fragment in message
    assert fragment in exc.problem


def test_yaml_syntax_error_names_the_line() -> None:
    text = "rules:\n  - id: r1\n    tools: [search]\n    effect: allow\n   bad: x\n"
    with pytest.raises(PolicyError) as info:
        Policy.from_yaml(text, source="policy.yaml")
    assert info.value.source == "policy.yaml"
    assert (info.value.rule_id, info.value.field) == (None, None)
    assert "not valid YAML" in str(info.value)
    assert "line 5" in str(info.value)


def test_source_defaults_to_string_marker() -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_yaml("rules:\n  - id: r1\n    tools: [search]\n    effect: nope\n")
    assert info.value.source == "<string>"
    assert str(info.value).startswith("<string>: rule 'r1'")


def test_from_data_reports_errors_like_from_yaml() -> None:
    data = {"rules": [{"id": "r1", "tools": ["search"], "effect": "ask"}]}
    with pytest.raises(PolicyError) as info:
        Policy.from_data(data, source="inline")
    assert (info.value.source, info.value.rule_id, info.value.field) == (
        "inline",
        "r1",
        "approvers",
    )


def test_several_errors_are_counted_in_the_message() -> None:
    text = "rules:\n  - id: r1\n    tools: [search]\n    effect: nope\n    extra: 1\n"
    with pytest.raises(PolicyError) as info:
        Policy.from_yaml(text, source="policy.yaml")
    assert "more error" in str(info.value)


def test_from_file_loads_a_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - id: r1\n    tools: [search]\n    effect: allow\n")
    policy = Policy.from_file(path)
    assert policy.decide("search", {}, ALICE, now=NOW).rule_id == "r1"
    # Compare the data: Policy equality also compares private attributes (the rule index).
    assert Policy.from_file(str(path)).model_dump() == policy.model_dump()


def test_from_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - id: r1\n    tools: [search]\n    effect: allow\n    when: '1 +'\n")
    with pytest.raises(PolicyError) as info:
        Policy.from_file(path)
    assert info.value.source == str(path)
    assert (info.value.rule_id, info.value.field) == ("r1", "when")
    assert str(info.value).startswith(f"{path}: rule 'r1': field 'when'")


def test_from_file_yaml_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("rules: [\n")
    with pytest.raises(PolicyError) as info:
        Policy.from_file(path)
    assert info.value.source == str(path)
    assert "line" in str(info.value)


def test_from_file_on_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        Policy.from_file(path)
    assert info.value.source == str(path)
    assert (info.value.rule_id, info.value.field) == (None, None)
    assert "cannot read" in str(info.value)
    assert str(path) in str(info.value)


# -- expires_in --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("0s", timedelta(0)),
        (45, timedelta(seconds=45)),
        (3600, timedelta(hours=1)),
    ],
)
def test_expires_in_parsing(value: object, expected: timedelta) -> None:
    policy = Policy.from_data(
        {
            "rules": [
                {
                    "id": "r1",
                    "tools": ["search"],
                    "effect": "ask",
                    "approvers": ["lead"],
                    "expires_in": value,
                }
            ]
        }
    )
    assert policy.rules[0].expires_in == expected
    assert policy.decide("search", {}, ALICE, now=NOW).expires_at == NOW + expected


def test_expires_in_from_yaml_integer() -> None:
    policy = one_rule("ask", "approvers: [lead]", "expires_in: 120")
    assert policy.decide("search", {}, ALICE, now=NOW).expires_at == NOW + timedelta(minutes=2)


@pytest.mark.parametrize("value", ["soon", "30m1h", "", "10", "PT1H", "1w", "h", "-5m"])
def test_bad_expires_in_is_rejected(value: str) -> None:
    data = {
        "rules": [
            {"id": "r1", "tools": ["s"], "effect": "ask", "approvers": ["a"], "expires_in": value}
        ]
    }
    with pytest.raises(PolicyError) as info:
        Policy.from_data(data, source="policy.yaml")
    assert (info.value.source, info.value.rule_id, info.value.field) == (
        "policy.yaml",
        "r1",
        "expires_in",
    )


# A negative duration (a request lapsed when made) and a YAML boolean are not durations.
@pytest.mark.parametrize("value", [-5, True])
def test_nonsense_expires_in_is_rejected(value: object) -> None:
    data = {
        "rules": [
            {"id": "r1", "tools": ["s"], "effect": "ask", "approvers": ["a"], "expires_in": value}
        ]
    }
    with pytest.raises(PolicyError):
        Policy.from_data(data, source="policy.yaml")


# -- tool settings -----------------------------------------------------------------------------


def test_settings_for_a_listed_tool() -> None:
    policy = load(
        """
        tools:
          refund:
            max_retries: 0
            idempotent: true
            redact: [args.account_number]
          search:
            idempotent: true
        """
    )
    refund = policy.settings("refund")
    assert refund.max_retries == 0
    assert refund.idempotent is True
    assert refund.redact == ("args.account_number",)
    search = policy.settings("search")
    assert search.idempotent is True
    assert search.max_retries == 3
    assert search.redact == ()


def test_settings_for_an_unlisted_tool_are_the_defaults() -> None:
    policy = load(
        """
        tools:
          refund:
            max_retries: 7
        """
    )
    settings = policy.settings("delete_user")
    assert settings.max_retries == 3
    assert settings.idempotent is False
    assert settings.redact == ()
    assert Policy().settings("anything") == settings


def test_default_ask_without_approvers_is_refused_because_nobody_could_approve() -> None:
    with pytest.raises(PolicyError, match="default effect 'ask' needs 'approvers'") as info:
        Policy.from_yaml("default: ask\nrules: []", source="policy.yaml")
    assert (info.value.source, info.value.field) == ("policy.yaml", "default.approvers")


DEEP = """
import handrail
policy = handrail.Policy.from_yaml(
    "rules: [{id: r, tools: [t], effect: allow, when: 'size(args.x) > 0'}]"
)
deep = []
cur = deep
for _ in range(20000):
    nxt = []
    cur.append(nxt)
    cur = nxt
for args in ({"x": deep}, {"x": deep, "y": object()}):
    decision = policy.decide("t", args, handrail.Actor(id="a", roles=()))
    print(decision.effect, "nest deeper" in decision.reason)
"""


def test_arguments_nested_past_what_cel_reads_are_denied_not_a_crash() -> None:
    # the cel binding converts recursively: handed a 20,000-deep list it killed the process
    done = subprocess.run([sys.executable, "-c", DEEP], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["deny", "True", "deny", "True"]
