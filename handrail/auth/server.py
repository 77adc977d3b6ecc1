"""The LangGraph server's `Auth` handler: who sends each request (a bearer JWT), and which threads
each user reaches (their own, and, for those who may decide calls, everyone's).

``langgraph.json`` names it::

    "auth": {"path": "handrail.auth.server:auth", "disable_studio_auth": true}

(``disable_studio_auth``: otherwise ``langgraph dev`` lets any request that sends the header
``x-auth-scheme: langsmith`` through as a Studio user, without a token.)

It is configured from the environment when the server loads it (reads ``auth``):

- ``HANDRAIL_JWT_SECRET`` (HS256, at least 32 bytes) or ``HANDRAIL_JWKS_FILE`` (public keys for
  RS256/ES256/EdDSA), with ``HANDRAIL_JWT_ISSUER``, ``HANDRAIL_JWT_AUDIENCE``,
  ``HANDRAIL_JWT_ROLES_CLAIM`` and ``HANDRAIL_JWT_ALGORITHMS`` (`JwtAuthenticator.from_env`);
- ``HANDRAIL_DIRECTORY``: a people file (`Directory.from_file`); roles then come from it and a
  token's subject must be in it; without one, roles come from the token's roles claim;
- ``HANDRAIL_DECIDER_ROLES``: the roles, comma separated, that may decide other people's calls
  (`decider_roles` of the served policies);
- ``HANDRAIL_AUTH=off``: local development only; every request is let through as an
  unauthenticated user, and the graphs take the actor from the run's context and the approver from
  the resume payload, as claimed.

With neither a secret nor a JWKS file, and ``HANDRAIL_AUTH`` not ``off``, loading the handler
(``auth``, which the server reads as it starts) raises `IdentityError`: the server refuses to start
rather than serve without authentication.

Every request must carry ``Authorization: Bearer <JWT>``; none, or one that does not verify, is
answered 401 (the token is never repeated). The authenticated user reaches the graphs as
``config["configurable"]["langgraph_auth_user"]`` (`Trust.server`): the user who starts a thread is
its requester, whatever the run's context says, and the user who resumes it is the approver (a
payload naming someone else is refused). A run's context is made to name the same user as its
actor, so a client need not send one.

Threads: a thread belongs to the user who created it (metadata ``owner``). The owner reads,
searches, runs, updates and deletes it; a user holding a decider role reads and searches every
thread and resumes any thread (a run whose only content is ``command={"resume": ...}``), but
neither changes, deletes nor starts new input on a thread it does not own; everyone else gets 404
for a thread they do not own, and their searches list only their own. Assistants may be read and
searched; everything else (assistant changes, crons, the store) is refused with 403.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from langgraph_sdk import Auth

from handrail.auth.directory import Directory
from handrail.auth.identity import Identity
from handrail.auth.tokens import JwtAuthenticator
from handrail.auth.trust import SERVER_ROLES
from handrail.errors import IdentityError
from handrail.policies import Policy

__all__ = ["ANONYMOUS", "DECIDE", "OWNER", "ServerAuth", "auth", "decider_roles"]

log = logging.getLogger(__name__)

DECIDE = "handrail:decide"
"""The permission of a user who holds a decider role: may read, search and resume any thread."""

OWNER = "owner"
"""The thread metadata key naming the user who created the thread."""

ANONYMOUS: dict[str, Any] = {
    "identity": "",
    "display_name": "anonymous (HANDRAIL_AUTH=off)",
    "is_authenticated": False,
    "permissions": [],
}
"""The user of every request with ``HANDRAIL_AUTH=off``: no identity and no roles, like the
server's own unauthenticated user, so the graphs fall back to the run's context (``claimed``)."""

_KEY_VARIABLES = ("HANDRAIL_JWT_SECRET", "HANDRAIL_JWKS_FILE")
_QUEUEING = frozenset({None, "reject", "enqueue"})
"""Multitask strategies that never cancel or roll back the thread's other runs."""


def decider_roles(*policies: Policy) -> tuple[str, ...]:
    """The roles that may decide someone else's calls under ``policies``, sorted: the approvers
    of every ``ask`` rule, each tool's ``escalate_to`` and each policy's. What
    ``HANDRAIL_DECIDER_ROLES`` lists for a server that serves graphs on these policies."""
    roles: set[str] = set()
    for policy in policies:
        roles.update(policy.escalate_to)
        for rule in policy.rules:
            roles.update(rule.approvers)
        for settings in policy.tools.values():
            roles.update(settings.escalate_to)
    return tuple(sorted(roles))


def _role_list(text: str) -> frozenset[str]:
    return frozenset(role.strip() for role in text.split(",") if role.strip())


def _unauthorized(detail: str) -> Auth.exceptions.HTTPException:
    return Auth.exceptions.HTTPException(status_code=401, detail=detail)


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerAuth:
    """What the server's `Auth` handler believes: the token authenticator (None when
    ``HANDRAIL_AUTH=off``) and the roles that may decide other people's calls."""

    authenticator: JwtAuthenticator | None
    """Verifies each request's bearer token; None lets every request through as `ANONYMOUS`."""
    decider_roles: frozenset[str] = frozenset()
    """Roles whose holders may read, search and resume every thread."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerAuth:
        """The handler the environment configures (see the module's docstring).

        Raises `IdentityError` when it configures no authenticator and ``HANDRAIL_AUTH`` is not
        ``off``, when ``HANDRAIL_AUTH`` is ``off`` but a secret or a JWKS file is set too, and
        for an unreadable directory or key file or an unusable secret.
        """
        env = os.environ if environ is None else environ
        mode = (env.get("HANDRAIL_AUTH") or "on").strip().lower()
        if mode not in ("on", "off"):
            raise IdentityError(
                f"HANDRAIL_AUTH is {env.get('HANDRAIL_AUTH')!r}: leave it unset (or 'on') to "
                "authenticate every request, or set it to 'off' for local development"
            )
        deciders = _role_list(env.get("HANDRAIL_DECIDER_ROLES") or "")
        keys = [name for name in _KEY_VARIABLES if env.get(name)]
        if mode == "off":
            if keys:
                raise IdentityError(
                    f"HANDRAIL_AUTH=off, but {' and '.join(keys)} is set too: unset one "
                    "(off serves every request unauthenticated, for local development only)"
                )
            log.warning(
                "HANDRAIL_AUTH=off: the LangGraph server lets every request through "
                "unauthenticated, and runs take the actor and the approver as claimed. "
                "For local development only."
            )
            return cls(authenticator=None, decider_roles=deciders)
        if len(keys) > 1:
            raise IdentityError(
                "both HANDRAIL_JWT_SECRET and HANDRAIL_JWKS_FILE are set: set one (a shared "
                "secret for HS256 in development, a JWKS file of public keys in production)"
            )
        path = env.get("HANDRAIL_DIRECTORY") or None
        directory = Directory.from_file(path) if path is not None else None
        authenticator = JwtAuthenticator.from_env(env, directory=directory)
        if authenticator is None:
            raise IdentityError(
                "the LangGraph server's auth (handrail.auth.server) needs HANDRAIL_JWT_SECRET "
                "(HS256, at least 32 bytes) or HANDRAIL_JWKS_FILE (public keys); it will not "
                "serve without authentication. For local development only, set HANDRAIL_AUTH=off."
            )
        if not deciders:
            log.warning(
                "HANDRAIL_DECIDER_ROLES is not set: approvers reach only the threads they "
                "created, so nobody can approve an agent's call through the server"
            )
        return cls(authenticator=authenticator, decider_roles=deciders)

    def user(self, identity: Identity) -> dict[str, Any]:
        """The server's user for a verified ``identity``: its canonical id, its subject as
        written, the `DECIDE` permission if it holds a decider role, and its verified roles
        (``handrail_roles``, which `Trust.server` reads)."""
        roles = list(identity.actor.roles)
        return {
            "identity": identity.actor.id,
            "display_name": identity.subject or identity.actor.id,
            "is_authenticated": True,
            "permissions": [DECIDE] if self.decider_roles.intersection(roles) else [],
            SERVER_ROLES: roles,
        }

    async def authenticate(self, authorization: str | None) -> dict[str, Any]:
        """The user the request's ``Authorization: Bearer <JWT>`` header proves; a 401
        `Auth.exceptions.HTTPException` saying why for none or one that does not verify."""
        if self.authenticator is None:
            return dict(ANONYMOUS)
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("authentication required: send 'Authorization: Bearer <JWT>'")
        try:
            identity = self.authenticator.authenticate(token)
        except IdentityError as exc:  # its message never repeats the token
            raise _unauthorized(f"invalid token: {exc}") from None
        return self.user(identity)

    async def create_thread(
        self, ctx: Auth.types.AuthContext, value: Auth.types.ThreadsCreate
    ) -> dict[str, str]:
        """A new thread belongs to its creator; creating one with the ID of a thread someone
        else owns is refused (409)."""
        me = ctx.user.identity
        _stamp(value, me)
        return {OWNER: me}

    async def read_thread(
        self, ctx: Auth.types.AuthContext, value: Auth.types.ThreadsRead
    ) -> dict[str, str] | None:
        """Owners read their threads (and their runs and state); deciders read every thread."""
        return None if DECIDE in ctx.permissions else {OWNER: ctx.user.identity}

    async def search_threads(
        self, ctx: Auth.types.AuthContext, value: Auth.types.ThreadsSearch
    ) -> dict[str, str] | None:
        """Searches list the user's own threads; a decider's list every thread."""
        return None if DECIDE in ctx.permissions else {OWNER: ctx.user.identity}

    async def create_run(
        self, ctx: Auth.types.AuthContext, value: Auth.types.RunsCreate
    ) -> dict[str, str] | None:
        """Owners run their threads; deciders resume any thread (a run that only resumes and
        does not cancel the owner's runs), which Handrail then checks. The run's context names
        the user as its actor, whatever the client sent."""
        me = ctx.user.identity
        _stamp(value, me)  # the run's (and a thread it creates) owner
        _act_as(value, me, _verified_roles(ctx.user))
        if DECIDE in ctx.permissions and _plain_resume(value):
            return None
        return {OWNER: me}

    async def change_thread(
        self,
        ctx: Auth.types.AuthContext,
        value: Auth.types.ThreadsUpdate | Auth.types.ThreadsDelete,
    ) -> dict[str, str]:
        """Only the owner changes or deletes a thread (or cancels its runs), and never its
        owner."""
        me = ctx.user.identity
        metadata = value.get("metadata")
        if isinstance(metadata, Mapping) and OWNER in metadata and metadata[OWNER] != me:
            raise Auth.exceptions.HTTPException(
                status_code=403, detail="a thread's owner cannot be changed"
            )
        return {OWNER: me}

    async def read_assistants(self, ctx: Auth.types.AuthContext, value: Any) -> None:
        """Every user may read and search the assistants (the served graphs)."""
        return None

    async def refuse(self, ctx: Auth.types.AuthContext, value: Any) -> bool:
        """Everything no other handler allows (assistant changes, crons, the store): 403."""
        return False

    def install(self) -> Auth:
        """A `langgraph_sdk.Auth` with these handlers: authentication always; with an
        authenticator, the thread and assistant rules and a refusal of everything else."""
        handlers = Auth()
        handlers.authenticate(self.authenticate)
        if self.authenticator is None:
            return handlers
        handlers.on.threads.create(self.create_thread)
        handlers.on.threads.read(self.read_thread)
        handlers.on.threads.search(self.search_threads)
        handlers.on.threads.create_run(self.create_run)
        handlers.on.threads.update(self.change_thread)
        handlers.on.threads.delete(self.change_thread)
        handlers.on(resources="assistants", actions=["read", "search"])(self.read_assistants)
        handlers.on(self.refuse)
        return handlers


def _stamp(value: Mapping[str, Any], owner: str) -> None:
    """Set the ``owner`` of the metadata the server will store, in place (the server keeps its
    own reference to the dict)."""
    metadata = value.get("metadata")
    if isinstance(metadata, dict):
        metadata[OWNER] = owner
    elif isinstance(value, dict):
        value["metadata"] = {OWNER: owner}


def _verified_roles(user: Any) -> list[str]:
    """The roles `authenticate` verified for ``user`` (the server's proxy of its dict)."""
    try:
        roles = user[SERVER_ROLES]
    except (KeyError, TypeError):
        return []
    return [str(role) for role in roles] if isinstance(roles, list | tuple) else []


def _act_as(value: Mapping[str, Any], person: str, roles: list[str]) -> None:
    """Make the run's context name ``person`` as its actor, in place. `Trust.server` already
    takes the actor from the authenticated user; this keeps the context the graph sees (its
    ``RunContext``, which needs an actor) the same, and lets a client omit it."""
    kwargs = value.get("kwargs")
    if not isinstance(kwargs, dict):
        return
    context = kwargs.get("context")
    actor = {"id": person, "roles": roles}
    if isinstance(context, dict):
        context["actor"] = actor
    else:
        kwargs["context"] = {"actor": actor}


def _plain_resume(value: Auth.types.RunsCreate) -> bool:
    """A run on an existing thread whose only content is ``command={"resume": ...}``, queued
    behind (never cancelling) the thread's other runs."""
    kwargs = value.get("kwargs") or {}
    command = kwargs.get("command")
    return (
        value.get("thread_id") is not None
        and kwargs.get("input") is None
        and isinstance(command, Mapping)
        and "resume" in command
        and not _given(command, ("update", "goto"))
        and value.get("multitask_strategy") in _QUEUEING
    )


def _given(mapping: Mapping[str, Any], keys: Iterable[str]) -> bool:
    return any(mapping.get(key) not in (None, [], {}) for key in keys)


auth: Auth
"""The handler ``langgraph.json`` names (``handrail.auth.server:auth``), configured from the
environment when it is first read: the server reads it as it starts, so a configuration that
authenticates nobody stops the server there (`IdentityError`). Reading it lazily lets the rest of
this module (`decider_roles`, `ServerAuth`) be imported without the server's secrets."""


def __getattr__(name: str) -> Any:
    if name == "auth":
        handler = ServerAuth.from_env().install()
        globals()["auth"] = handler
        return handler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
