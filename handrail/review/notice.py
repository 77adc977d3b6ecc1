"""What the model is told about a call a reviewer edited: `with_edit_notice`.

The model's AIMessage keeps the call as the model wrote it (LangChain's ``HumanInTheLoopMiddleware``
does the same since 1.5), so the result of an edited call says, before the tool's own answer,
that a reviewer replaced the call and with what, in LangChain's words: the model then neither
reads the result as that of its own arguments nor re-issues its call. The arguments shown hide
the tool's ``redact`` paths, as everywhere text leaves the process. The policy's ``edit_notice``
replaces LangChain's words, or (null) turns the notice off. An edit the policy denies never runs;
its answer says so (`handrail.review.transitions.apply_decision`).

An edit is read from the call itself: a call runs with its record's arguments, which are the
model's (as the tool's schema coerces them) unless a reviewer replaced them. So the notice needs
no state of its own, and a retried or replayed attempt of an edited call carries it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import ToolMessage
from pydantic import ValidationError

from handrail.policies.decision import EDIT_NOTICE
from handrail.redaction import redact
from handrail.review.reviewer import Reviewer
from handrail.state import ToolCallRecord

__all__ = ["EDIT_NOTICE", "edit_notice", "edited", "other_args", "with_edit_notice"]


def edited(gate: Reviewer, call: Mapping[str, Any], record: ToolCallRecord) -> bool:
    """Whether ``record`` (the call as decided) runs other arguments than the model's ``call``.

    Only a call someone decided can have been edited (an allowed call has no approver, and
    costs nothing here).
    """
    if record.approver is None or call.get("name") != record.name:
        return False
    return other_args(gate, call, record)


def other_args(gate: Reviewer, call: Mapping[str, Any], record: ToolCallRecord) -> bool:
    """Whether ``record`` runs other arguments than the model's ``call``, compared as the
    tool's schema makes them (only a reviewer's edit may give a call other arguments)."""
    given = call.get("args") or {}
    if given == record.args:
        return False
    try:
        return gate.coerce(record.name, given) != record.args
    except (ValidationError, KeyError):
        return True


def edit_notice(gate: Reviewer, record: ToolCallRecord, *, has_content: bool = True) -> str | None:
    """The notice for ``record``'s result: the policy's ``edit_notice`` (`EDIT_NOTICE` unless
    it says otherwise), then the call that ran (hidden values redacted), then, when the tool
    answered something, ``Tool response:``. None when the policy turns the notice off."""
    policy = gate.policy
    if policy.edit_notice is None:
        return None
    paths = policy.settings(record.name).redact
    args = redact(record.args, paths, "args") if paths else record.args
    notice = (
        f"{policy.edit_notice} Executed instead: {record.name} with arguments "
        f"{json.dumps(args, default=str)}."
    )
    return f"{notice}\n\nTool response:" if has_content else notice


def with_edit_notice(
    gate: Reviewer, call: Mapping[str, Any], record: ToolCallRecord, message: ToolMessage
) -> ToolMessage:
    """``message`` (the result of ``call``, run as ``record``) with the edit notice before its
    content if a reviewer edited the call; else ``message`` itself. A message that already
    carries the notice is left as it is."""
    if not edited(gate, call, record):  # first: an allowed call costs nothing here
        return message
    notice = edit_notice(gate, record, has_content=bool(message.content))
    if notice is None:
        return message
    content: str | list[str | dict[str, Any]]
    if isinstance(message.content, str):
        if notice in message.content:
            return message
        content = f"{notice}\n{message.content}" if message.content else notice
    else:
        if any(notice in str(block) for block in message.content):
            return message
        plain = bool(message.content) and all(isinstance(b, str) for b in message.content)
        first: str | dict[str, Any] = notice if plain else {"type": "text", "text": notice}
        content = [first, *message.content]
    return message.model_copy(update={"content": content})
