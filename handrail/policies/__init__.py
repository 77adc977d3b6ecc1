"""Policies: rules that decide every tool call (allow, ask, deny) and limits over time, loaded
from YAML; a policy's lint and its test cases."""

from handrail.policies.cases import Case, CaseResult, load_cases, run_cases
from handrail.policies.decision import Decision, Effect, Explanation, LimitTrace, RuleTrace
from handrail.policies.limits import Limit
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
    "Limit",
    "LimitTrace",
    "Policy",
    "Rule",
    "RuleTrace",
    "ToolSettings",
    "load_cases",
    "run_cases",
]
