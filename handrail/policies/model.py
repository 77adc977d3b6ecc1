"""The policy model: rules, a default, per-tool settings, YAML loading, deciding and explaining.

Combining is deny-overrides: among the rules that match a call, ``deny`` beats ``ask`` beats
``allow``; when none matches, the policy's ``default`` (``deny`` unless set; ``allow``, or an ask
with its approvers) applies, and only then: a default ask never overrides a matching rule. A rule's
``when`` condition is a CEL expression over ``args``, ``actor``, ``tool`` and ``usage`` (the totals
of the policy's limits, by limit id, as `Policy.decide` is given them), compiled once at load.
A condition that fails while evaluating (a missing argument or total, a type mismatch, a
non-boolean result) makes its rule match as ``deny``: a broken condition never lets a call through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from handrail.context import Actor
from handrail.errors import PolicyError
from handrail.policies._engine import Engine
from handrail.policies._trust import OutputTrust
from handrail.policies.decision import DESCRIPTION_PREFIX, EDIT_NOTICE, Decision, Explanation
from handrail.policies.limits import Limit, explain_limits
from handrail.policies.rules import DefaultRule, Rule
from handrail.policies.settings import ToolSettings

if TYPE_CHECKING:
    from handrail.auth import Directory
    from handrail.policies.lint import Finding, ToolSchemas

__all__ = ["Policy"]

_EFFECT_NAMES = ("allow", "deny", "ask")


class Policy(BaseModel):
    """A set of rules and tool settings that decides every tool call: allow, ask or deny."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    """The policy format version."""
    default: DefaultRule = DefaultRule(effect="deny")
    """What a call no rule matches gets: ``deny`` (unless set), ``allow``, or an ask with an ask
    rule's fields (``{effect: ask, approvers: [owner], expires_in: 24h}``)."""
    rules: tuple[Rule, ...] = ()
    """The rules; their order never changes a decision."""
    tools: dict[str, ToolSettings] = Field(default_factory=dict)
    """Per-tool settings by tool name; tools not listed get the defaults."""
    limits: tuple[Limit, ...] = ()
    """Cumulative limits: calls counted, or an argument summed, per actor, thread or globally
    over a window; past the maximum a call is asked about or denied (`Limit`)."""
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
    tool_output: Literal["trusted", "untrusted"] = "trusted"
    """Whether tools' outputs are trusted content unless a tool's ``output`` setting says
    otherwise (`handrail.provenance`: a value found only in untrusted output is ``untrusted``)."""

    _engine: Engine = PrivateAttr()
    _limits: dict[str, tuple[Limit, ...]] = PrivateAttr()
    _tracks: bool = PrivateAttr()
    _trust: OutputTrust = PrivateAttr()
    _digest: str = PrivateAttr()

    @field_validator("default", mode="before")
    @classmethod
    def _effect_name(cls, value: object) -> object:
        if isinstance(value, str) and value not in _EFFECT_NAMES:
            raise ValueError(
                f"default must be 'allow', 'deny' or a mapping such as {{effect: ask, "
                f"approvers: [owner]}}, not {value!r}"
            )
        return DefaultRule.of(value)

    def model_post_init(self, context: Any, /) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise PolicyError("duplicate rule id", rule_id=rule.id, field="id")
            seen.add(rule.id)
        for limit in self.limits:
            if limit.id in seen:
                raise PolicyError(
                    "a limit's id must differ from every rule's and limit's",
                    rule_id=limit.id,
                    field="id",
                )
            seen.add(limit.id)
        self._limits = {}
        self._digest = _digest_of(self)
        self._engine = Engine(self.rules, self.default, self.description_prefix, self._digest)
        self._trust = OutputTrust(
            self.tool_output,
            self.tools,
            max_depth=self.max_args_depth,
            max_bytes=self.max_args_bytes,
        )
        self._tracks = self._engine.reads_any("provenance") or self._trust.any_untrusted

    @property
    def digest(self) -> str:
        """The SHA-256 (hex) of the policy's canonical form: its settings as JSON, keys sorted,
        rules by id (their order never changes a decision), defaults written out. Two policies
        that mean the same have the same digest (``default: deny`` and ``{effect: deny}``);
        every decision, and every audit row, carries the digest of the policy it was made under.
        """
        return self._digest

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

    def limits_for(self, tool: str) -> tuple[Limit, ...]:
        """The limits calls of ``tool`` count towards, in the policy's order."""
        kept = self._limits.get(tool)
        if kept is None:
            kept = self._limits[tool] = tuple(lim for lim in self.limits if lim.covers(tool))
        return kept

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
        usage: Mapping[str, int | float] | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Decide one call: the most restrictive matching rule wins, else the default.

        ``now`` (default: the current time) is when an ask's ``expires_in`` counts from.
        ``usage`` is what conditions read as ``usage``: a map from a limit's id to its total, as
        the type the limit measures (an int for a count, a double for a sum). CEL adds no int to
        a double (``usage["spend"] + args.amount`` fails for a double and an int, so the rule
        denies): ``double(args.amount)`` converts. ``provenance`` is what conditions read as
        ``provenance``: ``{"args": {NAME: "user" | "tool" | "untrusted" | "model"},
        "untrusted_seen": bool}`` (`handrail.provenance`). Either one None (the default) is an
        empty map, so a condition reading it fails and its rule denies."""
        private: dict[str, Any] = self.__pydantic_private__  # type: ignore[assignment]
        engine: Engine = private["_engine"]  # a microsecond less than self._engine
        if usage is None and provenance is None:
            return engine.decide(tool, args, actor, now)
        return engine.decide(tool, args, actor, now, {"usage": usage, "provenance": provenance})

    def reads_usage(self, tool: str) -> bool:
        """Whether a condition of a rule covering ``tool`` reads ``usage``: the gate reads the
        stored totals before deciding only when one does."""
        return self._engine.reads("usage", tool)

    def reads_provenance(self, tool: str) -> bool:
        """Whether a condition of a rule covering ``tool`` reads ``provenance``: the gate works
        out where the arguments came from only when one does, or a tool's output is
        untrusted (`untrusted_output`)."""
        return self._engine.reads("provenance", tool)

    @property
    def tracks_provenance(self) -> bool:
        """Whether calls are decided knowing where their arguments came from: a rule's
        condition reads ``provenance``, or some tool's output is untrusted."""
        return self._tracks

    def untrusted_output(self, tool: str | None, args: Mapping[str, Any] | None = None) -> bool:
        """Whether the output of a call of ``tool`` with ``args`` is untrusted content: its
        ``output`` setting, else the policy's ``tool_output`` (None, a message from no known
        tool, takes the default), or its ``untrusted_when`` condition over ``args`` (untrusted
        when ``args`` are not known, or the condition fails)."""
        return self._trust.untrusted(tool, args)

    def explain(
        self,
        tool: str,
        args: Mapping[str, Any],
        actor: Actor,
        *,
        now: datetime | None = None,
        usage: Mapping[str, int | float] | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> Explanation:
        """Decide one call and say, for every rule in the policy's order, whether and why it
        matched (``now``, ``usage`` and ``provenance`` as for `decide`); and for every limit
        covering the call,
        what the call adds and, where ``usage`` gives the limit's total, whether that goes past
        its maximum (the decision then asks or denies, as a run reserving the use would)."""
        moment = now or datetime.now(UTC)
        facts = {"usage": usage, "provenance": provenance}
        decision, traces = self._engine.explain(tool, args, actor, self.rules, moment, facts)
        decision, limits = explain_limits(self.limits_for(tool), decision, args, usage, moment)
        return Explanation(decision=decision, rules=traces, limits=limits)

    def lint(
        self,
        *,
        tools: ToolSchemas | None = None,
        directory: Directory | Mapping[str, Iterable[str]] | None = None,
    ) -> list[Finding]:
        """What may be wrong with this policy, beyond what loading refuses: see
        `handrail.policies.lint.lint`."""
        from handrail.policies.lint import lint

        return lint(self, tools=tools, directory=directory)


_DEFAULT_SETTINGS = ToolSettings()


def _digest_of(policy: Policy) -> str:
    data = policy.model_dump(mode="json")
    data["rules"] = sorted(data["rules"], key=lambda rule: str(rule["id"]))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


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
    if len(loc) >= 2 and loc[0] in ("rules", "limits") and isinstance(loc[1], int):
        raw_rules = data.get(str(loc[0]))
        raw = raw_rules[loc[1]] if isinstance(raw_rules, list) else None
        rule_id = str(raw["id"]) if isinstance(raw, Mapping) and "id" in raw else f"#{loc[1]}"
        field = ".".join(str(p) for p in loc[2:]) or None
    return PolicyError(msg, source=source, rule_id=rule_id, field=field)
