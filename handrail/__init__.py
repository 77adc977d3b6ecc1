"""Handrail: a policy gate between LangGraph agents and the tools they call."""
