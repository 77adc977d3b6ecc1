"""Bounded input: how deep and how large a value from outside (a tool call's arguments, a resume
payload) may be before Handrail refuses it.

The depth is measured without recursion, so a 5,000-deep argument is refused in a few
microseconds instead of raising `RecursionError` wherever it is hashed, validated or stored; the
size is its compact JSON encoding in UTF-8 bytes, measured only once the depth is known to be sane.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessage

__all__ = ["REFUSED_ARGS", "bound_message", "oversize"]

_NESTED = (Mapping, list, tuple)

REFUSED_ARGS = "__handrail_refused__"
"""The one key left in a tool call's arguments that were too deep or too large to keep: its value
says why. `handrail.nodes._gate.Gate.check` answers such a call as a bad request."""


def oversize(value: object, *, max_depth: int, max_bytes: int) -> str | None:
    """Why ``value`` is too deep or too large, in a sentence; None when it is within bounds.

    Depth counts nested containers: ``{"a": 1}`` is 1 deep, ``{"a": [1]}`` 2 deep.
    """
    if isinstance(value, Mapping) and not any(isinstance(v, _NESTED) for v in value.values()):
        stack: list[tuple[object, int]] = []  # the common case: an object of plain values
        if max_depth < 1:
            return f"nested more than {max_depth} levels deep"
    else:
        stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: list[object] = list(node.values())
        elif isinstance(node, list | tuple):
            children = list(node)
        else:
            continue
        if depth + 1 > max_depth:
            return f"nested more than {max_depth} levels deep"
        stack.extend((child, depth + 1) for child in children)
    try:
        size = len(json.dumps(value, separators=(",", ":"), default=str).encode())
    except (TypeError, ValueError) as exc:
        return f"not JSON: {exc}"
    if size > max_bytes:
        return f"{size:,} bytes of JSON, over the limit of {max_bytes:,}"
    return None


def bound_message(message: AIMessage, *, max_depth: int, max_bytes: int) -> AIMessage:
    """``message`` with the arguments of each tool call that is `oversize` replaced by
    ``{REFUSED_ARGS: why}`` (also in ``tool_use`` content blocks), so the turn can be
    checkpointed (LangGraph's serializer recurses, and fails on a 5,000-deep value) and the call
    is answered as a bad request instead of being run."""
    refused: dict[str, dict[str, Any]] = {}
    for call in message.tool_calls:
        why = oversize(call["args"], max_depth=max_depth, max_bytes=max_bytes)
        if why is not None:
            refused[call["id"] or ""] = {REFUSED_ARGS: why}
    if not refused:
        return message
    calls = [{**c, "args": refused.get(c["id"] or "", c["args"])} for c in message.tool_calls]
    content = message.content
    if isinstance(content, list):
        content = [
            {**block, "input": refused[block.get("id", "")]}
            if isinstance(block, dict)
            and block.get("type") == "tool_use"
            and block.get("id", "") in refused
            else block
            for block in content
        ]
    return message.model_copy(update={"tool_calls": calls, "content": content})
