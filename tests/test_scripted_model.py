"""`ScriptedChatModel`: positional answers that survive a process change."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from handrail.testing import ScriptedChatModel


def test_answers_by_the_number_of_model_turns_in_the_conversation() -> None:
    model = ScriptedChatModel(
        [AIMessage("", tool_calls=[{"name": "t", "args": {}, "id": None}]), "second"]
    )
    first = model.invoke([HumanMessage("hi")])
    assert first.tool_calls[0]["id"] == "call_0_0"
    with pytest.raises(AssertionError, match="1 of 2"):
        model.assert_complete()
    fresh = ScriptedChatModel(model.responses)  # another process, the same script
    history = [HumanMessage("hi"), first, ToolMessage("ok", tool_call_id="call_0_0")]
    assert fresh.invoke(history).text == "second"
    fresh.assert_complete()


def test_bind_tools_returns_the_model_and_a_finished_script_says_so() -> None:
    model = ScriptedChatModel(["only"])
    assert model.bind_tools([]) is model
    with pytest.raises(IndexError, match="1 response"):
        model.invoke([HumanMessage("a"), AIMessage("only"), HumanMessage("b")])
