"""Policies: rules that decide every tool call (allow, ask, deny), loaded from YAML; a policy's
lint and its test cases."""

from handrail.policies.cases import Case, CaseResult, load_cases, run_cases
from handrail.policies.decision import Decision, Effect, Explanation, RuleTrace
from handrail.policies.lint import Finding
from handrail.policies.model import Policy
from handrail.policies.rules import DefaultRule, Rule
from handrail.policies.settings import CircuitSettings, ToolSettings

__all__ = [
    "Case",
    "CaseResult",
    "CircuitSettings",
    "Decision",
    "DefaultRule",
    "Effect",
    "Explanation",
    "Finding",
    "Policy",
    "Rule",
    "RuleTrace",
    "ToolSettings",
    "load_cases",
    "run_cases",
]
