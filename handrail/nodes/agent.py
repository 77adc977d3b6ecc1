"""The ``agent`` node: call the chat model on the conversation, with the tools bound."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langgraph._internal._runnable import RunnableCallable
from langgraph.runtime import Runtime

from handrail.bounds import bound_message
from handrail.context import RunContext
from handrail.nodes._effects import Invoke, Script, node
from handrail.policies import Policy


def make_agent_node(
    model: BaseChatModel | Runnable[Any, Any],
    tools: Sequence[BaseTool],
    policy: Policy,
    system_prompt: str | None = None,
) -> RunnableCallable:
    """The agent node for ``model``; tools are bound once, here, not on every turn. The model is
    invoked in a sync graph and awaited in an async one. Tool calls whose arguments exceed the
    policy's bounds are cut down before the turn is stored (`bound_message`)."""
    bound: Runnable[Any, Any] = (
        model.bind_tools(list(tools)) if isinstance(model, BaseChatModel) and tools else model
    )
    prefix = [SystemMessage(system_prompt)] if system_prompt else []

    def agent(
        state: Mapping[str, Any], config: RunnableConfig, runtime: Runtime[RunContext]
    ) -> Script[dict[str, Any]]:
        response = yield Invoke(bound, [*prefix, *state["messages"]], config)
        if isinstance(response, AIMessage) and response.tool_calls:
            response = bound_message(
                response, max_depth=policy.max_args_depth, max_bytes=policy.max_args_bytes
            )
        return {"messages": [response]}

    return node(agent, "agent")
