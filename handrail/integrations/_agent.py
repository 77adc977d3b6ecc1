"""What Handrail reads of an agent compiled by LangChain's ``create_agent``, in one place.

``create_agent`` keeps no list of the middleware it was given. It can be read back from the graph:

- the tools: the ``tools`` node is LangGraph's `ToolNode` (its public ``tools_by_name``);
- the order of the ``after_model`` hooks: each is a node named ``<middleware.name>.after_model``,
  added in the order the middleware was listed, whose function is the middleware's bound method;
- the order of the ``wrap_tool_call`` hooks: the `ToolNode` holds them composed into one function
  (first listed outermost); each composition step closes over an ``outer`` and an ``inner``
  function, and each hook is the middleware's bound method (wrapped for tracing). This is
  LangChain's private structure: when it is not recognised, `tool_wrappers` says so (None)
  instead of guessing.

Also here: what a `ToolRetryMiddleware` retries (its tool filter is private).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ToolRetryMiddleware
from langchain_core.tools import BaseTool
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode

__all__ = ["after_model_order", "agent_tools", "retries", "tool_wrappers"]

Agent = CompiledStateGraph[Any, Any, Any, Any]

_AFTER_MODEL = ".after_model"


def agent_tools(agent: Agent) -> list[BaseTool]:
    """The tools the agent's tool node runs (none if it has no tool node)."""
    node = _tool_node(agent)
    return [] if node is None else list(node.tools_by_name.values())


def after_model_order(agent: Agent) -> list[AgentMiddleware[Any, Any, Any]]:
    """The middleware with an ``after_model`` hook, in the order ``create_agent`` was given
    them (the hooks run in the reverse order: the last listed runs first)."""
    found: list[AgentMiddleware[Any, Any, Any]] = []
    for name, spec in agent.builder.nodes.items():
        if not name.endswith(_AFTER_MODEL):
            continue
        runnable: Any = spec.runnable
        owner = _owner(getattr(runnable, "func", None)) or _owner(getattr(runnable, "afunc", None))
        if owner is not None and f"{owner.name}{_AFTER_MODEL}" == name:
            found.append(owner)
    return found


def tool_wrappers(agent: Agent) -> list[AgentMiddleware[Any, Any, Any]] | None:
    """The middleware with a ``wrap_tool_call`` hook, outermost (first listed) first; None when
    the tool node's composition is not one this module recognises."""
    node = _tool_node(agent)
    if node is None:
        return []
    composed: Any = getattr(node, "_wrap_tool_call", None) or getattr(
        node, "_awrap_tool_call", None
    )
    if composed is None:
        return []
    return _unchain(composed)


def retries(middleware: ToolRetryMiddleware[Any, Any], tool: str) -> bool:
    """Whether ``middleware`` retries calls of ``tool`` (its ``tools=`` filter)."""
    should: Callable[[str], bool] | None = getattr(middleware, "_should_retry_tool", None)
    return True if should is None else should(tool)


def _tool_node(agent: Agent) -> ToolNode | None:
    spec = agent.builder.nodes.get("tools")
    node = spec.runnable if spec is not None else None
    return node if isinstance(node, ToolNode) else None


def _owner(fn: object) -> AgentMiddleware[Any, Any, Any] | None:
    """The middleware whose bound method ``fn`` is (through any ``__wrapped__`` layers)."""
    for _ in range(8):
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, AgentMiddleware):
            return owner
        fn = getattr(fn, "__wrapped__", None)
        if fn is None:
            return None
    return None


def _unchain(fn: object) -> list[AgentMiddleware[Any, Any, Any]] | None:
    owner = _owner(fn)
    if owner is not None:
        return [owner]
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None)
    if code is None or not cells:
        return None
    free = dict(zip(code.co_freevars, cells, strict=True))
    if "outer" not in free or "inner" not in free:
        return None
    outer = _unchain(free["outer"].cell_contents)
    inner = _unchain(free["inner"].cell_contents)
    if outer is None or inner is None:
        return None
    return [*outer, *inner]
