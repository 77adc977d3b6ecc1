"""`open_checkpointer`: the LangGraph checkpointer for a path, a URL or a saver, with Handrail's
types registered with its serializer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from handrail.errors import HandrailError
from handrail.provenance import PROVENANCE_TYPES
from handrail.state import CallError, ToolCallRecord
from handrail.storage import is_postgres_url, open_store
from handrail.storage._sqlite import RetryingSqliteSaver, connect

__all__ = ["STATE_TYPES", "Checkpointer", "open_checkpointer"]

Checkpointer = BaseCheckpointSaver[Any] | str | Path | None
"""What a builder's ``checkpointer=`` takes: a saver, a SQLite file path or a PostgreSQL URL."""

STATE_TYPES = [(t.__module__, t.__name__) for t in (ToolCallRecord, CallError)] + PROVENANCE_TYPES
"""Handrail's types in checkpoints, registered with the serializer of the savers it opens."""


def open_checkpointer(target: Checkpointer) -> BaseCheckpointSaver[Any] | None:
    """A checkpointer for ``target``: a saver as is, a ``postgresql://`` URL as a
    `PostgresSaver` on this process's pool to that database, a path as a `SqliteSaver` on that
    file.

    The SQLite file is opened in WAL mode with a busy timeout, so other processes (an approver's
    CLI, a second worker) can read and write it while this one runs. A PostgreSQL database must
    have been migrated (``handrail db migrate``). The serializer loads only known types:
    LangChain's messages, LangGraph's own, and Handrail's records.
    """
    if target is None or isinstance(target, BaseCheckpointSaver):
        return target
    serde = JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)
    if is_postgres_url(target):
        from langgraph.checkpoint.postgres import PostgresSaver

        from handrail.storage._postgres import checkpoints_ready, pool

        url = str(target)
        open_store(url)  # SchemaOutdated first: `handrail db migrate` makes both sets of tables
        checkpoints_ready(url)
        return PostgresSaver(pool(url), serde=serde)
    if isinstance(target, str | Path):
        return RetryingSqliteSaver(connect(target, autocommit=False), serde=serde)
    raise HandrailError(
        f"checkpointer must be None, a checkpoint saver, a SQLite file path or a "
        f"postgresql:// URL, not {type(target).__name__}"
    )
