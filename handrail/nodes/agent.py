"""The ``agent`` node: call the chat model on the conversation, with the tools bound."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool

from handrail.state import AgentState


def make_agent_node(
    model: BaseChatModel | Runnable[Any, Any],
    tools: Sequence[BaseTool],
    system_prompt: str | None = None,
) -> Callable[[AgentState, RunnableConfig], dict[str, Any]]:
    """The agent node for ``model``; tools are bound once, here, not on every turn."""
    bound: Runnable[Any, Any] = (
        model.bind_tools(list(tools)) if isinstance(model, BaseChatModel) and tools else model
    )
    prefix = [SystemMessage(system_prompt)] if system_prompt else []

    def agent(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        response = bound.invoke([*prefix, *state["messages"]], config)
        return {"messages": [response]}

    return agent
