"""What the fast path of `Policy.decide` must not change, and the ``usage`` variable.

A plan whose conditions read the arguments only as ``args.NAME`` evaluates them rewritten to read
one variable per argument (only the arguments read are converted). Here: every condition shape the
rewrite takes or refuses decides as the condition evaluated on the whole ``args`` map; an argument
no condition reads still fails the conditions when CEL cannot convert it; `converts` never says
yes to a value the ``cel`` binding refuses. Then ``usage``: readable, absent means deny, never
answered from a decision kept for other totals, `Policy.reads_usage`, `Policy.explain`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import cel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handrail.context import Actor
from handrail.policies import Policy
from handrail.policies._cel import converts, describe, split

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ACTOR = Actor(id="a1", roles=("dev",))
PREFIX = "handrail_args_"


def one_rule(when: str) -> Policy:
    """Rule ``r`` allows ``pay`` when ``when`` holds; the default denies."""
    return Policy.from_data(
        {"rules": [{"id": "r", "tools": ["pay"], "when": when} | {"effect": "allow"}]}
    )


def on_the_map(when: str, args: dict[Any, Any]) -> str:
    """The effect the one-rule policy must decide: the condition evaluated on the whole map."""
    try:
        result = cel.compile(when).execute(cel.Context({"args": args, "tool": "pay"}))
    except Exception:
        return "deny"
    return "allow" if result is True else "deny"


# -- the rewrite ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "variables"),
    [
        ("args.amount > 10", [f"{PREFIX}amount"]),
        ("args.a.b == 'x' && args.c.startsWith('y')", [f"{PREFIX}a", f"{PREFIX}c"]),
        ("args.tags[0] == 'x' || tool == 'pay'", [f"{PREFIX}tags", "tool"]),
        ("'args.x' == args.s", [f"{PREFIX}s"]),  # a string literal is left alone
        ("args.\n  amount > 1", [f"{PREFIX}amount"]),
    ],
)
def test_conditions_reading_args_by_name_are_split(when: str, variables: list[str]) -> None:
    done = split(cel.compile(when), PREFIX)
    assert done is not None
    assert done.variables() == sorted(variables)
    assert done.source.count("'args.x'") == when.count("'args.x'")  # literals left alone


@pytest.mark.parametrize(
    "when",
    [
        "size(args) > 2",
        "args['amount'] > 1",
        "has(args.amount)",
        "args.size() > 1",
        "'amount' in args",
        "[{'x': 1}].all(args, args.x == 1)",
        "args.amount > 1 // a comment: args.b",
        "args.s == 'it\\'s'",
        "handrail_args_amount > 1 && args.amount > 1",
    ],
)
def test_conditions_reading_args_otherwise_are_not_split(when: str) -> None:
    assert split(cel.compile(when), PREFIX) is None


CASES: list[tuple[str, dict[Any, Any]]] = [
    ("args.amount > 10", {"amount": 50}),
    ("args.amount > 10", {"amount": 5}),
    ("args.amount > 10", {}),  # missing: no such key, so deny
    ("args.amount > 10", {"amount": "50"}),  # a type error: deny
    ("args.amount > 10", {"amount": 50, "due": date(2025, 1, 1)}),  # unread, cannot convert
    ("args.amount > 10", {"amount": 50, "note": "\ud800"}),  # unread, no UTF-8 for it
    ("args.amount > 10", {"amount": 50, "big": 10**400}),  # unread, past a double
    ("args.amount > 10", {"amount": 50, "big": 2**70}),  # unread, converts to a double
    ("args.amount > 10", {"amount": 50, "m": {None: 1}}),  # unread, a key CEL refuses
    ("args.amount > 10", {"amount": 50, "m": {1: [2, (3,)], "k": None}}),  # unread, converts
    ("args.amount > 10", {"amount": 50, "tags": ["x", {"y": 1.5}]}),  # unread, converts
    ("args.amount > 10", {"amount": 50, 7: "x"}),  # a name that is no string
    ("args.amount > 10", {"amount": date(2025, 1, 1)}),  # read, cannot convert
    ("args.amount", {"amount": 3}),  # not a boolean: deny
    ("args.amount == 1", {"amount": cel.OptionalValue.of(1)}),  # CEL reads it in a map only
    ("args.amount > 1.0", {"amount": Decimal("1.5")}),
    ("args.t > timestamp('2024-01-01T00:00:00Z')", {"t": datetime(2025, 1, 1, tzinfo=UTC)}),
    ("args.m.k == 1", {"m": {"k": 1}}),
    ("args.m.k == 1", {"m": {}}),
    ("size(args) > 1 && args.amount > 10", {"amount": 50, "b": 1}),
    ("has(args.amount) && args.amount > 10", {"amount": 50}),
    ("has(args.amount) && args.amount > 10", {}),
    ("1.0 / args.f > 0.0", {"f": -0.0}),
    ("args.flag == true", {"flag": True}),
    ("args.flag == 1", {"flag": True}),
]


@pytest.mark.parametrize(("when", "args"), CASES)
def test_every_condition_shape_decides_as_on_the_whole_map(when: str, args: dict[Any, Any]) -> None:
    policy = one_rule(when)
    expected = on_the_map(when, args)
    assert policy.decide("pay", args, ACTOR, now=NOW).effect == expected
    assert policy.decide("pay", args, ACTOR, now=NOW).effect == expected  # kept, or again
    assert policy.explain("pay", args, ACTOR, now=NOW).decision.effect == expected


def test_the_cases_above_include_both_outcomes() -> None:
    effects = {on_the_map(when, args) for when, args in CASES}
    assert effects == {"allow", "deny"}


def test_an_unread_argument_cel_cannot_convert_denies_with_the_conversion_error() -> None:
    policy = one_rule("args.amount < 100")
    decision = policy.decide("pay", {"amount": 5, "due": date(2025, 1, 1)}, ACTOR, now=NOW)
    assert decision.effect == "deny"
    assert "failed (ValueError" in decision.reason


def test_a_condition_not_reading_args_is_not_failed_by_an_argument_cel_cannot_convert() -> None:
    policy = Policy.from_data(
        {
            "rules": [
                {"id": "who", "tools": ["pay"], "when": "actor.id == 'a1'", "effect": "allow"},
                {"id": "amt", "tools": ["pay"], "when": "args.amount < 0", "effect": "allow"},
            ]
        }
    )
    explanation = policy.explain("pay", {"amount": 5, "due": date(2025, 1, 1)}, ACTOR, now=NOW)
    traces = {t.rule_id: t for t in explanation.rules}
    assert (traces["who"].matched, traces["who"].effect) == (True, "allow")
    assert (traces["amt"].matched, traces["amt"].effect) == (True, "deny")
    assert explanation.decision.effect == "deny"


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats()
    | st.text()
    | st.dates()
    | st.binary(max_size=3)
    | st.decimals(allow_nan=False)
    | st.builds(cel.OptionalValue.of, st.integers(0, 2)),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=3) | st.integers(-3, 3) | st.none(), inner, max_size=3)
    ),
    max_leaves=8,
)


READING_X = (
    "args.x == args.x",
    "args.x",
    "size(args.x) > 0",
    "args.x > 1",
    "args.x.k == 1 || args.y == 'b'",
    "args.x[0] == 1.5",
)


@settings(max_examples=300, deadline=None)
@given(when=st.sampled_from(READING_X), x=values, y=values)
def test_any_value_read_or_not_decides_as_on_the_whole_map_with_the_same_reason(
    when: str, x: object, y: object
) -> None:
    args = {"x": x, "y": y}
    try:
        result: object = cel.compile(when).execute(cel.Context({"args": args}))
    except Exception as exc:
        result = exc
    if result is True:
        expected = ("allow", f"rule 'r': `{when}` is true")
    elif result is False:
        expected = ("deny", "no rule matched 'pay'; the policy default is 'deny'")
    else:
        expected = ("deny", f"rule 'r': `{when}` failed ({describe(result)}), so the rule denies")
    decision = one_rule(when).decide("pay", args, ACTOR, now=NOW)
    if "{" in expected[1]:  # a CEL map returned: its order is a Rust HashMap's, anew each time
        assert (decision.effect, sorted(decision.reason)) == (expected[0], sorted(expected[1]))
    else:
        assert (decision.effect, decision.reason) == expected


@settings(max_examples=400, deadline=None)
@given(value=values)
def test_converts_never_says_yes_to_a_value_the_binding_refuses(value: object) -> None:
    if converts(value):
        cel.Context({"args": {"x": value}})  # raises if the binding refuses it


@pytest.mark.parametrize(
    "value", [2**64, -(2**63) - 1, "\udc80", {1: "x"}, {"k": {"k": date(2025, 1, 1)}}, b"x"]
)
def test_converts_leaves_doubtful_values_to_the_binding(value: object) -> None:
    assert converts(value) is False


def test_converts_takes_the_plain_json_values() -> None:
    assert converts({"a": [1, 2.5, "é", None, True, (2**64 - 1, -(2**63))]})


# -- usage ---------------------------------------------------------------------------------------

SPEND = Policy.from_data(
    {
        "default": "allow",
        "rules": [
            {
                "id": "over-budget",
                "tools": ["pay"],
                "when": 'usage["daily-spend"] + args.amount > 5000',
                "effect": "deny",
            },
            {"id": "search", "tools": ["search"], "when": "args.q != ''", "effect": "allow"},
        ],
    }
)


def test_a_condition_reads_usage_by_limit_id() -> None:
    within = SPEND.decide("pay", {"amount": 100}, ACTOR, now=NOW, usage={"daily-spend": 4000})
    over = SPEND.decide("pay", {"amount": 100}, ACTOR, now=NOW, usage={"daily-spend": 4950})
    assert (within.effect, within.rule_id) == ("allow", None)
    assert (over.effect, over.rule_id) == ("deny", "over-budget")
    assert "is true" in over.reason


def test_absent_usage_fails_closed() -> None:
    for usage in (None, {}, {"other-limit": 1}):
        decision = SPEND.decide("pay", {"amount": 1}, ACTOR, now=NOW, usage=usage)
        assert (decision.effect, decision.rule_id) == ("deny", "over-budget")
        assert "no such key" in decision.reason


def test_a_decision_is_not_reused_for_other_totals() -> None:
    args = {"amount": 100}
    effects = [
        SPEND.decide("pay", args, ACTOR, now=NOW, usage={"daily-spend": total}).effect
        for total in (0, 4950, 0, 4950, 4900, 4901)
    ]
    assert effects == ["allow", "deny", "allow", "deny", "allow", "deny"]


def test_ints_are_ints_and_floats_are_doubles_to_cel() -> None:
    int_total = SPEND.decide("pay", {"amount": 1}, ACTOR, now=NOW, usage={"daily-spend": 10})
    mixed = SPEND.decide("pay", {"amount": 1}, ACTOR, now=NOW, usage={"daily-spend": 10.0})
    doubles = SPEND.decide("pay", {"amount": 1.0}, ACTOR, now=NOW, usage={"daily-spend": 10.0})
    assert (int_total.effect, mixed.effect, doubles.effect) == ("allow", "deny", "allow")
    assert "failed" in mixed.reason  # an int added to a double: the rule denies
    converted = Policy.from_data(
        {
            "default": "allow",
            "rules": [
                {
                    "id": "over",
                    "tools": ["pay"],
                    "when": 'double(usage["n"]) + args.amount > 5.0',
                    "effect": "deny",
                }
            ],
        }
    )
    assert converted.decide("pay", {"amount": 1.5}, ACTOR, usage={"n": 3}).effect == "allow"
    assert converted.decide("pay", {"amount": 2.5}, ACTOR, usage={"n": 3}).effect == "deny"


def test_usage_a_policy_does_not_read_changes_nothing() -> None:
    plain = SPEND.decide("search", {"q": "x"}, ACTOR, now=NOW)
    given_usage = SPEND.decide("search", {"q": "x"}, ACTOR, now=NOW, usage={"daily-spend": 1})
    assert plain == given_usage
    assert plain.rule_id == "search"


def test_reads_usage_says_which_tools_read_it() -> None:
    assert SPEND.reads_usage("pay") is True
    assert SPEND.reads_usage("search") is False
    assert SPEND.reads_usage("unlisted") is False
    wildcard = Policy.from_data(
        {
            "rules": [
                {"id": "w", "tools": ["*"], "roles": ["ops"], "when": "usage['n'] < 3"}
                | {"effect": "allow"},
                {"id": "s", "tools": ["search"], "effect": "allow"},
            ]
        }
    )
    assert wildcard.reads_usage("unlisted") is True  # for any roles: here only ops's
    assert wildcard.reads_usage("search") is True
    assert one_rule("args.amount > 1").reads_usage("pay") is False


def test_explain_shows_the_rule_matched_on_usage() -> None:
    explanation = SPEND.explain("pay", {"amount": 100}, ACTOR, now=NOW, usage={"daily-spend": 4950})
    traces = {t.rule_id: t for t in explanation.rules}
    assert [t.rule_id for t in explanation.rules] == ["over-budget", "search"]
    assert (traces["over-budget"].matched, traces["over-budget"].effect) == (True, "deny")
    assert traces["over-budget"].reason == '`usage["daily-spend"] + args.amount > 5000` is true'
    assert explanation.decision.rule_id == "over-budget"
    below = SPEND.explain("pay", {"amount": 100}, ACTOR, now=NOW, usage={"daily-spend": 0})
    assert next(t for t in below.rules if t.rule_id == "over-budget").matched is False
    assert below.decision.effect == "allow"
