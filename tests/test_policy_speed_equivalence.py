"""The fast `Policy.decide` (conditions grouped and evaluated once, plans and decisions kept)
decides exactly as a plain reference does: every rule checked one by one, each condition
evaluated on its own, combined deny > ask > allow, else the default. The reference lives here, so
the comparison does not lean on the code it checks."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import cel
from hypothesis import given, settings
from hypothesis import strategies as st

from handrail.context import Actor
from handrail.policies import Decision, Policy

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TOOLS = ("search", "refund", "delete")
ROLES = ("dev", "ops", "admin")
APPROVERS = ("lead", "sre")
CONDITIONS = (
    "args.n > 0",
    "args.n > 2",
    "args.s == 'a'",
    "args.f >= 0.5",
    "1.0 / args.f > 0.0",  # -0.0 and 0.0 differ here
    "args.n > 'x'",  # a type error: fails, so the rule denies
    "args.missing > 1",  # no such key: fails
    "args.n",  # not a boolean: fails
    "actor.id == 'a1'",
    "'ops' in actor.roles",
    "tool == 'search'",
    "size(args) > 2",
)
ALL = ("approve", "edit", "reject", "respond")


def reference(policy: Policy, tool: str, args: dict[str, Any], actor: Actor) -> Decision:
    """Every rule checked one by one, as the policy's documentation says."""
    matched: list[tuple[int, Any, str]] = []  # (rank, rule, why)
    for rule in policy.rules:
        if tool not in rule.tools and "*" not in rule.tools:
            continue
        if rule.roles and not set(rule.roles) & set(actor.roles):
            continue
        rank = {"allow": 0, "ask": 1, "deny": 2}[rule.effect]
        if rule.when is None:
            matched.append((rank, rule, "tool and role match"))
            continue
        program = cel.compile(rule.when)
        values = {"args": dict(args), "actor": actor.as_dict(), "tool": tool}
        try:  # the condition sees the variables it reads; one CEL cannot convert fails it
            ctx = cel.Context({k: v for k, v in values.items() if k in program.variables()})
            result: object = program.execute(ctx)
        except Exception as exc:
            result = exc
        if result is False:
            continue
        if result is True:
            matched.append((rank, rule, f"`{rule.when}` is true"))
        else:
            matched.append(
                (2, rule, f"`{rule.when}` failed ({failure(result)}), so the rule denies")
            )
    if not matched:
        d = policy.default
        reason = f"no rule matched {tool!r}; the policy default is {d.effect!r}"
        if d.effect != "ask":
            return Decision(effect=d.effect, rule_id=None, reason=reason)
        return Decision(
            effect="ask",
            rule_id=None,
            approvers=tuple(sorted(d.approvers)),
            expires_at=NOW + d.expires_in if d.expires_in else None,
            min_approvals=d.min_approvals,
            allowed_decisions=d.allowed_decisions or ALL,
            description=d.description,
            description_prefix=d.description_prefix or policy.description_prefix,
            reason=reason,
        )
    top = max(m[0] for m in matched)
    winners = sorted((m for m in matched if m[0] == top), key=lambda m: m[1].id)
    first = winners[0][1]
    reason = f"rule {first.id!r}: {winners[0][2]}"
    if len(winners) > 1:
        reason += f" (also {', '.join(repr(w[1].id) for w in winners[1:])})"
    effect = {0: "allow", 1: "ask", 2: "deny"}[top]
    if effect != "ask":
        return Decision(effect=effect, rule_id=first.id, reason=reason)  # type: ignore[arg-type]
    rules = [w[1] for w in winners]
    approvers = set.intersection(*(set(r.approvers) for r in rules))
    allowed = set.intersection(*(set(r.allowed_decisions or ALL) for r in rules))
    if not approvers or not allowed:
        shared = "approver role" if not approvers else "allowed decision"
        why = f"matching ask rules {[r.id for r in rules]} share no {shared}"
        return Decision(effect="deny", rule_id=first.id, reason=why)
    lapses = [r.expires_in for r in rules if r.expires_in is not None]
    return Decision(
        effect="ask",
        rule_id=first.id,
        approvers=tuple(sorted(approvers)),
        expires_at=NOW + min(lapses) if lapses else None,
        min_approvals=max(r.min_approvals for r in rules),
        allowed_decisions=tuple(d for d in ALL if d in allowed),
        description="\n".join(dict.fromkeys(r.description for r in rules if r.description)),
        description_prefix=next(
            (r.description_prefix for r in rules if r.description_prefix),
            policy.description_prefix,
        ),
        reason=reason,
    )


def failure(result: object) -> str:
    if isinstance(result, KeyError):
        return f"no such key {result}"
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {str(result).split('.')[0]}"
    return f"returned {result!r}, not a boolean"


@st.composite
def rules(draw: st.DrawFn, rule_id: str) -> dict[str, Any]:
    effect = draw(st.sampled_from(["allow", "ask", "deny"]))
    rule: dict[str, Any] = {
        "id": rule_id,
        "tools": draw(
            st.lists(st.sampled_from((*TOOLS, "*")), min_size=1, max_size=2, unique=True)
        ),
        "effect": effect,
    }
    roles = draw(st.lists(st.sampled_from(ROLES), max_size=2, unique=True))
    if roles:
        rule["roles"] = roles
    when = draw(st.none() | st.sampled_from(CONDITIONS))
    if when is not None:
        rule["when"] = when
    if effect == "ask":
        rule["approvers"] = draw(st.lists(st.sampled_from(APPROVERS), min_size=1, unique=True))
        if draw(st.booleans()):
            rule["expires_in"] = draw(st.sampled_from(["90s", "2h"]))
        if draw(st.booleans()):
            rule["allowed_decisions"] = draw(
                st.lists(st.sampled_from(ALL), min_size=1, max_size=3, unique=True)
            )
        rule["min_approvals"] = draw(st.integers(1, 2))
        rule["description"] = draw(st.sampled_from(["", "money", "people"]))
    return rule


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    ids = draw(st.lists(st.text("abcxyz", min_size=1, max_size=3), max_size=8, unique=True))
    default = draw(
        st.sampled_from(
            [
                "deny",
                "allow",
                {"effect": "ask", "approvers": ["owner"]},
                {"effect": "ask", "approvers": ["owner", "lead"], "expires_in": "24h"},
            ]
        )
    )
    return Policy.from_data({"default": default, "rules": [draw(rules(i)) for i in ids]})


scalars = st.fixed_dictionaries(
    {},
    optional={
        "n": st.integers(-2, 4),
        "s": st.sampled_from(["a", "b"]),
        "f": st.sampled_from([0.0, -0.0, 0.5, 1.5]),
    },
)
args_strategy = st.one_of(
    scalars,
    scalars.map(lambda a: {**a, "tags": ["x"]}),  # not kept: decided afresh each time
    scalars.map(lambda a: {**a, "due": date(2025, 1, 1)}),  # CEL cannot convert it: fails
    scalars.map(lambda a: {**a, "n": True} if "n" in a else a),  # True is not 1 to CEL
)
actors = st.builds(
    Actor,
    id=st.sampled_from(["a1", "a2"]),
    roles=st.lists(st.sampled_from(ROLES), max_size=3, unique=True).map(tuple),
)
call_lists = st.lists(
    st.tuples(st.sampled_from((*TOOLS, "unlisted")), args_strategy, actors), min_size=1, max_size=6
)


@settings(max_examples=400, deadline=None)
@given(policy=policies(), calls=call_lists)
def test_fast_decide_equals_the_reference_on_every_call_and_repeat(
    policy: Policy, calls: list[tuple[str, dict[str, Any], Actor]]
) -> None:
    for tool, args, actor in [*calls, *calls]:  # the second pass decides from what was kept
        expected = reference(policy, tool, args, actor)
        assert policy.decide(tool, args, actor, now=NOW) == expected
        reordered = dict(reversed(list(args.items())))
        assert policy.decide(tool, reordered, actor, now=NOW) == expected


@settings(max_examples=200, deadline=None)
@given(policy=policies(), calls=call_lists)
def test_explain_decides_as_the_reference_and_lists_every_rule(
    policy: Policy, calls: list[tuple[str, dict[str, Any], Actor]]
) -> None:
    for tool, args, actor in calls:
        explanation = policy.explain(tool, args, actor, now=NOW)
        assert explanation.decision == reference(policy, tool, args, actor)
        assert [t.rule_id for t in explanation.rules] == [r.id for r in policy.rules]


def test_an_ask_decided_again_counts_its_expiry_from_the_new_now() -> None:
    policy = Policy.from_data(
        {
            "rules": [
                {"id": "big", "tools": ["pay"], "effect": "ask", "approvers": ["lead"]}
                | {"expires_in": "1h", "when": "args.amount > 10"}
            ]
        }
    )
    actor = Actor(id="a1")
    first = policy.decide("pay", {"amount": 50}, actor, now=NOW)
    later = datetime(2025, 6, 2, tzinfo=UTC)
    second = policy.decide("pay", {"amount": 50}, actor, now=later)
    assert (first.expires_at, second.expires_at) == (
        datetime(2025, 6, 1, 13, 0, tzinfo=UTC),
        datetime(2025, 6, 2, 1, 0, tzinfo=UTC),
    )


def test_values_equal_in_python_but_not_in_cel_are_decided_apart() -> None:
    policy = Policy.from_data(
        {
            "default": "allow",
            "rules": [
                {"id": "n", "tools": ["pay"], "when": "args.n > 0", "effect": "allow"},
                {"id": "f", "tools": ["pay"], "when": "1.0 / args.f > 0.0", "effect": "ask"}
                | {"approvers": ["lead"]},
            ],
        }
    )
    actor = Actor(id="a1")
    for first, second in [
        ({"n": 1, "f": 0.0}, {"n": True, "f": 0.0}),
        ({"n": 1, "f": 0.0}, {"n": 1, "f": -0.0}),
    ]:
        for args in (first, second, first, second):
            assert policy.decide("pay", args, actor, now=NOW) == reference(
                policy, "pay", args, actor
            )
    assert policy.decide("pay", {"n": True, "f": 0.0}, actor).effect == "deny"
    assert policy.decide("pay", {"n": 1, "f": 0.0}, actor).effect == "ask"  # 1/0.0 is +inf
    assert policy.decide("pay", {"n": 1, "f": -0.0}, actor).effect == "allow"
