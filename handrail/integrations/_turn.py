"""The latest model turn, as `HandrailMiddleware` reads it from the agent's messages, and the
*pass* of the model's step.

A person is asked from ``after_model``, which ``create_agent`` runs only after the model's step.
To ask about calls that still wait after their turn's first round (an escalation, after the
tools; a rule that needs another approver) the middleware passes the model's step: the model is
not called, and the step answers with an empty placeholder `AIMessage` (`pass_message`) that the
middleware's ``after_model`` removes again. The placeholder has no tool calls, so middleware that
counts each step's calls in its own ``after_model`` (`ToolCallLimitMiddleware`, listed after
Handrail, runs before it) does not count the turn's calls a second time, and blocks none of them
after a person approved it. The turn is read past the placeholder: its calls stay the last
model answer's.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, RemoveMessage, ToolCall, ToolMessage

from handrail.nodes._gate import call_id
from handrail.state import ToolCallRecord

__all__ = [
    "PASS_PREFIX",
    "answered_elsewhere",
    "awaits_person",
    "open_calls",
    "pass_message",
    "passes",
]

PASS_PREFIX = "handrail-pass-"
"""The id prefix of the placeholder a passed model step answers with."""

_WAITING = frozenset({"escalated", "awaiting_approval"})


def pass_message() -> AIMessage:
    """The answer of a passed model step: empty, no tool calls, removed by ``after_model``.
    Marked ``response_metadata={"handrail": "pass"}`` (and its id) so that a UI reading the
    state or ``stream_mode="messages"`` while a call waits can leave it out."""
    return AIMessage(
        content="",
        id=f"{PASS_PREFIX}{uuid.uuid4().hex}",
        response_metadata={"handrail": "pass"},
    )


def passes(messages: Sequence[BaseMessage]) -> list[RemoveMessage]:
    """The removals of the placeholders after the latest model answer."""
    found: list[RemoveMessage] = []
    for message in reversed(messages):
        if not isinstance(message, AIMessage):
            continue
        if not _is_pass(message):
            break
        found.append(RemoveMessage(id=message.id or ""))
    return found


def open_calls(messages: Sequence[BaseMessage]) -> list[ToolCall]:
    """The latest model turn's tool calls that no ToolMessage answers yet."""
    turn, answers = _latest_turn(messages)
    return [c for c in turn if call_id(c) not in answers]


def answered_elsewhere(
    messages: Sequence[BaseMessage], known: Mapping[str, ToolCallRecord]
) -> list[tuple[ToolCallRecord, ToolMessage]]:
    """The latest turn's calls that another middleware answered before Handrail did (a call
    limit blocking a call): answered while their record waits for a person, or is allowed and
    never started. Handrail answers a call in the same update that closes its record."""
    turn, answers = _latest_turn(messages)
    return [
        (record, answers[cid])
        for cid in (call_id(c) for c in turn)
        if cid in answers
        and (record := known.get(cid)) is not None
        and (record.status in _WAITING or (record.status == "checked" and not record.events))
    ]


def _latest_turn(
    messages: Sequence[BaseMessage],
) -> tuple[list[ToolCall], dict[str, ToolMessage]]:
    """The tool calls of the latest model answer (past the placeholders), and the ToolMessages
    after it, by the call they answer."""
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, AIMessage) and not _is_pass(message):
            answers = {m.tool_call_id: m for m in messages[i + 1 :] if isinstance(m, ToolMessage)}
            return list(message.tool_calls), answers
    return [], {}


def awaits_person(state: Mapping[str, Any]) -> bool:
    """Whether the latest turn has calls waiting for a person: escalated ones (they failed in a
    way only a person can settle), or asked ones that a round left waiting (a rule needs more
    approvers)."""
    known: Mapping[str, ToolCallRecord] = state.get("calls") or {}
    return any(
        (record := known.get(call_id(c))) is not None and record.status in _WAITING
        for c in open_calls(state["messages"])
    )


def _is_pass(message: AIMessage) -> bool:
    return (message.id or "").startswith(PASS_PREFIX)
