"""The policy model: rules, per-tool settings, YAML loading, and the decision procedure.

Combining is deny-overrides: among the rules that match a call, ``deny`` beats ``ask`` beats
``allow``; when none matches, the policy's ``default`` (``deny`` unless set) applies. A rule's
``when`` condition is a CEL expression over ``args``, ``actor`` and ``tool``, compiled once at load.
A condition that fails while evaluating (a missing argument, a type mismatch, a non-boolean result)
makes its rule match as ``deny``: a broken condition never lets a call through.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import cel
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from handrail.context import Actor
from handrail.errors import PolicyError
from handrail.policies.decision import (
    APPROVER_DECISIONS,
    DESCRIPTION_PREFIX,
    EDIT_NOTICE,
    EFFECT_RANK,
    ApproverDecision,
    Decision,
    Effect,
    Explanation,
    RuleTrace,
)
from handrail.policies.settings import CircuitSettings, ToolSettings, parse_duration

__all__ = ["CircuitSettings", "Policy", "Rule", "ToolSettings"]

_WILDCARD = "*"


class Rule(BaseModel):
    """One policy rule: which tools and roles it covers, under which condition, with what effect."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    """A unique name; decisions, denials and audit rows cite it."""
    tools: tuple[str, ...] = Field(min_length=1)
    """Tool names the rule covers; ``"*"`` covers every tool."""
    roles: tuple[str, ...] = ()
    """Actor roles the rule covers; empty covers every actor."""
    when: str | None = None
    """A CEL condition over ``args``, ``actor`` and ``tool``; absent means always."""
    effect: Effect
    """allow, ask or deny."""
    approvers: tuple[str, ...] = ()
    """For ``ask``: roles allowed to decide. Required for ``ask``, refused for other effects."""
    expires_in: timedelta | None = None
    """For ``ask``: how long an approval request stays open (``90s``, ``30m``, ``24h``, ``7d``)."""
    min_approvals: int = Field(default=1, ge=1, le=5, strict=True)
    """For ``ask``: how many distinct approvers must approve (two-person rule: ``2``)."""
    allowed_decisions: tuple[ApproverDecision, ...] | None = Field(default=None, min_length=1)
    """For ``ask``: what an approver may decide, of ``approve``, ``edit``, ``reject`` and
    ``respond`` (absent: all four)."""
    description: str = ""
    """What the rule is for: shown to people reading the policy and, for ``ask``, to the
    reviewer of an asked call."""
    description_prefix: str | None = Field(default=None, min_length=1)
    """For ``ask``: the first line of the reviewer's text (absent: the policy's)."""

    _program: cel.Program | None = PrivateAttr(default=None)

    _expires = field_validator("expires_in", mode="before")(parse_duration)

    @field_validator("allowed_decisions")
    @classmethod
    def _in_order(cls, value: tuple[ApproverDecision, ...] | None) -> object:
        return None if value is None else tuple(d for d in APPROVER_DECISIONS if d in value)

    def model_post_init(self, context: Any, /) -> None:
        if self.effect == "ask" and not self.approvers:
            raise PolicyError(
                "effect 'ask' needs 'approvers' (the roles allowed to decide)",
                rule_id=self.id,
                field="approvers",
            )
        only_ask = {
            "approvers": bool(self.approvers),
            "expires_in": self.expires_in is not None,
            "min_approvals": self.min_approvals != 1,
            "allowed_decisions": self.allowed_decisions is not None,
            "description_prefix": self.description_prefix is not None,
        }
        field = next((name for name, given in only_ask.items() if given), None)
        if self.effect != "ask" and field is not None:
            raise PolicyError(
                f"{field!r} only applies to effect 'ask', not {self.effect!r}",
                rule_id=self.id,
                field=field,
            )
        if self.when is not None:
            try:
                self._program = cel.compile(self.when)
            except Exception as exc:  # the cel binding raises ValueError or RuntimeError
                raise PolicyError(
                    f"CEL condition does not compile: {exc}", rule_id=self.id, field="when"
                ) from None


class Policy(BaseModel):
    """A set of rules and tool settings that decides every tool call: allow, ask or deny."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    """The policy format version."""
    default: Effect = "deny"
    """The effect when no rule matches."""
    rules: tuple[Rule, ...] = ()
    """The rules; their order never changes a decision."""
    tools: dict[str, ToolSettings] = Field(default_factory=dict)
    """Per-tool settings by tool name; tools not listed get the defaults."""
    escalate_to: tuple[str, ...] = Field(default=("operator",), min_length=1)
    """Roles that may decide an escalation (retry, skip, abort) of a tool naming none itself."""
    body_limit: int = Field(default=2048, ge=0, le=1_000_000, strict=True)
    """Characters of a tool's response kept in events and the audit; the rest is cut."""
    max_args_bytes: int = Field(default=262_144, ge=64, le=100_000_000, strict=True)
    """The largest arguments a call may have, as compact JSON in bytes (default 256 KiB); a
    larger call is answered as a bad request, never run, and its arguments are not stored."""
    max_args_depth: int = Field(default=32, ge=1, le=1000, strict=True)
    """How deep a call's arguments may nest (objects and lists); deeper is a bad request."""
    description_prefix: str = Field(default=DESCRIPTION_PREFIX, min_length=1)
    """The first line of what a reviewer reads about an asked call, before the rule's
    ``description``, the tool and its arguments (a rule may set its own)."""
    edit_notice: str | None = Field(default=EDIT_NOTICE, min_length=1)
    """What the model is told, with the call that ran, before the result of a call a reviewer
    edited (LangChain's words); null: nothing."""

    _index: _Index = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        if self.default == "ask":
            raise PolicyError(
                "default 'ask' would ask with no approvers; use 'deny' or 'allow'", field="default"
            )
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise PolicyError("duplicate rule id", rule_id=rule.id, field="id")
            seen.add(rule.id)
        self._index = _Index(self.rules)

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<string>") -> Policy:
        """Parse a policy from YAML text. Raises `PolicyError` naming source, rule and field."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise PolicyError(f"not valid YAML{where}: {problem}", source=source) from None
        if not isinstance(data, Mapping):
            raise PolicyError("a policy must be a mapping with 'rules'", source=source)
        return cls.from_data(data, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """Load a policy from a YAML file. Raises `PolicyError` naming the file, rule and field."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read policy file: {exc.strerror}", source=str(p)) from None
        return cls.from_yaml(text, source=str(p))

    @classmethod
    def from_data(cls, data: Mapping[str, Any], *, source: str = "<string>") -> Policy:
        """Build a policy from parsed data (a dict), with the same errors as `from_yaml`."""
        try:
            return cls.model_validate(data)
        except PolicyError as exc:
            raise PolicyError(
                exc.problem, source=source, rule_id=exc.rule_id, field=exc.field
            ) from None
        except ValidationError as exc:
            raise _policy_error(exc, data, source) from None

    # -- deciding ------------------------------------------------------------------------------

    def settings(self, tool: str) -> ToolSettings:
        """The settings for ``tool`` (defaults when the policy does not list it)."""
        return self.tools.get(tool) or _DEFAULT_SETTINGS

    def decide(
        self,
        tool: str,
        args: Mapping[str, Any],
        actor: Actor,
        *,
        now: datetime | None = None,
    ) -> Decision:
        """Decide one call: the most restrictive matching rule wins, else the default."""
        return self._evaluate(tool, args, actor, now, None)

    def explain(
        self,
        tool: str,
        args: Mapping[str, Any],
        actor: Actor,
        *,
        now: datetime | None = None,
    ) -> Explanation:
        """Decide one call and say, for every rule, whether and why it matched."""
        traces: list[RuleTrace] = []
        decision = self._evaluate(tool, args, actor, now, traces)
        covered = {t.rule_id for t in traces}
        for rule in self.rules:
            if rule.id not in covered:
                traces.append(
                    RuleTrace(
                        rule_id=rule.id,
                        effect=rule.effect,
                        matched=False,
                        reason=f"covers tools {list(rule.tools)}, not {tool!r}",
                    )
                )
        order = {r.id: i for i, r in enumerate(self.rules)}
        traces.sort(key=lambda t: order[t.rule_id])
        return Explanation(decision=decision, rules=tuple(traces))

    def _evaluate(
        self,
        tool: str,
        args: Mapping[str, Any],
        actor: Actor,
        now: datetime | None,
        traces: list[RuleTrace] | None,
    ) -> Decision:
        candidates, variables = self._index.lookup(tool)
        roles = actor.roles
        ctx: cel.Context | None = None
        # (rank, rule, condition result): True, or what a failed condition gave (a deny)
        matched: list[tuple[int, Rule, object]] = []
        for rule, program, rule_roles, rank in candidates:
            if rule_roles and rule_roles.isdisjoint(roles):
                if traces is not None:
                    traces.append(_trace(rule, rule.effect, False, "actor holds none of its roles"))
                continue
            result: object = True
            if program is not None:
                try:  # any failure, converting the values or evaluating, closes the gate
                    if ctx is None:
                        ctx = _cel_context(variables, tool, args, actor)
                    result = program.execute(ctx)
                except Exception as exc:
                    result = exc
                if result is False:
                    if traces is not None:
                        traces.append(_trace(rule, rule.effect, False, f"`{rule.when}` is false"))
                    continue
            if result is not True:
                rank = _DENY
            matched.append((rank, rule, result))
            if traces is not None:
                traces.append(_trace(rule, _EFFECTS[rank], True, _why(rule, result)))
        return self._combine(tool, matched, now)

    def _combine(
        self, tool: str, matched: list[tuple[int, Rule, object]], now: datetime | None
    ) -> Decision:
        if not matched:
            return Decision(
                effect=self.default,
                rule_id=None,
                reason=f"no rule matched {tool!r}; the policy default is {self.default!r}",
            )
        top = max(m[0] for m in matched)
        winners = sorted((m for m in matched if m[0] == top), key=lambda m: m[1].id)
        effect = _EFFECTS[top]
        _, rule, result = winners[0]
        reason = f"rule {rule.id!r}: {_why(rule, result)}"
        if len(winners) > 1:
            reason += f" (also {', '.join(repr(w[1].id) for w in winners[1:])})"
        if effect != "ask":
            return Decision(effect=effect, rule_id=rule.id, reason=reason)
        # Every matching ask rule is a requirement: the approver and the decision meet them all.
        rules = [w[1] for w in winners]
        approvers = set(rule.approvers).intersection(*(r.approvers for r in rules))
        allowed = set(APPROVER_DECISIONS).intersection(
            *(r.allowed_decisions for r in rules if r.allowed_decisions is not None)
        )
        if not approvers or not allowed:
            shared = "approver role" if not approvers else "allowed decision"
            return Decision(
                effect="deny",
                rule_id=rule.id,
                reason=f"matching ask rules {[r.id for r in rules]} share no {shared}",
            )
        lapses = [r.expires_in for r in rules if r.expires_in is not None]
        expires_at = (now or datetime.now(UTC)) + min(lapses) if lapses else None
        return Decision(
            effect="ask",
            rule_id=rule.id,
            approvers=tuple(sorted(approvers)),
            expires_at=expires_at,
            min_approvals=max(r.min_approvals for r in rules),
            reason=reason,
            allowed_decisions=tuple(d for d in APPROVER_DECISIONS if d in allowed),
            description="\n".join(dict.fromkeys(r.description for r in rules if r.description)),
            description_prefix=next(
                (r.description_prefix for r in rules if r.description_prefix),
                self.description_prefix,
            ),
        )


_DEFAULT_SETTINGS = ToolSettings()


_Candidate = tuple[Rule, cel.Program | None, frozenset[str], int]
"""A rule with its compiled condition, its roles as a set and its effect's rank."""


class _Index:
    """Rules by tool name, with their compiled conditions and the CEL variables they read.

    A plain object read once per decision: pydantic private attributes cost about a microsecond
    per access, and converting values into CEL dominates a decision, so only the variables some
    candidate rule references are converted.
    """

    __slots__ = ("_by_tool", "_wildcard")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        by_tool: dict[str, list[Rule]] = {}
        for rule in rules:
            for name in dict.fromkeys(rule.tools):
                by_tool.setdefault(name, []).append(rule)
        wildcard = by_tool.pop(_WILDCARD, [])
        self._wildcard = self._entry(wildcard)
        self._by_tool = {
            name: self._entry(list({id(r): r for r in (*rs, *wildcard)}.values()))
            for name, rs in by_tool.items()
        }

    @staticmethod
    def _entry(rules: list[Rule]) -> tuple[tuple[_Candidate, ...], frozenset[str]]:
        candidates = tuple(
            (r, r._program, frozenset(r.roles), EFFECT_RANK[r.effect]) for r in rules
        )
        names = frozenset(v for c in candidates if c[1] is not None for v in c[1].variables())
        return candidates, names

    def lookup(self, tool: str) -> tuple[tuple[_Candidate, ...], frozenset[str]]:
        return self._by_tool.get(tool, self._wildcard)


def _cel_context(
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


def _trace(rule: Rule, effect: Effect, matched: bool, reason: str) -> RuleTrace:
    return RuleTrace(rule_id=rule.id, effect=effect, matched=matched, reason=reason)


_DENY = EFFECT_RANK["deny"]
_EFFECTS: dict[int, Effect] = {rank: effect for effect, rank in EFFECT_RANK.items()}


def _why(rule: Rule, result: object) -> str:
    if rule.when is None:
        return "tool and role match"
    if result is True:
        return f"`{rule.when}` is true"
    return f"`{rule.when}` failed ({_describe(result)}), so the rule denies"


def _describe(result: object) -> str:
    if isinstance(result, KeyError):
        return f"no such key {result}"
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {str(result).split('.')[0]}"
    return f"returned {result!r}, not a boolean"


def _policy_error(exc: ValidationError, data: Mapping[str, Any], source: str) -> PolicyError:
    err = exc.errors()[0]
    loc = err["loc"]
    msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    msg = msg.removeprefix("Value error, ")
    more = exc.error_count() - 1
    if more:
        msg += f" (and {more} more error{'s' if more > 1 else ''})"
    rule_id: str | None = None
    field: str | None = ".".join(str(p) for p in loc) or None
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        raw_rules = data.get("rules")
        raw = raw_rules[loc[1]] if isinstance(raw_rules, list) else None
        rule_id = str(raw["id"]) if isinstance(raw, Mapping) and "id" in raw else f"#{loc[1]}"
        field = ".".join(str(p) for p in loc[2:]) or None
    return PolicyError(msg, source=source, rule_id=rule_id, field=field)
