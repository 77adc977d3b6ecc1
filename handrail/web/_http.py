"""HTTP odds and ends of the web inbox: the security headers every response carries, the cap on
request bodies, links as paths, and how an audit row reads in a decision's summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handrail.redaction import REDACTED

__all__ = ["MAX_BODY", "BodyLimit", "SecurityHeaders", "path_for", "shown", "summary"]

MAX_BODY = 1024 * 1024
"""The most bytes a request body may hold (the largest form: an edit of a call's arguments)."""

_SHOWN = 300
"""The most characters of a value a decision's summary shows."""

_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
_HSTS = (b"strict-transport-security", b"max-age=31536000")


class SecurityHeaders:
    """Adds a strict content security policy and related headers to every response, and
    ``Cache-Control: no-store`` unless the response says otherwise (pages show requests'
    arguments: no browser history or shared cache should keep them). ``hsts``: tell browsers
    to come back over HTTPS only."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.headers = [*_SECURITY_HEADERS, *([_HSTS] if hsts else [])]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *self.headers]
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, sending)


class BodyLimit:
    """Refuses (413) a request whose body is over ``limit`` bytes: unread when its
    ``Content-Length`` says so, else as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, *, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = f"the request is too large: a body may hold {self.limit:,} bytes at most"
        declared = dict(scope["headers"]).get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.limit:
            response = PlainTextResponse(problem, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, problem)
            return message

        await self.app(scope, counting, send)


def path_for(request: Request, name: str, /, **params: str) -> str:
    """The path (never a URL: the Host header is the client's to forge) of the route ``name``,
    each parameter encoded as one path segment (a thread id may hold ``/``, ``?`` or ``#``)."""
    encoded = {key: quote(value, safe="") for key, value in params.items()}
    return str(request.url_for(name, **encoded).path)


def shown(value: Any, *, hidden: bool = False) -> str:
    """An argument's value as a summary shows it (cut when long; ``hidden``: redacted)."""
    if hidden:
        return REDACTED
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}… ({len(text):,} characters)"


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
