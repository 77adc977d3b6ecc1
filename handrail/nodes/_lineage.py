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
from langgraph._internal._constants import CONFIG_KEY_CHECKPOINT_MAP, CONFIG_KEY_CHECKPOINTER
from langgraph.checkpoint.base import BaseCheckpointSaver

from handrail.context import thread_id_of

__all__ = ["RunLineage"]


class RunLineage:
    """A node's view of its thread (`handrail.storage.ledger.Lineage`), read lazily: nothing is
    computed unless the ledger has a row it might be replaying.

    - ``checkpoints``: the checkpoint the running step started from at each level of the graph
      (LangGraph's ``checkpoint_map``: the root graph's, then each subgraph's, such as a tool
      gate's or an agent's run as a node of another graph);
    - ``knows``: the call is in the run's state (a model turn's tool call, or a record);
    - ``lost``: a step made under the given checkpoints is not in the thread's history.
    """

    __slots__ = ("_key", "_known", "_saver", "_state", "_thread", "checkpoints")

    def __init__(self, state: Mapping[str, Any], key: str, config: RunnableConfig) -> None:
        configurable = config.get("configurable") or {}
        levels: Mapping[str, Any] = configurable.get(CONFIG_KEY_CHECKPOINT_MAP) or {}
        self.checkpoints: dict[str, str] = {ns: str(c) for ns, c in levels.items() if c}
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

    def lost(self, checkpoints: Mapping[str, str]) -> bool:
        """Whether a step made under ``checkpoints`` is one the thread lost: at a graph level
        this run shares (the root graph, or the same subgraph task run again), a checkpoint
        other than this step's own that the checkpointer does not hold.

        A level the run does not share is another subgraph run (a sibling of a fan-out, an
        earlier task): what it saved says nothing of this run. The same checkpoint as this
        step's is a sibling task of this very step. A checkpointer that cannot be read here
        (none, or one without synchronous reads) holds nothing. A saver that keeps only a
        thread's latest checkpoint (``ShallowPostgresSaver``) answers with that one whatever is
        asked: only the very checkpoint asked for counts as held."""
        return any(
            self.checkpoints.get(namespace) not in (None, checkpoint_id)
            and not self._holds(namespace, checkpoint_id)
            for namespace, checkpoint_id in checkpoints.items()
        )

    def _holds(self, namespace: str, checkpoint_id: str) -> bool:
        if self._saver is None or self._thread is None:
            return False
        config: RunnableConfig = {
            "configurable": {
                "thread_id": self._thread,
                "checkpoint_ns": namespace,
                "checkpoint_id": checkpoint_id,
            }
        }
        try:
            found = self._saver.get_tuple(config)
        except NotImplementedError:
            return False
        return (
            found is not None and found.config["configurable"].get("checkpoint_id") == checkpoint_id
        )
