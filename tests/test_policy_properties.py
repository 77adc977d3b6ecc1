"""Property tests of the policy combining rules (deny-overrides), against an independent model.

Rules are generated over a few tools and roles, with an optional condition ``args.n > K``; calls
pick a tool, an ``n`` (sometimes missing, so the condition fails) and the actor's roles. The model
below decides which rules match without looking at handrail's index or combining code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from handrail.context import Actor
from handrail.policies import Decision, Policy

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TOOLS = ("search", "refund", "delete")
CALL_TOOLS = (*TOOLS, "unlisted")
ROLES = ("dev", "ops", "admin")
APPROVERS = ("lead", "sre", "security")
SHARED_APPROVER = "lead"
RANK = {"allow": 0, "ask": 1, "deny": 2}
LAPSES = {"90s": timedelta(seconds=90), "30m": timedelta(minutes=30), "2h": timedelta(hours=2)}

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


@dataclass(frozen=True)
class RuleSpec:
    id: str
    tools: tuple[str, ...]
    roles: tuple[str, ...]
    effect: str
    threshold: int | None = None
    approvers: tuple[str, ...] = ()
    expires_in: str | None = None

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "tools": list(self.tools),
            "effect": self.effect,
        }
        if self.roles:
            out["roles"] = list(self.roles)
        if self.threshold is not None:
            out["when"] = f"args.n > {self.threshold}"
        if self.approvers:
            out["approvers"] = list(self.approvers)
        if self.expires_in is not None:
            out["expires_in"] = self.expires_in
        return out


@dataclass(frozen=True)
class Call:
    tool: str
    args: dict[str, int]
    actor: Actor


def build(rules: Sequence[RuleSpec], default: str | None = None) -> Policy:
    data: dict[str, Any] = {"rules": [r.data() for r in rules]}
    if default is not None:
        data["default"] = default
    return Policy.from_data(data, source="generated")


def decide(policy: Policy, call: Call) -> Decision:
    return policy.decide(call.tool, call.args, call.actor, now=NOW)


def model_matches(rules: Sequence[RuleSpec], call: Call) -> list[tuple[RuleSpec, str]]:
    """The rules matching ``call`` and their effects (deny when the condition fails)."""
    out = []
    for rule in rules:
        if "*" not in rule.tools and call.tool not in rule.tools:
            continue
        if rule.roles and not set(rule.roles) & set(call.actor.roles):
            continue
        effect = rule.effect
        if rule.threshold is not None:
            if "n" not in call.args:
                effect = "deny"  # a missing argument fails the condition: fail closed
            elif not call.args["n"] > rule.threshold:
                continue
        out.append((rule, effect))
    return out


# -- strategies --------------------------------------------------------------------------------

rule_ids = st.text(alphabet="abcdxyz", min_size=1, max_size=3)


@st.composite
def rule_specs(
    draw: st.DrawFn,
    rule_id: str,
    effects: Sequence[str] = ("allow", "ask", "deny"),
    shared_approver: bool = False,
) -> RuleSpec:
    effect = draw(st.sampled_from(effects))
    approvers: tuple[str, ...] = ()
    expires_in = None
    if effect == "ask":
        extra = draw(st.lists(st.sampled_from(APPROVERS), max_size=2, unique=True))
        if shared_approver:
            approvers = tuple(dict.fromkeys([SHARED_APPROVER, *extra]))
        else:
            approvers = tuple(extra) or (draw(st.sampled_from(APPROVERS)),)
        expires_in = draw(st.none() | st.sampled_from(sorted(LAPSES)))
    return RuleSpec(
        id=rule_id,
        tools=tuple(
            draw(st.lists(st.sampled_from((*TOOLS, "*")), min_size=1, max_size=2, unique=True))
        ),
        roles=tuple(draw(st.lists(st.sampled_from(ROLES), max_size=2, unique=True))),
        effect=effect,
        threshold=draw(st.none() | st.integers(-3, 3)),
        approvers=approvers,
        expires_in=expires_in,
    )


@st.composite
def rule_lists(draw: st.DrawFn, shared_approver: bool = False, max_size: int = 6) -> list[RuleSpec]:
    ids = draw(st.lists(rule_ids, max_size=max_size, unique=True))
    return [draw(rule_specs(i, shared_approver=shared_approver)) for i in ids]


calls = st.builds(
    Call,
    tool=st.sampled_from(CALL_TOOLS),
    # Mostly {"n": int}; sometimes {} so that conditions fail (and must deny).
    args=st.one_of(
        st.fixed_dictionaries({"n": st.integers(-5, 5)}),
        st.fixed_dictionaries({"n": st.integers(-5, 5)}),
        st.fixed_dictionaries({"n": st.integers(-5, 5)}),
        st.just({}),
    ),
    actor=st.builds(
        Actor,
        id=st.just("agent"),
        roles=st.lists(st.sampled_from(ROLES), max_size=3, unique=True).map(tuple),
    ),
)
defaults = st.none() | st.sampled_from(["allow", "deny"])  # a default of ask is refused


def key(d: Decision) -> tuple[object, ...]:
    return (d.effect, d.rule_id, d.approvers, d.expires_at)


# -- properties --------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(rules=rule_lists(), call=calls, default=defaults)
def test_any_matching_deny_denies(rules: list[RuleSpec], call: Call, default: str | None) -> None:
    decision = decide(build(rules, default), call)
    matched = model_matches(rules, call)
    deniers = {r.id for r, effect in matched if effect == "deny"}
    if deniers:
        assert decision.effect == "deny"
        assert decision.rule_id in deniers


@PROPERTY_SETTINGS
@given(rules=rule_lists(), call=calls, default=defaults, data=st.data())
def test_adding_an_allow_rule_never_loosens_a_rule_decision(
    rules: list[RuleSpec], call: Call, default: str | None, data: st.DataObject
) -> None:
    before = decide(build(rules, default), call)
    new_id = data.draw(rule_ids.filter(lambda i: i not in {r.id for r in rules}))
    extra = data.draw(rule_specs(new_id, effects=("allow",)))
    position = data.draw(st.integers(0, len(rules)))
    after = decide(build([*rules[:position], extra, *rules[position:]], default), call)
    if before.rule_id is not None and before.effect in ("ask", "deny"):
        # A rule (not the default) said ask or deny: an extra allow rule never makes it allow.
        assert after.effect != "allow"
    extra_match = model_matches([extra], call)
    if not extra_match:
        # The new rule does not cover this call: nothing changes.
        assert key(after) == key(before)
    elif extra_match[0][1] == "deny":
        # The new rule's condition cannot be evaluated, so it matches as a deny.
        assert after.effect == "deny"
    elif before.rule_id is not None and before.effect in ("ask", "deny"):
        # It matches as an allow: a rule's ask or deny stands unchanged.
        assert key(after) == key(before)
    elif before.rule_id is None:
        # Only the default applied: now the new rule allows.
        assert (after.effect, after.rule_id, after.approvers) == ("allow", new_id, ())
    else:
        assert (after.effect, after.approvers) == ("allow", ())


@PROPERTY_SETTINGS
@given(rules=rule_lists(), call=calls, default=defaults, data=st.data())
def test_rule_order_never_changes_the_decision(
    rules: list[RuleSpec], call: Call, default: str | None, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(rules))
    first = decide(build(rules, default), call)
    second = decide(build(shuffled, default), call)
    assert key(second) == key(first)
    assert second.reason == first.reason


@PROPERTY_SETTINGS
@given(rules=rule_lists(), call=calls, default=defaults)
def test_no_matching_rule_means_the_default(
    rules: list[RuleSpec], call: Call, default: str | None
) -> None:
    decision = decide(build(rules, default), call)
    if model_matches(rules, call):
        assert decision.rule_id is not None
    else:
        assert decision.rule_id is None
        assert decision.effect == (default or "deny")


@PROPERTY_SETTINGS
@given(rules=rule_lists(), call=calls, default=defaults)
def test_unlisted_tool_without_wildcard_rules_gets_the_default(
    rules: list[RuleSpec], call: Call, default: str | None
) -> None:
    rules = [r for r in rules if "*" not in r.tools]
    decision = decide(build(rules, default), Call("unlisted", call.args, call.actor))
    assert decision.rule_id is None
    assert decision.effect == (default or "deny")


@PROPERTY_SETTINGS
@given(rules=rule_lists(shared_approver=True), call=calls, default=defaults)
def test_effect_is_the_most_restrictive_match_when_ask_rules_share_an_approver(
    rules: list[RuleSpec], call: Call, default: str | None
) -> None:
    decision = decide(build(rules, default), call)
    matched = model_matches(rules, call)
    if not matched:
        assert (decision.effect, decision.rule_id) == (default or "deny", None)
        return
    top = max(RANK[effect] for _, effect in matched)
    winners = [(r, effect) for r, effect in matched if RANK[effect] == top]
    assert RANK[decision.effect] == top
    assert decision.rule_id in {r.id for r, _ in winners}
    if decision.effect == "ask":
        assert SHARED_APPROVER in decision.approvers


@PROPERTY_SETTINGS
@given(rules=rule_lists(), call=calls, default=defaults)
def test_decision_matches_the_full_model(
    rules: list[RuleSpec], call: Call, default: str | None
) -> None:
    """The whole decision, including approver intersection and the shortest lapse."""
    decision = decide(build(rules, default), call)
    matched = model_matches(rules, call)
    if not matched:
        assert key(decision) == (default or "deny", None, (), None)
        return
    top = max(RANK[effect] for _, effect in matched)
    winners = [r for r, effect in matched if RANK[effect] == top]
    assert decision.rule_id in {r.id for r in winners}
    if top != RANK["ask"]:
        expected = "deny" if top == RANK["deny"] else "allow"
        assert (decision.effect, decision.approvers, decision.expires_at) == (expected, (), None)
        return
    approvers = set.intersection(*(set(r.approvers) for r in winners))
    if not approvers:
        assert (decision.effect, decision.approvers, decision.expires_at) == ("deny", (), None)
        return
    lapses = [LAPSES[r.expires_in] for r in winners if r.expires_in is not None]
    expires_at = NOW + min(lapses) if lapses else None
    assert (decision.effect, decision.approvers, decision.expires_at) == (
        "ask",
        tuple(sorted(approvers)),
        expires_at,
    )


@PROPERTY_SETTINGS
@given(rules=rule_lists(), call=calls, default=defaults)
def test_explain_agrees_with_decide_and_the_model(
    rules: list[RuleSpec], call: Call, default: str | None
) -> None:
    policy = build(rules, default)
    explanation = policy.explain(call.tool, call.args, call.actor, now=NOW)
    assert explanation.decision == decide(policy, call)
    expected = {r.id: effect for r, effect in model_matches(rules, call)}
    got = {t.rule_id: t.effect for t in explanation.rules if t.matched}
    assert got == expected
    assert {t.rule_id for t in explanation.rules} == {r.id for r in rules}
