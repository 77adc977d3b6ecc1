"""Who is acting: the `Actor`, and the `RunContext` a graph run carries as runtime context.

The actor comes from ``context=`` on ``invoke``/``stream``, never from graph state, so nothing the
model writes can change whose permissions a tool call is checked against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Actor", "RunContext", "thread_id_of"]


class Actor(BaseModel):
    """An identity that acts (an agent) or decides (an approver), with its roles."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    """A stable identifier: an agent name, a user id, an e-mail."""
    roles: tuple[str, ...] = ()
    """The roles this identity holds; policies grant by role."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form stored in interrupts and records: ``{"id": ..., "roles": [...]}``."""
        return {"id": self.id, "roles": list(self.roles)}


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """The runtime context of a Handrail graph (its ``context_schema``)."""

    actor: Actor
    """The identity the agent acts for; every tool call is checked against its roles."""

    def __post_init__(self) -> None:
        if isinstance(self.actor, dict):  # LangGraph server hands JSON context over as dicts
            object.__setattr__(self, "actor", Actor.model_validate(self.actor))


def thread_id_of(config: Mapping[str, Any]) -> str | None:
    """The thread id of a run's config, if it has one."""
    thread = config.get("configurable", {}).get("thread_id")
    return None if thread is None else str(thread)
