"""What a run knows of its thread, for the execution ledger to tell a replay from a new call.

A provider's model gives a tool call a new id on every generation. After a crash that lost the
model's step (its checkpoint was still being saved), LangGraph asks the model again and the same
call comes back under a new id; `RunLineage` lets `handrail.storage.ledger.Ledger.begin` see
that the call it has a row for, under the old id, was made in a step this run no longer has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langgraph._internal._constants import (
    CONFIG_KEY_CHECKPOINT_ID,
    CONFIG_KEY_CHECKPOINT_MAP,
    CONFIG_KEY_CHECKPOINTER,
)
from langgraph.checkpoint.base import BaseCheckpointSaver

from handrail.context import thread_id_of

__all__ = ["RunLineage"]


class RunLineage:
    """A node's view of its thread (`handrail.storage.ledger.Lineage`), read lazily: nothing is
    computed unless the ledger has a row it might be replaying.

    - ``checkpoint_id``: the root graph's checkpoint the running step started from (LangGraph's
      ``checkpoint_map``; a subgraph such as the tool gate runs inside its parent's step);
    - ``knows``: the call is in the run's state (a model turn's tool call, or a record);
    - ``saved``: the checkpoint is in the thread's history, as the run's checkpointer has it.
    """

    __slots__ = ("_key", "_known", "_saver", "_state", "_thread", "checkpoint_id")

    def __init__(self, state: Mapping[str, Any], key: str, config: RunnableConfig) -> None:
        configurable = config.get("configurable") or {}
        roots: Mapping[str, Any] = configurable.get(CONFIG_KEY_CHECKPOINT_MAP) or {}
        self.checkpoint_id: str | None = roots.get("") or configurable.get(CONFIG_KEY_CHECKPOINT_ID)
        saver = configurable.get(CONFIG_KEY_CHECKPOINTER)
        self._saver = saver if isinstance(saver, BaseCheckpointSaver) else None
        self._thread = thread_id_of(config)
        self._state = state
        self._key = key
        self._known: frozenset[str] | None = None

    def knows(self, call_id: str) -> bool:
        """Whether the run's state holds the call: in a model turn, or as a record."""
        if self._known is None:
            records: Mapping[str, Any] = self._state.get(self._key) or {}
            asked = (
                call["id"] or ""
                for message in self._state.get("messages") or ()
                if isinstance(message, AIMessage)
                for call in message.tool_calls
            )
            self._known = frozenset((*records, *asked))
        return call_id in self._known

    def saved(self, checkpoint_id: str) -> bool:
        """Whether the thread's checkpointer holds the checkpoint. A checkpointer that cannot
        be read here (none, or one without synchronous reads) counts as not holding it: a call
        is then told from its replay by the run's state alone."""
        if self._saver is None or self._thread is None:
            return False
        config: RunnableConfig = {
            "configurable": {
                "thread_id": self._thread,
                "checkpoint_ns": "",
                "checkpoint_id": checkpoint_id,
            }
        }
        try:
            return self._saver.get_tuple(config) is not None
        except NotImplementedError:
            return False
