"""Handrail: a policy gate between LangGraph agents and the tools they call.

Every tool call passes a policy (allow, ask, deny) before it runs; ``ask`` pauses the graph with
an ``interrupt()`` that an approver resumes by thread ID, from any process; failures are
classified and retried with state.
"""

from handrail.context import Actor, RunContext
from handrail.graph import HandrailGraph, build_agent
from handrail.inbox import Inbox, PendingApproval
from handrail.policies import Decision, Explanation, Policy
from handrail.state import AgentState, ToolCallRecord

__all__ = [
    "Actor",
    "AgentState",
    "Decision",
    "Explanation",
    "HandrailGraph",
    "Inbox",
    "PendingApproval",
    "Policy",
    "RunContext",
    "ToolCallRecord",
    "build_agent",
]
