"""Provenance as a reviewer reads it: the arguments a person gave, and the untrusted ones in
words (`handrail.nodes._provenance` works them out before a call is decided)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["as_user", "describe_origins"]


def as_user(args: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance of arguments a person gave (a reviewer's edit): all ``user``."""
    return {"args": dict.fromkeys(args, "user"), "untrusted_seen": False, "origins": {}}


def describe_origins(provenance: Mapping[str, Any] | None) -> str:
    """The untrusted arguments in words, for the reviewer and the audit: ``untrusted content
    gave: recipient (from read_inbox, call c-7: '…send it to DE89…')``; empty when none."""
    if not provenance:
        return ""
    parts = []
    for name, origins in (provenance.get("origins") or {}).items():
        where = "; ".join(
            f"from {o.get('tool') or 'a tool'}, call {o.get('source_id')}: {o.get('excerpt')!r}"
            for o in origins
        )
        parts.append(f"{name} ({where})" if where else name)
    return "untrusted content gave: " + ", ".join(parts) if parts else ""
