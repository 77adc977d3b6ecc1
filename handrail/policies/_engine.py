"""How a policy decides fast, with the semantics of checking every rule one by one.

For each (tool, actor roles) seen, a `_Plan` holds the rules that can match — those covering the
tool whose roles the actor holds — with their conditions grouped by text, so each distinct CEL
condition is evaluated once per call. A call's outcome is one result per distinct condition:
true, false, or why it failed (a failed condition makes each of its rules match as ``deny``). The
decision for an outcome is combined once and kept; so is the decision for a call whose arguments
are all scalars, keyed by those arguments (policies are pure: CEL has no clock and no I/O). Only
``expires_at`` is computed per call, from ``now``.

Converting the arguments into CEL dominates a decision (about a microsecond per string), which is
why a repeated call (the router, the policy node and ``execute`` decide each call) is worth keeping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import cel

from handrail.context import Actor
from handrail.policies.decision import (
    APPROVER_DECISIONS,
    EFFECT_RANK,
    Decision,
    Effect,
    RuleTrace,
)
from handrail.policies.rules import WILDCARD, DefaultRule, Rule

__all__ = ["Engine"]

Result = bool | str
"""A condition's result for one call: True, False, or why it failed to evaluate (a deny)."""

_Template = tuple[Decision, timedelta | None]
"""A decision without its ``expires_at``, and the lapse it is computed from (asks only)."""

_DENY = EFFECT_RANK["deny"]
_EFFECTS: dict[int, Effect] = {rank: effect for effect, rank in EFFECT_RANK.items()}
_SCALARS = frozenset({str, int, bool, type(None)})
_KEPT_STRING = 1024
"""A call with a longer string argument is not kept (the key would hold it)."""
_PLANS = 4096
_KEPT = 512
"""At most this many plans, and decisions kept per plan; past it the cache starts over."""


class Engine:
    """A policy's rules, indexed for deciding calls (see the module's docstring)."""

    __slots__ = ("_by_tool", "_default", "_digest", "_plans", "_prefix", "_wildcard")

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
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan] = {}

    def decide(
        self, tool: str, args: Mapping[str, Any], actor: Actor, now: datetime | None
    ) -> Decision:
        """The decision on one call."""
        plan = self._plans.get((tool, actor.roles)) or self._plan(tool, actor.roles)
        key = _args_key(args)
        if key is not None and plan.reads_actor:
            key = (actor.id, key)
        kept = plan.kept.get(key) if key is not None else None
        if kept is None:
            kept = self._template(plan, plan.evaluate(tool, args, actor))
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
    ) -> tuple[Decision, tuple[RuleTrace, ...]]:
        """The decision on one call, and every rule's verdict on it, in ``rules``' order."""
        plan = self._plans.get((tool, actor.roles)) or self._plan(tool, actor.roles)
        outcome = plan.evaluate(tool, args, actor)
        results = dict(zip((c.when for c in plan.conditions), outcome, strict=True))
        traces = tuple(_trace(rule, tool, actor.roles, results) for rule in rules)
        decision, lapse = self._template(plan, outcome)
        if lapse is not None:
            decision = replace(decision, expires_at=(now or datetime.now(UTC)) + lapse)
        return decision, traces

    def _plan(self, tool: str, roles: tuple[str, ...]) -> _Plan:
        held = set(roles)
        rules = [
            r
            for r in self._by_tool.get(tool, self._wildcard)
            if not r.roles or not held.isdisjoint(r.roles)
        ]
        plan = _Plan(tool, rules)
        if len(self._plans) >= _PLANS:
            self._plans.clear()
        self._plans[(tool, roles)] = plan
        return plan

    def _template(self, plan: _Plan, outcome: tuple[Result, ...]) -> _Template:
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

    def _combine(self, tool: str, matched: list[tuple[int, Rule, Result]]) -> _Template:
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

    def _by_default(self, tool: str) -> _Template:
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


class _Condition:
    """One distinct condition of a plan and the rules that share it."""

    __slots__ = ("program", "rules", "variables", "when")

    def __init__(self, when: str, program: cel.Program, rules: tuple[Rule, ...]) -> None:
        self.when = when
        self.program = program
        self.rules = rules
        self.variables = frozenset(program.variables())


class _Plan:
    """The rules that can match calls of one tool by actors holding given roles."""

    __slots__ = ("always", "combined", "conditions", "kept", "reads_actor", "tool", "variables")

    def __init__(self, tool: str, rules: list[Rule]) -> None:
        self.tool = tool
        self.always = tuple(r for r in rules if r.program is None)
        grouped: dict[str, tuple[cel.Program, list[Rule]]] = {}
        for r in rules:
            if r.program is not None:
                grouped.setdefault(r.program.source, (r.program, []))[1].append(r)
        self.conditions = tuple(
            _Condition(when, program, tuple(rs)) for when, (program, rs) in grouped.items()
        )
        self.variables = frozenset(v for c in self.conditions for v in c.variables)
        self.reads_actor = "actor" in self.variables
        self.combined: dict[tuple[Result, ...], _Template] = {}
        self.kept: dict[object, _Template] = {}

    def evaluate(self, tool: str, args: Mapping[str, Any], actor: Actor) -> tuple[Result, ...]:
        """Each distinct condition's result for one call."""
        conditions = self.conditions
        if not conditions:
            return ()
        try:  # one context for all; if a value cannot be converted, each reads its own
            ctx = _context(self.variables, tool, args, actor)
        except Exception:
            return tuple(_run(c.program, c.variables, tool, args, actor) for c in conditions)
        return tuple(_run(c.program, ctx, tool, args, actor) for c in conditions)


def _context(
    names: frozenset[str], tool: str, args: Mapping[str, Any], actor: Actor
) -> cel.Context:
    values: dict[str, Any] = {}
    if "args" in names:
        values["args"] = dict(args)
    if "actor" in names:
        values["actor"] = actor.as_dict()
    if "tool" in names:
        values["tool"] = tool
    return cel.Context(values)


def _run(
    program: cel.Program,
    ctx: cel.Context | frozenset[str],
    tool: str,
    args: Mapping[str, Any],
    actor: Actor,
) -> Result:
    """One condition's result: in ``ctx``, or in a context of the variables named."""
    try:  # any failure, converting the values or evaluating, closes the gate
        if isinstance(ctx, frozenset):
            ctx = _context(ctx, tool, args, actor)
        result = program.execute(ctx)
    except Exception as exc:
        return describe(exc)
    return result if result is True or result is False else describe(result)


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


def describe(failure: object) -> str:
    """A condition's failure in a few words: the error, or the value that is no boolean."""
    if isinstance(failure, KeyError):
        return f"no such key {failure}"
    if isinstance(failure, Exception):
        return f"{type(failure).__name__}: {str(failure).split('.')[0]}"
    return f"returned {failure!r}, not a boolean"
