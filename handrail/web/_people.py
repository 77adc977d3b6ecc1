"""Who is signed in to the web inbox, and what they may decide.

A person signs in with a signed token (JWT): sent as ``Authorization: Bearer <token>`` on each
request, or pasted once into the sign-in form, which starts a server-side session
(`handrail.storage.web_sessions`): the cookie holds only the session's random id, the row holds
the token, verified again on every request (so a session ends when its token expires), and
signing out deletes the row. Roles come from the token or the directory
(`handrail.auth.Trust`), never from a form.

Forms carry a CSRF token, checked on every POST that a cookie authenticates (a request that
sends its own ``Authorization`` header cannot be forged by another site's form): a signed-in
session's own, kept in its row, or before sign-in one kept in the signed cookie.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import timedelta

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request

from handrail.auth import Token, Trust, same_person
from handrail.context import Actor
from handrail.errors import IdentityError
from handrail.guard import HandrailGraph
from handrail.review import PendingApproval
from handrail.storage.web_sessions import WebSessionTable

__all__ = ["SESSION_LIFETIME", "People", "Person", "check_csrf", "csrf_token"]

SESSION_LIFETIME = timedelta(hours=12)
"""How long a signed-in session lasts at most (its token may end it sooner)."""

_SESSION = "sid"
_CSRF = "csrf"


@dataclass(frozen=True, slots=True)
class Person:
    """A signed-in person: who the token proves, and the token itself (to decide with)."""

    actor: Actor
    """The person's canonical id and trusted roles."""
    token: str
    """The token that proved it (never shown)."""
    csrf: str | None = None
    """The CSRF token of the session the person signed in with; None when the request's
    ``Authorization`` header signed them in."""

    @property
    def by_header(self) -> bool:
        """Signed in by the request's ``Authorization`` header rather than a session."""
        return self.csrf is None

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
    """Signs people in with ``trust`` (its authenticator verifies the tokens), keeping their
    sessions in ``sessions``."""

    def __init__(self, trust: Trust, sessions: WebSessionTable) -> None:
        self.trust = trust
        self.sessions = sessions

    async def signed_in(self, request: Request) -> Person | None:
        """The person a request comes from, or None when it carries no credentials. A bearer
        header that does not verify is refused (401); a session that is gone (signed out, past
        its end) or whose token no longer verifies (expired) is ended, and the cookie cleared."""
        header: str | None = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("the Authorization header must be 'Bearer <token>'")
            try:
                return self._person(token.strip(), csrf=None)
            except IdentityError as exc:
                raise _unauthorized(f"the bearer token was refused: {exc}") from None
        session_id = request.session.get(_SESSION)
        if not isinstance(session_id, str):
            return None
        kept = await asyncio.to_thread(self.sessions.find, session_id)
        if kept is not None:
            try:
                return self._person(kept.token, csrf=kept.csrf)
            except IdentityError:
                await asyncio.to_thread(self.sessions.end, session_id)
        request.session.clear()
        return None

    async def sign_in(self, request: Request, token: str) -> Person:
        """Verify ``token`` and start a new session for it (a new id and CSRF token: nothing
        kept before carries over, and the browser's earlier session ends); raises
        `IdentityError` saying why a token is refused."""
        person = self._person(token.strip(), csrf=None)
        earlier = request.session.get(_SESSION)
        session_id, session = await asyncio.to_thread(
            self.sessions.start,
            person.token,
            lifetime=SESSION_LIFETIME,
            replacing=earlier if isinstance(earlier, str) else None,
        )
        request.session.clear()
        request.session[_SESSION] = session_id
        return Person(actor=person.actor, token=person.token, csrf=session.csrf)

    async def sign_out(self, request: Request) -> None:
        """End the request's session (its row is deleted: copies of the cookie die with it)."""
        session_id = request.session.get(_SESSION)
        if isinstance(session_id, str):
            await asyncio.to_thread(self.sessions.end, session_id)
        request.session.clear()

    def _person(self, token: str, *, csrf: str | None) -> Person:
        identity = self.trust.approver({"token": token})
        return Person(actor=identity.actor, token=token, csrf=csrf)


def csrf_token(request: Request, person: Person | None) -> str:
    """The CSRF token for the forms of a page: the signed-in session's, else one kept in the
    cookie (made on first use) for the sign-in form."""
    if person is not None and person.csrf is not None:
        return person.csrf
    token = request.session.get(_CSRF)
    if not isinstance(token, str):
        token = request.session[_CSRF] = secrets.token_urlsafe(32)
    return token


def check_csrf(request: Request, form: FormData, person: Person | None) -> None:
    """Refuse (403) a form posted with a cookie (a session, or none yet) but without the CSRF
    token of its page."""
    if person is not None and person.by_header:
        return
    sent = form.get(_CSRF)
    kept = person.csrf if person is not None else request.session.get(_CSRF)
    if not isinstance(sent, str) or not isinstance(kept, str):
        raise HTTPException(403, "the form has no CSRF token: reload the page and send it again")
    if not secrets.compare_digest(sent, kept):
        raise HTTPException(403, "the form's CSRF token is wrong: reload the page, send it again")


def _unauthorized(problem: str) -> HTTPException:
    return HTTPException(401, problem, headers={"WWW-Authenticate": "Bearer"})
