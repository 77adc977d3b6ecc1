"""Policies: rules that decide every tool call (allow, ask, deny), loaded from YAML."""

from handrail.policies.decision import Decision, Effect, Explanation, RuleTrace
from handrail.policies.model import Policy, Rule
from handrail.policies.settings import CircuitSettings, ToolSettings

__all__ = [
    "CircuitSettings",
    "Decision",
    "Effect",
    "Explanation",
    "Policy",
    "Rule",
    "RuleTrace",
    "ToolSettings",
]
