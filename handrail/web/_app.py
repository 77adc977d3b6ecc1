"""The web inbox's Starlette app: its routes, and what each does (see `handrail.web`)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from handrail.auth import Trust
from handrail.drawing import graph_svg
from handrail.errors import HandrailError, IdentityError
from handrail.inbox import GraphFactory, Inbox
from handrail.redaction import REDACTED
from handrail.remote import ServerInbox
from handrail.review import (
    Abort,
    Action,
    Approve,
    Edit,
    HumanDecision,
    PendingApproval,
    Reject,
    Respond,
    Retry,
    Skip,
)
from handrail.storage.approvals import ApprovalTable
from handrail.web._http import SecurityHeaders, shown, summary
from handrail.web._people import People, Person, check_csrf, csrf_token
from handrail.web._views import (
    Change,
    GraphShelf,
    arg_changes,
    change_marker,
    decidable_thread,
    edit_fields,
    first_args,
    list_page,
    parse_edit,
    recent_audit,
)

__all__ = ["WebInbox"]

_HERE = Path(__file__).parent
_FLASH = "flash"


class WebInbox:
    """The pages and their data: one approvals table read for listings, one `Inbox` (or the
    LangGraph server's API) for decisions, the graphs by name, and who is signed in."""

    def __init__(
        self,
        db: str,
        *,
        trust: Trust,
        graphs: Mapping[str, GraphFactory] | None,
        page_size: int,
        poll_interval: float,
        server: str | bool = False,
    ) -> None:
        self.table = ApprovalTable(db)
        self.server = server
        """Where decisions go: False, `Inbox` in this process; True, the LangGraph server this
        app is mounted on; a URL, that server (`handrail.remote.ServerInbox`)."""
        self.inbox = None if server else Inbox(db)
        self.shelf = GraphShelf(self.table.store.url, graphs)
        self.people = People(trust)
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.templates = Jinja2Templates(directory=_HERE / "templates")
        self._pictures: dict[str, str] = {}

    def close(self) -> None:
        """Close the database connections."""
        if self.inbox is not None:
            self.inbox.close()
        self.table.close()

    def app(self, *, secret: str, prefix: str, https_only: bool) -> Starlette:
        """The Starlette app serving the inbox under ``prefix``."""
        routes = [
            Route("/", self.listing, name="listing"),
            Route("/login", self.login, methods=["GET", "POST"], name="login"),
            Route("/logout", self.logout, methods=["POST"], name="logout"),
            Route("/events", self.events, name="events"),
            Route("/graphs/{name}.svg", self.picture, name="picture"),
            Route("/threads/{thread_id:path}", self.thread, methods=["GET", "POST"], name="thread"),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ]

        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            yield
            self.close()

        # The pages' middleware and error pages stay inside the mount: the LangGraph server
        # makes a custom app's own middleware and handlers its global ones (`http.app`).
        pages = Starlette(
            routes=routes,
            middleware=[
                Middleware(SecurityHeaders),
                Middleware(
                    SessionMiddleware,
                    secret_key=secret,
                    session_cookie="handrail_session",
                    same_site="lax",
                    https_only=https_only,
                ),
            ],
            exception_handlers={HTTPException: self.refused},
        )
        return Starlette(routes=[Mount(prefix, app=pages)], lifespan=lifespan)

    # -- pages ----------------------------------------------------------------------------------

    async def listing(self, request: Request) -> Response:
        """The waiting calls the signed-in person may decide, a page at a time."""
        person = self.people.signed_in(request)
        if person is None:
            return _to_login(request)
        newest = request.query_params.get("order", "newest") != "oldest"
        number = _page_number(request.query_params.get("page"))
        page = await asyncio.to_thread(
            list_page, self.table, person, number=number, size=self.page_size, newest_first=newest
        )
        name = "_rows.html" if request.query_params.get("fragment") else "list.html"
        return self._page(request, name, person, page=page, order="newest" if newest else "oldest")

    async def login(self, request: Request) -> Response:
        """The sign-in form (a token pasted in); on success, a session cookie."""
        if request.method == "GET":
            return self._page(request, "login.html", None)
        form = await request.form()
        check_csrf(request, form, None)
        token = form.get("token")
        try:
            self.people.sign_in(request, token if isinstance(token, str) else "")
        except IdentityError as exc:
            return self._page(request, "login.html", None, error=str(exc), status_code=401)
        return RedirectResponse(request.url_for("listing"), status_code=303)

    async def logout(self, request: Request) -> Response:
        """End the session."""
        person = self.people.signed_in(request)
        check_csrf(request, await request.form(), person)
        request.session.clear()
        return RedirectResponse(request.url_for("login"), status_code=303)

    async def events(self, request: Request) -> Response:
        """Server-sent events: ``ready`` once, then ``change`` whenever a request opens, is
        claimed, decided or expires (the browser then reloads what it shows)."""
        if self.people.signed_in(request) is None:
            raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})

        async def stream() -> AsyncIterator[dict[str, str]]:
            last: str | None = None
            while self.people.signed_in(request) is not None:
                marker = await asyncio.to_thread(change_marker, self.table)
                if marker != last:
                    digest = hashlib.sha256(marker.encode()).hexdigest()[:16]
                    yield {"event": "ready" if last is None else "change", "data": digest}
                    last = marker
                await asyncio.sleep(self.poll_interval)

        return EventSourceResponse(stream())

    async def picture(self, request: Request) -> Response:
        """The picture of a graph, by name (SVG)."""
        if self.people.signed_in(request) is None:
            raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})
        name = request.path_params["name"]
        if name not in self._pictures:
            graph = await asyncio.to_thread(self.shelf.find, name)
            if graph is None:
                raise HTTPException(404, f"no graph called {name!r} is known here")
            self._pictures[name] = await asyncio.to_thread(graph_svg, graph)
        return Response(self._pictures[name], media_type="image/svg+xml")

    async def thread(self, request: Request) -> Response:
        """One thread's waiting calls (GET), or a decision on them (POST)."""
        person = self.people.signed_in(request)
        if person is None:
            if request.method == "POST":
                raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Bearer"})
            return _to_login(request)
        thread_id: str = request.path_params["thread_id"]
        if request.method == "POST":
            return await self._decide(request, person, thread_id)
        flash = request.session.get(_FLASH)
        if isinstance(flash, dict) and flash.get("thread") == thread_id:
            request.session.pop(_FLASH)
        else:
            flash = None
        view = await asyncio.to_thread(self._thread_view, person, thread_id)
        if not view["calls"] and flash is None:
            raise HTTPException(404, "no request on this thread waits for your decision")
        return self._page(request, "thread.html", person, flash=flash, **view)

    async def refused(self, request: Request, exc: Exception) -> Response:
        """An HTTP error as a page (its reason shown; never a stack trace)."""
        assert isinstance(exc, HTTPException)
        try:
            person = self.people.signed_in(request) if exc.status_code != 401 else None
        except HTTPException:
            person = None
        response = self._page(
            request,
            "error.html",
            person,
            status=exc.status_code,
            problem=exc.detail,
            status_code=exc.status_code,
        )
        response.headers.update(exc.headers or {})
        return response

    # -- deciding -------------------------------------------------------------------------------

    async def _decide(self, request: Request, person: Person, thread_id: str) -> Response:
        form = await request.form()
        check_csrf(request, form, person)
        calls = await asyncio.to_thread(decidable_thread, self.table, person, thread_id)
        if not calls:
            raise HTTPException(403, "you may not decide this request (or nothing waits here)")
        action = _text(form, "action")
        try:
            if _text(form, "seen") != _seen(calls):
                raise _Refusal("the request changed since the page was shown: look at it again")
            if any(action not in c.allowed_decisions for c in calls):
                raise _Refusal(f"this request does not take the decision {action!r}")
            before = await asyncio.to_thread(_last_seq, self.table, thread_id)
            changes = await self._apply(person, calls, action, form)
        except (HandrailError, _Refusal) as exc:
            view = await asyncio.to_thread(self._thread_view, person, thread_id)
            return self._page(
                request, "thread.html", person, error=str(exc), status_code=409, **view
            )
        events = await asyncio.to_thread(recent_audit, self.table, thread_id, 50)
        request.session[_FLASH] = {
            "thread": thread_id,
            "decision": action,
            "changes": [[n, shown(b), shown(a, hidden=b == REDACTED)] for n, b, a in changes],
            "events": [summary(e) for e in events if e["seq"] > before],
        }
        return RedirectResponse(request.url_for("thread", thread_id=thread_id), status_code=303)

    async def _apply(
        self, person: Person, calls: list[PendingApproval], action: str, form: FormData
    ) -> list[Change]:
        """Decide the thread's calls, through the inbox or the server; returns an edit's
        changed arguments."""
        decisions, changes = await self._decisions(calls, action, form)
        thread = calls[0].thread_id or ""
        if self.inbox is None:  # the server checks the person's token as for any API call
            url = self.server if isinstance(self.server, str) else None
            await ServerInbox(url, token=person.token).adecide(thread, decisions)
            return changes
        graph = await asyncio.to_thread(self.shelf.find, calls[0].graph)
        await self.inbox.adecide(thread, decisions, approver=person.approver(graph), graph=graph)
        return changes

    async def _decisions(
        self, calls: list[PendingApproval], action: str, form: FormData
    ) -> tuple[dict[str, HumanDecision], list[Change]]:
        """The form's decision for each call (an approval bound to the arguments shown), and
        what an edit changes."""
        message = _text(form, "message").strip()
        decision: HumanDecision
        if action == "approve":
            return {c.tool_call_id: Approve(args_hash=c.args_hash) for c in calls}, []
        if action in ("reject", "respond"):
            if not message:
                raise _Refusal(f"say why: a {action} needs a message for the model")
            decision = Reject(message=message) if action == "reject" else Respond(message=message)
        elif action == "edit":
            call = _only(calls)
            tool = await asyncio.to_thread(self.shelf.tool, call.graph, call.tool)
            if tool is None:
                raise _Refusal(f"the tool {call.tool!r} is not known here: cannot edit its call")
            args = parse_edit(edit_fields(tool, call.args), form)
            edited = Edit(edited_action=Action(name=call.tool, args=args))
            return {call.tool_call_id: edited}, arg_changes(call.args, args)
        elif action == "retry":
            decision = Retry()
        elif action == "skip":
            decision = Skip(message=message) if message else Skip()  # else the stock words
        elif action == "abort":
            decision = Abort(message=message) if message else Abort()
        else:
            raise _Refusal(f"unknown decision {action!r}")
        return dict.fromkeys((c.tool_call_id for c in calls), decision), []

    # -- helpers --------------------------------------------------------------------------------

    def _thread_view(self, person: Person, thread_id: str) -> dict[str, Any]:
        calls = decidable_thread(self.table, person, thread_id)
        views = []
        for call in calls:
            tool = self.shelf.tool(call.graph, call.tool) if "edit" in call.decisions() else None
            first = first_args(self.table, call)
            views.append(
                {
                    "call": call,
                    "changes": arg_changes(first, call.args) if first is not None else [],
                    "fields": edit_fields(tool, call.args) if tool is not None else None,
                }
            )
        known = bool(calls) and self._known(calls[0].graph)
        return {
            "thread_id": thread_id,
            "calls": views,
            "seen": _seen(calls),
            "decisions": _common(calls),
            "audit": recent_audit(self.table, thread_id) if calls else [],
            "graph": calls[0].graph if known else None,
        }

    def _known(self, name: str) -> bool:
        try:
            return self.shelf.find(name) is not None
        except HandrailError:
            return False

    def _page(
        self,
        request: Request,
        name: str,
        person: Person | None,
        *,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        return self.templates.TemplateResponse(
            request,
            name,
            {"person": person, "csrf": csrf_token(request), **context},
            status_code=status_code,
        )


class _Refusal(Exception):
    """A decision the web inbox refuses before asking the inbox (shown on the page)."""


def new_secret() -> str:
    """A random session key (sessions then end when the process does)."""
    return secrets.token_urlsafe(32)


def _to_login(request: Request) -> Response:
    return RedirectResponse(request.url_for("login"), status_code=303)


def _page_number(raw: str | None) -> int:
    try:
        return max(1, int(raw or "1"))
    except ValueError:
        return 1


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _seen(calls: list[PendingApproval]) -> str:
    """What the page showed: each call and the hash of its arguments."""
    return ",".join(f"{c.tool_call_id}:{c.args_hash}" for c in calls)


def _common(calls: list[PendingApproval]) -> list[str]:
    """The decisions every call takes (a thread's calls are decided together)."""
    if not calls:
        return []
    shared = [d for d in calls[0].decisions() if all(d in c.decisions() for c in calls)]
    return [d for d in shared if d != "edit" or len(calls) == 1]


def _only(calls: list[PendingApproval]) -> PendingApproval:
    if len(calls) != 1:
        raise _Refusal("an edit here takes a thread that waits on one call")
    return calls[0]


def _last_seq(table: ApprovalTable, thread_id: str) -> int:
    rows = recent_audit(table, thread_id, 1)
    return int(rows[-1]["seq"]) if rows else 0
