"""`Trust`: what a graph believes about who is who, and how it turns a claim into an `Identity`.

In order of preference an identity is proved by a verified token, vouched for by the directory, or
merely claimed (and then recorded as ``claimed``). Roles come from the directory or the token,
never from the request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handrail.auth.directory import Directory
from handrail.auth.identity import Identity, canonical_id
from handrail.auth.tokens import JwtAuthenticator
from handrail.context import Actor
from handrail.errors import IdentityError

__all__ = ["SERVER_ROLES", "SERVER_USER", "Trust"]

SERVER_USER = "langgraph_auth_user"
"""Where the LangGraph server puts the authenticated user in a run's ``configurable`` (a key
clients cannot set: the server strips it from what they send)."""

SERVER_ROLES = "handrail_roles"
"""The user field in which Handrail's server auth handler (`handrail.auth.server`) passes the
roles it verified."""

_APPROVER_KEYS = frozenset({"id", "roles", "token"})


def _roles_claim(claim: Mapping[str, Any], identity: str | None) -> tuple[str, ...] | None:
    roles = claim.get("roles")
    if roles is None:
        return None
    if not isinstance(roles, list | tuple) or not all(isinstance(r, str) and r for r in roles):
        raise IdentityError(
            "the approver's roles must be a list of non-empty strings", identity=identity
        )
    return tuple(dict.fromkeys(roles))


@dataclass(frozen=True, kw_only=True, slots=True)
class Trust:
    """What a graph believes about who is who: the directory and/or the token authenticator
    configured (both optional). With neither, ids and roles are taken as claimed."""

    directory: Directory | None = None
    """The people and their roles; ids not in it are refused."""
    authenticator: JwtAuthenticator | None = None
    """Verifies approvers' tokens; when set, approvers must present one. Roles of a token's
    subject come from the authenticator's own directory, else from ``directory`` (the subject
    must be in it), else from the token's roles claim."""

    def approver(self, claim: Mapping[str, Any]) -> Identity:
        """The identity of the approver a resume payload names.

        ``claim`` is ``{"id": ..., "roles": [...]}`` or ``{"token": "..."}``; a token may come
        with an ``id`` (which must name the same person) and ``roles`` (which the token's identity
        must all hold). With an authenticator a token is required; otherwise the directory, if
        any, vouches for the id and its roles; otherwise the claim is taken as ``claimed``.
        Raises `IdentityError` for anything else: no id, unexpected keys, a mismatch.
        """
        if not isinstance(claim, Mapping):
            raise IdentityError(
                f"the approver must be an object with 'id' or 'token', not {type(claim).__name__}"
            )
        extra = sorted(str(key) for key in claim if key not in _APPROVER_KEYS)
        if extra:
            raise IdentityError(
                f"unexpected key(s) in the approver: {', '.join(map(repr, extra))} "
                "(expected 'id', 'roles', 'token')"
            )
        raw_id = claim.get("id")
        if raw_id is not None and not isinstance(raw_id, str):
            raise IdentityError(f"the approver's id must be a string, not {type(raw_id).__name__}")
        token = claim.get("token")
        if token is not None:
            return self._by_token(token, raw_id, _roles_claim(claim, raw_id))
        if self.authenticator is not None:
            raise IdentityError(
                "this graph identifies approvers by token: pass {'token': ...}", identity=raw_id
            )
        if not raw_id or not raw_id.strip():
            raise IdentityError("the approver has no id")
        roles = _roles_claim(claim, raw_id)
        if self.directory is not None:
            return self.directory.identify(raw_id, roles)
        return Identity(actor=Actor(id=canonical_id(raw_id), roles=roles or ()), via="claimed")

    def _by_token(
        self, token: object, raw_id: str | None, roles: tuple[str, ...] | None
    ) -> Identity:
        if not isinstance(token, str) or not token.strip():
            raise IdentityError("the approver's token must be a non-empty string", identity=raw_id)
        if self.authenticator is None:
            raise IdentityError("no token authenticator is configured", identity=raw_id)
        identity = self.authenticator.authenticate(token)
        if self.directory is not None and self.authenticator.directory is None:
            person = self.directory.identify(identity.actor.id).actor  # roles: the directory's
            identity = Identity(
                actor=person, via="token", issuer=identity.issuer, subject=identity.subject
            )
        if raw_id is not None and canonical_id(raw_id) != identity.actor.id:
            raise IdentityError(
                f"the approver id is not the token's subject {identity.actor.id!r}",
                identity=raw_id,
            )
        missing = [role for role in roles or () if role not in identity.actor.roles]
        if missing:
            raise IdentityError(
                f"the token's identity {identity.actor.id!r} does not hold the role(s) "
                f"{', '.join(map(repr, missing))}",
                identity=raw_id,
            )
        return identity

    def actor(self, actor: Actor) -> Identity:
        """The identity a run's context names as acting.

        With a directory, the directory vouches for it: a context naming no roles gets the
        directory's, and one claiming a role the directory does not give is refused. Without one,
        the id is canonicalised and the roles are taken as claimed.
        """
        if self.directory is not None:
            return self.directory.identify(actor.id, actor.roles or None)
        return Identity(actor=Actor(id=canonical_id(actor.id), roles=actor.roles), via="claimed")

    def server(self, config: Mapping[str, Any]) -> Identity | None:
        """The user the LangGraph server authenticated for this run (``langgraph_auth_user``),
        or None when the run did not come through an authenticating server. The server strips
        that key from what clients send and puts its own user object there; a plain mapping in
        its place (JSON a caller forwarded) is not believed.

        The id is the user's ``identity``, normalised; the roles are those the auth handler
        verified (``handrail_roles``), else the directory's, else none.
        """
        user = (config.get("configurable") or {}).get(SERVER_USER)
        if user is None or isinstance(user, Mapping) or _field(user, "is_authenticated") is False:
            # No server; one that let the request through unauthenticated; or plain data, which
            # the server never passes (its users are objects) but a caller's config could.
            return None
        name = _field(user, "identity")
        if not isinstance(name, str) or not name:
            return None
        person = canonical_id(name)
        roles = _field(user, SERVER_ROLES)
        if isinstance(roles, Sequence) and not isinstance(roles, str):
            held = tuple(str(r) for r in roles)
        elif self.directory is not None:
            held = self.directory.identify(person).actor.roles
        else:
            held = ()
        return Identity(actor=Actor(id=person, roles=held), via="server")


def _field(user: Any, name: str) -> Any:
    """A field of the server's user object: an attribute, or an item of its dict-like proxy."""
    value = getattr(user, name, None)
    if value is None:
        try:
            value = user[name]
        except (KeyError, TypeError, IndexError):
            return None
    return value
