"""LangChain messages as sources: which ones count, under which id, with which text."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from handrail.provenance._index import SourceIndex, text_digest
from handrail.provenance._lookup import SourceKind

__all__ = [
    "index_messages",
    "message_source_id",
    "message_text",
    "message_texts",
    "note_calls",
]

_SKIPPED_BLOCKS = frozenset({"image", "image_url", "audio", "file", "video"})


def message_text(message: BaseMessage) -> str:
    """The text a message shows the model: its string content, or its content blocks' text
    (other blocks as JSON; images, audio and files left out)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif block.get("type") not in _SKIPPED_BLOCKS:
            parts.append(json.dumps(block, sort_keys=True, default=str))
    return "\n".join(parts)


def message_source_id(message: BaseMessage) -> str:
    """The id a message is indexed under: a tool message's tool call id, else the message's id
    (LangGraph's ``add_messages`` gives every message one), else ``<type>:<digest>``."""
    if isinstance(message, ToolMessage):
        return message.tool_call_id
    return message.id or f"{message.type}:{text_digest(message_text(message))[:16]}"


def index_messages(
    index: SourceIndex,
    messages: Iterable[BaseMessage],
    *,
    untrusted: Callable[[str | None, Mapping[str, Any] | None], bool],
    calls: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> SourceIndex:
    """``index`` with every user, system and tool message in ``messages`` that it lacks added,
    in order (one already added, same id and text, is skipped). The model's own messages are
    not sources.

    ``untrusted(tool_name, args)`` says whether the output of a call is untrusted
    (`handrail.Policy.untrusted_output`): the name is None when the message does not carry it,
    the arguments are ``calls[tool_call_id]`` if given, else the call's in the model message
    among ``messages`` that made it, else None; an id two calls share (None in ``calls``)
    makes the output untrusted, whatever the tool. A trusted output's echo of an argument that
    was ``untrusted`` or ``model`` when the call was made vouches for nothing
    (`SourceIndex.echoed`): an injected value a trusted tool repeats stays ``untrusted``.
    """
    made: dict[str, Mapping[str, Any] | None] = {}
    for message in messages:
        kind: SourceKind
        tool = None
        echoes: list[str] = []
        if isinstance(message, HumanMessage | SystemMessage):
            kind = "user"
        elif isinstance(message, ToolMessage):
            call, tool = message.tool_call_id, message.name
            given = calls if calls is not None and call in calls else made
            args = given.get(call)
            if call in given and args is None:  # two calls share the id: whose output is unknown
                kind = "untrusted"
            else:
                kind = "untrusted" if untrusted(tool, args) else "tool"
            if kind == "tool" and args:
                echoes = index.echoed(args)
        else:
            if isinstance(message, AIMessage):
                note_calls(made, message)
            continue
        text = message_text(message)
        index = index.add(
            kind, text, source_id=message_source_id(message), tool=tool, echoes=echoes
        )
    return index


def note_calls(made: dict[str, Mapping[str, Any] | None], message: AIMessage) -> None:
    """Add the tool calls of ``message`` to ``made`` (tool call id → arguments); an id already
    there maps to None: two calls share it, and which arguments an output ran with is unknown."""
    for call in message.tool_calls:
        if call["id"]:
            made[call["id"]] = None if call["id"] in made else call["args"]


def message_texts(messages: Iterable[BaseMessage]) -> dict[str, str]:
    """Source id → text of the messages an index may hold: the ``texts`` that
    `SourceIndex.explain` cuts excerpts from."""
    return {
        message_source_id(m): message_text(m)
        for m in messages
        if isinstance(m, HumanMessage | SystemMessage | ToolMessage)
    }
