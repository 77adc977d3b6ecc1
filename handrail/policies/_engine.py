"""How a policy decides fast, with the semantics of checking every rule one by one.

For each (tool, actor roles) seen, a `Plan` holds the rules that can match — those covering the
tool whose roles the actor holds — with their conditions grouped by text, so each distinct CEL
condition is evaluated once per call. A call's outcome is one result per distinct condition:
true, false, or why it failed (a failed condition makes each of its rules match as ``deny``). The
decision for an outcome is combined once and kept; so is the decision for a call whose arguments
are all scalars, keyed by those arguments (policies are pure: CEL has no clock and no I/O), unless
a condition reads ``usage`` or ``provenance``, which change between calls. Only ``expires_at`` is
computed per call, from ``now``.

Converting the arguments into CEL dominates a decision (about a microsecond per string, twice
that inside a map), hence the kept decisions (the router, the policy node and ``execute`` decide
each call), and hence a plan whose conditions read the arguments only as ``args.NAME`` runs them
rewritten to read each argument as a variable of its own (`split`): the same evaluation as on the
``args`` map when every argument read is there and every other one surely converts (`converts`).
Any other call is evaluated on the map, where a value CEL cannot convert fails the conditions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from handrail.context import Actor
from handrail.policies._plan import FACTS, Plan, Result, Template
from handrail.policies.decision import (
    APPROVER_DECISIONS,
    EFFECT_RANK,
    Decision,
    Effect,
    RuleTrace,
)
from handrail.policies.rules import WILDCARD, DefaultRule, Rule

__all__ = ["Engine"]


_DENY = EFFECT_RANK["deny"]
_EFFECTS: dict[int, Effect] = {rank: effect for effect, rank in EFFECT_RANK.items()}
_SCALARS = frozenset({str, int, bool, type(None)})
_KEPT_STRING = 1024
"""A call with a longer string argument is not kept (the key would hold it)."""
_NO_FACTS: Mapping[str, Any] = {}
_PLANS = 4096
_KEPT = 512
"""At most this many plans, and decisions kept per plan; past it the cache starts over."""


class Engine:
    """A policy's rules, indexed for deciding calls (see the module's docstring)."""

    __slots__ = ("_by_tool", "_default", "_digest", "_plans", "_prefix", "_reading", "_wildcard")

    def __init__(
        self, rules: tuple[Rule, ...], default: DefaultRule, prefix: str, digest: str | None
    ) -> None:
        by_tool: dict[str, list[Rule]] = {}
        for rule in rules:
            for name in dict.fromkeys(rule.tools):
                by_tool.setdefault(name, []).append(rule)
        self._wildcard = tuple(by_tool.pop(WILDCARD, []))
        self._by_tool = {
            name: tuple({id(r): r for r in (*rs, *self._wildcard)}.values())
            for name, rs in by_tool.items()
        }
        self._default = default
        self._prefix = prefix
        self._digest = digest
        """The policy's digest, in every decision (so a kept decision carries it too)."""
        self._plans: dict[tuple[str, tuple[str, ...]], Plan] = {}
        self._reading = {
            fact: frozenset(
                name
                for name, rs in (*self._by_tool.items(), (WILDCARD, self._wildcard))
                if any(r.program is not None and fact in r.program.variables() for r in rs)
            )
            for fact in FACTS
        }
        """By fact, the tools with a rule whose condition reads it (``*``: any tool no rule
        names)."""

    def reads_any(self, fact: str) -> bool:
        """Whether a condition of any rule reads ``fact``."""
        return bool(self._reading[fact])

    def reads(self, fact: str, tool: str) -> bool:
        """Whether a condition of a rule covering ``tool`` (for any roles) reads ``fact``
        (``usage`` or ``provenance``)."""
        return (tool if tool in self._by_tool else WILDCARD) in self._reading[fact]

    def decide(
        self,
        tool: str,
        args: Mapping[str, Any],
        actor: Actor,
        now: datetime | None,
        facts: Mapping[str, Any] = _NO_FACTS,
    ) -> Decision:
        """The decision on one call (``facts``: what conditions read as ``usage`` and
        ``provenance``)."""
        plan = self._plans.get((tool, actor.roles)) or self._plan(tool, actor.roles)
        key = None if plan.reads_facts else _args_key(args)
        if key is not None and plan.reads_actor:
            key = (actor.id, key)
        kept = plan.kept.get(key) if key is not None else None
        if kept is None:
            kept = self._template(plan, plan.evaluate(tool, args, actor, facts))
            if key is not None:
                if len(plan.kept) >= _KEPT:
                    plan.kept.clear()
                plan.kept[key] = kept
        decision, lapse = kept
        if lapse is None:
            return decision
        return replace(decision, expires_at=(now or datetime.now(UTC)) + lapse)

    def explain(
        self,
        tool: str,
        args: Mapping[str, Any],
        actor: Actor,
        rules: tuple[Rule, ...],
        now: datetime | None,
        facts: Mapping[str, Any] = _NO_FACTS,
    ) -> tuple[Decision, tuple[RuleTrace, ...]]:
        """The decision on one call, and every rule's verdict on it, in ``rules``' order."""
        plan = self._plans.get((tool, actor.roles)) or self._plan(tool, actor.roles)
        outcome = plan.evaluate(tool, args, actor, facts)
        results = dict(zip((c.when for c in plan.conditions), outcome, strict=True))
        traces = tuple(_trace(rule, tool, actor.roles, results) for rule in rules)
        decision, lapse = self._template(plan, outcome)
        if lapse is not None:
            decision = replace(decision, expires_at=(now or datetime.now(UTC)) + lapse)
        return decision, traces

    def _plan(self, tool: str, roles: tuple[str, ...]) -> Plan:
        held = set(roles)
        rules = [
            r
            for r in self._by_tool.get(tool, self._wildcard)
            if not r.roles or not held.isdisjoint(r.roles)
        ]
        plan = Plan(tool, rules)
        if len(self._plans) >= _PLANS:
            self._plans.clear()
        self._plans[(tool, roles)] = plan
        return plan

    def _template(self, plan: Plan, outcome: tuple[Result, ...]) -> Template:
        template = plan.combined.get(outcome)
        if template is None:
            matched: list[tuple[int, Rule, Result]] = [
                (EFFECT_RANK[r.effect], r, True) for r in plan.always
            ]
            for condition, result in zip(plan.conditions, outcome, strict=True):
                if result is True:
                    matched += ((EFFECT_RANK[r.effect], r, True) for r in condition.rules)
                elif result is not False:
                    matched += ((_DENY, r, result) for r in condition.rules)
            template = plan.combined[outcome] = self._combine(plan.tool, matched)
        return template

    def _combine(self, tool: str, matched: list[tuple[int, Rule, Result]]) -> Template:
        """Deny beats ask beats allow among the matching rules; none matching: the default."""
        if not matched:
            return self._by_default(tool)
        top = max(m[0] for m in matched)
        winners = sorted((m for m in matched if m[0] == top), key=lambda m: m[1].id)
        effect = _EFFECTS[top]
        _, rule, result = winners[0]
        reason = f"rule {rule.id!r}: {why(rule, result)}"
        if len(winners) > 1:
            reason += f" (also {', '.join(repr(w[1].id) for w in winners[1:])})"
        if effect != "ask":
            decision = Decision(
                effect=effect, rule_id=rule.id, reason=reason, policy_digest=self._digest
            )
            return decision, None
        # Every matching ask rule is a requirement: the approver and the decision meet them all.
        rules = [w[1] for w in winners]
        approvers = set(rule.approvers).intersection(*(r.approvers for r in rules))
        allowed = set(APPROVER_DECISIONS).intersection(
            *(r.allowed_decisions for r in rules if r.allowed_decisions is not None)
        )
        if not approvers or not allowed:
            shared = "approver role" if not approvers else "allowed decision"
            reason = f"matching ask rules {[r.id for r in rules]} share no {shared}"
            decision = Decision(
                effect="deny", rule_id=rule.id, reason=reason, policy_digest=self._digest
            )
            return decision, None
        lapses = [r.expires_in for r in rules if r.expires_in is not None]
        decision = Decision(
            effect="ask",
            rule_id=rule.id,
            approvers=tuple(sorted(approvers)),
            min_approvals=max(r.min_approvals for r in rules),
            reason=reason,
            allowed_decisions=tuple(d for d in APPROVER_DECISIONS if d in allowed),
            description="\n".join(dict.fromkeys(r.description for r in rules if r.description)),
            description_prefix=next(
                (r.description_prefix for r in rules if r.description_prefix), self._prefix
            ),
            policy_digest=self._digest,
        )
        return decision, min(lapses) if lapses else None

    def _by_default(self, tool: str) -> Template:
        d = self._default
        reason = f"no rule matched {tool!r}; the policy default is {d.effect!r}"
        if d.effect != "ask":
            decision = Decision(
                effect=d.effect, rule_id=None, reason=reason, policy_digest=self._digest
            )
            return decision, None
        decision = Decision(
            effect="ask",
            rule_id=None,
            approvers=tuple(sorted(set(d.approvers))),
            min_approvals=d.min_approvals,
            reason=reason,
            allowed_decisions=d.allowed_decisions or APPROVER_DECISIONS,
            description=d.description,
            description_prefix=d.description_prefix or self._prefix,
            policy_digest=self._digest,
        )
        return decision, d.expires_in


def _args_key(args: Mapping[str, Any]) -> tuple[object, ...] | None:
    """The arguments as a key, when they are all short scalars (else None: not kept)."""
    key: list[object] = []
    for name, value in args.items():
        kind = type(value)
        if kind is float:
            value = value.hex()  # -0.0 == 0.0, but CEL can tell them apart
        elif kind not in _SCALARS or (kind is str and len(value) > _KEPT_STRING):
            return None
        if type(name) is not str:
            return None
        key += (name, kind, value)
    return tuple(key)


def _trace(rule: Rule, tool: str, roles: tuple[str, ...], results: dict[str, Result]) -> RuleTrace:
    effect = rule.effect
    if not rule.covers(tool):
        matched, reason = False, f"covers tools {list(rule.tools)}, not {tool!r}"
    elif rule.roles and set(rule.roles).isdisjoint(roles):
        matched, reason = False, "actor holds none of its roles"
    elif rule.when is None:
        matched, reason = True, why(rule, True)
    else:
        result = results[rule.when]
        matched = result is not False
        reason = f"`{rule.when}` is false" if result is False else why(rule, result)
        if result is not True and result is not False:
            effect = "deny"
    return RuleTrace(rule_id=rule.id, effect=effect, matched=matched, reason=reason)


def why(rule: Rule, result: Result) -> str:
    """Why ``rule`` matched, given its condition's result."""
    if rule.when is None:
        return "tool and role match"
    if result is True:
        return f"`{rule.when}` is true"
    return f"`{rule.when}` failed ({result}), so the rule denies"
