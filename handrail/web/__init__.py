"""The approvers' web inbox: a Starlette app with server-rendered pages (Jinja2, plain forms, a
few lines of JavaScript for the countdowns and live updates; no build step).

- ``/inbox/``: everything waiting (approvals and escalations) that the signed-in person may
  decide, newest or oldest first (``?order=oldest``), a page at a time (``?page=2``), each
  deadline counting down; it reloads itself when a request opens or is decided elsewhere.
- ``/inbox/threads/<thread>``: the thread's waiting calls (arguments redacted as the policy says,
  the rule, the reviewer's text, the requester, approvals so far, what an earlier edit changed),
  its recent audit trail and a picture of its graph; and the decisions the calls take: approve,
  edit (a form from the tool's schema), reject or respond with a message; retry, skip or abort
  for an escalation. Each goes through the same checks as the API (see "Where decisions go"); a
  refusal is shown on the page and the request stays.
- ``/inbox/events``: server-sent events, ``change`` whenever what the person may decide changes.

Sign-in: ``Authorization: Bearer <JWT>`` on each request, or the token pasted once into the
sign-in form (``/inbox/login``), which starts a session kept in Handrail's database
(``handrail_web_sessions``): the HTTP-only cookie holds only the session's random id, the token is
verified again on every request, a new sign-in starts a new session, and signing out deletes it
(a copied cookie is then worth nothing, and an open live stream ends). Roles come from the token
or the directory, never from a form; a decision names the person's token as its approver when
the graph verifies tokens (build it with the same ``authenticator=``), else their id and roles
(checked by the graph's directory, if any). Every form carries a per-session CSRF token. A person
never sees a request they may not decide: it is left out of their list, its page answers 404 (a
decision posted for it, 403), and the live stream tells them nothing of it. Request bodies over
1 MiB are refused (413); every answer carries a strict content security policy and
``Cache-Control: no-store``.

Where decisions go (`create_app`'s ``server``): served alone (`serve`, ``handrail serve``), the
app resumes threads in its own process through `handrail.Inbox`, for threads whose checkpoints
are in the database. Next to the agents on the LangGraph server (``langgraph.json`` ``"http":
{"app": "handrail.web.server_app:app"}``, see `handrail.web.server_app`), the server keeps the
checkpoints: a decision is a run through the server's own API (`handrail.remote.ServerInbox`),
sent with the person's token as its bearer credentials, so the server's auth handler makes them
the approver exactly as for any API call. Listings read Handrail's tables in both cases.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import RedirectResponse
from starlette.routing import Mount, Route

from handrail.auth import Directory, JwtAuthenticator, Trust
from handrail.errors import IdentityError
from handrail.inbox import GraphFactory
from handrail.web._app import WebInbox, new_secret

__all__ = ["PREFIX", "create_app", "serve"]

PREFIX = "/inbox"
"""Where the inbox's pages live (clear of the LangGraph server's own routes)."""


def create_app(
    db: str | Path,
    *,
    authenticator: JwtAuthenticator | None = None,
    directory: Directory | None = None,
    graphs: Mapping[str, GraphFactory] | None = None,
    secret: str | None = None,
    page_size: int = 25,
    poll_interval: float = 1.0,
    https_only: bool = False,
    prefix: str = PREFIX,
    server: str | bool = False,
) -> Starlette:
    """The web inbox for the database ``db`` (a SQLite path or a ``postgresql://`` URL).

    ``authenticator`` verifies the tokens people sign in with (default: the one the environment
    configures, `JwtAuthenticator.from_env`; with none, `IdentityError`); ``directory`` gives
    their roles when the authenticator has none of its own. ``graphs`` maps a graph's name to
    the factory that builds it on ``db`` (as `handrail.Inbox.register`; the ``handrail.graphs``
    entry points are looked up too). ``secret`` signs the cookie (the session's id, the
    sign-in form's CSRF token, a decision's news; default: ``HANDRAIL_WEB_SECRET``, else a random
    key, and cookies signed before a restart are refused).
    ``poll_interval``: how often, in seconds, the live updates look for a change.
    ``https_only``: send the cookie over HTTPS only, and tell browsers to keep to HTTPS
    (``Strict-Transport-Security``); set it behind TLS.

    ``server``: where decisions go. ``False`` (``handrail serve``): `handrail.Inbox` resumes the
    thread in this process, with the graph ``graphs`` builds (its checkpoints are in ``db``).
    ``True``: the app is mounted on a LangGraph server (`handrail.web.server_app`) and decides
    through that server's API in process; a URL: through the LangGraph server at that URL. Either
    way the person's token is the bearer credentials (`handrail.remote.ServerInbox`); ``graphs``
    then only draws the graphs and makes the edit forms.
    """
    auth = authenticator or JwtAuthenticator.from_env(directory=directory)
    if auth is None:
        raise IdentityError(
            "the web inbox signs people in with tokens: set HANDRAIL_JWT_SECRET (HS256) or "
            "HANDRAIL_JWKS_FILE (public keys), or pass authenticator="
        )
    inbox = WebInbox(
        str(db),
        trust=Trust(directory=directory, authenticator=auth),
        graphs=graphs,
        page_size=page_size,
        poll_interval=poll_interval,
        server=server,
    )
    key = secret or os.environ.get("HANDRAIL_WEB_SECRET") or new_secret()
    return inbox.app(secret=key, prefix=prefix, https_only=https_only)


def serve(db: str, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the web inbox for ``db`` with uvicorn until interrupted (``handrail serve``).

    Sign-in is configured by the environment as for the LangGraph server
    (`handrail.auth.server`): ``HANDRAIL_JWT_SECRET`` or ``HANDRAIL_JWKS_FILE`` (with
    ``HANDRAIL_JWT_ISSUER``, ``HANDRAIL_JWT_AUDIENCE``, ``HANDRAIL_JWT_ROLES_CLAIM``,
    ``HANDRAIL_JWT_ALGORITHMS``) and ``HANDRAIL_DIRECTORY`` (a people file); the session key by
    ``HANDRAIL_WEB_SECRET``. Graphs are found through the ``handrail.graphs`` entry points.
    """
    import uvicorn

    path = os.environ.get("HANDRAIL_DIRECTORY") or None
    directory = Directory.from_file(path) if path else None
    inbox = create_app(db, directory=directory)
    home = Route("/", lambda _: RedirectResponse(f"{PREFIX}/"))
    uvicorn.run(Starlette(routes=[home, Mount("", inbox)]), host=host, port=port)
