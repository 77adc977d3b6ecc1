"""Graph builders: wiring only; the nodes live in `handrail.nodes`, the resume checks of the
graphs they return in `handrail.guard`."""

from handrail.graph.agent import build_agent
from handrail.graph.tool_gate import ToolGate, ToolGateState, build_tool_gate
from handrail.graph.workflow import Step, WorkflowState, build_workflow
from handrail.guard import HandrailGraph
from handrail.storage.checkpointer import open_checkpointer

__all__ = [
    "HandrailGraph",
    "Step",
    "ToolGate",
    "ToolGateState",
    "WorkflowState",
    "build_agent",
    "build_tool_gate",
    "build_workflow",
    "open_checkpointer",
]
