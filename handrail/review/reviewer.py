"""`Reviewer`: what the review core needs of the gate it reviews calls for.

`handrail.nodes._gate.Gate` is one; the review core names only this protocol, so it depends on
nothing above it (the nodes, the graphs, LangGraph).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from handrail.auth import Trust
from handrail.context import Actor
from handrail.events import Recorder
from handrail.policies import Decision, Policy
from handrail.storage.proofs import Proofs
from handrail.storage.requesters import Requesters

__all__ = ["Reviewer"]


class Reviewer(Protocol):
    """The policy, the tools' schemas, the trust and the proofs of a gate."""

    @property
    def policy(self) -> Policy:
        """The policy that decides the calls (and edits)."""
        ...

    @property
    def trust(self) -> Trust:
        """Who is who: the directory and token authenticator."""
        ...

    @property
    def proofs(self) -> Proofs:
        """Where approvals are kept as proofs."""
        ...

    @property
    def requesters(self) -> Requesters:
        """Each thread's pinned requester."""
        ...

    @property
    def events(self) -> Recorder:
        """Publishes the calls' events (and knows how many each call has had)."""
        ...

    @property
    def tools(self) -> Mapping[str, Any]:
        """The tools by name (edits are offered for these)."""
        ...

    @property
    def hash_key(self) -> bytes:
        """The key of the calls' args hashes."""
        ...

    def coerce(self, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """``args`` as tool ``name``'s schema validates and coerces them."""
        ...

    def verdict(
        self,
        call_id: str,
        name: str,
        args: Mapping[str, Any],
        actor: Actor,
        thread: str | None,
        provenance: Mapping[str, Any] | None = None,
    ) -> Decision:
        """The policy's decision on one call with these (coerced) arguments, its limits' uses
        reserved on ``thread``, ``provenance`` saying where they came from."""
        ...

    def given(
        self, name: str, raw: Mapping[str, Any], args: dict[str, Any]
    ) -> dict[str, Any] | None:
        """What a call decided as ``args`` (made of ``raw``) runs with, when not ``args``."""
        ...
