"""A policy's test cases: calls with the effect (and optionally the rule) the policy must give.

```yaml
cases:
  - {tool: transfer_funds, args: {amount: 5000}, roles: [ai-agent], expect: ask,
     rule: big-transfers}
  - {tool: delete_user, args: {user_id: u1}, roles: [ai-agent], expect: deny}
  - {tool: search, roles: [ai-agent], expect: allow, rule: default}   # no rule: the default
```
``handrail policy test POLICY CASES.yaml`` runs them (`run_cases`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from handrail.context import Actor
from handrail.errors import PolicyError
from handrail.policies.decision import Decision, Effect
from handrail.policies.model import Policy

__all__ = ["DEFAULT_RULE", "Case", "CaseResult", "load_cases", "run_cases"]

DEFAULT_RULE = "default"
"""What a case's ``rule`` says for a decision no rule made (the policy default)."""


class Case(BaseModel):
    """One call and what the policy must decide about it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str = Field(min_length=1)
    """The tool called."""
    args: dict[str, Any] = Field(default_factory=dict)
    """The call's arguments (as the tool's schema gives them to the policy)."""
    roles: tuple[str, ...] = ()
    """The actor's roles."""
    actor: str = Field(default="test", min_length=1)
    """The actor's id."""
    expect: Effect
    """The effect the policy must give: allow, ask or deny."""
    rule: str | None = None
    """The rule that must decide (``default`` for the policy default); absent: any."""
    name: str | None = None
    """What the case is called in reports (absent: ``#N tool``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CaseResult:
    """A case and what the policy decided."""

    index: int
    """The case's position in the file, from 0."""
    case: Case
    decision: Decision
    """The policy's decision (on the arguments as the tool's schema coerced them, if given)."""

    @property
    def name(self) -> str:
        """The case's name, or ``#N tool``."""
        return self.case.name or f"#{self.index + 1} {self.case.tool}"

    @property
    def rule(self) -> str:
        """The deciding rule's id, or ``default``."""
        return self.decision.rule_id or DEFAULT_RULE

    @property
    def ok(self) -> bool:
        """Whether the decision is the expected effect (and rule)."""
        expected_rule = self.case.rule is None or self.case.rule == self.rule
        return self.decision.effect == self.case.expect and expected_rule

    @property
    def problem(self) -> str:
        """What differs, in a sentence ("" when the case holds)."""
        if self.ok:
            return ""
        want = self.case.expect + (f" by {self.case.rule}" if self.case.rule else "")
        return f"expected {want}, got {self.decision.effect} by {self.rule}"


def load_cases(path: str | Path) -> list[Case]:
    """The cases of a YAML file (``cases: [...]``); `PolicyError` naming the file and the case."""
    where = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read the cases file: {exc.strerror}", source=where) from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"not valid YAML: {exc}", source=where) from None
    raw = data.get("cases") if isinstance(data, Mapping) else None
    if not isinstance(raw, list) or not raw:
        raise PolicyError("a cases file is a mapping with a non-empty list 'cases'", source=where)
    cases: list[Case] = []
    for i, item in enumerate(raw):
        try:
            cases.append(Case.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or None
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            raise PolicyError(f"case #{i + 1}: {msg}", source=where, field=field) from None
    return cases


def run_cases(
    policy: Policy,
    cases: Sequence[Case],
    *,
    coerce: Callable[[str, Mapping[str, Any]], dict[str, Any]] | None = None,
    now: datetime | None = None,
) -> list[CaseResult]:
    """Decide every case; ``coerce(tool, args)`` gives the arguments as a tool's schema would
    (a `ValueError` it raises propagates)."""
    results = []
    for i, case in enumerate(cases):
        args = coerce(case.tool, case.args) if coerce is not None else case.args
        actor = Actor(id=case.actor, roles=case.roles)
        decision = policy.decide(case.tool, args, actor, now=now)
        results.append(CaseResult(index=i, case=case, decision=decision))
    return results
