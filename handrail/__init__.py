"""Handrail: a policy gate between LangGraph agents and the tools they call.

Every tool call passes a policy (allow, ask, deny) before it runs; ``ask`` pauses the graph with
an ``interrupt()`` that an approver resumes by thread ID, from any process; failures are
classified and retried with state. Who decides is established, not claimed: a `Directory` of
people and roles, signed tokens (`JwtAuthenticator`), or the LangGraph server's user.
`build_tool_gate` puts the same gate in your own graph in place of ``ToolNode``;
`build_workflow` runs a fixed sequence of tool steps through it.
"""

from handrail.auth import Directory, JwtAuthenticator, Token
from handrail.context import Actor, RunContext
from handrail.graph import (
    HandrailGraph,
    Step,
    ToolGateState,
    WorkflowState,
    build_agent,
    build_tool_gate,
    build_workflow,
)
from handrail.inbox import Inbox, PendingApproval
from handrail.policies import Decision, Explanation, Policy
from handrail.state import AgentState, ToolCallRecord

__all__ = [
    "Actor",
    "AgentState",
    "Decision",
    "Directory",
    "Explanation",
    "HandrailGraph",
    "Inbox",
    "JwtAuthenticator",
    "PendingApproval",
    "Policy",
    "RunContext",
    "Step",
    "Token",
    "ToolCallRecord",
    "ToolGateState",
    "WorkflowState",
    "build_agent",
    "build_tool_gate",
    "build_workflow",
]
