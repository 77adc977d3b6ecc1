"""The web inbox as the LangGraph server's custom routes, so one deployment serves the agents
and their approvers. In ``langgraph.json``::

    "http": {"app": "handrail.web.server_app:app"}

The pages are then at ``/inbox/`` on the server. Configured by the environment when the server
imports this module:

- ``HANDRAIL_DB``: the database the served graphs keep Handrail's tables in (a SQLite path or a
  ``postgresql://`` URL), required: the listings read its approvals table;
- sign-in as for the server's auth handler (`handrail.auth.server`): ``HANDRAIL_JWT_SECRET`` or
  ``HANDRAIL_JWKS_FILE`` (and ``HANDRAIL_JWT_ISSUER``, ``HANDRAIL_JWT_AUDIENCE``,
  ``HANDRAIL_JWT_ROLES_CLAIM``, ``HANDRAIL_JWT_ALGORITHMS``), ``HANDRAIL_DIRECTORY``;
- ``HANDRAIL_WEB_SECRET``: the key signing the session cookies (set it when the server runs
  several workers, or cookies signed by one are refused by the others; the sessions themselves
  are kept in ``HANDRAIL_DB``).

The server keeps the threads' checkpoints, so a decision is a run through the server's own API,
in process (`handrail.remote.ServerInbox` without a URL), with the signed-in person's token as
its bearer credentials: the server's auth handler authenticates the approver exactly as for any
API call, and a refusal (401, 403, 409, 422, or the graph's own) is shown on the page. The graphs
of the ``handrail.graphs`` entry points draw the pictures and make the edit forms. The pages
authenticate people themselves (the server's auth handler does not cover custom routes unless
``enable_custom_route_auth`` is set).

Importing this module never stops the server: when the configuration is missing or wrong, every
page under ``/inbox/`` answers 503 saying which variable to set, and the agents are served as
usual.
"""

from __future__ import annotations

import html
import logging
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route

from handrail.auth import Directory
from handrail.errors import HandrailError
from handrail.web import PREFIX, create_app
from handrail.web._http import SecurityHeaders

__all__ = ["app", "from_env", "unavailable"]

log = logging.getLogger("handrail")


def from_env() -> Starlette:
    """The web inbox the environment configures (see the module's docstring), or, when it
    cannot be built, `unavailable` saying why."""
    try:
        db = os.environ.get("HANDRAIL_DB")
        if not db:
            raise HandrailError(
                "set HANDRAIL_DB to the database the served graphs keep Handrail's tables in "
                "(a SQLite path or a postgresql:// URL)"
            )
        if os.environ.get("HANDRAIL_AUTH", "").strip().lower() == "off":
            raise HandrailError(
                "HANDRAIL_AUTH=off: the server authenticates nobody, so nobody can sign in to "
                "decide; unset HANDRAIL_AUTH and set HANDRAIL_JWT_SECRET or HANDRAIL_JWKS_FILE"
            )
        path = os.environ.get("HANDRAIL_DIRECTORY") or None
        directory = Directory.from_file(path) if path else None
        return create_app(db, directory=directory, server=True)
    except Exception as exc:  # never stop the server over its approvers' pages
        problem = str(exc) if isinstance(exc, HandrailError) else f"{type(exc).__name__}: {exc}"
        log.error("the web inbox at %s/ is unavailable: %s", PREFIX, problem)
        return unavailable(problem)


def unavailable(problem: str, *, prefix: str = PREFIX) -> Starlette:
    """An app answering every page under ``prefix`` with 503 and ``problem``."""

    async def page(_: Request) -> Response:
        body = (
            "<!doctype html><html lang=en><meta charset=utf-8><title>Inbox unavailable</title>"
            "<h1>The Handrail inbox is not configured</h1>"
            f"<p>{html.escape(problem)}</p>"
            "<p>The agents are served as usual; restart the server once this is set.</p>"
        )
        return HTMLResponse(body, status_code=503)

    pages = Starlette(routes=[Route("/{path:path}", page, methods=["GET", "HEAD", "POST"])])
    pages.add_middleware(SecurityHeaders)
    return Starlette(routes=[Mount(prefix, app=pages)])


app = from_env()
"""The web inbox, built when the server imports this module."""
