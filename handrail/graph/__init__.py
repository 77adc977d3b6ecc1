"""Graph builders: wiring only; the nodes live in `handrail.nodes`."""

from handrail.graph.agent import HandrailGraph, build_agent, open_checkpointer
from handrail.graph.tool_gate import ToolGateState, build_tool_gate
from handrail.graph.workflow import Step, WorkflowState, build_workflow

__all__ = [
    "HandrailGraph",
    "Step",
    "ToolGateState",
    "WorkflowState",
    "build_agent",
    "build_tool_gate",
    "build_workflow",
    "open_checkpointer",
]
