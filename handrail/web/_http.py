"""HTTP odds and ends of the web inbox: the security headers every response carries, and how
an audit row reads in a decision's summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handrail.redaction import REDACTED

__all__ = ["SecurityHeaders", "shown", "summary"]

_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds a strict content security policy and related headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, sending)


def shown(value: Any, *, hidden: bool = False) -> str:
    return REDACTED if hidden else repr(value)


def summary(row: Mapping[str, Any]) -> str:
    """One audit row in words: the event, the tool, what was decided, by whom, the outcome."""
    parts = [str(row["event"]), str(row["tool"])]
    if row.get("decision"):
        parts.append(str(row["decision"]))
    if row.get("approver"):
        parts.append(f"by {row['approver']}")
    response = row.get("response")
    if isinstance(response, Mapping) and response.get("status") is not None:
        parts.append(f"status {response['status']}")
    if row.get("reason") and row["event"] != "started":
        parts.append(f"({str(row['reason'])[:160]})")
    return " · ".join(parts)
