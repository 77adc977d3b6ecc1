"""Graph builders: wiring only; the nodes live in `handrail.nodes`."""

from handrail.graph.agent import HandrailGraph, build_agent, open_checkpointer

__all__ = ["HandrailGraph", "build_agent", "open_checkpointer"]
