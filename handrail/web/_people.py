"""Who is signed in to the web inbox, and what they may decide.

A person signs in with a signed token (JWT): sent as ``Authorization: Bearer <token>`` on each
request, or pasted once into the sign-in form, after which it is kept in the signed session
cookie and verified again on every request (so a session ends when its token expires). Roles come
from the token or the directory (`handrail.auth.Trust`), never from a form.

Forms carry a per-session CSRF token, checked on every POST that a cookie authenticates (a request
that sends its own ``Authorization`` header cannot be forged by another site's form).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request

from handrail.auth import Token, Trust, same_person
from handrail.context import Actor
from handrail.errors import IdentityError
from handrail.guard import HandrailGraph
from handrail.review import PendingApproval

__all__ = ["People", "Person", "check_csrf", "csrf_token"]

_TOKEN = "token"
_CSRF = "csrf"


@dataclass(frozen=True, slots=True)
class Person:
    """A signed-in person: who the token proves, and the token itself (to decide with)."""

    actor: Actor
    """The person's canonical id and trusted roles."""
    token: str
    """The token that proved it (never shown)."""
    by_header: bool
    """Signed in by the request's ``Authorization`` header rather than the session cookie."""

    def may_decide(self, call: PendingApproval) -> bool:
        """Whether this person may decide ``call``: they hold one of its approver roles, did
        not request it and have not approved it already."""
        if not set(self.actor.roles) & set(call.approvers):
            return False
        if self.actor.id in call.approvals:
            return False
        try:
            return not same_person(call.actor.id, self.actor.id)
        except IdentityError:  # an id Handrail refuses is nobody's
            return True

    def approver(self, graph: HandrailGraph | None) -> Actor | Token:
        """What a decision names as its approver: the token, when the graph verifies tokens;
        else the id and the roles established here (a graph with a directory checks them)."""
        if graph is None or graph.handrail_gate.trust.authenticator is not None:
            return Token(self.token)
        return self.actor

    def __repr__(self) -> str:
        return f"Person(actor={self.actor!r}, by_header={self.by_header})"


class People:
    """Signs people in with ``trust`` (its authenticator verifies the tokens)."""

    def __init__(self, trust: Trust) -> None:
        self.trust = trust

    def signed_in(self, request: Request) -> Person | None:
        """The person a request comes from, or None when it carries no credentials. A bearer
        header that does not verify is refused (401); a session whose token no longer verifies
        (expired) is ended."""
        header: str | None = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("the Authorization header must be 'Bearer <token>'")
            try:
                return self._person(token.strip(), by_header=True)
            except IdentityError as exc:
                raise _unauthorized(f"the bearer token was refused: {exc}") from None
        kept = request.session.get(_TOKEN)
        if not isinstance(kept, str):
            return None
        try:
            return self._person(kept, by_header=False)
        except IdentityError:
            request.session.clear()
            return None

    def sign_in(self, request: Request, token: str) -> Person:
        """Verify ``token`` and keep it in the session (a fresh CSRF token with it); raises
        `IdentityError` saying why a token is refused."""
        person = self._person(token.strip(), by_header=False)
        request.session.clear()
        request.session[_TOKEN] = person.token
        request.session[_CSRF] = secrets.token_urlsafe(32)
        return person

    def _person(self, token: str, *, by_header: bool) -> Person:
        identity = self.trust.approver({"token": token})
        return Person(actor=identity.actor, token=token, by_header=by_header)


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use), for the forms of a page."""
    token = request.session.get(_CSRF)
    if not isinstance(token, str):
        token = request.session[_CSRF] = secrets.token_urlsafe(32)
    return token


def check_csrf(request: Request, form: FormData, person: Person | None) -> None:
    """Refuse (403) a form posted with a cookie session but without the session's CSRF token."""
    if person is not None and person.by_header:
        return
    sent = form.get(_CSRF)
    kept = request.session.get(_CSRF)
    if not isinstance(sent, str) or not isinstance(kept, str):
        raise HTTPException(403, "the form has no CSRF token: reload the page and send it again")
    if not secrets.compare_digest(sent, kept):
        raise HTTPException(403, "the form's CSRF token is wrong: reload the page, send it again")


def _unauthorized(problem: str) -> HTTPException:
    return HTTPException(401, problem, headers={"WWW-Authenticate": "Bearer"})
