"""Test doubles for users' own tests: a chat model that replays a script of AIMessages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import Field, PrivateAttr

__all__ = ["ScriptedChatModel"]


class ScriptedChatModel(BaseChatModel):
    """A chat model that answers with the given AIMessages, one per model turn.

    The answer is chosen by position: the n-th AIMessage of the script answers a conversation that
    already holds n-1 AIMessages. That makes the model stateless, so a thread paused in one process
    and resumed in another (where a new `ScriptedChatModel` is built from the same script) goes on
    with the next answer. Tool calls without an id get a stable one (``call_<turn>_<index>``).

    ``bind_tools`` records the tools and returns the model itself, so it drops in wherever a
    provider chat model goes; ``assert_complete()`` checks that every answer was used.
    """

    responses: list[AIMessage] = Field(default_factory=list)
    """The script: one AIMessage per model turn."""

    _served: int = PrivateAttr(default=0)
    _bound_tools: list[str] = PrivateAttr(default_factory=list)

    def __init__(self, responses: Sequence[AIMessage | str] = (), **kwargs: Any) -> None:
        script = [r if isinstance(r, AIMessage) else AIMessage(r) for r in responses]
        super().__init__(  # type: ignore[call-arg]
            responses=[_with_ids(m, turn) for turn, m in enumerate(script)], **kwargs
        )

    @property
    def _llm_type(self) -> str:
        return "handrail-scripted"

    @property
    def bound_tools(self) -> list[str]:
        """Names of the tools passed to ``bind_tools``."""
        return list(self._bound_tools)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Record the tool names; the script already says which tools are called."""
        self._bound_tools = [getattr(t, "name", getattr(t, "__name__", str(t))) for t in tools]
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn = sum(isinstance(m, AIMessage) for m in messages)
        if turn >= len(self.responses):
            raise IndexError(
                f"ScriptedChatModel has {len(self.responses)} response(s); turn {turn + 1} "
                "asked for one more"
            )
        self._served = max(self._served, turn + 1)
        return ChatResult(generations=[ChatGeneration(message=self.responses[turn])])

    def assert_complete(self) -> None:
        """Raise `AssertionError` unless the last answer of the script was given."""
        if self._served != len(self.responses):
            raise AssertionError(
                f"ScriptedChatModel answered {self._served} of {len(self.responses)} turns"
            )


def _with_ids(message: AIMessage, turn: int) -> AIMessage:
    if not any(call.get("id") is None for call in message.tool_calls):
        return message
    calls = [
        {**call, "id": call.get("id") or f"call_{turn}_{i}"}
        for i, call in enumerate(message.tool_calls)
    ]
    return message.model_copy(update={"tool_calls": calls})
