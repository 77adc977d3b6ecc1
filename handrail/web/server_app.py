"""The web inbox as the LangGraph server's custom routes, so one deployment serves the agents
and their approvers. In ``langgraph.json``::

    "http": {"app": "handrail.web.server_app:app"}

The pages are then at ``/inbox/`` on the server. Configured by the environment when the server
imports this module:

- ``HANDRAIL_DB``: the database holding Handrail's tables (a SQLite path or a ``postgresql://``
  URL), required;
- sign-in as for the server's auth handler (`handrail.auth.server`): ``HANDRAIL_JWT_SECRET`` or
  ``HANDRAIL_JWKS_FILE`` (and ``HANDRAIL_JWT_ISSUER``, ``HANDRAIL_JWT_AUDIENCE``,
  ``HANDRAIL_JWT_ROLES_CLAIM``, ``HANDRAIL_JWT_ALGORITHMS``), ``HANDRAIL_DIRECTORY``;
- ``HANDRAIL_WEB_SECRET``: the key signing session cookies (set it when the server runs several
  workers, or sessions signed by one are refused by the others).

Decisions resume threads in the server's process with the graph factories of the
``handrail.graphs`` entry points. The pages authenticate people themselves (the server's auth
handler does not cover custom routes unless ``enable_custom_route_auth`` is set).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette

from handrail.auth import Directory
from handrail.errors import HandrailError
from handrail.web import create_app

__all__ = ["app", "from_env"]


def from_env() -> Starlette:
    """The web inbox the environment configures (see the module's docstring)."""
    db = os.environ.get("HANDRAIL_DB")
    if not db:
        raise HandrailError(
            "handrail.web.server_app needs HANDRAIL_DB: the database holding Handrail's tables"
        )
    path = os.environ.get("HANDRAIL_DIRECTORY") or None
    return create_app(db, directory=Directory.from_file(path) if path else None)


app = from_env()
"""The web inbox, built when the server imports this module."""
