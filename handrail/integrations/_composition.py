"""Which other middleware can share an agent with `HandrailMiddleware`, and in which order.

``create_agent`` runs ``wrap_tool_call`` hooks with the first listed middleware outermost, and
``after_model`` hooks in reverse order (the last listed runs first). Two of LangChain's own
middleware do what Handrail does in those hooks, and only one order of each is sound:

- `ToolCallLimitMiddleware` answers the calls over its limit in its ``after_model`` hook. Listed
  *after* Handrail, it runs first: a call it blocks is answered before Handrail asks anyone about
  it. Listed before, it runs after Handrail's hook: a person approves a call that the limit then
  blocks, and the approval is spent on a call that never runs. Refused.
- `ToolRetryMiddleware` retries a call whose handler raises. Listed *before* Handrail it never
  retries anything: Handrail answers every failure itself (retried as the policy's
  ``max_retries`` allow, handed to a person, or told to the model), so nothing is raised to it.
  Refused, so that nobody counts on retries that do not happen. Listed after Handrail, it runs
  the tool again *inside* one of Handrail's attempts, unseen by the execution ledger: sound only
  for tools the policy marks ``idempotent: true`` (a non-idempotent tool could pay twice after a
  500), so a retry middleware that covers any other tool is refused. Tools that take Handrail's
  injected ``idempotency_key`` are invoked by Handrail itself, past the middleware after it, and
  are never retried by it.

- `ModelCallLimitMiddleware` counts the model's steps, and a call waiting for a second approver or
  an escalation is asked about after a *pass* of the model's step (the model is not called, but
  the step runs): the limit would end the run at that pass and leave the call waiting for a
  decision nobody can give. Refused, wherever it is listed.
- `ToolCallLimitMiddleware(exit_behavior="end")` jumps to the end from its ``after_model`` hook,
  past Handrail's: the turn's calls would stay undecided and unaudited. Refused; its
  ``continue`` and ``error`` behaviours are sound.

`check_composition` applies these rules to a compiled agent (`HandrailMiddleware.guard` calls it).
"""

from __future__ import annotations

import logging
from typing import Any

from langchain.agents.middleware import (
    AgentMiddleware,
    ModelCallLimitMiddleware,
    ToolCallLimitMiddleware,
    ToolRetryMiddleware,
)
from langgraph.graph.state import CompiledStateGraph

from handrail.errors import HandrailError
from handrail.integrations._agent import after_model_order, retries, tool_wrappers
from handrail.nodes._gate import Gate

__all__ = ["CompositionError", "check_composition"]

log = logging.getLogger("handrail")


class CompositionError(HandrailError):
    """An agent whose other middleware would work against `HandrailMiddleware`: retry calls
    behind the execution ledger, promise retries that never happen, or block a call a person
    approved. The message says what to list where."""

    def __init__(self, problem: str, *, middleware: str) -> None:
        self.middleware = middleware
        """The name of the middleware at fault."""
        super().__init__(problem)


def check_composition(
    handrail: AgentMiddleware[Any, Any, Any],
    agent: CompiledStateGraph[Any, Any, Any, Any],
    gate: Gate,
) -> None:
    """Raise `CompositionError` unless the agent's other middleware sits where it works with
    ``handrail`` (see the module docstring); ``gate`` knows the agent's tools and the policy.
    Raises `HandrailError` when ``handrail`` is not the agent's."""
    hooks = after_model_order(agent)
    if handrail not in hooks:
        raise HandrailError(
            f"the agent was not built with this HandrailMiddleware ({handrail.name!r}): pass it "
            "in create_agent(..., middleware=[...])"
        )
    for other in hooks:
        if isinstance(other, ModelCallLimitMiddleware):
            raise CompositionError(
                f"{other.name} counts the passes of the model's step through which Handrail "
                "asks about a call still waiting (a second approver, an escalation), and would "
                "end the run there with the call waiting for a decision nobody can give. Remove "
                "it, or bound the agent with the graph's recursion_limit",
                middleware=other.name,
            )
        if isinstance(other, ToolCallLimitMiddleware) and other.exit_behavior == "end":
            raise CompositionError(
                f"{other.name}(exit_behavior='end') ends the run past Handrail's after_model "
                "hook, leaving the turn's calls undecided and unaudited: use "
                "exit_behavior='continue' (the calls over the limit are answered) or 'error'",
                middleware=other.name,
            )
    for other in hooks[: hooks.index(handrail)]:
        if isinstance(other, ToolCallLimitMiddleware):
            raise CompositionError(
                f"{other.name} is listed before {handrail.name}: its after_model hook would run "
                "after Handrail's, so a person could approve a call that the limit then blocks. "
                f"List it after: middleware=[{handrail.name}, ..., {other.name}]",
                middleware=other.name,
            )
    wrappers = tool_wrappers(agent)
    if wrappers is None:
        log.warning(
            "the order of the agent's wrap_tool_call middleware could not be read (a LangChain "
            "version Handrail does not know); ToolRetryMiddleware was not checked"
        )
        return
    mine = wrappers.index(handrail) if handrail in wrappers else len(wrappers)
    for other in wrappers[:mine]:
        if isinstance(other, ToolRetryMiddleware):
            raise CompositionError(
                f"{other.name} is listed before {handrail.name}, where it never retries: "
                "Handrail answers every tool failure itself (retrying 429s and transient errors "
                "up to the policy's max_retries, escalating the rest), so nothing is raised to "
                f"it. Remove it and set the tools' max_retries in the policy, or list it after "
                f"{handrail.name} for tools the policy marks idempotent: true",
                middleware=other.name,
            )
    for other in wrappers[mine + 1 :]:
        if not isinstance(other, ToolRetryMiddleware):
            continue
        unsafe = sorted(
            name
            for name in gate.tools
            if retries(other, name)
            and name not in gate.keyed
            and not gate.policy.settings(name).idempotent
        )
        if unsafe:
            raise CompositionError(
                f"{other.name} would run {unsafe} again inside one of Handrail's attempts, "
                "unseen by the execution ledger, and the policy does not mark them idempotent "
                f"(a call could take effect twice). Limit it with {other.name}(tools=[...]) to "
                "tools the policy marks idempotent: true, or remove it and let the policy's "
                "max_retries retry them",
                middleware=other.name,
            )
