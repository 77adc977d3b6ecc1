"""A gate's view of where a call's arguments came from (`handrail.provenance`), for the policy.

When the policy watches provenance (a rule's condition reads ``provenance``, or some tool's
output is untrusted), the gate keeps an index of the thread's texts: user and system messages,
and each tool's output, trusted or not as the policy says (`Policy.untrusted_output`). Before a
call is decided its arguments are labelled (``user``, ``tool``, ``untrusted``, ``model``), and
CEL reads them as ``provenance.args.NAME``, with ``provenance.untrusted_seen``. The record keeps
the labels, and for each untrusted argument the tool call whose output it came from with a short
excerpt, for the reviewer and the audit.

The index lives in the graph's state (``provenance`` in `handrail.state.AgentState`, merged by
`handrail.provenance.merge`), so it survives checkpoints and a resume in another process; a gate
also keeps each thread's latest index in memory, so a turn's messages are hashed once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage, ToolMessage

from handrail.policies import Policy
from handrail.provenance import (
    SourceIndex,
    index_messages,
    message_source_id,
    message_text,
    message_texts,
)
from handrail.provenance._index import text_digest
from handrail.provenance._messages import note_calls

__all__ = ["SOURCES_KEY", "GateSources", "Seen", "facts", "with_origins"]

SOURCES_KEY = "provenance"
"""The state key of the thread's index (`handrail.state.AgentState`)."""
_THREADS = 1024
"""Threads whose latest index a gate keeps in memory."""


@dataclass(frozen=True, slots=True)
class Seen:
    """What a thread has shown the model: the index, and the messages (excerpts are cut from
    their text)."""

    index: SourceIndex
    messages: Sequence[AnyMessage]


class GateSources:
    """The thread indexes of one gate's policy."""

    __slots__ = ("_kept", "_lock", "keep", "policy")

    def __init__(self, policy: Policy, *, keep: bool = False) -> None:
        self.policy = policy
        self.keep = keep
        """Whether the graph's state keeps the index (``provenance``): the nodes that decide
        return it (`build_agent`, `build_workflow`); elsewhere it lives in this gate only."""
        self._kept: OrderedDict[str, SourceIndex] = OrderedDict()
        self._lock = threading.Lock()

    def index(
        self,
        messages: Sequence[AnyMessage],
        thread: str | None,
        kept: object = None,
        records: Mapping[str, Any] | None = None,
    ) -> SourceIndex | None:
        """The index of ``messages`` (None when the policy does not watch provenance): grown
        from the one in state (``kept``), or the one this gate last made for ``thread``. Either
        is a cache: a source no message in ``messages`` shows (same id, same text) is dropped,
        so an index written into state vouches for nothing the transcript does not hold.

        A tool's output is trusted or not as the policy says for the call's arguments: those
        its record in ``records`` (the state's ``calls``) was decided with, else the model's."""
        if not self.policy.tracks_provenance:
            return None
        base = kept if isinstance(kept, SourceIndex) else None
        if base is None and isinstance(kept, Mapping) and kept:
            base = SourceIndex.model_validate(kept)  # state loaded without the class registered
        if base is None and thread is not None:
            with self._lock:
                base = self._kept.get(thread)
        shown = {
            (message_source_id(m), text_digest(message_text(m))): m
            for m in messages
            if isinstance(m, HumanMessage | SystemMessage | ToolMessage)
        }
        index = base or SourceIndex()
        held = {(source.source_id, source.digest) for source in index.sources}
        if not held <= shown.keys():  # a kept index is a cache: only what the messages show
            backed = tuple(s for s in index.sources if (s.source_id, s.digest) in shown)
            index, held = SourceIndex(sources=backed), {(s.source_id, s.digest) for s in backed}
        new = [m for key, m in shown.items() if key not in held]
        if new:
            calls = (
                _call_args(messages, records)
                if any(isinstance(m, ToolMessage) for m in new)
                else None
            )
            index = index_messages(index, new, untrusted=self.policy.untrusted_output, calls=calls)
        if thread is not None:
            with self._lock:
                self._kept[thread] = index
                self._kept.move_to_end(thread)
                if len(self._kept) > _THREADS:
                    self._kept.popitem(last=False)
        return index


def _call_args(
    messages: Sequence[AnyMessage], records: Mapping[str, Any] | None
) -> dict[str, Mapping[str, Any] | None]:
    """The arguments of each call in the thread, by tool call id: as its record was decided
    (a reviewer's edit included), else as the model made it. An id that two calls share (in
    one turn or in two) maps to None: which arguments its outputs ran with is not known."""
    found: dict[str, Mapping[str, Any] | None] = {}
    for m in messages:
        if isinstance(m, AIMessage):
            note_calls(found, m)
    for call_id, record in (records or {}).items():
        args = getattr(record, "args", None)
        if isinstance(args, Mapping) and found.get(call_id, args) is not None:
            found[call_id] = args
    return found


def facts(index: SourceIndex, args: Mapping[str, Any]) -> dict[str, Any]:
    """What the policy reads as ``provenance`` for a call with ``args``, and what its record
    keeps: ``{"args": {NAME: label}, "untrusted_seen": bool, "origins": {}}`` (`with_origins`
    fills the origins, for a call a person or the audit reads about)."""
    return {"args": index.labels(args), "untrusted_seen": index.untrusted_seen, "origins": {}}


def with_origins(known: dict[str, Any], seen: Seen, args: Mapping[str, Any]) -> dict[str, Any]:
    """``known`` (`facts`) with, for each untrusted argument, the tool calls whose output held
    it and an excerpt: cut from the texts only for a call that is asked about or refused."""
    untrusted = {n: args[n] for n, label in known["args"].items() if label == "untrusted"}
    if not untrusted:
        return known
    explained = seen.index.explain_args(untrusted, texts=message_texts(seen.messages))
    origins = {
        name: [
            {"source_id": o.source_id, "tool": o.tool, "excerpt": o.excerpt} for o in found.origins
        ]
        for name, found in explained.items()
    }
    return {**known, "origins": origins}
